"""The pick against the math, not only Python against JavaScript: for fixed logits (tests/data/sampling_cases.json:
a peaked case, a near-uniform one, exact ties), many picks made with the documented generator follow
softmax(logits / temperature) cut to the top k, then to the top-p nucleus, renormalized; in Python
(serve/sampler.py) and in JavaScript (serve/js/core.js, which the web page runs too). The seed's own sampler
(bench/seed_charrnn.py: softmax, top k, renormalize, weighted choice) is a second reference for top-k.

The statistical bound: a chi-square test over the characters the distribution can pick, at a false-alarm rate
of 1e-6 (Wilson-Hilferty's quantile), and exactly zero picks of every other character. The draws are
counter-based, so the counts are fixed numbers: the bound says how far from the math they may be. A wrong
temperature, k or p moves the peaked case's chi-square into the thousands (planted: tests/MUTATIONS.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import DATA, ROOT

from serve.sampler import Sampler, uniform

CASES = json.loads((DATA / "sampling_cases.json").read_text(encoding="utf-8"))
JS = ROOT / "serve" / "js"


def expected(logits: list[float], top_k, temperature: float, top_p) -> np.ndarray:
    """The distribution the options mean, from the math alone: greedy (all on the first largest logit) for
    top_k=1 or temperature 0; else softmax(logits / T) over the candidates sorted by (logit desc, id asc), cut
    to the first top_k, renormalized, cut to the nucleus (the candidates whose preceding mass is below top_p),
    renormalized."""
    dist = np.zeros(len(logits))
    if top_k == 1 or temperature == 0:
        dist[max(range(len(logits)), key=lambda i: (logits[i], -i))] = 1.0
        return dist
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))[: top_k or len(logits)]
    weights = np.array([math.exp(logits[i] / temperature) for i in order])
    probs = weights / weights.sum()
    if top_p is not None:
        before = np.concatenate([[0.0], np.cumsum(probs)[:-1]])
        probs = np.where(before < top_p, probs, 0.0)
        probs /= probs.sum()
    dist[order] = probs
    return dist


def chi_square_bound(df: int, z: float = 4.753) -> float:
    """The chi-square quantile with `df` degrees of freedom at the normal quantile z (4.753: a false-alarm
    rate of 1e-6), by Wilson and Hilferty's approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def assert_follows(counts: np.ndarray, dist: np.ndarray, label: str) -> None:
    draws = counts.sum()
    assert (counts[dist == 0] == 0).all(), f"{label}: picked a character the options exclude: {counts}"
    support = dist > 0
    if support.sum() == 1:
        assert counts[support][0] == draws, label
        return
    exp = draws * dist[support]
    chi2 = float(((counts[support] - exp) ** 2 / exp).sum())
    bound = chi_square_bound(int(support.sum()) - 1)
    assert chi2 <= bound, f"{label}: chi-square {chi2:.1f} > {bound:.1f}; counts {counts}, expected {exp.round()}"


def python_counts(logits: list[float], options: dict, draws: int, seed: int) -> np.ndarray:
    """Picks of serve/sampler.py with the documented draws uniform(seed, 0, t), t = 0 .. draws-1."""
    row = np.array(logits, dtype=np.float32)
    u = np.array([uniform(seed, 0, t) for t in range(draws)])
    picked = Sampler.pick(np.tile(row, (draws, 1)), options["top_k"], options["temperature"], options["top_p"], u)
    return np.bincount(picked, minlength=len(logits))


def labels():
    return [(name, i) for name in CASES["logits"] for i in range(len(CASES["options"]))]


def describe(name: str, i: int) -> str:
    o = CASES["options"][i]
    return f"{name}: top_k={o['top_k']} temperature={o['temperature']} top_p={o['top_p']}"


@pytest.mark.parametrize("name, i", labels(), ids=[f"{n}-{i}" for n, i in labels()])
def test_python_picks_follow_the_math(name, i):
    logits, options = CASES["logits"][name], CASES["options"][i]
    counts = python_counts(logits, options, CASES["draws"], CASES["seed"])
    assert_follows(counts, expected(logits, **options), describe(name, i))


def test_the_cases_tell_the_options_apart():
    """The cases are strong enough: each option changed (temperature x2, k+1, p moved) moves the peaked case's
    distribution so far that the bound rejects the counts of the unchanged options by a wide margin."""
    logits, draws = CASES["logits"]["peaked"], CASES["draws"]
    for options, wrong in [
        ({"top_k": None, "temperature": 0.5, "top_p": None}, {"temperature": 1.0}),
        ({"top_k": 3, "temperature": 1.0, "top_p": None}, {"top_k": 4}),
        ({"top_k": None, "temperature": 1.0, "top_p": 0.9}, {"top_p": 0.97}),
    ]:
        counts = python_counts(logits, options, draws, CASES["seed"])
        dist = expected(logits, **(options | wrong))
        support = dist > 0
        exp = draws * dist[support]
        chi2 = float(((counts[support] - exp) ** 2 / exp).sum())
        excluded = counts[dist == 0].sum()
        assert chi2 > 10 * chi_square_bound(int(support.sum()) - 1) or excluded > 0, (options, wrong)


def test_javascript_picks_follow_the_math_and_equal_python():
    """serve/js/core.js (Node.js and the page) on the same cases, with its own generator: the same counts as
    Python's, pick for pick, and so the same distributions."""
    if shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node is required in CI")
        pytest.skip("node not installed")
    script = """
import { pick, uniform } from './core.js';
import { readFileSync } from 'node:fs';
const cases = JSON.parse(readFileSync(process.argv[1], 'utf8'));
const out = {};
for (const [name, logits] of Object.entries(cases.logits)) {
  const row = Float32Array.from(logits);
  out[name] = cases.options.map((o) => {
    const counts = new Array(logits.length).fill(0);
    for (let t = 0; t < cases.draws; t++) {
      counts[pick(row, o.top_k, o.temperature, o.top_p, uniform(cases.seed, 0, t))]++;
    }
    return counts;
  });
}
process.stdout.write(JSON.stringify(out));
"""
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script, str(DATA / "sampling_cases.json")],
        cwd=JS, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    js = json.loads(result.stdout)
    for name, i in labels():
        logits, options = CASES["logits"][name], CASES["options"][i]
        counts = np.array(js[name][i])
        assert_follows(counts, expected(logits, **options), "JavaScript " + describe(name, i))
        np.testing.assert_array_equal(counts, python_counts(logits, options, CASES["draws"], CASES["seed"]))


@pytest.mark.parametrize("name", list(CASES["logits"]))
@pytest.mark.parametrize("top_k", [3, 5])
def test_the_seeds_sampler_gives_the_same_distribution(name, top_k):
    """The seed's own top-k sampler (softmax, top k, renormalize, weighted choice) follows the same distribution
    as ours: the math both implement."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from seed_charrnn import pick_top_k

    logits = CASES["logits"][name]
    rng = np.random.default_rng(CASES["seed"])
    row = torch.tensor([logits])
    counts = np.bincount([pick_top_k(row, top_k, rng) for _ in range(CASES["draws"])], minlength=len(logits))
    dist = expected(logits, top_k, 1.0, None)
    assert_follows(counts, dist, f"the seed's sampler, {name}, top_k={top_k}")
    ours = python_counts(logits, {"top_k": top_k, "temperature": 1.0, "top_p": None}, CASES["draws"], CASES["seed"])
    assert_follows(ours, dist, f"ours, {name}, top_k={top_k}")
