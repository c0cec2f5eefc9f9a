#!/usr/bin/env bash
# setup.sh: create .venv and install charlstm into it.
#   ./setup.sh          training (text, JSON Lines, Parquet, CSV), export, sampling (onnxruntime for the CPU), the service
#   ./setup.sh --gpu    the same with onnxruntime-gpu (never both: they are one Python module)
#   ./setup.sh --dev    also pytest, ruff, Playwright, the HTTP service's clients, and (as root, through
#                       apt-get) Debian's chromium, slurm-wlm and munge (what the tests need)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ./setup.sh   PyTorch's CPU wheel (PyPI's Linux torch
#                       is a CUDA build of several GB); TORCH_VERSION=X another torch than 2.13.0
# Where npm is present, both install the JavaScript samplers' packages (Node.js and the web page).
set -euo pipefail
cd "$(dirname "$0")"
runtime=cpu dev=0
for arg in "$@"; do
  case "$arg" in
    --gpu) runtime=gpu ;;
    --dev) dev=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "error: unknown option $arg (see ./setup.sh --help)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first, pinned: on this kind of machine 2.13.0 is a CPU wheel on local disk; an unpinned torch
# would pull a CUDA build of several GB. pyproject.toml keeps a range that 2.13.0 satisfies.
pip install "torch==${TORCH_VERSION:-2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
extras="$runtime,data,server"  # server: python -m serve.http
if [[ $dev == 1 ]]; then extras="$extras,dev"; fi
pip install -e ".[$extras]"
# The JavaScript samplers (Node.js, and the web page's onnxruntime-web): pinned in serve/js/package-lock.json.
if command -v npm >/dev/null; then
  (cd serve/js && ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci --no-audit --no-fund --loglevel=error)
else
  echo "setup.sh: npm not found; the Node.js sampler, the web page and their tests need it (Node.js 18 or later; tested on 20)" >&2
fi
# The browser test drives Debian's chromium (Playwright's own browser download needs the internet); the
# scheduler test starts Debian's slurm-wlm (slurmctld, slurmd) and munge as a one-node cluster.
if [[ $dev == 1 ]]; then
  wanted=()
  command -v chromium >/dev/null || wanted+=(chromium)
  command -v slurmctld >/dev/null || wanted+=(slurm-wlm)
  command -v munged >/dev/null || wanted+=(munge)
  if (( ${#wanted[@]} )); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >/dev/null
    else
      echo "setup.sh: ${wanted[*]} not found and cannot be installed here (needs root and apt-get);" \
        "the browser and Slurm tests will be skipped" >&2
    fi
  fi
fi
echo "setup.sh: ready (.venv, onnxruntime for $runtime$([[ $dev == 1 ]] && echo ', dev tools'))"
