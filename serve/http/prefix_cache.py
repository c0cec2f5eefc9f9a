"""The state after prompt prefixes, so that a prompt that repeats, or shares a long beginning with an earlier one,
starts from there instead of reading it again. For an LSTM the whole state after a prefix is (h, c): a few KB
whatever the prefix's length.

Prefixes are kept at multiples of CHUNK characters, keyed by a chain of digests (each boundary's digest covers
the one before and the chunk's ids), at most `max_bytes` of states and keys, the least recently used out first.
A hit restores the bits that reading the prefix gives: in fp32 on the CPU a row's state does not depend on the
rows stepped beside it, so a hit's text is the text of a miss."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from serve.http.completion import Choice

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
    """(h, c) of (L, H) float32 each, by prefix key; bounded in bytes, least recently used out."""

    def __init__(self, max_bytes: int):
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


def start_from_prefixes(cache: PrefixCache, rows: list[Choice], first: int, h: np.ndarray, c: np.ndarray) -> None:
    """The rows from `first` on (just joined, at the zero state) start from the longest kept prefix of their
    prompt: their state in the batch's h and c (L, B, H) becomes the kept one, their reading goes on after it.
    A request that echoes its prompt with logprobs reads it whole: it needs every position's logits. The
    choices of one request share their prompt and the lookup."""
    found_for: dict[int, tuple | None] = {}
    for i in range(first, len(rows)):
        row, completion = rows[i], rows[i].completion
        if completion.request.echo and completion.request.logprobs is not None:
            continue
        if id(completion) not in found_for:
            row.prefix_keys = boundary_keys(row.prompt_ids)
            found_for[id(completion)] = cache.longest(row.prefix_keys)
        row.prefix_keys = completion.choices[0].prefix_keys
        found = found_for[id(completion)]
        if found is not None:
            row.fed, h[:, i], c[:, i] = found


def keep_prefix(cache: PrefixCache, row: Choice, h: np.ndarray, c: np.ndarray) -> bool:
    """After a tick: a row that has just read a whole chunk of its prompt leaves its state (h, c: (L, H)) in the
    cache. True when it did."""
    k = row.fed // CHUNK - 1
    if row.fed % CHUNK or not 0 <= k < len(row.prefix_keys):
        return False
    cache.store(row.prefix_keys[k], h, c)
    return True
