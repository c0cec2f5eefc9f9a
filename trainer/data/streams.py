"""The splits as B stateful streams: what each process reads at each step (training) and evaluation.

Stream layout (training). The train split of n ids is cut into B streams of S = W*T characters,
W = (n - 1) // (B*T) windows per epoch. Stream b reads ids[b*S + w*T : b*S + (w+1)*T] at window w
and predicts the same slice shifted by one, so the B streams tile ids[0 : B*S] exactly, each one
contiguous from window to window. The window is a pure function of the step (w = step % W), which
makes resume exact; at w == 0 a new epoch starts and the carried LSTM state is reset.
"""

from __future__ import annotations

import os

import numpy as np

from trainer.data.cache import file_position
from trainer.errors import UserError


class WindowReader:
    """ids[s : s + length] for many starts s at once. From a memory-mapped cache it reads with positional reads
    (os.pread) instead of through the mapping: a step reads a few characters at each of B places spread over a
    corpus of many GB, and the kernel maps a whole page-cache folio, about a megabyte, around each place it is
    read through a mapping, which would count in the process's memory (80 MB for 32 streams in 40 steps and one
    evaluation of a 1 GB corpus, measured). Anything else (an array in memory) is indexed as it is."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self.file = None
        position = file_position(ids) if hasattr(os, "pread") else None
        if position is not None:
            self.file = open(position[0], "rb", buffering=0)  # noqa: SIM115 (lives as long as the reader)
            self.first_byte = position[1]

    def read(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(len(starts), length) int64: the ids from each start."""
        if self.file is None:
            return self.ids[starts[:, None] + np.arange(length)].astype(np.int64)
        size, dtype, fd = self.ids.itemsize, self.ids.dtype, self.file.fileno()
        rows = [np.frombuffer(os.pread(fd, length * size, self.first_byte + int(s) * size), dtype) for s in starts]
        return np.stack(rows).astype(np.int64)


class TrainStreams:
    """B contiguous streams over the train split; window(step) is a pure function of the step."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        need = batch_size * seq_len + 1
        if len(ids) < need:
            raise UserError(
                f"the training split has {len(ids):,} characters but batch_size={batch_size} x "
                f"seq_len={seq_len} needs at least {need:,}: use a smaller train.batch_size or "
                "train.seq_len, or a longer text"
            )
        self.ids = ids
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.windows_per_epoch = (len(ids) - 1) // (batch_size * seq_len)  # W
        self.stream_len = self.windows_per_epoch * seq_len  # S
        self.reader = WindowReader(ids)

    def window(self, step: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (stop-start, T) int64 of streams [start, stop) at this step."""
        w = step % self.windows_per_epoch
        starts = np.arange(start, stop) * self.stream_len + w * self.seq_len
        chunk = self.reader.read(starts, self.seq_len + 1)  # (b, T+1)
        return chunk[:, :-1], chunk[:, 1:]

    def starts_epoch(self, step: int) -> bool:
        """True when this step begins a pass over the data: the carried state must be reset."""
        return step % self.windows_per_epoch == 0


class EvalStreams:
    """The validation split as B streams of (m-1)//B characters, state carried, read in windows of T (the last
    one shorter). With a budget of `max_chars`, each stream is read for its first max_chars // B characters
    only: the same part at every evaluation and for any number of processes, spread over the whole split (B
    pieces, one at the start of each stream), so an evaluation's cost does not grow with the corpus.
    serve.score uses the same layout (--max-chars), so the two losses agree."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, max_chars: int | None = None):
        if len(ids) < batch_size + 1:
            raise UserError(
                f"the validation split has {len(ids):,} characters, too few for {batch_size} streams "
                f"(needs at least {batch_size + 1:,}): raise data.val_fraction, use a smaller "
                "train.batch_size, or a longer text"
            )
        self.ids = ids
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.stream_len = (len(ids) - 1) // batch_size  # where stream b starts: b * stream_len
        self.read_len = self.stream_len if max_chars is None else min(self.stream_len, max_chars // batch_size)
        self.reader = WindowReader(ids)

    @property
    def chars(self) -> int:
        """How many characters an evaluation scores (predicts)."""
        return self.batch_size * self.read_len

    def windows(self, start: int, stop: int):
        """Yield (inputs, targets) int64 arrays (stop-start, t <= T) covering streams [start, stop)."""
        for offset in range(0, self.read_len, self.seq_len):
            length = min(self.seq_len, self.read_len - offset)
            starts = np.arange(start, stop) * self.stream_len + offset
            chunk = self.reader.read(starts, length + 1)  # (b, t+1)
            yield chunk[:, :-1], chunk[:, 1:]
