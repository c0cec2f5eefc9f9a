#!/usr/bin/env bash
# launch.sh: train with the right launcher for this machine and its scheduler, or, with no arguments, the
# quickstart. The logic is Python (trainer/launch/cli.py); `./launch.sh --help` explains.
set -euo pipefail
cd "$(dirname "$0")"
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
exec "$PY" -m trainer.launch "$@"
