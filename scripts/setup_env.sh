#!/usr/bin/env bash
# Creates .venv (once) and installs the project into it. Idempotent: a second run only checks.
# torch is installed first as torch==2.13.0, which pip takes from the CPU wheel on this kind of
# machine; any other spec would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.fmri-diffusers-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
