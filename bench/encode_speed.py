"""Corpus preparation speed and peak memory on a 100 MB UTF-8 text (Tiny Shakespeare repeated, with
accents, ñ, ¿, ¡, dashes and emoji mixed in), from the file to the memory-mapped ids, in a fresh process.

    python bench/encode_speed.py [--mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from common import corpus, machine, median, run_json, table


def make_corpus(path: Path, megabytes: int) -> int:
    text = corpus().read_text(encoding="utf-8")
    accented = text.replace("e ", "é ").replace("n,", "ñ,").replace("?\n", "?¿\n").replace("!\n", "¡!\n")
    accented = accented.replace("--", "—").replace(":\n", ": 🙂\n")
    block = (text + accented).encode("utf-8")
    size = int(megabytes * 1_000_000)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        rest = block[: size % len(block)]
        f.write(rest[: rest.rfind(b"\n") + 1])  # whole lines: never a cut UTF-8 sequence
    return path.stat().st_size


def measure(path: Path, cache: Path) -> dict:
    code = f"""
import json, resource, time
from trainer.data import load_corpus
start = time.perf_counter()
corpus = load_corpus({str(path)!r})
seconds = time.perf_counter() - start
print(json.dumps({{'seconds': seconds, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'chars': len(corpus.ids), 'vocab': len(corpus.vocab), 'dtype': str(corpus.ids.dtype)}}))
"""
    return run_json(["-c", code], env={"CHARLSTM_CACHE_DIR": str(cache)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        size = make_corpus(path, args.mb)
        baseline = run_json(
            [
                "-c",
                "import json, resource, trainer.data; print(json.dumps({'peak_mb': "
                "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))",
            ]
        )["peak_mb"]
        cold, warm = [], []
        for _ in range(args.rounds):
            shutil.rmtree(Path(tmp) / "cache", ignore_errors=True)  # a first run each round
            cold.append(measure(path, Path(tmp) / "cache"))  # encode and write the cache
            warm.append(measure(path, Path(tmp) / "cache"))  # hash, then memory-map the cache
    mb = size / 1e6
    rows = [
        (
            "encode (first run)",
            f"{mb / median([r['seconds'] for r in cold]):,.0f} MB/s",
            f"{median([r['peak_mb'] for r in cold]) - baseline:,.0f} MB",
        ),
        (
            "cached (later runs)",
            f"{mb / median([r['seconds'] for r in warm]):,.0f} MB/s",
            f"{median([r['peak_mb'] for r in warm]) - baseline:,.0f} MB",
        ),
    ]
    print(
        f"\n{mb:,.0f} MB UTF-8 corpus, {cold[0]['chars']:,} characters, vocab {cold[0]['vocab']} "
        f"({cold[0]['dtype']} ids), on {machine()}"
    )
    print(table(rows, ("", "speed (median)", "peak memory above the interpreter")))
    print(
        json.dumps(
            {
                "encode_mb_s": mb / median([r["seconds"] for r in cold]),
                "peak_mb": median([r["peak_mb"] for r in cold]) - baseline,
            }
        )
    )


if __name__ == "__main__":
    main()
