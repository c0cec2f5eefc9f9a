"""The scheduler: one thread owns the batch and advances every active sequence by one character per tick
(continuous batching). Requests join and leave between ticks. A prompt starts from its longest kept prefix
(serve/http/prefix_cache.py) when one is kept; a long one is then read beside the batch
(serve/http/prompt_reader.py), a short one through the batch, one character per tick; either way a row's
arithmetic is the offline Sampler's, step for step. The rows' LSTM state is a Batch (serve/http/batch.py),
kept compact so that a tick steps only the active rows."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

import numpy as np
import onnxruntime as ort

from serve.http.batch import Batch
from serve.http.completion import Choice, Completion, top_logprobs
from serve.http.metrics import Metrics
from serve.http.prefix_cache import PrefixCache, keep_prefix, prefix_start
from serve.http.prompt_reader import READ_BESIDE, PromptReader, Read
from serve.http.protocol import ApiError
from serve.pick import draws
from serve.sampler import Sampler

RETRY_AFTER = 1  # seconds a client told 429 is asked to wait


class Scheduler:
    """Admission (a bounded queue, then 429), the tick loop, and the drain after SIGTERM."""

    def __init__(
        self,
        sampler: Sampler,
        max_batch: int,
        max_queue: int,
        metrics: Metrics,
        one_thread: ort.InferenceSession | None = None,
        prefix_cache: PrefixCache | None = None,
    ):
        self.sampler = sampler
        self.prefix_cache = prefix_cache
        self.max_batch = max_batch  # sequences stepped together
        self.max_queue = max_queue  # requests waiting for room
        self.metrics = metrics
        self.batch = Batch(sampler, one_thread)
        reading_session = one_thread if one_thread is not None else sampler.session
        self.reader = PromptReader(sampler, reading_session, prefix_cache, metrics, self._read)
        self.read: list[Read] = []  # prompts the reader has read, joining at the next tick
        self.reading = 0  # requests the reader holds
        self.no_bias = np.zeros(len(sampler.vocab), dtype=np.float32)  # (V,): x + 0 is x, bit for bit
        self.everything = np.ones(len(sampler.vocab), dtype=bool)  # (V,)
        self.rows: list[Choice] = []  # the batch's rows, in its order
        self.lock = threading.Condition()
        self.free = max_batch  # rows neither in the batch nor promised to a joining request
        self.joining: list[Completion] = []  # admitted, joining at the next tick
        self.queue: deque[Completion] = deque()  # waiting for room, first come first served
        self.draining = False
        self.deadline: float | None = None  # the drain's end: then what runs is ended with `length`
        self.drained = threading.Event()
        self.thread = threading.Thread(target=self._run, name="charlstm-scheduler", daemon=True)

    def start(self) -> None:
        self.reader.start()
        self.thread.start()

    # ------------------------------------------------------------ the event loop's side

    def submit(self, completion: Completion) -> None:
        """Take a request: into the batch at the next tick, else into the queue; ApiError 429 or 503 if neither."""
        n = completion.request.n
        with self.lock:
            if self.draining:
                raise ApiError(503, "the server is shutting down and takes no new requests", code="draining")
            if not self.queue and n <= self.free:
                self.free -= n
                self.joining.append(completion)
            elif len(self.queue) < self.max_queue:
                self.queue.append(completion)
            else:
                raise ApiError(
                    429,
                    f"the server is full ({self.max_batch} sequences running, {len(self.queue)} requests waiting);"
                    f" retry after {RETRY_AFTER} s",
                    code="server_full",
                )
            self._gauges()
            self.lock.notify()

    def cancel(self, completion: Completion) -> None:
        """The client went away: its rows leave at the next tick (its place in the queue at once)."""
        completion.cancelled = True
        with self.lock:
            if completion in self.queue:
                self.queue.remove(completion)
                self._gauges()
            self.lock.notify()

    def begin_drain(self, grace: float) -> None:
        """Take no new requests; what is running or waiting has `grace` seconds, then ends with `length`."""
        with self.lock:
            self.draining = True
            self.deadline = time.monotonic() + grace
            self.lock.notify()
        self.reader.begin_drain(self.deadline)

    def _read(self, reads: list[Read]) -> None:  # the reader's thread
        with self.lock:
            self.read.extend(reads)
            self.lock.notify()

    # ------------------------------------------------------------ the scheduler thread

    def _run(self) -> None:
        while True:
            with self.lock:
                while not (self.rows or self.joining or self.queue or self.read or self.draining):
                    self.lock.wait()
                if self.draining and not (self.rows or self.joining or self.queue or self.read or self.reading):
                    break
                joining, self.joining = self.joining, []
                read, self.read = self.read, []
            self._join(joining, read)
            self._leave(cancelled_only=True)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._end_everything()
            if self.rows:
                self.batch.narrow = self.reading > 0  # the reader has the other core
                self._tick()
                self._leave(cancelled_only=False)
            elif self.deadline is not None:
                with self.lock:  # nothing to step: wait for a request to join or come back read, or the deadline
                    if not (self.joining or self.read):
                        self.lock.wait(max(0.0, self.deadline - time.monotonic()))
        self.drained.set()

    def _join(self, completions: list[Completion], read: list[Read]) -> None:
        """Admitted requests start from a kept prefix, if any; a long prompt goes to the reader, the rest join
        the batch, with the requests the reader hands back (each choice from the state it read)."""
        joining: list[tuple[Choice, tuple | None]] = []
        for completion in completions:
            start = prefix_start(self.prefix_cache, completion) if self.prefix_cache is not None else None
            fed = start[0] if start is not None else 0
            if len(completion.choices[0].prompt_ids) - fed > READ_BESIDE:
                self.reading += 1
                self.reader.read(completion, start)
            else:
                joining += [(choice, start) for choice in completion.choices]
        for done in read:
            self.reading -= 1
            joining += [(choice, (done.fed, done.h, done.c)) for choice in done.completion.choices]
        if self.prefix_cache is not None and completions:
            self.metrics.prefix_cache(self.prefix_cache)
        if completions:
            self.metrics.prompt_characters.inc(sum(c.prompt_chars * c.request.n for c in completions))
        if joining:
            first = len(self.rows)
            self.batch.join(len(joining))
            for i, (choice, start) in enumerate(joining, start=first):
                self.rows.append(choice)
                if start is not None:
                    choice.fed, self.batch.h[:, i], self.batch.c[:, i] = start
        if completions or read:
            with self.lock:
                self._gauges()

    def _leave(self, cancelled_only: bool) -> None:
        """Rows of cancelled requests leave; after a tick, finished rows too. Their room goes to the queue."""
        keep = [
            i
            for i, row in enumerate(self.rows)
            if not row.completion.cancelled and (cancelled_only or row.finish is None)
        ]
        if len(keep) == len(self.rows):
            return
        kept = set(keep)
        left = {id(row.completion): row.completion for i, row in enumerate(self.rows) if i not in kept}
        self.batch.keep(keep)
        freed = len(self.rows) - len(keep)
        self.rows = [self.rows[i] for i in keep]
        for completion in left.values():
            if completion.done or completion.cancelled:
                completion.notifier.end()
        with self.lock:
            self.free += freed
            while self.queue and self.queue[0].request.n <= self.free:
                completion = self.queue.popleft()
                self.free -= completion.request.n
                self.joining.append(completion)
            self._gauges()

    def _end_everything(self) -> None:
        """The drain's deadline: every row and every waiting request ends with what it has."""
        with self.lock:
            waiting = list(self.queue) + self.joining
            self.queue.clear()
            self.joining = []
            self.free += sum(completion.request.n for completion in waiting)
        for completion in waiting:
            for choice in completion.choices:
                choice.end()
            completion.notifier.end()
        for row in self.rows:
            row.end()
            row.completion.notifier.wake()
        self._leave(cancelled_only=False)

    def _gauges(self) -> None:  # under self.lock
        self.metrics.active.set(len(self.rows))
        self.metrics.queued.set(sum(c.request.n for c in self.queue))
        self.metrics.queued_requests.set(len(self.queue))
        self.metrics.reading.set(self.reading)

    # ------------------------------------------------------------ one tick

    def _tick(self) -> None:
        started = time.perf_counter()
        rows = self.rows
        tokens = np.fromiter((row.next_token() for row in rows), dtype=np.int64, count=len(rows))  # (B,)
        logits = self.batch.step(tokens)  # (B, V)
        picking: dict[tuple, list[int]] = defaultdict(list)  # pick options -> rows that pick now
        for i, row in enumerate(rows):
            if row.fed < len(row.prompt_ids):
                row.fed += 1
                if row.prefix_keys and keep_prefix(self.prefix_cache, row, self.batch.h[:, i], self.batch.c[:, i]):
                    self.metrics.prefix_cache(self.prefix_cache)
                if row.fed < len(row.prompt_ids):  # still reading the prompt
                    if row.completion.request.echo and row.completion.request.logprobs is not None:
                        self._prompt_logprob(row, logits[i])
                    continue
            picking[row.completion.pick_key].append(i)
        picked = 0
        for (top_k, temperature, top_p), group in picking.items():
            scores, allowed = self._masked(logits, group)
            stuck = np.zeros(len(group), dtype=bool)
            if allowed is not None:
                stuck = ~allowed.any(axis=1)  # nothing can follow: the text is whole
                allowed[stuck] = True  # they pick anything, and it is thrown away
            seeds, samples = [rows[i].completion.seed for i in group], [rows[i].index for i in group]
            drawn = draws(seeds, samples, [len(rows[i].chars) for i in group])
            ids = Sampler.pick(scores, top_k, temperature, top_p, drawn, allowed)
            for i, token, ends in zip(group, ids.tolist(), stuck.tolist()):
                row = rows[i]
                automaton = row.completion.automaton
                if ends or (automaton is not None and token == automaton.end_id):
                    row.complete()  # the end character drawn, or nothing could follow: the text is whole
                    row.completion.notifier.wake()
                    continue
                self._accept(row, token, logits[i])
            picked += len(group)
        self.metrics.characters.inc(picked)
        self.metrics.batch_size.observe(len(rows))
        self.metrics.tick_seconds.observe(time.perf_counter() - started)

    def _masked(self, logits: np.ndarray, group: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """The group's logits with each request's logit_bias added, and the constraints' masks (None when no row
        has one); a row with nothing allowed gets all characters, to be thrown away."""
        rows = self.rows
        scores = logits[group] if len(group) < len(logits) else logits  # a group is in row order
        if all(rows[i].completion.plain for i in group):
            return scores, None
        biases = [rows[i].completion.bias for i in group]
        if any(b is not None for b in biases):
            scores = scores + np.stack([b if b is not None else self.no_bias for b in biases])
        masks = [rows[i].allowed() for i in group]
        if all(m is None for m in masks):
            return scores, None
        allowed = np.stack([m if m is not None else self.everything for m in masks])  # (G, V)
        return scores, allowed

    def _accept(self, row: Choice, token: int, logits: np.ndarray) -> None:
        completion = row.completion
        count = completion.request.logprobs
        if count is not None:
            row.logprobs.append(top_logprobs(logits, count, token, self.sampler.vocab))
        if not row.chars and row.index == 0:
            self.metrics.first_char_seconds.observe(time.monotonic() - completion.submitted)
        row.accept(token, self.sampler.vocab[token])
        if completion.automaton is not None:
            row.state = completion.automaton.advance(row.state, token)
        if completion.request.stream or completion.done:
            completion.notifier.wake()

    def _prompt_logprob(self, row: Choice, logits: np.ndarray) -> None:
        token = int(row.prompt_ids[row.fed])  # the prompt character these logits predict
        row.prompt_logprobs.append(top_logprobs(logits, row.completion.request.logprobs, token, self.sampler.vocab))
