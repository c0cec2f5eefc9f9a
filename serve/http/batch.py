"""The rows' LSTM state and one batched step for all of them (Batch), and which onnxruntime session steps a
batch of a given size: both the scheduler's batch and the prompt reader's are Batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from serve.sampler import Sampler
from serve.session import bind_step

# A tick of fewer multiply-adds than this runs on one onnxruntime thread: without spinning, waking a second
# thread costs more than it saves on a small step (docs/benchmarks.md, "The service's threads"). 20M is where
# two threads overtook one on 2 cores: 8 rows of 2 x 512, 32 rows of 2 x 256, never at 64 rows of 2 x 128.
TWO_THREADS_MACS = 20_000_000

# A model whose step for one row holds at least this many multiply-adds runs on onnxruntime's threads spinning,
# when the service has such a session: its step outweighs the event loop's work for the characters it makes,
# and a spinning thread starts the next step at once. 2 x 256 (0.8M) and wider gained from it through HTTP at
# 8 and 64 streams; 2 x 128 (0.2M) lost at 8 and 64 and broke even at one (docs/benchmarks.md, "The
# service's threads").
SPIN_ROW_MACS = 400_000


def macs_per_row(layers: int, hidden: int, vocab: int) -> int:
    """Multiply-adds of one row's step: the first layer's recurrent matrix (its input is a table lookup), each
    later layer's input and recurrent matrices, the head."""
    return 4 * hidden * hidden + (layers - 1) * 8 * hidden * hidden + hidden * vocab


class Batch:
    """The (h, c) of every active row, in row order, and one batched step for all of them. Rows join with the
    zero state (as Sampler starts) and leave between ticks; nothing is padded. The step's buffers are bound to
    a session once per batch size (bind_step) and two bindings alternate, so h_out of one tick is h of the
    next and a tick allocates nothing. With `one_thread` (a session of the same model on one onnxruntime
    thread) a small batch runs there, and every batch while `narrow` is set; the others on `wide` (the
    sampler's session unless given); with `spinning` (a session whose threads spin), every batch of a model
    of at least `spin_row_macs` per row runs there, unless `narrow`. In fp32 on the CPU every session gives
    the same bits for a row."""

    def __init__(
        self,
        sampler: Sampler,
        one_thread: ort.InferenceSession | None = None,
        wide: ort.InferenceSession | None = None,
        spinning: ort.InferenceSession | None = None,
        spin_row_macs: int = SPIN_ROW_MACS,
    ):
        self.sampler = sampler
        self.one_thread = one_thread
        self.wide = wide if wide is not None else sampler.session
        self.narrow = False  # every tick on one thread: the other core is busy (the prompt reader)
        self.row_macs = macs_per_row(sampler.layers, sampler.hidden, len(sampler.vocab))
        self.spinning = spinning if self.row_macs >= spin_row_macs else None
        self._allocate(0)

    def _allocate(self, rows: int) -> None:
        """Zeroed buffers for `rows` rows; their bindings are made when a session first steps them."""
        layers, hidden, vocab = self.sampler.layers, self.sampler.hidden, len(self.sampler.vocab)
        self.token = np.zeros(rows, dtype=np.int64)  # (B,)
        self.logits = np.zeros((rows, vocab), dtype=np.float32)  # (B, V)
        self.states = [np.zeros((layers, rows, hidden), dtype=np.float32) for _ in range(4)]  # h, c; h, c
        self.parity = 0  # states[0:2] hold the rows' (h, c) now, or states[2:4]
        self.bindings: dict[int, list[ort.IOBinding]] = {}  # by id of the session

    def session(self) -> ort.InferenceSession:
        """The session that steps the batch as it is now."""
        if self.spinning is not None and not self.narrow:
            return self.spinning
        small = len(self) * self.row_macs < TWO_THREADS_MACS
        return self.one_thread if self.one_thread is not None and (small or self.narrow) else self.wide

    @property
    def h(self) -> np.ndarray:  # (L, B, H), written in place by a join from a kept state
        return self.states[2 * self.parity]

    @property
    def c(self) -> np.ndarray:  # (L, B, H)
        return self.states[2 * self.parity + 1]

    def __len__(self) -> int:
        return len(self.token)

    def join(self, count: int) -> None:
        """`count` new rows at the end, from the zero state."""
        h, c = self.h, self.c
        self._allocate(len(self) + count)
        self.h[:, : h.shape[1]] = h
        self.c[:, : c.shape[1]] = c

    def keep(self, rows: Sequence[int]) -> None:
        """Keep these rows, in this order (the others leave)."""
        index = np.asarray(rows, dtype=np.int64)
        h, c = self.h, self.c
        if len(index) == len(self):  # a new order: into the other pair of the same buffers
            self.parity ^= 1
        else:
            self._allocate(len(index))
        np.take(h, index, axis=1, out=self.h)
        np.take(c, index, axis=1, out=self.c)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row (B,) and advance every row; the logits (B, V) for each row's next character,
        in a buffer that the next step overwrites."""
        session = self.session()
        pair = self.bindings.get(id(session))
        if pair is None:
            h0, c0, h1, c1 = self.states
            pair = self.bindings[id(session)] = [
                bind_step(session, self.token, h0, c0, self.logits, h1, c1),
                bind_step(session, self.token, h1, c1, self.logits, h0, c0),
            ]
        self.token[:] = tokens
        session.run_with_iobinding(pair[self.parity])
        self.parity ^= 1
        return self.logits
