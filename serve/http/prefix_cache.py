"""The state after prompt prefixes, so that a prompt that repeats, or shares a long beginning with an earlier one,
starts from there instead of reading it again. For an LSTM the whole state after a prefix is (h, c): a few KB
whatever the prefix's length.

Prefixes are kept at multiples of CHUNK characters, keyed by a chain of digests (each boundary's digest covers
the one before and the chunk's ids), at most `max_bytes` of states and keys, the least recently used out first.
A hit restores the bits that reading the prefix gives: in fp32 on the CPU a row's state does not depend on the
rows stepped beside it, so a hit's text is the text of a miss."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from serve.http.completion import Choice, Completion

CHUNK = 256  # characters between the prefixes kept
DIGEST = 16  # bytes of each key (blake2b)


def boundary_keys(prompt_ids: np.ndarray) -> list[bytes]:
    """The keys of the prompt's prefixes of CHUNK, 2 CHUNK, ... characters that leave at least one character
    unread (the tick reads the last prompt character: its logits give the first pick). Key k covers ids[:(k+1)
    CHUNK]."""
    keys, digest = [], b""
    ids = np.asarray(prompt_ids, dtype=np.int64)
    for end in range(CHUNK, len(ids), CHUNK):
        digest = hashlib.blake2b(digest + ids[end - CHUNK : end].tobytes(), digest_size=DIGEST).digest()
        keys.append(digest)
    return keys


class PrefixCache:
    """(h, c) of (L, H) float32 each, by prefix key; bounded in bytes, least recently used out. The scheduler
    and the prompt reader share it (a lock)."""

    def __init__(self, max_bytes: int):
        self.lock = threading.Lock()
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def size(h: np.ndarray, c: np.ndarray) -> int:
        return h.nbytes + c.nbytes + DIGEST

    def longest(self, keys: list[bytes]) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The longest kept prefix among a prompt's boundary keys: (its length in characters, h, c), copies; None
        when none is kept. Counts a hit or a miss."""
        with self.lock:
            return self._longest(keys)

    def _longest(self, keys: list[bytes]) -> tuple[int, np.ndarray, np.ndarray] | None:
        for k in range(len(keys) - 1, -1, -1):
            found = self.entries.get(keys[k])
            if found is not None:
                self.entries.move_to_end(keys[k])
                self.hits += 1
                return (k + 1) * CHUNK, found[0].copy(), found[1].copy()
        if keys:
            self.misses += 1
        return None

    def store(self, key: bytes, h: np.ndarray, c: np.ndarray) -> None:
        """Keep the state after a prefix (copied); the least recently used go until the bound holds."""
        with self.lock:
            self._store(key, h, c)

    def _store(self, key: bytes, h: np.ndarray, c: np.ndarray) -> None:
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        if self.size(h, c) > self.max_bytes:
            return
        self.entries[key] = (h.copy(), c.copy())
        self.bytes += self.size(h, c)
        while self.bytes > self.max_bytes:
            _, (old_h, old_c) = self.entries.popitem(last=False)
            self.bytes -= self.size(old_h, old_c)


def prefix_start(cache: PrefixCache, completion: Completion) -> tuple[int, np.ndarray, np.ndarray] | None:
    """Where a request's reading starts: after its prompt's longest kept prefix (its length, h, c: (L, H)), or
    None for the zero state. Its choices get the prompt's boundary keys, so that reading it keeps them. A request
    that echoes its prompt with logprobs reads it whole: it needs every position's logits."""
    request = completion.request
    if request.echo and request.logprobs is not None:
        return None
    keys = boundary_keys(completion.choices[0].prompt_ids)
    for choice in completion.choices:
        choice.prefix_keys = keys
    return cache.longest(keys)


def keep_prefix(cache: PrefixCache, row: Choice, h: np.ndarray, c: np.ndarray) -> bool:
    """After a tick: a row that has just read a whole chunk of its prompt leaves its state (h, c: (L, H)) in the
    cache. True when it did."""
    k = row.fed // CHUNK - 1
    if row.fed % CHUNK or not 0 <= k < len(row.prefix_keys):
        return False
    cache.store(row.prefix_keys[k], h, c)
    return True
