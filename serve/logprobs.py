"""The model's log-probabilities, in float64: one log-softmax for the scorer, inspection, the service's logprobs
and beam search. The sum of the exponentials is taken left to right, as serve/js/beam.js adds them, so a beam's
score is the same number in both runtimes."""

from __future__ import annotations

import numpy as np


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """(N, V) -> (N,) float64: log(sum(exp(logits))) of each row, shifted by its maximum so that nothing
    overflows."""
    x = logits.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).cumsum(axis=1)[:, -1:]))[:, 0]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(N, V) float32 -> (N, V) float64, each row's log-probabilities."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).cumsum(axis=1)[:, -1:])
    return x
