#!/usr/bin/env bash
# The main job of the README: set up .venv if needed, then train the VAE and the LDM on the embedded
# real example (nitime's fMRI runs), evaluate, sample, and write everything under outputs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
start=$(date +%s)
python main.py --config config.yaml --mode both --overwrite_output_dir "$@"
echo "main job finished in $(( $(date +%s) - start )) s (training, sampling and evaluation; set-up not counted)"
