#!/usr/bin/env bash
# Set up .venv for saekit: idempotent, quick when already done.
# On a CPU machine torch==2.13.0 (a CPU wheel) is installed first so that pip never pulls a
# multi-GB CUDA build; where a torch is already importable by python3 (a GPU box), the venv
# sees that torch (--system-site-packages) and keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.saekit-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  bash scripts/setup_hub.sh  # the hub tests' server, in .venv-hub (quick when done)
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: keeping the torch that $PY already has ($("$PY" -c 'import torch; print(torch.__version__)'))"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0 (CPU build)"
  "$VENV/bin/pip" install -q "torch==2.13.0"
fi
echo "setup: installing saekit and its dependencies into $VENV"
"$VENV/bin/pip" install -q -e ".[dev]"
echo "$want" > "$STAMP"
bash scripts/setup_hub.sh  # the hub tests' server, in .venv-hub (quick when done)
