"""One tick of the service's batch (Ticker): every row steps once; a row still reading its prompt takes its
next prompt id, the others pick a character. The per-row facts come from RowArrays (serve/http/rows.py), so
that for plain rows (the common case) a tick is array work: the draws of all rows in one pass, one pick per
set of options, the characters appended in one loop without method calls, and the event loop woken once per
tick. Rows with a constraint, logit_bias, logprobs or stop sequences are accepted one by one. Either way each
row's arithmetic is the offline Sampler's, step for step."""

from __future__ import annotations

import time

import numpy as np

from serve.http.batch import Batch
from serve.http.completion import Choice, top_logprobs, wake_all
from serve.http.metrics import Metrics
from serve.http.prefix_cache import PrefixCache, keep_prefix
from serve.http.rows import RowArrays
from serve.pick import VECTOR_DRAWS, uniform, uniforms
from serve.sampler import Sampler

ARRAY_ROWS = 8  # plain rows accepted in array work from this many on


class Ticker:
    def __init__(self, sampler: Sampler, batch: Batch, metrics: Metrics, prefix_cache: PrefixCache | None):
        self.sampler = sampler
        self.batch = batch
        self.metrics = metrics
        self.prefix_cache = prefix_cache
        self.vocab = sampler.vocab
        self.chars = np.array(sampler.vocab, dtype=object)  # (V,): id -> character, for fancy indexing
        self.no_bias = np.zeros(len(sampler.vocab), dtype=np.float32)  # (V,): x + 0 is x, bit for bit
        self.everything = np.ones(len(sampler.vocab), dtype=bool)  # (V,)

    def tick(self, rows: RowArrays) -> bool:
        """Step every row once and pick for those past their prompts; True when a row finished."""
        started = time.perf_counter()
        logits = self.batch.step(rows.tokens)  # (B, V)
        if rows.reading:
            self._read_prompts(rows, logits)
        every_row_picks = rows.picking.all()
        finished, picked, woken = False, 0, set()
        for (top_k, temperature, top_p), group in rows.groups():
            if not every_row_picks:
                group = group[rows.picking[group]]
                if not len(group):
                    continue
            scores, allowed = self._masked(rows, logits, group)
            stuck = None
            if allowed is not None:
                stuck = ~allowed.any(axis=1)  # nothing can follow: the text is whole
                allowed[stuck] = True  # they pick anything, and it is thrown away
            ids = Sampler.pick(scores, top_k, temperature, top_p, self._draws(rows, group), allowed)  # (G,)
            simple = rows.simple[group]
            if simple.all():
                finished |= self._accept_simple(rows, group, ids, woken)
            else:
                finished |= self._accept_simple(rows, group[simple], ids[simple], woken)
                others = ~simple
                finished |= self._accept_each(
                    rows, logits, group[others], ids[others], None if stuck is None else stuck[others], woken
                )
            picked += len(group)
        wake_all(woken)
        self.metrics.characters.inc(picked)
        self.metrics.batch_size.observe(len(rows))
        self.metrics.tick_seconds.observe(time.perf_counter() - started)
        return finished

    def _read_prompts(self, rows: RowArrays, logits: np.ndarray) -> None:
        """Rows reading their prompts have fed one more id: the next is queued, or they pick from now on."""
        still = []
        h, c = self.batch.h, self.batch.c
        for i in rows.reading:
            row = rows.choices[i]
            row.fed += 1
            if row.prefix_keys and keep_prefix(self.prefix_cache, row, h[:, i], c[:, i]):
                self.metrics.prefix_cache(self.prefix_cache)
            if row.fed < len(row.prompt_ids):
                if row.completion.request.echo and row.completion.request.logprobs is not None:
                    self._prompt_logprob(row, logits[i])
                rows.tokens[i] = row.prompt_ids[row.fed]
                still.append(i)
            else:
                rows.picking[i] = True
        rows.reading = still

    @staticmethod
    def _draws(rows: RowArrays, group: np.ndarray) -> np.ndarray:
        """(G,) float64: `uniform(seed, sample, position)` of each row, in one pass for many rows."""
        if len(group) >= VECTOR_DRAWS:
            return uniforms(rows.seeds[group], rows.samples[group], rows.counts[group])
        keys = zip(rows.seeds[group].tolist(), rows.samples[group].tolist(), rows.counts[group].tolist())
        return np.array([uniform(seed, sample, position) for seed, sample, position in keys])

    def _masked(self, rows: RowArrays, logits: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The group's logits with each request's logit_bias added, and the constraints' masks (None when no row
        has one); a row with nothing allowed gets all characters, to be thrown away."""
        scores = logits[group] if len(group) < len(logits) else logits  # a group is in row order
        if rows.plain[group].all():
            return scores, None
        choices = [rows.choices[i] for i in group.tolist()]
        biases = [choice.completion.bias for choice in choices]
        if any(b is not None for b in biases):
            scores = scores + np.stack([b if b is not None else self.no_bias for b in biases])
        masks = [choice.allowed() for choice in choices]
        if all(m is None for m in masks):
            return scores, None
        allowed = np.stack([m if m is not None else self.everything for m in masks])  # (G, V)
        return scores, allowed

    def _accept_simple(self, rows: RowArrays, index: np.ndarray, ids: np.ndarray, woken: set) -> bool:
        """Plain rows take their picks: the character appended, the limit checked, in array work (a few rows
        one by one: below ARRAY_ROWS, numpy's cost per call exceeds a loop's)."""
        if len(index) < ARRAY_ROWS:
            return self._accept_few(rows, index.tolist(), ids.tolist(), woken)
        rows.tokens[index] = ids
        counts = rows.counts[index]
        for i in index[counts == 0].tolist():
            self._first_character(rows.choices[i])
        counts += 1
        rows.counts[index] = counts
        for choice, char in zip(rows.objects[index].tolist(), self.chars[ids].tolist()):
            choice.chars.append(char)
            choice.visible += 1
        woken.update(rows.notifiers[index[rows.stream[index]]].tolist())
        ending = counts >= rows.limits[index]
        if not ending.any():
            return False
        ended = rows.objects[index[ending]].tolist()
        for choice in ended:
            choice.finish = "length"  # after `visible`: a reader that sees it sees the whole text
        woken.update(choice.completion.notifier for choice in ended if choice.completion.done)
        return True

    def _accept_few(self, rows: RowArrays, index: list[int], ids: list[int], woken: set) -> bool:
        finished = False
        for i, token in zip(index, ids):
            choice = rows.choices[i]
            rows.tokens[i] = token
            if not choice.chars:
                self._first_character(choice)
            choice.chars.append(self.vocab[token])
            choice.visible += 1
            rows.counts[i] += 1
            if rows.stream[i]:
                woken.add(choice.completion.notifier)
            if len(choice.chars) >= rows.limits[i]:
                choice.finish = "length"
                if choice.completion.done:
                    woken.add(choice.completion.notifier)
                finished = True
        return finished

    def _accept_each(
        self,
        rows: RowArrays,
        logits: np.ndarray,
        index: np.ndarray,
        ids: np.ndarray,
        stuck: np.ndarray | None,
        woken: set,
    ) -> bool:
        """Rows with a constraint, logprobs or stop sequences take their picks one by one."""
        finished = False
        ends = stuck.tolist() if stuck is not None else [False] * len(index)
        for i, token, nothing_follows in zip(index.tolist(), ids.tolist(), ends):
            row = rows.choices[i]
            automaton = row.completion.automaton
            if nothing_follows or (automaton is not None and token == automaton.end_id):
                row.complete()  # the end character drawn, or nothing could follow: the text is whole
                woken.add(row.completion.notifier)
                finished = True
                continue
            self._accept(row, token, logits[i], woken)
            rows.tokens[i] = token
            rows.counts[i] += 1
            finished |= row.finish is not None
        return finished

    def _accept(self, row: Choice, token: int, logits: np.ndarray, woken: set) -> None:
        completion = row.completion
        count = completion.request.logprobs
        if count is not None:
            row.logprobs.append(top_logprobs(logits, count, token, self.vocab))
        if not row.chars:
            self._first_character(row)
        row.accept(self.vocab[token])
        if completion.automaton is not None:
            row.state = completion.automaton.advance(row.state, token)
        if completion.request.stream or completion.done:
            woken.add(completion.notifier)

    def _first_character(self, row: Choice) -> None:
        if row.index == 0:
            self.metrics.first_char_seconds.observe(time.monotonic() - row.completion.submitted)

    def _prompt_logprob(self, row: Choice, logits: np.ndarray) -> None:
        token = int(row.prompt_ids[row.fed])  # the prompt character these logits predict
        row.prompt_logprobs.append(top_logprobs(logits, row.completion.request.logprobs, token, self.vocab))
