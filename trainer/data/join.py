"""The documents of a corpus' files as one text, in pieces: file order, row order, documents joined by
`ReadOptions.separator` (also between files), its sha256 taken on the way.

The pieces are cut after a newline (or, in a very long line, before an ASCII character): no Unicode
normalization reaches across such a cut, so the pieces encode apart exactly as the whole text would, and the
ids equal those of the same text kept as one plain file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from trainer.data.columns import read_columnar
from trainer.data.formats import ReadOptions, SourceFile
from trainer.data.rows import Batch, Tally, read_delimited, read_json_lines, read_text

READERS = {"text": read_text, "jsonl": read_json_lines, "csv": read_delimited, "tsv": read_delimited,
           "parquet": read_columnar, "arrow": read_columnar}  # fmt: skip
PIECE_BYTES = 4 << 20  # text handed to an encoding worker at a time
MAX_PIECE_BYTES = 64 << 20  # a piece without a newline is cut before an ASCII character past this


class Joined:
    """Iterate for the pieces; afterwards `sha256` and `size` are those of the whole text."""

    def __init__(self, files: list[SourceFile], options: ReadOptions, tally: Tally) -> None:
        self.files, self.options, self.tally = files, options, tally
        self._digest, self.size = hashlib.sha256(), 0

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        buffer = bytearray()
        for piece in self._text(buffer):
            self._digest.update(piece)
            self.size += len(piece)
            yield piece
        if buffer:
            self._digest.update(buffer)
            self.size += len(buffer)
            yield bytes(buffer)

    def _text(self, buffer: bytearray) -> Iterator[bytes]:
        """Cut pieces out of `buffer` as the documents fill it; what is left at the end stays in it."""
        separator = self.options.separator.encode("utf-8")
        written = False  # anything yet: the next document comes after a separator
        for file in self.files:
            started = False  # this file's text document has begun
            for batch in READERS[file.form](file, self.options, self.tally):
                if batch.text:
                    if written and not started:
                        buffer += separator
                    started = written = True
                    buffer += batch.text
                elif batch.rows or batch.joined:
                    encoded = batch.joined or self._encoded(file, batch)
                    if encoded:
                        buffer += (separator if written else b"") + encoded
                        written = True
                while len(buffer) >= PIECE_BYTES and (cut := _cut(buffer)):
                    with memoryview(buffer) as view:
                        piece = bytes(view[:cut])  # one copy
                    del buffer[:cut]
                    yield piece

    def _encoded(self, file: SourceFile, batch: Batch) -> bytes:
        """The batch's documents joined, as UTF-8; a document that cannot be (a lone surrogate from a JSON
        escape) is a bad row."""
        separator = self.options.separator
        try:
            return separator.join(batch.rows).encode("utf-8")
        except UnicodeEncodeError:
            kept = []
            for i, text in enumerate(batch.rows):
                try:
                    text.encode("utf-8")
                    kept.append(text)
                except UnicodeEncodeError:
                    where = batch.where[i] if batch.where else "a row"
                    self.tally.bad(file, where, "holds a lone surrogate (an unpaired \\ud800-\\udfff escape)")
            return separator.join(kept).encode("utf-8")


def _cut(buffer: bytearray) -> int:
    """Where to cut a full buffer: after its last newline within PIECE_BYTES (pieces stay that small, whatever
    a batch adds); in a line longer than MAX_PIECE_BYTES, before its last ASCII character; 0: not yet."""
    cut = buffer.rfind(b"\n", 0, PIECE_BYTES) + 1 or buffer.rfind(b"\n") + 1
    if cut or len(buffer) < MAX_PIECE_BYTES:
        return cut
    for i in range(min(len(buffer), MAX_PIECE_BYTES) - 1, 0, -1):
        if buffer[i] < 0x80:
            return i
    return 0
