#!/usr/bin/env bash
# The three paper studies on Gemma 3 270M, one after another on a CPU (each resumes where it
# stopped; a finished step is skipped). Logs and wall times go to runs/studies-gemma.log.
#   bash analysis/run_gemma_studies.sh [seed-sharing] [seed-sharing-steps] [input-vs-output] [random-vs-trained]
# Run one study at a time: two torch jobs on 2 cores oversubscribe their threads and each runs ~20x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
LOG=runs/studies-gemma.log
mkdir -p runs
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(seed-sharing seed-sharing-steps input-vs-output random-vs-trained)
$PY analysis/fetch_debian_docs.py | tee -a "$LOG"
for step in "${steps[@]}"; do
  start=$(date +%s)
  echo "[studies] $step: started $(date -u +%FT%TZ)" | tee -a "$LOG"
  case $step in
    seed-sharing) $PY analysis/seed_sharing.py analysis/configs/seed_sharing_gemma.toml ;;
    seed-sharing-steps) $PY analysis/seed_sharing.py analysis/configs/seed_sharing_gemma_steps.toml ;;
    input-vs-output) $PY analysis/input_vs_output.py analysis/configs/input_vs_output_gemma.toml ;;
    random-vs-trained) $PY analysis/random_vs_trained.py analysis/configs/random_vs_trained_gemma.toml ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac 2>&1 | tr "\r" "\n" | { grep -v "it/s\]$\|tok/s\]$\|s/it\]$" || true; } >> "$LOG"
  echo "[studies] $step: finished in $(( $(date +%s) - start )) s" | tee -a "$LOG"
done
