"""What a corpus' size costs: corpora of 1 MB to 1 GB, each measured in fresh processes, side by side.

    python bench/scale.py [--sizes 1,10,100,1000] [--plot docs/scale.png] [--work DIR]

For each size (MB of UTF-8: Tiny Shakespeare repeated, with accents, ñ, ¿, ¡, dashes and emoji mixed in, as
bench/encode_speed.py builds it): the first encode (no cache), with the peak RSS of the process and of its
largest worker; then, in rounds that take every size in turn (so that the machine's drift hits all alike;
the medians are reported), a warm launch that loads the corpus, a training launch of configs/tiny.yaml on a
warm cache (seconds from launch to its first step, seconds per step, per evaluation with
train.eval_chars=50,000, the bound, below even 1 MB's split, and per checkpoint save, the checkpoint's bytes
and the trainer's peak RSS); and for the same text as a folder of 1,000 files, its first encode (join and
encode), a warm launch and a training launch to its first step. Goal: everything but the first encode flat in
the corpus size (within 20% from 1 MB to 1 GB); peak RSS under 1 GB at 1 GB; the first encode >= 50 MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, median, table
from encode_speed import make_corpus

STEPS = 40  # per training launch: two evaluations and two saves (steps 20 and 40)
TRAIN = [
    f"train.max_steps={STEPS}",
    "train.max_minutes=null",
    "train.eval_every=20",
    "train.save_every=20",
    "train.log_every=5",
    "train.eval_chars=50000",
    "train.sample_chars=0",
]


# The peak RSS of a process is read from its own /proc/self/status (VmHWM, which exec resets): ru_maxrss from
# wait4 or getrusage starts from the RSS of the parent that forked the process.
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
TRAIN_AND_REPORT = (
    "import json, sys; from trainer.train import main; code = main(sys.argv[1:]); "
    f"print(json.dumps({{'peak_rss_mb': {PEAK}}})); sys.exit(code)"
)


def timed(args: list[str], env: dict, watch: Path | None = None) -> dict:
    """Train (`trainer.train ARGS`) in a fresh process: its seconds, its own peak RSS (MB) and, with `watch` (a
    metrics.jsonl), the seconds until its `start` event, logged just before the first training step."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", TRAIN_AND_REPORT, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first_step = None
    if watch is not None:
        while first_step is None and process.poll() is None:
            if watch.exists() and '"start": true' in watch.read_text():
                first_step = time.perf_counter() - started
            time.sleep(0.01)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{stderr.decode(errors='replace')[-2000:]}")
    peak = json.loads(stdout.decode().strip().splitlines()[-1])["peak_rss_mb"]
    return {"seconds": seconds, "peak_rss_mb": peak, "first_step_s": first_step}


def split_into_files(path: Path, folder: Path, count: int) -> None:
    """The text as `count` files of about equal size, cut at newlines, named so that they sort in order; read
    line by line (this process stays small: a child's peak RSS must not start from its parent's)."""
    folder.mkdir()
    share = path.stat().st_size / count
    with open(path, "rb") as text:
        for i in range(count):
            with open(folder / f"{i:05d}.txt", "wb") as out:
                written = 0
                for line in text:
                    out.write(line)
                    written += len(line)
                    if written >= share and i < count - 1:
                        break


