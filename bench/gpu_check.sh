#!/usr/bin/env bash
# bench/gpu_check.sh OUT_DIR [--dry-run]: the GPU check in one call (bench/gpu_check.py says what it runs).
# For a bare machine with an NVIDIA GPU where python3 has torch, accelerate, onnx and onnxruntime, and no
# network: nothing is installed, everything goes into OUT_DIR (gpu_check.log, gpu_check.json), and the whole
# check is cut at 8 minutes. --dry-run runs every stage on the CPU at tiny sizes.
# CORPUS=PATH names the text (default: Tiny Shakespeare from the user cache, else the Python stdlib).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then sed -n '2,6p' "$0"; exit $(( $# < 1 ? 2 : 0 )); fi
exec timeout 480 env PYTHONPATH=. "${PYTHON:-python3}" bench/gpu_check.py "$@"
