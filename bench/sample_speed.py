"""Sampling chars/s: our sampler in Python (onnxruntime), Node.js (onnxruntime-node) and headless Chromium
(onnxruntime-web, WASM, one thread), fp32 and int8, batch 1 and 16 samples, against the seed's sampler (the
PyTorch model, one forward per character), side by side on the same 2 x 512 model shape, top-k 5.

Each contender runs in a fresh process (a fresh server and browser for the page), in alternating rounds;
medians over rounds are reported. The browser rows need Debian's chromium and Playwright (./setup.sh --dev).

    python bench/sample_speed.py [--rounds 3] [--chars 2000] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from common import ROOT, corpus, median, report, run_json

SHAPES = {"2x512": (64, 512), "2x256": (16, 256), "2x128": (16, 128)}  # name -> (embedding, hidden), 2 layers


def make_models(folder: Path, shape: str = "2x512") -> tuple[Path, Path]:
    """A model of this shape (2 x 512 with an embedding of 64 by default; Tiny Shakespeare's vocabulary)
    exported in fp32 and int8. The weights are the seeded initialization: speed does not depend on them."""
    embed, hidden = SHAPES[shape]
    code = f"""
import torch
from trainer.checkpoint import FORMAT, save_checkpoint
from trainer.config import Config
from trainer.model import build_model
cfg = Config()
cfg.model.embed, cfg.model.hidden, cfg.model.layers = {embed}, {hidden}, 2
vocab = sorted(set(open({str(corpus())!r}, encoding='utf-8').read()))
torch.manual_seed(0)
model = build_model(len(vocab), cfg.model)
save_checkpoint({str(folder / "model.pt")!r}, dict(format=FORMAT, model=model.state_dict(), vocab=vocab,
                config=cfg.to_dict(), step=0, val_loss=None))
print('{{}}')
"""
    run_json(["-c", code])
    for extra in ([], ["--int8", "--eval-text", str(corpus())]):
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


NODE_SPEED = """
import { loadSampler } from './serve/js/node.js';
const [model, chars, samples, threads] = process.argv.slice(1).map((arg, i) => (i ? Number(arg) : arg));
const sampler = await loadSampler(model, { threads: threads || null });
await sampler.generate('The', 50, { topK: 5, seed: 0, numSamples: samples });
const start = performance.now();
await sampler.generate('The', chars, { topK: 5, seed: 0, numSamples: samples });
console.log(JSON.stringify({ chars_per_s: chars * samples / ((performance.now() - start) / 1000) }));
"""


def node(model: Path, chars: int, samples: int, threads: int | None = None) -> float:
    result = subprocess.run(
        ["node", "--input-type=module", "-e", NODE_SPEED, str(model), str(chars), str(samples), str(threads or 0)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"node benchmark failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["chars_per_s"]


def browser(model: Path, chars: int, samples: int) -> float:
    from tests.headless import browser_chars_per_s

    return browser_chars_per_s(model, chars, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument(
        "--threads", type=int, default=None, help="Python onnxruntime intra-op threads (default: its own)"
    )
    parser.add_argument("--no-browser", action="store_true", help="leave out the headless Chromium rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        fp32, int8 = make_models(Path(tmp))
        contenders = {
            "seed (PyTorch, 1 forward/char)": lambda: run_json(
                ["bench/seed_charrnn.py", "sample", str(args.chars), str(corpus())]
            )["chars_per_s"]
        }
        runtimes = {"Python": lambda m, c, n: ours(m, c, n, args.threads), "Node.js": node}
        if not args.no_browser:
            # the page runs on one thread: Node on one thread tells the threads apart from WASM's kernels
            runtimes["Node.js (1 thread)"] = lambda m, c, n: node(m, c, n, threads=1)
            runtimes["Chromium (WASM, 1 thread)"] = browser
        for runtime, measure in runtimes.items():
            for samples in (1, 16):
                for label, model in (("fp32", fp32), ("int8", int8)):
                    chars = args.chars if samples == 1 else args.chars // 4
                    name = f"{runtime} {label}, {'batch 1' if samples == 1 else f'{samples} samples'}"
                    contenders[name] = lambda m=model, c=chars, n=samples, f=measure: f(m, c, n)
        for label, model in (("fp32", fp32), ("int8", int8)):  # the batched goal's row: 64 samples
            contenders[f"Python {label}, 64 samples"] = lambda m=model: ours(m, args.chars // 4, 64, args.threads)
        speeds: dict[str, list[float]] = {name: [] for name in contenders}
        for round_ in range(args.rounds):
            for name, measure in contenders.items():
                speeds[name].append(measure())
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{median(v):,.0f}" for v in speeds.values()))
    report("Sampling chars/s (all samples together), 2x512, top-k 5", speeds, "seed (PyTorch, 1 forward/char)")


if __name__ == "__main__":
    main()
