#!/usr/bin/env bash
# The test command of the README and of CI: sets up .venv if needed, then runs the suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
exec python -m pytest -q "$@"
