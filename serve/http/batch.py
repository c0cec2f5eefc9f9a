"""The rows that step together: their LSTM state, kept compact so a tick steps only the active rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serve.sampler import Sampler


class Batch:
    """The (h, c) of every active row, in row order, and one batched step for all of them. Rows join with the
    zero state (as Sampler starts) and leave between ticks; nothing is padded."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.h = np.zeros((sampler.layers, 0, sampler.hidden), dtype=np.float32)  # (L, B, H)
        self.c = np.zeros_like(self.h)  # (L, B, H)

    def __len__(self) -> int:
        return self.h.shape[1]

    def join(self, count: int) -> None:
        """`count` new rows at the end, from the zero state."""
        zeros = np.zeros((self.h.shape[0], count, self.h.shape[2]), dtype=np.float32)
        self.h = np.concatenate([self.h, zeros], axis=1)
        self.c = np.concatenate([self.c, zeros], axis=1)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep these rows, in this order (the others leave)."""
        index = np.asarray(rows, dtype=np.int64)
        self.h = np.ascontiguousarray(self.h[:, index])
        self.c = np.ascontiguousarray(self.c[:, index])

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row (B,) and advance every row; the logits (B, V) for each row's next character."""
        logits, self.h, self.c = self.sampler.step(tokens, self.h, self.c)
        return logits
