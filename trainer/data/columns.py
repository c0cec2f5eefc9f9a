"""Parquet and Arrow files (what `datasets` writes) -> their documents: the column `ReadOptions.text_field`,
read a bounded number of rows at a time and joined in Arrow's kernels."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

from trainer.data.formats import DAMAGED, ReadOptions, SourceFile, damaged, open_decompressed, require_pyarrow
from trainer.data.rows import BLOCK_BYTES, Batch, Tally
from trainer.errors import UserError

ROWS_PER_BATCH = 2048  # rows read and joined at a time


def read_columnar(file: SourceFile, options: ReadOptions, tally: Tally) -> Iterator[Batch]:
    """Parquet (row group by row group) or Arrow IPC (`datasets`' files): the column `text_field`."""
    pa = require_pyarrow(file)
    with _seekable(file) as path:
        try:
            groups = _parquet_groups(pa, path) if file.form == "parquet" else _arrow_groups(pa, path)
            row = 0
            for group, schema, batches in groups:
                if options.text_field not in schema.names:
                    raise UserError(
                        f"{file.path} has no column {options.text_field!r} (data.text_field; its columns: "
                        f"{', '.join(schema.names)})"
                    )
                kind = schema.field(options.text_field).type
                if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
                        or pa.types.is_large_binary(kind) or pa.types.is_string_view(kind)):  # fmt: skip
                    raise UserError(f"{file.path}: the column {options.text_field!r} holds {kind}, not text")
                for batch in batches(options.text_field):
                    yield _column_batch(file, batch.column(0), row, group, tally, options.separator)
                    row += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{file.path} is not a {file.form} file that can be read ({e})") from None


def _parquet_groups(pa, path):
    from pyarrow import parquet

    # buffered, not pre-buffered: a row group's column is read page by page (bounded memory)
    reader = parquet.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    schema = reader.schema_arrow
    for group in range(reader.num_row_groups):
        yield group, schema, lambda name, g=group: reader.iter_batches(ROWS_PER_BATCH, row_groups=[g], columns=[name])


def _arrow_groups(pa, path):
    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_stream(source)
        batches = iter(reader)
    except pa.ArrowInvalid:
        file_reader = pa.ipc.open_file(source)
        reader, batches = file_reader, (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))

    def column(name):
        for batch in batches:
            for start in range(0, batch.num_rows, ROWS_PER_BATCH):
                yield batch.slice(start, ROWS_PER_BATCH).select([name])

    yield None, reader.schema, column


def _column_batch(file: SourceFile, column, first_row: int, group: int | None, tally: Tally, separator: str):
    """One Arrow column chunk -> a Batch of its non-empty texts already joined by the separator, in Arrow's
    kernels (no Python string per row); a binary column that is not all UTF-8 is read row by row to name the
    row that is not."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.type != pa.string():
        try:
            column = column.cast(pa.string())  # checks that binary values are UTF-8
        except pa.ArrowInvalid:
            return _rows_one_by_one(file, column, first_row, group, tally)
    kept = pc.filter(column, pc.greater(pc.binary_length(column), 0))  # nulls and empty strings out
    tally.no_text += len(column) - len(kept)
    if not len(kept):
        return Batch()
    one_list = pa.ListArray.from_arrays(pa.array([0, len(kept)], pa.int32()), kept)
    return Batch(joined=pc.binary_join(one_list, separator)[0].as_buffer().to_pybytes())


def _rows_one_by_one(file: SourceFile, column, first_row: int, group: int | None, tally: Tally) -> Batch:
    texts, where = [], []
    for i, value in enumerate(column.to_pylist()):
        try:
            value = value.decode("utf-8") if value is not None else None
        except UnicodeDecodeError:
            tally.bad(file, _row_name(first_row + i, group), "is not UTF-8")
            continue
        if value:
            texts.append(value)
            where.append(_row_name(first_row + i, group))
        else:
            tally.no_text += 1
    return Batch(rows=texts, where=where)


def _row_name(row: int, group: int | None) -> str:
    return f"row {row} (counted from 0" + (f", in row group {group})" if group is not None else ")")


class _seekable:
    """The file's path, or for a compressed Parquet or Arrow file (which must be read at random) a temporary
    decompressed copy, removed afterwards."""

    def __init__(self, file: SourceFile) -> None:
        self.file, self.temp = file, None

    def __enter__(self):
        if self.file.compression is None:
            return self.file.path
        self.temp = tempfile.NamedTemporaryFile(prefix="charlstm-", suffix=f".{self.file.form}")  # noqa: SIM115
        with open_decompressed(self.file) as stream:
            try:
                shutil.copyfileobj(stream, self.temp, BLOCK_BYTES)
            except DAMAGED as e:
                self.temp.close()
                raise damaged(self.file, e) from None
        self.temp.flush()
        return self.temp.name

    def __exit__(self, *exc) -> None:
        if self.temp is not None:
            self.temp.close()
