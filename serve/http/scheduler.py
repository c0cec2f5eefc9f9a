"""The scheduler: one thread owns the batch and advances every active sequence by one character per tick
(continuous batching). Requests join and leave between ticks. A prompt starts from its longest kept prefix
(serve/http/prefix_cache.py) when one is kept; a long one is then read beside the batch
(serve/http/prompt_reader.py), a short one through the batch, one character per tick; either way a row's
arithmetic is the offline Sampler's, step for step. The rows' LSTM state is a Batch (serve/http/batch.py),
kept compact so that a tick steps only the active rows; what a tick reads of each row is in RowArrays
(serve/http/rows.py), and the tick itself is serve/http/tick.py."""

from __future__ import annotations

import threading
import time
from collections import deque

import onnxruntime as ort

from serve.http.batch import Batch
from serve.http.completion import Choice, Completion
from serve.http.metrics import Metrics
from serve.http.prefix_cache import PrefixCache, prefix_start
from serve.http.prompt_reader import READ_BESIDE, PromptReader, Read
from serve.http.protocol import ApiError
from serve.http.rows import RowArrays
from serve.http.tick import Ticker
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
        spinning: ort.InferenceSession | None = None,
    ):
        self.sampler = sampler
        self.prefix_cache = prefix_cache
        self.max_batch = max_batch  # sequences stepped together
        self.max_queue = max_queue  # requests waiting for room
        self.metrics = metrics
        self.batch = Batch(sampler, one_thread, spinning=spinning)
        reading_session = one_thread if one_thread is not None else sampler.session
        self.reader = PromptReader(sampler, reading_session, prefix_cache, metrics, self._read)
        self.read: list[Read] = []  # prompts the reader has read, joining at the next tick
        self.reading = 0  # requests the reader holds
        self.arrays = RowArrays()  # the batch's rows, in its order, and what a tick reads of them
        self.ticker = Ticker(sampler, self.batch, metrics, prefix_cache)
        self.finished = False  # a row finished at the last tick: rows leave
        self.cancelled = False  # a client went away since the last tick (under self.lock)
        self.lock = threading.Condition()
        self.free = max_batch  # rows neither in the batch nor promised to a joining request
        self.joining: list[Completion] = []  # admitted, joining at the next tick
        self.queue: deque[Completion] = deque()  # waiting for room, first come first served
        self.draining = False
        self.deadline: float | None = None  # the drain's end: then what runs is ended with `length`
        self.drained = threading.Event()
        self.thread = threading.Thread(target=self._run, name="charlstm-scheduler", daemon=True)

    @property
    def rows(self) -> list[Choice]:
        return self.arrays.choices

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
            self.cancelled = True
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
                cancelled, self.cancelled = self.cancelled, False
            self._join(joining, read)
            cancelled |= any(c.cancelled for c in joining) or any(done.completion.cancelled for done in read)
            if cancelled:
                self._leave(cancelled_only=True)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._end_everything()
            if self.rows:
                self.batch.narrow = self.reading > 0  # the reader has the other core
                self._tick()
                if self.finished:
                    self.finished = False
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
                if start is not None:
                    choice.fed, self.batch.h[:, i], self.batch.c[:, i] = start
            self.arrays.join([choice for choice, _ in joining])
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
        self.arrays.keep(keep)
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
        if self.ticker.tick(self.arrays):
            self.finished = True
