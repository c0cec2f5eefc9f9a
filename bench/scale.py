"""What a corpus' size costs: corpora of 1 MB to 1 GB, each measured in fresh processes, side by side.

    python bench/scale.py [--sizes 1,10,100,1000] [--plot docs/scale.png] [--work DIR]

For each size (MB of UTF-8: Tiny Shakespeare repeated, with accents, ñ, ¿, ¡, dashes and emoji mixed in, as
bench/encode_speed.py builds it): the first encode (no cache) and a warm one, with their peak RSS; a training
launch of configs/tiny.yaml on a warm cache: seconds from launch to its first step, seconds per step, per
evaluation (train.eval_chars=50,000: the bound, below even 1 MB's split) and per checkpoint save, the
checkpoint's bytes and the trainer's peak RSS; and the same text as a folder of 1,000 files: its first encode
(join + encode), a warm encode and a launch to the first step. Goal: everything but the first encode flat in
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


def timed(args: list[str], env: dict, watch: Path | None = None) -> dict:
    """Run `python ARGS` in a fresh process: its seconds, peak RSS (MB, of that process alone) and, with `watch`
    (a metrics.jsonl), the seconds until its `start` event, logged just before the first training step."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    first_step = None
    if watch is not None:
        while first_step is None and process.poll() is None:
            if watch.exists() and '"start": true' in watch.read_text():
                first_step = time.perf_counter() - started
            time.sleep(0.01)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "first_step_s": first_step}


def split_into_files(path: Path, folder: Path, count: int) -> None:
    """The text as `count` files of about equal size, cut at newlines, named so that they sort in order."""
    payload = path.read_bytes()
    folder.mkdir()
    start = 0
    for i in range(count):
        end = len(payload) if i == count - 1 else payload.index(b"\n", (i + 1) * len(payload) // count) + 1
        (folder / f"{i:05d}.txt").write_bytes(payload[start:end])
        start = end


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


def measure(megabytes: int, work: Path) -> dict:
    path, cache = work / f"corpus-{megabytes}mb.txt", work / f"cache-{megabytes}mb"
    size = make_corpus(path, megabytes)
    env = {"CHARLSTM_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    row = {"mb": size / 1e6}
    first = timed(["-m", "trainer.data", str(path)], env)
    warm = timed(["-m", "trainer.data", str(path)], env)
    row |= {"encode_first_s": first["seconds"], "encode_first_rss_mb": first["peak_rss_mb"]}
    row |= {"encode_warm_s": warm["seconds"], "encode_warm_rss_mb": warm["peak_rss_mb"]}
    out = work / f"run-{megabytes}mb"
    args = ["-m", "trainer.train", "--config", "configs/tiny.yaml", f"data.path={path}", f"out_dir={out}", *TRAIN]
    run = timed(args, env, watch=out / "metrics.jsonl")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "chars_per_s" in e][1:]  # the first log holds the first steps' warm-up
    tokens = 32 * 64  # configs/tiny.yaml: batch 32 x seq 64
    row |= {"launch_to_first_step_s": run["first_step_s"], "train_rss_mb": run["peak_rss_mb"]}
    row |= {"step_s": median([tokens / e["chars_per_s"] for e in steps])}
    row |= {"eval_s": median([e["val_seconds"] for e in events if "val_seconds" in e])}
    row |= {"eval_chars": {e["val_chars"] for e in events if "val_chars" in e}.pop()}
    row |= {"ckpt_mb": (out / "ckpt.pt").stat().st_size / 1e6, "save_s": save_seconds(out / "ckpt.pt")}
    folder = work / f"folder-{megabytes}mb"
    split_into_files(path, folder, 1000)
    folder_first = timed(["-m", "trainer.data", str(folder)], env)
    folder_warm = timed(["-m", "trainer.data", str(folder)], env)
    folder_out = work / f"run-folder-{megabytes}mb"
    folder_args = [*args[:4], f"data.path={folder}", f"out_dir={folder_out}", *TRAIN, "train.max_steps=2"]
    folder_run = timed(folder_args, env, watch=folder_out / "metrics.jsonl")
    row |= {"folder_first_s": folder_first["seconds"], "folder_warm_s": folder_warm["seconds"]}
    row |= {"folder_launch_to_first_step_s": folder_run["first_step_s"]}
    for stale in (path, folder, cache, out, folder_out):  # the 1 GB rows would otherwise fill the disk
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return row


ROWS = [  # (key, label, format, goal: "flat" within 20%, or None)
    ("encode_first_s", "first encode (s)", "{:.2f}", None),
    ("encode_first_mb_s", "first encode (MB/s)", "{:,.0f}", None),
    ("encode_first_rss_mb", "first encode: peak RSS (MB)", "{:,.0f}", None),
    ("encode_warm_s", "warm cache: a launch of trainer.data (s)", "{:.2f}", "flat"),
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
        if key.endswith("_s"):
            seconds.plot(sizes, [r[key] for r in rows], marker="o", label=label)
    for key, label in (("encode_first_rss_mb", "first encode"), ("train_rss_mb", "training")):
        memory.plot(sizes, [r[key] for r in rows], marker="o", label=label)
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
    parser.add_argument("--plot", type=Path, help="write the log-log plot here (docs/scale.png)")
    parser.add_argument("--work", type=Path, help="a folder with room for 5x the largest size (default: a temp one)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        rows = []
        for megabytes in sizes:
            rows.append(measure(megabytes, Path(work)))
            rows[-1]["encode_first_mb_s"] = rows[-1]["mb"] / rows[-1]["encode_first_s"]
            print(json.dumps(rows[-1]), flush=True)
    headers = ("", *[f"{r['mb']:,.0f} MB" for r in rows], "largest / smallest")
    lines = []
    for key, label, form, goal in ROWS:
        values = [r[key] for r in rows]
        spread = max(values) / min(values)
        verdict = f"{spread:.2f}x" + ("" if goal is None else (" (flat)" if spread <= 1.2 else " (NOT flat)"))
        lines.append((label, *[form.format(v) for v in values], verdict))
    print(f"\nCorpus size and its costs, on {machine()}")
    print(table(lines, headers))
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
