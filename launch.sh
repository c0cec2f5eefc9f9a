#!/usr/bin/env bash
# launch.sh: train with the right launcher for this machine. `./launch.sh --help` explains.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
usage: ./launch.sh                      the quickstart: train configs/tiny.yaml, export, print a sample
       ./launch.sh CONFIG [key=value ...]   train CONFIG with dotted overrides (train.max_steps=40 ...)

How many processes:
  several GPUs        accelerate launch --multi_gpu, one process per GPU (precision: train.mixed_precision)
  one GPU or none     one process
  NPROC=N             N processes (on a CPU machine: torchrun with gloo; with GPUs: the first N)
Several machines: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on each; they are passed on. Node 0
runs the main process, which alone reads and writes out_dir; the other nodes need only the corpus.
  MAX_RESTARTS=N      when a worker dies (OOM killer, a lost machine), restart the workers up to N times;
                      they resume from ckpt.pt (default 3 for a run of several processes, 0 for one)
  STOP_GRACE=S        seconds the workers get to save after SIGTERM / SIGINT before they are killed
                      (default 30: a process blocked in a collective never sees the signal)
Other variables: PYTHON (default .venv/bin/python if present, else python3); OMP_NUM_THREADS (threads per
process; on a CPU machine the default shares the cores out: 2 processes on 16 cores get 8 each).

Before a run of several processes, each machine encodes the corpus into its id cache (python -m trainer.data),
so that no process waits for a long first encode inside a collective (train.collective_timeout bounds those).

SIGTERM or SIGINT (Ctrl-C) reach the training processes only: they finish the current step, write
ckpt.pt and exit 0. Run the same command again to resume, with any number of processes.
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
BIN=$(dirname "$(command -v "$PY")")
STOP_GRACE=${STOP_GRACE:-30}
[[ "$STOP_GRACE" =~ ^[0-9]+$ ]] || { echo "error: STOP_GRACE must be a number of seconds, got '$STOP_GRACE'" >&2; exit 2; }
# The cores this process may run on: physical ones (hyperthreads add little to matrix work), within its CPU set
CORES='import os
allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
try:
    import psutil
    physical = psutil.cpu_count(logical=False) or allowed
except ImportError:
    physical = allowed
print(max(1, min(physical, allowed)))'

# Run a command in its own session; forward SIGTERM/SIGINT to its worker processes (not to a launcher,
# which would kill them and exit non-zero, or restart them), then wait for them to save and exit. A worker
# blocked inside a collective (a peer hung) never runs its signal handler: after STOP_GRACE seconds the
# launcher and its workers are killed, and ckpt.pt holds the last whole save.
run_forwarding_signals() {
  setsid "$@" &
  local leader=$! killer=""
  forward() {  # $1: the signal received, passed on as it is (the workers report which one stopped them)
    local workers
    workers=$(pgrep -P "$leader" || true)
    kill "-$1" ${workers:-$leader} 2>/dev/null || true
    if [[ -z "$killer" ]]; then
      # the timer's sleep must end with it: an orphaned sleep would hold the caller's stdout and stderr open
      ( trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
        sleep "$STOP_GRACE" <&- >/dev/null 2>&1 & sleeper=$!
        wait "$sleeper"
        echo "charlstm: the workers did not stop within STOP_GRACE=$STOP_GRACE s of SIG$1 (blocked in a" \
          "collective?): killed; ckpt.pt holds the last whole save" >&2
        # the workers by pid: torchrun starts each in a session of its own
        kill -KILL $(pgrep -P "$leader") "$leader" 2>/dev/null ) &
      killer=$!
    fi
  }
  trap 'forward TERM' TERM
  trap 'forward INT' INT
  local status=0
  while true; do
    wait "$leader" && status=0 || status=$?
    kill -0 "$leader" 2>/dev/null || break  # `wait` also returns when a trapped signal arrives
  done
  trap - TERM INT
  if [[ -n "$killer" ]]; then kill "$killer" 2>/dev/null || true; fi
  return "$status"
}

