#!/usr/bin/env bash
# bench/gpu_check.sh OUT_DIR [--dry-run]: the GPU check in one call (bench/gpu_check.py says what it runs).
# For a bare machine with an NVIDIA GPU where python3 has torch, accelerate, onnx, onnxscript, onnxruntime,
# matplotlib and pytest, and no network: nothing is installed, everything goes into OUT_DIR (gpu_check.log,
# gpu_check.json), and the whole check is cut at 7 minutes. --dry-run runs every stage on the CPU at tiny sizes.
# CORPUS=PATH names the recipe's text (default: Tiny Shakespeare if cached, else builtin:python-docs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then sed -n '2,6p' "$0"; exit $(( $# < 1 ? 2 : 0 )); fi
# 420 s = 7 minutes (bench/gpu_check.py: SHELL_TIMEOUT_S); SIGTERM lets it kill its running child's group,
# and 5 s later anything left gets SIGKILL
exec timeout --kill-after=5 420 env PYTHONPATH=.:bench "${PYTHON:-python3}" bench/gpu_check.py "$@"
