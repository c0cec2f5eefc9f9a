"""Beam search: the `width` best continuations of a prime by the sum of their characters' log-probabilities
(the model's softmax of its logits after logit_bias, untempered, in float64), stepped as one batch.

At each position every live beam offers each character it may take (all of them, or a constraint's mask);
the `width` best offers are kept, ordered by (score desc, token ids asc: the smaller sequence first). An
offer of the end character finishes its beam, which keeps its score (the end's log-probability included);
a beam that cannot go on finishes as it is; at `length` the live beams finish. The search stops early once
`count` finished beams score above every live one (a score can only fall). serve/js/beam.js does the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serve.constrain import Automaton
from serve.logprobs import log_softmax


@dataclass(frozen=True)
class Finished:
    ids: tuple[int, ...]  # the generated ids, without the end character
    score: float  # the sum of their log-probabilities (and the end's, when it ended the text)
    finish: str  # "stop": ended by the end character or where nothing could follow; "length": at the limit


def rank(finished: list[Finished]) -> list[Finished]:
    return sorted(finished, key=lambda beam: (-beam.score, beam.ids))


def best_offers(offers: np.ndarray, width: int) -> np.ndarray:
    """The flat indices (beam * V + token) of the `width` best finite offers of (B, V), in index order, which is
    the order of the new beams' ids; ties at the cut go to the smaller index. A partition finds the cut in
    linear time, where sorting every offer would cost more than the rest of a position."""
    flat = offers.ravel()
    if len(flat) <= width:
        return np.flatnonzero(np.isfinite(flat))
    cut = np.partition(flat, len(flat) - width)[len(flat) - width]  # the width-th best offer
    if cut == -np.inf:  # fewer finite offers than beams: all of them
        return np.flatnonzero(flat > cut)
    kept = flat > cut  # fewer than `width`; the offers equal to the cut fill up, the smaller indices first
    kept[np.flatnonzero(flat == cut)[: width - np.count_nonzero(kept)]] = True
    return np.flatnonzero(kept)


class Paths:
    """The kept beams of every position as pointers (which beam each continued, which token it took), so a
    step costs the same at any depth; a beam's ids are read back only when it finishes."""

    def __init__(self):
        self.steps: list[tuple[list[int], list[int]]] = []  # per position: (parents, tokens) of the kept beams

    def add(self, parents: np.ndarray, tokens: np.ndarray) -> None:
        self.steps.append((parents.tolist(), tokens.tolist()))

    def ids(self, beam: int) -> tuple[int, ...]:
        """The ids of live beam `beam` of the last position, first to last."""
        out = []
        for parents, tokens in reversed(self.steps):
            out.append(tokens[beam])
            beam = parents[beam]
        return tuple(reversed(out))


def beam_search(
    step: Callable[[np.ndarray, np.ndarray], np.ndarray],
    logits: np.ndarray,
    length: int,
    width: int,
    count: int,
    automaton: Automaton | None = None,
    bias: np.ndarray | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[Finished]:
    """The `count` best finished beams, best first (fewer when fewer texts exist). `logits` (1, V) are the
    prime's; `step(tokens (B,), parents (B,)) -> logits (B, V)` moves the kept beams' states into their new
    order (row i takes beam parents[i]'s) and reads their new tokens. When `stop()` turns true the search ends
    there, its live beams finishing as at the length limit."""
    paths = Paths()  # the live beams, in the order of their ids (smallest first)
    scores = np.zeros(1)  # (B,)
    states = [automaton.start] if automaton is not None else [0]
    finished: list[Finished] = []
    end_id = automaton.end_id if automaton is not None else None
    parent = token = np.zeros(0, dtype=np.int64)  # the kept offers: which beam, which character
    for position in range(length):
        if stop is not None and stop():
            break
        if position > 0:
            logits = step(token, parent)
        logp = log_softmax(logits + bias if bias is not None else logits)  # (B, V)
        if automaton is not None:
            allowed = np.stack([automaton.allowed(s) for s in states])  # (B, V)
            stuck = ~allowed.any(axis=1)
            finished += [Finished(paths.ids(b), float(scores[b]), "stop") for b in np.flatnonzero(stuck)]
            logp = np.where(allowed, logp, -np.inf)
        offers = scores[:, None] + logp  # (B, V)
        kept = best_offers(offers, width)  # in the order of the new beams' ids
        parent, token = np.divmod(kept, offers.shape[1])
        if end_id is not None and (ending := token == end_id).any():
            ended = zip(parent[ending].tolist(), offers.ravel()[kept[ending]].tolist())
            finished += [Finished(paths.ids(b), score, "stop") for b, score in ended]
            kept, parent, token = kept[~ending], parent[~ending], token[~ending]
        if len(kept) == 0:
            return rank(finished)[:count]
        scores = offers.ravel()[kept]
        paths.add(parent, token)
        if automaton is not None:
            states = [automaton.advance(states[b], v) for b, v in zip(parent.tolist(), token.tolist())]
        if len(finished) >= count:
            best = rank(finished)[:count]
            if best[-1].score > scores.max():
                return best
    finished += [Finished(paths.ids(b), float(scores[b]), "length") for b in range(len(scores))]
    return rank(finished)[:count]
