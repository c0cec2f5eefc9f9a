"""The generator and the pick every sampler shares: serve/js/core.js does the same, step for step, so a seed
gives one text in every runtime."""

from __future__ import annotations

import numpy as np


def pick(
    logits: np.ndarray, top_k, temperature, top_p, draws: np.ndarray, allowed: np.ndarray | None = None
) -> np.ndarray:
    """One token per row of logits (N, V), given one uniform draw in [0, 1) per row: greedy (argmax, the
    lowest id among ties), or the inverse CDF of the temperature-scaled softmax over the candidates sorted
    by (logit desc, id asc), restricted to the top_k and then to the shortest prefix holding top_p of the
    mass, in float64. `allowed` (N, V) bool, a constraint's mask: the others take no part (every row allows
    at least one). serve/js/core.js does the same, step for step."""
    if allowed is not None:  # -inf sorts after every allowed character and weighs 0
        logits = np.where(allowed, logits, np.float32(-np.inf))
    if top_k == 1 or temperature == 0:
        return logits.argmax(axis=1)
    order = np.argsort(-logits, axis=1, kind="stable")  # (N, V): logit desc, id asc among ties
    if top_k is not None:
        order = order[:, :top_k]
    rows = np.arange(len(logits))[:, None]
    chosen = logits[rows, order].astype(np.float64)
    weights = np.exp((chosen - chosen[:, :1]) / temperature)  # (N, k) unnormalized, the first is 1
    cumulative = np.cumsum(weights, axis=1)  # left to right, as the JavaScript loop adds them
    count = np.full(len(logits), cumulative.shape[1])  # candidates kept per row
    if top_p is not None and top_p < 1:
        before = np.concatenate([np.zeros((len(logits), 1)), cumulative[:, :-1]], axis=1)  # mass before each
        count = (before < top_p * cumulative[:, -1:]).sum(axis=1)  # the shortest prefix reaching top_p
    if allowed is not None:
        count = np.minimum(count, allowed.sum(axis=1))
    total = cumulative[np.arange(len(logits)), count - 1]
    # the first candidate whose cumulative weight exceeds draw * total (those past the prefix are all above)
    index = np.minimum((cumulative <= (draws * total)[:, None]).sum(axis=1), count - 1)
    return order[np.arange(len(logits)), index]


MASK64 = (1 << 64) - 1


def uniform(seed: int, sample: int, position: int) -> float:
    """The draw of `sample` at `position` for `seed`: SplitMix64's finalizer of a key made of the three, as a
    float64 in [0, 1) (53 bits). Counter-based, so any runtime computes the same number from the same three
    integers (serve/js/core.js does)."""
    z = ((seed & MASK64) ^ (sample * 0x9E3779B97F4A7C15) ^ (position * 0xBF58476D1CE4E5B9)) & MASK64
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return (z >> 11) * 2.0**-53
