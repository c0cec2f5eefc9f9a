"""The facts a tick needs of each row of the service's batch, as arrays in the batch's order (RowArrays): the
token each row feeds next, its seed, sample index and draw position, its limit, and which rows are plain
enough to be picked and accepted as array work. They change only when rows join or leave, so a tick reads
them without a pass of Python over the rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from serve.http.completion import Choice
from serve.pick import MASK64


class RowArrays:
    """One entry per row of the batch, in its order. A row is `simple` when its pick reads the logits as they
    are and its accept only appends: no constraint, logit_bias, logprobs or stop sequence (the common case)."""

    def __init__(self) -> None:
        self.choices: list[Choice] = []  # (B,) the rows
        self.objects = np.empty(0, dtype=object)  # (B,) the same, for fancy indexing
        self.notifiers = np.empty(0, dtype=object)  # (B,) each row's request's Notifier
        self.tokens = np.zeros(0, dtype=np.int64)  # (B,) the id each row feeds at the next tick
        self.seeds = np.zeros(0, dtype=np.uint64)  # (B,) the request's seed, modulo 2^64 as `uniform` takes it
        self.samples = np.zeros(0, dtype=np.uint64)  # (B,) the choice's sample index
        self.counts = np.zeros(0, dtype=np.int64)  # (B,) characters picked: the position of the next draw
        self.limits = np.zeros(0, dtype=np.int64)  # (B,) max_tokens
        self.plain = np.zeros(0, dtype=bool)  # (B,) no constraint, no logit_bias
        self.simple = np.zeros(0, dtype=bool)  # (B,) plain, and no logprobs or stop sequences
        self.stream = np.zeros(0, dtype=bool)  # (B,) its handler streams each character
        self.picking = np.zeros(0, dtype=bool)  # (B,) past its prompt: it picks at each tick
        self.reading: list[int] = []  # rows still reading their prompt, a prompt id per tick (a few)
        self._groups: list[tuple[tuple, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.choices)

    def join(self, joining: Sequence[Choice]) -> None:
        """New rows at the end. Each has at least one prompt id left to feed (a kept state leaves the last)."""
        first = len(self.choices)
        self.choices = self.choices + list(joining)
        requests = [choice.completion.request for choice in joining]
        self.objects = _extend(self.objects, joining, object)
        self.notifiers = _extend(self.notifiers, [choice.completion.notifier for choice in joining], object)
        self.tokens = _extend(self.tokens, [int(choice.prompt_ids[choice.fed]) for choice in joining], np.int64)
        self.seeds = _extend(self.seeds, [choice.completion.seed & MASK64 for choice in joining], np.uint64)
        self.samples = _extend(self.samples, [choice.index for choice in joining], np.uint64)
        self.counts = _extend(self.counts, [len(choice.chars) for choice in joining], np.int64)
        self.limits = _extend(self.limits, [request.max_tokens for request in requests], np.int64)
        plain = [choice.completion.plain for choice in joining]
        self.plain = _extend(self.plain, plain, bool)
        simple = [p and r.logprobs is None and not r.stop for p, r in zip(plain, requests)]
        self.simple = _extend(self.simple, simple, bool)
        self.stream = _extend(self.stream, [request.stream for request in requests], bool)
        self.picking = _extend(self.picking, [False] * len(joining), bool)
        self.reading += range(first, len(self.choices))
        self._groups = None

    def keep(self, index: Sequence[int]) -> None:
        """Keep these rows, in this order (the others leave)."""
        take = np.asarray(index, dtype=np.int64)
        self.choices = [self.choices[i] for i in index]
        for name in ("objects", "notifiers", "tokens", "seeds", "samples", "counts", "limits", "plain", "simple"):
            setattr(self, name, getattr(self, name)[take])
        self.stream, self.picking = self.stream[take], self.picking[take]
        self.reading = np.flatnonzero(~self.picking).tolist()
        self._groups = None

    def groups(self) -> list[tuple[tuple, np.ndarray]]:
        """The rows by their pick options (top_k, temperature, top_p), each group in row order."""
        if self._groups is None:
            by_key: dict[tuple, list[int]] = defaultdict(list)
            for i, choice in enumerate(self.choices):
                by_key[choice.completion.pick_key].append(i)
            self._groups = [(key, np.asarray(rows, dtype=np.int64)) for key, rows in by_key.items()]
        return self._groups


def _extend(array: np.ndarray, values: list, dtype) -> np.ndarray:
    added = np.empty(len(values), dtype=dtype)
    added[:] = values
    return np.concatenate([array, added])
