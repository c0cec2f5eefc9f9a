"""Corpus files -> their documents, read in bounded batches: plain text (one document a file), JSON Lines and
CSV/TSV (each row a document, its text in `ReadOptions.text_field`); Parquet and Arrow in columns.py.

Every reader yields `Batch`es. A row with no text (null or empty) is left out and counted; a bad row (not
JSON, no such field, not a string, a ragged CSV row, not UTF-8) goes to the `Tally`, which raises the one line
naming the file and the line or row, or counts it when `data.bad_rows=skip`.
"""

from __future__ import annotations

import codecs
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from trainer.data.formats import DAMAGED, ReadOptions, SourceFile, damaged, open_decompressed, require_pyarrow
from trainer.errors import UserError

BLOCK_BYTES = 4 << 20  # read from a file at a time
MAX_LINE_BYTES = 64 << 20  # a text "line" this long is cut at a character boundary (bounded memory)


@dataclass
class Batch:
    """Documents (`rows`, each a whole document, with `where` naming each for a message; or `joined`, non-empty
    documents already joined by the separator, as UTF-8), or a piece of the current text file's one document
    (`text`, UTF-8 checked)."""

    rows: list[str] = field(default_factory=list)
    where: list[str] | None = None
    joined: bytes = b""
    text: bytes = b""


@dataclass
class Tally:
    """What was left out: bad rows (by file, and the first of them) and rows with no text; the policy."""

    bad_rows: str = "error"
    bad_by_file: Counter = field(default_factory=Counter)
    first_bad: str = ""
    no_text: int = 0  # rows whose text is null or empty: left out under either policy

    def bad(self, file: SourceFile, where: str, reason: str) -> None:
        if self.bad_rows != "skip":
            raise UserError(f"{file.path}: {where} {reason} (data.bad_rows=skip leaves such rows out)")
        self.bad_by_file[file.path.name] += 1
        self.first_bad = self.first_bad or f"{file.path.name} {where} {reason}"

    def note(self) -> str | None:
        """One line saying what was left out, or None."""
        parts = []
        if self.bad_by_file:
            files = ", ".join(f"{count:,} in {name}" for name, count in self.bad_by_file.most_common(3))
            more = ", ..." if len(self.bad_by_file) > 3 else ""
            parts.append(f"{_rows(sum(self.bad_by_file.values()), 'bad row')} ({files}{more}; the first: "
                         f"{self.first_bad})")  # fmt: skip
        if self.no_text:
            parts.append(f"{_rows(self.no_text, 'row')} with no text (null or empty)")
        return f"left out {' and '.join(parts)}" if parts else None


def _rows(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def read_text(file: SourceFile, options: ReadOptions, tally: Tally) -> Iterator[Batch]:
    """A text file (decompressed) in pieces cut after a newline, each checked to be UTF-8."""
    consumed, rest = 0, b""
    with open_decompressed(file) as stream:
        while True:
            try:
                block = stream.read(BLOCK_BYTES)
            except DAMAGED as e:
                raise damaged(file, e) from None
            data = rest + block
            cut = len(data) if not block else data.rfind(b"\n") + 1
            if cut == 0 and len(data) > MAX_LINE_BYTES:
                cut = len(data)
                while cut > len(data) - 4 and 0x80 <= data[cut - 1] < 0xC0:  # not inside a UTF-8 sequence
                    cut -= 1
                cut -= 1 if data[cut - 1] >= 0xC0 else 0
            piece, rest = data[:cut], data[cut:]
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as e:
                offset = consumed + e.start
                raise UserError(
                    f"{file.path} is not UTF-8 text (invalid byte 0x{piece[e.start]:02x} at byte offset {offset}, "
                    f"line {_line_at(file, offset)})"
                ) from None
            consumed += len(piece)
            if piece:
                yield Batch(text=piece)
            if not block:
                return


def _line_at(file: SourceFile, offset: int) -> int:
    """The line (from 1) of the decompressed byte at `offset`: counted again only for the message."""
    lines, read = 1, 0
    with open_decompressed(file) as stream:
        while read < offset:
            block = stream.read(min(BLOCK_BYTES, offset - read))
            lines, read = lines + block.count(b"\n"), read + len(block)
    return lines


def read_json_lines(file: SourceFile, options: ReadOptions, tally: Tally) -> Iterator[Batch]:
    """JSON Lines: each non-blank line an object whose `text_field` holds the document."""
    name, number, rest = options.text_field, 0, b""
    with open_decompressed(file) as stream:
        while True:
            try:
                block = stream.read(BLOCK_BYTES)
            except DAMAGED as e:
                raise damaged(file, e) from None
            lines = (rest + block).split(b"\n")
            rest = lines.pop() if block else b""
            if number == 0 and lines and lines[0].startswith(codecs.BOM_UTF8):  # as Windows tools write it
                lines[0] = lines[0][len(codecs.BOM_UTF8) :]
            batch = Batch(where=[])
            for line in lines:
                number += 1
                try:
                    text = json.loads(line)[name]
                except Exception:  # noqa: BLE001 (every failure is classified, one line each, below)
                    _json_problem(file, line, number, name, tally)
                    continue
                if type(text) is not str:
                    if text is None:
                        tally.no_text += 1
                    else:
                        tally.bad(file, f"line {number}", f"holds {_json_kind(text)} in {name!r}, not a string")
                    continue
                if text:
                    batch.rows.append(text)
                    batch.where.append(f"line {number}")
                else:
                    tally.no_text += 1
            if batch.rows:
                yield batch
            if not block:
                return


def _json_kind(value: object) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), "null")


