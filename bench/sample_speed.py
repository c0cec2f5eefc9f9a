"""Sampling chars/s: our onnxruntime sampler (fp32 and int8; 1 and 64 samples) against the seed's sampler
(the PyTorch model, one forward per character, top-k 5), side by side on the same 2 x 512 model shape.

Each contender runs in a fresh process, in alternating rounds; medians over rounds are reported.

    python bench/sample_speed.py [--rounds 3] [--chars 2000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import CORPUS, ROOT, median, report, run_json


def make_models(folder: Path) -> tuple[Path, Path]:
    """A 2 x 512 model (embedding 64, Tiny Shakespeare's vocabulary) exported in fp32 and int8. The weights
    are the seeded initialization: speed does not depend on them."""
    code = f"""
import torch
from trainer.checkpoint import FORMAT, save_checkpoint
from trainer.config import Config
from trainer.model import build_model
cfg = Config()
cfg.model.embed, cfg.model.hidden, cfg.model.layers = 64, 512, 2
vocab = sorted(set(open({str(CORPUS)!r}, encoding='utf-8').read()))
torch.manual_seed(0)
model = build_model(len(vocab), cfg.model)
save_checkpoint({str(folder / "model.pt")!r}, dict(format=FORMAT, model=model.state_dict(), vocab=vocab,
                config=cfg.to_dict(), step=0, val_loss=None))
print('{{}}')
"""
    run_json(["-c", code])
    for extra in ([], ["--int8", "--eval-text", str(CORPUS)]):
        run_json(
            [
                "-c",
                f"import export.onnx as e; assert e.main({[str(folder / 'model.pt'), *extra]!r}) == 0; print('{{}}')",
            ]
        )
    return folder / "model.onnx", folder / "model.int8.onnx"


def ours(model: Path, chars: int, samples: int, threads: int | None) -> float:
    code = f"""
import json, time
from serve import Sampler
sampler = Sampler({str(model)!r}, device='cpu', threads={threads!r})
sampler.generate('The', 50, top_k=5, seed=0, num_samples={samples})
start = time.perf_counter()
sampler.generate('The', {chars}, top_k=5, seed=0, num_samples={samples})
print(json.dumps({{'chars_per_s': {chars} * {samples} / (time.perf_counter() - start)}}))
"""
    return run_json(["-c", code])["chars_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        fp32, int8 = make_models(Path(tmp))
        contenders = {
            "seed (PyTorch, 1 forward/char)": lambda: run_json(
                ["bench/seed_charrnn.py", "sample", str(args.chars), str(CORPUS)]
            )["chars_per_s"],
            "charlstm fp32, batch 1": lambda: ours(fp32, args.chars, 1, args.threads),
            "charlstm int8, batch 1": lambda: ours(int8, args.chars, 1, args.threads),
            "charlstm fp32, 64 samples": lambda: ours(fp32, args.chars // 4, 64, args.threads),
            "charlstm int8, 64 samples": lambda: ours(int8, args.chars // 4, 64, args.threads),
        }
        speeds: dict[str, list[float]] = {name: [] for name in contenders}
        for round_ in range(args.rounds):
            for name, measure in contenders.items():
                speeds[name].append(measure())
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{median(v):,.0f}" for v in speeds.values()))
    report("Sampling chars/s (all samples together), 2x512, top-k 5", speeds, "seed (PyTorch, 1 forward/char)")


if __name__ == "__main__":
    main()
