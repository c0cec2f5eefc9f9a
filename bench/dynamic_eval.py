"""Dynamic evaluation of a checkpoint on its validation split: the search that chose trainer/dynamic.py's
defaults, and the gain and cost of those defaults on the whole split.

    python bench/dynamic_eval.py CKPT --search [--search-chars 10000]   # grids of lr x decay, each rule
    python bench/dynamic_eval.py CKPT [--max-chars N]                    # static against dynamic, and cost

The search reads the split's first --search-chars characters (the paper's "gridfast"); the whole split then
checks the chosen settings on text the search did not see. Cost: characters per second of each, side by side
in one run (the same process, the same text).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, table

from export.onnx import model_from_checkpoint
from trainer.checkpoint import load_checkpoint
from trainer.data import load_corpus, split
from trainer.dynamic import DynamicOptions, score_dynamic, score_static
from trainer.gradient_stats import gradient_rms_for

GRIDS = {
    "rms": {"lr": [5e-5, 1e-4, 2e-4, 4e-4, 8e-4], "decay": [0.0, 1e-3, 3e-3, 1e-2]},
    "sgd": {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "decay": [0.0, 1e-3, 1e-2]},
}
SEGMENTS = [5, 20, 50]  # with the rms rule's best lr and decay at 5, scaled by segment / 5 as in the paper


def validation_ids(ckpt: dict) -> torch.Tensor:
    data = ckpt["config"]["data"]
    corpus = load_corpus(str(data["path"]), data.get("cache_dir"), ckpt.get("normalize", "NFC"), notes=False)
    assert list(corpus.vocab) == list(ckpt["vocab"]), "the checkpoint's corpus must be the one it names"
    _, val = split(corpus.ids, float(data.get("val_fraction", 0.1)))
    return torch.from_numpy(np.asarray(val, dtype=np.int64))


def bpc(model, ckpt, path, ids, options: DynamicOptions | None) -> tuple[float, float]:
    """(bits per character, seconds) of `ids` static (None) or dynamic; the weights are restored after."""
    start = time.perf_counter()
    if options is None:
        scored = score_static(model, ids)
    else:
        rms = gradient_rms_for(model, ckpt, path, options.segment, None) if options.rule == "rms" else None
        start = time.perf_counter()  # the statistics are computed once per checkpoint, not per text
        scored = score_dynamic(model, ids, options, rms)
        model.load_state_dict(ckpt["model"])
    return scored.mean / math.log(2), time.perf_counter() - start


def search(model, ckpt, path, ids, grids: dict, segments: list[int]) -> dict:
    static, _ = bpc(model, ckpt, path, ids, None)
    print(f"static: {static:.4f} bpc on the first {len(ids) - 1:,} characters of the validation split")
    best = {}
    for rule, grid in grids.items():
        rows, results = [], {}
        for lr, decay in itertools.product(grid["lr"], grid["decay"]):
            results[lr, decay], _ = bpc(model, ckpt, path, ids, DynamicOptions(rule, 5, lr, decay))
            print(f"  {rule} lr {lr:g} decay {decay:g}: {results[lr, decay]:.4f}", flush=True)
        for lr in grid["lr"]:
            rows.append((f"{lr:g}", *(f"{results[lr, d]:.4f}" for d in grid["decay"])))
        print(f"\n{rule}, segment 5 (bpc; static {static:.4f}):")
        print(table(rows, ("lr \\ decay", *(f"{d:g}" for d in grid["decay"]))))
        best[rule] = min(results, key=results.get)
    if "rms" not in best or not segments:
        return {rule: {"lr": lr, "decay": decay} for rule, (lr, decay) in best.items()}
    lr, decay = best["rms"]
    rows = []
    for segment in segments:
        scale = segment / 5
        value, _ = bpc(model, ckpt, path, ids, DynamicOptions("rms", segment, lr * scale, decay * scale))
        rows.append((segment, f"{lr * scale:g}", f"{decay * scale:g}", f"{value:.4f}"))
    print("\nrms, its best lr and decay scaled with the segment:")
    print(table(rows, ("segment", "lr", "decay", "bpc")))
    return {rule: {"lr": lr, "decay": decay} for rule, (lr, decay) in best.items()}


def compare(model, ckpt, path, ids) -> None:
    static, static_s = bpc(model, ckpt, path, ids, None)
    rows = [("static", f"{static:.4f}", "", f"{(len(ids) - 1) / static_s:,.0f}")]
    for rule in ("rms", "sgd"):
        value, seconds = bpc(model, ckpt, path, ids, DynamicOptions(rule))
        rows.append(
            (
                f"dynamic, {rule} (defaults)",
                f"{value:.4f}",
                f"{100 * (value / static - 1):+.1f}%",
                f"{(len(ids) - 1) / seconds:,.0f}",
            )
        )
    print(
        f"\n{path} on {len(ids) - 1:,} characters of its validation split, on {machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    print(table(rows, ("scoring", "bpc", "against static", "chars/s")))
    print(json.dumps({row[0]: float(row[1]) for row in rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--search", action="store_true", help="the grids of lr x decay for each rule")
    parser.add_argument("--search-chars", type=int, default=10_000)
    parser.add_argument("--rules", nargs="+", choices=sorted(GRIDS), default=sorted(GRIDS), help="rules to search")
    parser.add_argument("--lr-grid", nargs="+", type=float, help="with one rule: these lr instead of its grid")
    parser.add_argument("--decay-grid", nargs="+", type=float, help="with one rule: these decays instead")
    parser.add_argument("--segments", nargs="*", type=int, default=SEGMENTS, help="rms at other segments")
    parser.add_argument("--max-chars", type=int, default=None, help="without --search: the split's first N")
    args = parser.parse_args()
    grids = {rule: dict(GRIDS[rule]) for rule in args.rules}
    if (args.lr_grid or args.decay_grid) and len(grids) != 1:
        parser.error("--lr-grid and --decay-grid need exactly one rule in --rules")
    for rule in grids:
        grids[rule]["lr"] = args.lr_grid or grids[rule]["lr"]
        grids[rule]["decay"] = args.decay_grid or grids[rule]["decay"]
    path = Path(args.checkpoint)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    ids = validation_ids(ckpt)
    if args.search:
        print(json.dumps(search(model, ckpt, path, ids[: args.search_chars + 1], grids, args.segments)))
    else:
        compare(model, ckpt, path, ids if args.max_chars is None else ids[: args.max_chars + 1])


if __name__ == "__main__":
    main()
