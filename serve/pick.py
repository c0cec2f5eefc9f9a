"""The generator and the pick every sampler shares: serve/js/core.js does the same, step for step, so a seed
gives one text in every runtime."""

from __future__ import annotations

from collections.abc import Sequence

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


GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
SHIFTS = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def uniforms(seeds: np.ndarray, samples: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`uniform` for many rows at once: seeds, samples, positions (N,) integer arrays -> (N,) float64, bitwise
    the numbers `uniform` gives, in numpy's uint64 arithmetic (array operations wrap modulo 2^64, as the masks
    of `uniform` do, and do not warn). Seeds are taken modulo 2^64, as `uniform` masks them."""
    z = _as_uint64(samples) * GOLDEN
    z ^= _as_uint64(seeds)
    z ^= _as_uint64(positions) * MIX1
    z += GOLDEN
    z ^= z >> SHIFTS[0]
    z *= MIX1
    z ^= z >> SHIFTS[1]
    z *= MIX2
    z ^= z >> SHIFTS[2]
    return (z >> SHIFTS[3]).astype(np.float64) * 2.0**-53


def _as_uint64(values: np.ndarray) -> np.ndarray:
    """Non-negative integers (Python ints of up to 64 bits, or any numpy integers) as uint64, modulo 2^64."""
    array = np.asarray(values)
    if array.dtype == object:
        return np.array([int(v) & MASK64 for v in array.tolist()], dtype=np.uint64)
    return array.astype(np.uint64)  # a copy: the caller's array is never written


VECTOR_DRAWS = 16  # from this many rows on, one pass of `uniforms` costs less than a call of `uniform` per row


def draws(seeds: Sequence[int], samples: Sequence[int], positions: Sequence[int]) -> np.ndarray:
    """(N,) float64: `uniform(seeds[i], samples[i], positions[i])` for each row, the same numbers whichever way
    they are computed (a call per row for a few rows, `uniforms` for many)."""
    if len(seeds) < VECTOR_DRAWS:
        return np.array([uniform(s, i, p) for s, i, p in zip(seeds, samples, positions)])
    seed_array = np.array([s & MASK64 for s in seeds], dtype=np.uint64)
    return uniforms(seed_array, np.asarray(samples), np.asarray(positions))
