"""Constrained generation's cost, side by side on the 2 x 512 model shape: chars/s of constrained sampling against
the same sampling without a constraint (Python at batch 1 and 64 samples, Node.js at batch 1), beam search with
8 beams against the batch-1 sampler (characters of the best beam per second), and the time to compile a
100-character pattern over a 100-character vocabulary (Python and JavaScript).

The constraint is a play's form (speaker lines, then verse lines, then a blank line, repeated), with an end
character the vocabulary lacks, so every text runs to the length limit as the unconstrained ones do. Each
contender runs in a fresh process, in alternating rounds; medians over rounds are reported.

    python bench/constrained_speed.py [--rounds 3] [--chars 2000]   (64 samples: a quarter of the characters)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from common import ROOT, machine, median, run_json, table
from sample_speed import make_models

PLAY = r"(?:[A-Z][A-Za-z ]*:\n(?:[A-Z][^\n]*\n)+\n)+"
END = "\x01"  # not in the vocabulary: a text ends only at the length limit
# 100 characters, over a vocabulary of 100 (printable ASCII, a newline and four more letters)
LONG = r"[A-Z][a-z]+: (?:[A-Za-z ,.;'!?]{1,20}\n?){1,3}(?:Thou|Thee|Lords)[.!?]\d{2,4}-[a-f0-9]{8}(?i:x){3,9}"
VOCAB = [chr(c) for c in range(32, 127)] + ["\n", "é", "ñ", "¿", "ü"]


def python(model: Path, chars: int, samples: int, regex: str | None, beam: int | None = None) -> float:
    options = f"beam_width={beam}" if beam else f"top_k=5, seed=0, num_samples={samples}"
    if regex is not None:
        options += f", regex={regex!r}, end={END!r}"
    code = f"""
import json, time
from serve import Sampler
sampler = Sampler({str(model)!r}, device='cpu')
sampler.generate('The', 50, {options})
start = time.perf_counter()
texts = sampler.generate('The', {chars}, {options})
count = sum(map(len, texts)) if isinstance(texts, list) else len(texts)
print(json.dumps({{'chars_per_s': count / (time.perf_counter() - start)}}))
"""
    return run_json(["-c", code])["chars_per_s"]


NODE = """
import { loadSampler } from './serve/js/node.js';
const [model, chars, regex, end] = process.argv.slice(1);
const sampler = await loadSampler(model);
const options = { topK: 5, seed: 0, ...(regex ? { regex, end } : {}) };
await sampler.generate('The', 50, options);
const start = performance.now();
const text = await sampler.generate('The', Number(chars), options);
console.log(JSON.stringify({ chars_per_s: Array.from(text).length / ((performance.now() - start) / 1000) }));
"""


def node(model: Path, chars: int, regex: str | None) -> float:
    args = ["node", "--input-type=module", "-e", NODE, str(model), str(chars), regex or "", END]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"node benchmark failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["chars_per_s"]


def compile_ms() -> dict[str, float]:
    """Median milliseconds of 20 compilations of LONG over VOCAB, and of building its every reachable state."""
    code = f"""
import json, time
from serve.constrain import compile_constraint
vocab, times, full = {VOCAB!r}, [], []
for _ in range(20):
    start = time.perf_counter()
    automaton = compile_constraint(vocab, regex={LONG!r})
    automaton.allowed(automaton.start)
    times.append(time.perf_counter() - start)
    todo, seen = [automaton.start], {{automaton.start}}
    while todo:
        state = todo.pop()
        for token in automaton.allowed(state).nonzero()[0]:
            if vocab[token] != '\\n':
                nxt = automaton.advance(state, int(token))
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    full.append(time.perf_counter() - start)
times.sort(); full.sort()
print(json.dumps({{'python': times[10] * 1000, 'python, every state': full[10] * 1000, 'states': len(seen)}}))
"""
    measured = run_json(["-c", code])
    js = f"""
import {{ compileConstraint }} from './serve/js/automaton.js';
const times = [];
for (let i = 0; i < 20; i++) {{
  const start = performance.now();
  const automaton = compileConstraint({json.dumps(VOCAB)}, {{ regex: {json.dumps(LONG)} }});
  automaton.allowed(automaton.start);
  times.push(performance.now() - start);
}}
times.sort((a, b) => a - b);
console.log(JSON.stringify({{ javascript: times[10] }}));
"""
    result = subprocess.run(["node", "--input-type=module", "-e", js], cwd=ROOT, capture_output=True, text=True)
    measured.update(json.loads(result.stdout.strip().splitlines()[-1]))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=2000)
    args = parser.parse_args()
    assert len(LONG) == 100 and len(VOCAB) == 100
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        model, _ = make_models(Path(tmp))
        pairs = {  # name -> (the contender, what it is compared with)
            "Python, batch 1": (lambda: python(model, args.chars, 1, PLAY), lambda: python(model, args.chars, 1, None)),
            "Python, 64 samples": (
                lambda: python(model, args.chars // 4, 64, PLAY),
                lambda: python(model, args.chars // 4, 64, None),
            ),
            "Node.js, batch 1": (lambda: node(model, args.chars, PLAY), lambda: node(model, args.chars, None)),
            "Python, beam search W=8 (best beam) vs the batch-1 sampler": (
                lambda: python(model, args.chars, 1, None, beam=8),
                lambda: python(model, args.chars, 1, None),
            ),
        }
        speeds = {name: ([], []) for name in pairs}
        for round_ in range(args.rounds):
            for name, (contender, base) in pairs.items():
                speeds[name][0].append(contender())
                speeds[name][1].append(base())
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    rows = [
        (name, f"{median(a):,.0f}", f"{median(b):,.0f}", f"{median(a) / median(b):.0%}")
        for name, (a, b) in speeds.items()
    ]
    print(f"\nConstrained generation, 2x512 fp32, top-k 5, on {machine()}")
    print(table(rows, ("contender", "chars/s", "without (chars/s)", "ratio")))
    times = compile_ms()
    print(f"\nCompiling a 100-character pattern over a 100-character vocabulary (median of 20): {json.dumps(times)}")
    print(json.dumps({name: [median(a), median(b)] for name, (a, b) in speeds.items()}))


if __name__ == "__main__":
    main()