def _json_problem(file: SourceFile, line: bytes, number: int, name: str, tally: Tally) -> None:
    """Why a JSON Lines line gave no text, to the tally (a blank line: nothing to say)."""
    if not line.strip():
        return None
    if number == 1 and line.lstrip().startswith(b"["):
        raise UserError(
            f"{file.path} holds a JSON array; JSON Lines (one object a line) is read: convert it with "
            f"`jq -c '.[]' {file.path.name}`"
        )
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return tally.bad(file, f"line {number}", "is not UTF-8")
    try:
        row = json.loads(line)
    except ValueError:
        return tally.bad(file, f"line {number}", "is not JSON")
    if not isinstance(row, dict):
        return tally.bad(file, f"line {number}", f"is {_json_kind(row)}, not an object")
    return tally.bad(file, f"line {number}", f"has no field {name!r}")


ROW_NUMBER = re.compile(r"Row #(\d+)")


def read_delimited(file: SourceFile, options: ReadOptions, tally: Tally) -> Iterator[Batch]:
    """CSV or TSV with a header row: the column `text_field` of each row (quoted values may span lines)."""
    pa = require_pyarrow(file)
    from pyarrow import csv

    ragged = []

    def invalid_row(row) -> str:  # pyarrow ignores an exception raised here: note the row, raise below
        where, reason = f"row {row.number} (the header is row 1)", f"has {row.actual_columns} fields, the header "
        ragged.append((where, reason + str(row.expected_columns)))
        if options.bad_rows == "skip":
            tally.bad(file, *ragged[-1])
            return "skip"
        return "error"

    parse = csv.ParseOptions(delimiter="\t" if file.form == "tsv" else ",", newlines_in_values=True,
                             invalid_row_handler=invalid_row)  # fmt: skip
    convert = csv.ConvertOptions(include_columns=[options.text_field], column_types={options.text_field: pa.string()},
                                 strings_can_be_null=False)  # fmt: skip
    with open_decompressed(file) as stream:
        try:
            reader = csv.open_csv(stream, read_options=csv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES),
                                  parse_options=parse, convert_options=convert)  # fmt: skip
            for record_batch in reader:
                rows = record_batch.column(0).to_pylist()
                texts = [text for text in rows if text]
                tally.no_text += len(rows) - len(texts)
                if texts:
                    yield Batch(rows=texts)
        except pa.ArrowKeyError:
            raise UserError(f"{file.path} has no column {options.text_field!r} (data.text_field)") from None
        except pa.ArrowInvalid as e:
            if ragged:
                tally.bad(file, *ragged[-1])
            row = ROW_NUMBER.search(str(e))
            where = f"row {row.group(1)} (the header is row 1)" if row else "a row"
            if "UTF8" in str(e):
                raise UserError(f"{file.path}: {where} is not UTF-8") from None
            raise UserError(f"{file.path} is not {file.form.upper()} that can be read: {e}") from None
        except DAMAGED as e:
            raise damaged(file, e) from None
