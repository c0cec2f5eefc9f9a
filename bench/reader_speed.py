"""Pre-encoding one text kept as people keep it, side by side in one run: a plain file, the file compressed
(.zst, .gz), and shards of rows (JSON Lines, Parquet, CSV), each from its files to the memory-mapped ids in a
fresh process with an empty cache; MB of text per second, the ratio to the plain file, and peak memory.

    python bench/reader_speed.py [--mb 100] [--rounds 3] [--shards 4]
    python bench/reader_speed.py --parquet-gb 2      # peak memory while reading 2 GB of Parquet shards

The rows are the text cut after a newline every 2,000 characters or so, joined again with data.separator=""
so that every form holds exactly the plain file's text (the same ids and sha256, checked).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import shutil
import tempfile
from pathlib import Path

from common import machine, median, run_json, table
from encode_speed import make_corpus

FORMS = ("plain", "zst", "gz", "jsonl", "parquet", "csv")


def rows_of(text: str, size: int = 2000) -> list[str]:
    rows, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        rows.append(text[start:end])
        start = end
    return rows


def write_forms(plain: Path, folder: Path, shards: int) -> dict[str, Path]:
    """The plain file's text in every form: {form: data.path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    paths = {"plain": plain}
    payload = plain.read_bytes()
    paths["zst"] = folder / "corpus.txt.zst"
    paths["zst"].write_bytes(zstandard.ZstdCompressor(level=3, threads=-1).compress(payload))
    paths["gz"] = folder / "corpus.txt.gz"
    paths["gz"].write_bytes(gzip.compress(payload, compresslevel=6))
    rows = rows_of(payload.decode("utf-8"))
    del payload
    per_shard = -(-len(rows) // shards)
    for form in ("jsonl", "parquet", "csv"):
        paths[form] = folder / form
        paths[form].mkdir()
    for i in range(shards):
        part = rows[i * per_shard : (i + 1) * per_shard]
        lines = "".join(json.dumps({"id": i, "text": row}, ensure_ascii=False) + "\n" for row in part)
        (paths["jsonl"] / f"part-{i:05d}.jsonl").write_text(lines, encoding="utf-8")
        pq.write_table(pa.table({"text": part}), paths["parquet"] / f"part-{i:05d}.parquet")
        out = io.StringIO(newline="")
        csv.writer(out).writerows([["text"], *[[row] for row in part]])
        (paths["csv"] / f"part-{i:05d}.csv").write_text(out.getvalue(), encoding="utf-8")
    return paths


# A thread samples the anonymous memory (RssAnon: the heap, not the mapped libraries and files) of the process
# and of its encoding workers every 50 ms; ru_maxrss would not do, since Linux carries it across exec.
MEASURE = """
import glob, json, os, sys, threading, time
from trainer.data import ReadOptions, load_corpus

def anonymous_mb(pid):
    try:
        return int(next(l for l in open(f'/proc/{pid}/status') if l.startswith('RssAnon')).split()[1]) / 1024
    except (OSError, StopIteration):
        return 0.0

peak, done = [0.0, 0.0], threading.Event()
def sample():
    while not done.wait(0.05):
        children = [int(c) for f in glob.glob('/proc/self/task/*/children') for c in open(f).read().split()]
        own = anonymous_mb(os.getpid())
        peak[0], peak[1] = max(peak[0], own), max(peak[1], own + sum(anonymous_mb(c) for c in children))
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
corpus = load_corpus(sys.argv[1], options=ReadOptions(separator=""))
seconds = time.perf_counter() - start
done.set()
print(json.dumps({'seconds': seconds, 'peak_mb': peak[0], 'all_mb': peak[1], 'chars': len(corpus.ids),
                  'sha256': corpus.sha256}))
"""
BASELINE = """
import json, trainer.data
status = open('/proc/self/status').read().splitlines()
print(json.dumps({'peak_mb': int(next(l for l in status if l.startswith('RssAnon')).split()[1]) / 1024}))
"""


def measure(path: Path, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)  # a first encode, every time
    return run_json(["-c", MEASURE, str(path)], env={"CHARLSTM_CACHE_DIR": str(cache)})


def side_by_side(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "corpus.txt"
        size = make_corpus(plain, args.mb)
        paths = write_forms(plain, Path(tmp), args.shards)
        baseline = run_json(["-c", BASELINE])["peak_mb"]
        results = {form: [] for form in FORMS}
        for _ in range(args.rounds):  # rounds interleaved: a drift of the machine's speed hits every form alike
            for form in FORMS:
                results[form].append(measure(paths[form], Path(tmp) / "cache"))
    digests = {r["sha256"] for runs in results.values() for r in runs}
    assert len(digests) == 1, "every form must hold the plain file's text"
    mb = size / 1e6
    speed = {form: mb / median([r["seconds"] for r in runs]) for form, runs in results.items()}
    rows = [
        (form, f"{speed[form]:,.0f} MB/s", f"{speed[form] / speed['plain']:.2f}",
         f"{median([r['peak_mb'] for r in runs]):,.0f} MB",
         f"{median([r['all_mb'] for r in runs]):,.0f} MB")  # fmt: skip
        for form, runs in results.items()
    ]
    print(f"\n{mb:,.0f} MB of UTF-8 text ({results['plain'][0]['chars']:,} characters) in {args.shards} shards, "
          f"first encode, median of {args.rounds}, on {machine()}; the interpreter with trainer.data: "
          f"{baseline:,.0f} MB")  # fmt: skip
    print(table(rows, ("form", "text per second", "x plain", "peak anonymous memory", "with its workers")))
    print(json.dumps({"mb_s": speed, "x_plain": {form: speed[form] / speed["plain"] for form in FORMS}}))


def parquet_memory(gigabytes: float) -> None:
    """Peak memory while 2 GB (or so) of Parquet shards are read and encoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "block.txt"
        make_corpus(plain, 100)
        rows = rows_of(plain.read_text(encoding="utf-8"))
        folder = Path(tmp) / "parquet"
        folder.mkdir()
        shard, written = 0, 0
        while written < gigabytes * 1e9:  # shards of about 250 MB of text, pyarrow's default row groups
            pq.write_table(pa.table({"text": rows * 2}), folder / f"part-{shard:05d}.parquet")
            shard += 1
            written = sum(p.stat().st_size for p in folder.iterdir())
        baseline = run_json(["-c", BASELINE])["peak_mb"]
        result = measure(folder, Path(tmp) / "cache")
    print(f"\n{written / 1e9:.2f} GB of Parquet in {shard} shards ({result['chars']:,} characters) on {machine()}: "
          f"{written / 1e6 / result['seconds']:,.0f} MB/s of Parquet, peak anonymous memory "
          f"{result['peak_mb']:,.0f} MB, "
          f"with its encoding workers {result['all_mb']:,.0f} MB (the interpreter with trainer.data: "
          f"{baseline:,.0f} MB)")  # fmt: skip
    print(json.dumps({"parquet_gb": written / 1e9, "peak_mb": result["peak_mb"], "all_mb": result["all_mb"],
                      "seconds": result["seconds"]}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--parquet-gb", type=float, help="measure the peak memory of reading this much Parquet")
    args = parser.parse_args()
    if args.parquet_gb:
        parquet_memory(args.parquet_gb)
    else:
        side_by_side(args)


if __name__ == "__main__":
    main()