def save_seconds(ckpt: Path) -> float:
    """The median of 3 saves of the run's checkpoint, by the trainer's own save (atomic, fsynced)."""
    code = (
        "import json, sys, time\n"
        "from trainer.checkpoint import load_checkpoint, save_checkpoint\n"
        f"ckpt = load_checkpoint({str(ckpt)!r}); times = []\n"
        "for _ in range(3):\n"
        f"    start = time.perf_counter(); save_checkpoint({str(ckpt)!r} + '.copy', ckpt)\n"
        "    times.append(time.perf_counter() - start)\n"
        "print(json.dumps(sorted(times)[1]))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


ENCODE = """
import json, resource, sys
from trainer.data import load_corpus
load_corpus(sys.argv[1])
own = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) / 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest; counted from this one's RSS
print(json.dumps({"self": own, "workers": workers}))
"""


def encode(path: Path, env: dict) -> dict:
    """A launch of load_corpus on `path`: its seconds and peak RSS, the process's and its workers' (the largest
    of them: a large corpus is encoded by one process per core)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", ENCODE, str(path)], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"encoding {path} failed:\n{result.stderr[-2000:]}")
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": time.perf_counter() - started, "rss_mb": peaks["self"], "worker_rss_mb": peaks["workers"]}


def prepare(megabytes: int, work: Path) -> dict:
    """The corpus of this size, as one file and as a folder of 1,000 files, each encoded for the first time."""
    path, folder = work / f"corpus-{megabytes}mb.txt", work / f"folder-{megabytes}mb"
    size = make_corpus(path, megabytes)
    split_into_files(path, folder, 1000)
    env = {"CHARLSTM_CACHE_DIR": str(work / f"cache-{megabytes}mb"), "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    first, folder_first = encode(path, env), encode(folder, env)
    return {"megabytes": megabytes, "path": path, "folder": folder, "env": env, "mb": size / 1e6,
            "encode_first_s": first["seconds"], "encode_first_mb_s": size / 1e6 / first["seconds"],
            "encode_first_rss_mb": max(first["rss_mb"], first["worker_rss_mb"]),
            "encode_first_main_rss_mb": first["rss_mb"], "encode_first_worker_rss_mb": first["worker_rss_mb"],
            "folder_first_s": folder_first["seconds"]}  # fmt: skip


def launch_costs(corpus: dict, work: Path, round_: int) -> dict:
    """One round of the warm-cache costs of a prepared corpus, each in a fresh process."""
    env, megabytes = corpus["env"], corpus["megabytes"]
    warm = encode(corpus["path"], env)
    out = work / f"run-{megabytes}mb-{round_}"
    config = ["--config", "configs/tiny.yaml"]
    run = timed([*config, f"data.path={corpus['path']}", f"out_dir={out}", *TRAIN], env, watch=out / "metrics.jsonl")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "chars_per_s" in e][1:]  # the first log holds the first steps' warm-up
    tokens = 32 * 64  # configs/tiny.yaml: batch 32 x seq 64
    folder_warm = encode(corpus["folder"], env)
    folder_out = work / f"run-folder-{megabytes}mb-{round_}"
    folder_args = [*config, f"data.path={corpus['folder']}", f"out_dir={folder_out}", *TRAIN, "train.max_steps=2"]
    folder_run = timed(folder_args, env, watch=folder_out / "metrics.jsonl")
    costs = {
        "encode_warm_s": warm["seconds"],
        "launch_to_first_step_s": run["first_step_s"],
        "train_rss_mb": run["peak_rss_mb"],
        "step_s": median([tokens / e["chars_per_s"] for e in steps]),
        "eval_s": median([e["val_seconds"] for e in events if "val_seconds" in e]),
        "eval_chars": {e["val_chars"] for e in events if "val_chars" in e}.pop(),
        "ckpt_mb": (out / "ckpt.pt").stat().st_size / 1e6,
        "save_s": save_seconds(out / "ckpt.pt"),
        "folder_warm_s": folder_warm["seconds"],
        "folder_launch_to_first_step_s": folder_run["first_step_s"],
    }
    shutil.rmtree(out)
    shutil.rmtree(folder_out)
    return costs


ROWS = [  # (key, label, format, goal: "flat" within 20%, or None)
    ("encode_first_s", "first encode (s)", "{:.2f}", None),
    ("encode_first_mb_s", "first encode (MB/s)", "{:,.0f}", None),
    ("encode_first_main_rss_mb", "first encode: peak RSS of the process (MB)", "{:,.0f}", None),
    ("encode_first_worker_rss_mb", "first encode: peak RSS of its largest worker (MB)", "{:,.0f}", None),
    ("encode_warm_s", "warm cache: a launch that loads the corpus (s)", "{:.2f}", "flat"),
    ("launch_to_first_step_s", "training: launch to first step, warm cache (s)", "{:.2f}", "flat"),
    ("step_s", "training: seconds per step", "{:.4f}", "flat"),
    ("eval_s", "training: seconds per evaluation (50,000 chars)", "{:.3f}", "flat"),
    ("ckpt_mb", "checkpoint (MB)", "{:.2f}", "flat"),
    ("save_s", "checkpoint save (s)", "{:.3f}", "flat"),
    ("train_rss_mb", "training: peak RSS (MB)", "{:,.0f}", "flat"),
    ("folder_first_s", "1,000 files: first encode (s)", "{:.2f}", None),
    ("folder_warm_s", "1,000 files: warm cache (s)", "{:.2f}", "flat"),
    ("folder_launch_to_first_step_s", "1,000 files: launch to first step (s)", "{:.2f}", "flat"),
]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["mb"] for r in rows]
    fig, (seconds, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label, _, _ in ROWS:
        if key.endswith("_s") and not key.endswith("mb_s"):  # seconds (the MB/s row is their inverse)
            seconds.plot(sizes, [r[key] for r in rows], marker="o", label=label)
    peaks = [("encode_first_main_rss_mb", "first encode"), ("encode_first_worker_rss_mb", "its largest worker")]
    for key, label in [*peaks, ("train_rss_mb", "training")]:
        measured = [(size, r[key]) for size, r in zip(sizes, rows) if r[key] > 0]  # no workers below 32 MB
        memory.plot(*zip(*measured), marker="o", label=label)
    memory.axhline(1000, color="grey", linestyle=":", label="goal: 1 GB")
    for axis, ylabel in ((seconds, "seconds"), (memory, "peak RSS (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("corpus (MB of UTF-8)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    seconds.set_title("what a corpus' size costs (log-log)")
    memory.set_title("peak memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,10,100,1000", help="corpus sizes in MB, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the warm costs, all sizes in each")
    parser.add_argument("--plot", type=Path, help="write the log-log plot here (docs/scale.png)")
    parser.add_argument(
        "--work", type=Path, help="a folder with room for 5x the sum of the sizes (default: a temp one)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        corpora = [prepare(int(size), Path(work)) for size in args.sizes.split(",")]
        rounds = {c["megabytes"]: [] for c in corpora}
        for round_ in range(args.rounds):  # the sizes side by side in every round: the machine's drift hits all
            for corpus in corpora:
                rounds[corpus["megabytes"]].append(launch_costs(corpus, Path(work), round_))
        rows = []
        for corpus in corpora:
            costs = rounds[corpus["megabytes"]]
            row = {k: v for k, v in corpus.items() if k not in ("path", "folder", "env")}
            row |= {key: median([c[key] for c in costs]) for key in costs[0]}
            row["noise"] = {key: max(c[key] for c in costs) / min(c[key] for c in costs) for key in costs[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    headers = ("", *[f"{r['mb']:,.0f} MB" for r in rows], "largest / smallest", "rounds of one size: spread")
    lines = []
    for key, label, form, goal in ROWS:
        values = [r[key] for r in rows]
        if min(values) <= 0:  # no workers: a small corpus is encoded in one process
            lines.append((label, *[form.format(v) if v > 0 else "none" for v in values], "", ""))
            continue
        spread = max(values) / min(values)
        verdict = f"{spread:.2f}x" + ("" if goal is None else (" (flat)" if spread <= 1.2 else " (NOT flat)"))
        noise = f"{max(r['noise'][key] for r in rows):.2f}x" if key in rows[0]["noise"] else ""  # the largest
        lines.append((label, *[form.format(v) for v in values], verdict, noise))
    print(f"\nCorpus size and its costs, on {machine()}; the warm costs are medians of {args.rounds} rounds")
    print(table(lines, headers))
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