train() {
  local config=$1; shift
  if [[ ! -f "$config" ]]; then echo "error: config file '$config' not found" >&2; exit 2; fi
  local gpus nproc
  gpus=0
  # ask torch only where a GPU driver is present: importing torch costs a CPU machine 2 s for every launch
  if [[ -e /dev/nvidiactl || -e /dev/kfd ]] || command -v nvidia-smi >/dev/null; then
    gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  fi
  nproc=${NPROC:-$(( gpus > 0 ? gpus : 1 ))}
  [[ "$nproc" =~ ^[1-9][0-9]*$ ]] || { echo "error: NPROC must be a number >= 1, got '$nproc'" >&2; exit 2; }
  local restarts=0
  if (( nproc > 1 )) || [[ -n "${NNODES:-}" ]]; then
    restarts=${MAX_RESTARTS:-3}
    [[ "$restarts" =~ ^[0-9]+$ ]] || { echo "error: MAX_RESTARTS must be a number, got '$restarts'" >&2; exit 2; }
    # this machine's copy of the corpus, encoded now (and the config checked): a restart would only repeat
    # a bad config, and a long first encode would otherwise happen while the other processes wait for it
    "$PY" -m trainer.data --config "$config" --processes "$(( nproc * ${NNODES:-1} ))" "$@" >/dev/null || exit 2
  fi
  if (( gpus > 0 && nproc > gpus )); then
    echo "error: NPROC=$nproc but this machine has $gpus GPU(s): one process per GPU at most" >&2; exit 2
  fi
  local multi_node=()
  if [[ -n "${NNODES:-}" ]]; then
    : "${NODE_RANK:?set NODE_RANK with NNODES}" "${MASTER_ADDR:?set MASTER_ADDR with NNODES}"
    multi_node=(--num_machines "$NNODES" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR"
                --main_process_port "${MASTER_PORT:-29500}")
  fi
  if (( gpus > 1 && nproc > 1 )) || { (( gpus > 0 )) && [[ -n "${NNODES:-}" ]]; }; then
    # the trainer chooses the precision itself (train.mixed_precision, `auto` by default): accelerate's own
    # setting is left at `no`, which the trainer's explicit choice overrides
    run_forwarding_signals "$BIN/accelerate" launch --multi_gpu --num_processes "$(( nproc * ${NNODES:-1} ))" \
      --mixed_precision no --max_restarts "$restarts" "${multi_node[@]}" trainer/train.py --config "$config" "$@"
  elif (( gpus == 0 && nproc > 1 )) || [[ -n "${NNODES:-}" ]]; then
    local rendezvous=(--standalone)
    if [[ -n "${NNODES:-}" ]]; then
      rendezvous=(--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR"
                  --master_port "${MASTER_PORT:-29500}")
    fi
    if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
      # torchrun would give every process 1 thread: share this machine's cores out instead (2 processes on 16
      # cores: 8 threads each), never more threads than cores (which makes every step wait on the others)
      local cores
      cores=$("$PY" -c "$CORES" 2>/dev/null || echo 1)
      export OMP_NUM_THREADS=$(( cores > nproc ? cores / nproc : 1 ))
    fi
    run_forwarding_signals "$PY" -m torch.distributed.run "${rendezvous[@]}" --nproc_per_node "$nproc" \
      --max-restarts "$restarts" \
      trainer/train.py --config "$config" "$@"
  else
    run_forwarding_signals "$PY" -m trainer.train --config "$config" "$@"
  fi
}

if [[ $# -gt 0 ]]; then
  train "$@"
  exit $?
fi

# ---- the quickstart: Tiny Shakespeare (or, offline, the Python documentation), train, export, sample
data=tinyshakespeare prime="ROMEO:"
if ! "$PY" -m trainer.data tinyshakespeare >/dev/null 2>&1; then
  echo "charlstm: Tiny Shakespeare could not be downloaded (no network?); training on builtin:python-docs" \
    "(the Python reference documentation, 465,000 characters)" >&2
  data=builtin:python-docs prime="The "
fi
train configs/tiny.yaml "data.path=$data"
"$PY" -m export.onnx runs/tiny/best.pt
echo "--- a sample from runs/tiny/best.onnx:"
"$PY" -m serve.sample runs/tiny/best.onnx --prime "$prime" --length 600 --top-k 5 --seed 0
echo "--- more: $PY -m serve.sample runs/tiny/best.onnx --help; in a browser: $PY -m serve.web runs/tiny/best.onnx --open"
