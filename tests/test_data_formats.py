"""Corpora as people keep them: JSON Lines, CSV/TSV, Parquet, Arrow and saved `datasets` folders, compressed
text; each against the plain text it holds, the options, and every kind of bad data."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from trainer.data import ReadOptions, load_corpus
from trainer.data import join as join_module
from trainer.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SAVED_DATASET = Path(__file__).parent / "data" / "hf_saved"  # written by datasets 5.2.0's save_to_disk
DOCUMENTS = ["El libro empieza años\nde soledad.", 'Capítulo "dos" 🙂, coma', "¿Fin?\tcon tabulador", "e\u0301 NFC"]
PLAIN = "\n\n".join(DOCUMENTS)
COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLSTM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def json_lines(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n").encode()


def delimited(rows: list[list], delimiter: str = ",") -> bytes:
    import io

    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter).writerows(rows)
    return out.getvalue().encode()


def parquet(table, **kwargs) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue().to_pybytes()


def arrow_stream(table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


FORMATS = {
    "txt": lambda docs: "\n\n".join(docs).encode(),
    "jsonl": lambda docs: json_lines([{"id": i, "text": t} for i, t in enumerate(docs)]),
    "csv": lambda docs: delimited([["id", "text"], *[[i, t] for i, t in enumerate(docs)]]),
    "tsv": lambda docs: delimited([["text", "id"], *[[t, i] for i, t in enumerate(docs)]], "\t"),
    "parquet": lambda docs: parquet(pa.table({"text": docs, "id": range(len(docs))}), row_group_size=3),
    "arrow": lambda docs: arrow_stream(pa.table({"text": docs})),
}


def plain_corpus(tmp_path: Path, text: str = PLAIN):
    (tmp_path / "plain.txt").write_text(text, encoding="utf-8")
    return load_corpus(str(tmp_path / "plain.txt"))


@pytest.mark.parametrize("compression", list(COMPRESS))
@pytest.mark.parametrize("form", list(FORMATS))
def test_each_format_and_compression_holds_its_plain_text(tmp_path, form, compression):
    """The same ids, vocabulary and digest as the joined documents kept as one plain file."""
    if form == "txt" and not compression:
        pytest.skip("the plain file itself")
    plain = plain_corpus(tmp_path)
    path = tmp_path / f"corpus.{form}{compression}"
    path.write_bytes(COMPRESS[compression](FORMATS[form](DOCUMENTS)))
    corpus = load_corpus(str(path))
    assert corpus.decode(corpus.ids) == unicodedata.normalize("NFC", PLAIN)
    assert corpus.sha256 == plain.sha256 and corpus.vocab == plain.vocab and (corpus.ids == plain.ids).all()


def test_shards_in_file_order_and_row_order_joined_by_the_separator(tmp_path, capsys):
    """A folder of mixed shards: sorted file order, row order within each, documents and files joined by
    data.separator (which joins the vocabulary); rows with null or empty text left out and counted."""
    shards = tmp_path / "shards"
    (shards / "b").mkdir(parents=True)
    first = json_lines([{"text": "uno"}, {"text": None}, {"text": "dos"}])
    (shards / "a.jsonl.zst").write_bytes(COMPRESS[".zst"](first))
    (shards / "b" / "c.parquet").write_bytes(parquet(pa.table({"text": ["tres", "", "cuatro", "cinco"]}),
                                                     row_group_size=2))  # fmt: skip
    (shards / "b" / "d.txt").write_text("seis\n", encoding="utf-8")
    corpus = load_corpus(str(shards), options=ReadOptions(separator="<|fin|>"))
    assert corpus.decode(corpus.ids) == "uno<|fin|>dos<|fin|>tres<|fin|>cuatro<|fin|>cinco<|fin|>seis\n"
    assert "|" in corpus.vocab
    assert capsys.readouterr().err.strip() == "charlstm: data: left out 2 rows with no text (null or empty)"
    again = load_corpus(str(shards), options=ReadOptions(separator="<|fin|>"))  # from the cache: said again
    assert again.sha256 == corpus.sha256 and "2 rows with no text" in capsys.readouterr().err
    joined = load_corpus(str(shards))
    assert joined.decode(joined.ids) == "uno\n\ndos\n\ntres\n\ncuatro\n\ncinco\n\nseis\n"


def test_text_field_names_the_field_or_column(tmp_path):
    """data.text_field picks the field and the column; a byte order mark before the first line is passed over."""
    rows = json_lines([{"text": "no", "body": "sí"}, {"body": "también"}])
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + rows)
    (tmp_path / "b.csv").write_bytes(delimited([["body", "text"], ["tercero", "no"]]))
    corpus = load_corpus(str(tmp_path / "[ab].*"), options=ReadOptions(text_field="body"))
    assert corpus.decode(corpus.ids) == "sí\n\ntambién\n\ntercero"


def test_a_saved_hugging_face_dataset(tmp_path, capsys):
    """The folder `datasets` writes: its Arrow files in state.json's order, its metadata left out."""
    corpus = load_corpus(str(SAVED_DATASET))
    assert corpus.decode(corpus.ids) == "El libro empieza años\nde soledad.\n\nCapítulo dos 🙂\n\n¿Fin?"
    assert "1 row with no text" in capsys.readouterr().err
    splits = tmp_path / "dict"
    splits.mkdir()
    (splits / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with pytest.raises(UserError, match=r"saved DatasetDict with the splits train, test: name one of them"):
        load_corpus(str(splits))


def test_pieces_cut_anywhere_safe_encode_as_the_whole(tmp_path, monkeypatch):
    """Pieces far smaller than a line and a line longer than the longest piece: cut only after a newline or
    before an ASCII character, NFC composes across no cut, and the ids are the plain file's."""
    text = ("ae\u0301 n\u0303o " * 40 + "\n") * 20 + "e\u0301" * 300
    plain = plain_corpus(tmp_path, text)
    monkeypatch.setattr(join_module, "PIECE_BYTES", 7)
    monkeypatch.setattr(join_module, "MAX_PIECE_BYTES", 50)
    (tmp_path / "z.txt.gz").write_bytes(gzip.compress(text.encode()))
    corpus = load_corpus(str(tmp_path / "z.txt.gz"))
    assert corpus.sha256 == plain.sha256 and corpus.vocab == plain.vocab and (corpus.ids == plain.ids).all()
    assert "\u0301" not in corpus.vocab  # composed: é and ñ


def test_a_changed_row_changes_the_digest_and_a_second_load_reads_nothing(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(json_lines([{"text": "uno"}, {"text": "dos"}]))
    first = load_corpus(str(path))
    monkeypatch.setitem(join_module.READERS, "jsonl", None)  # a second load reads the record, not the rows
    assert load_corpus(str(path)).sha256 == first.sha256
    monkeypatch.undo()
    path.write_bytes(json_lines([{"text": "uno"}, {"text": "dós"}]))
    changed = load_corpus(str(path))
    assert changed.sha256 != first.sha256 and changed.decode(changed.ids) == "uno\n\ndós"


BAD = [
    ("a.jsonl", lambda: b'{"text": "ok"}\n{"text": "broken\n', r"a\.jsonl: line 2 is not JSON"),
    ("a.jsonl", lambda: b'{"text": "ok"}\n\n{"body": "x"}\n', r"a\.jsonl: line 3 has no field 'text'"),
    ("a.jsonl", lambda: b'{"text": "ok"}\n{"text": 12}\n', r"a\.jsonl: line 2 holds a number in 'text', not a string"),
    ("a.jsonl", lambda: b'{"text": "ok"}\n["text"]\n', r"a\.jsonl: line 2 is a list, not an object"),
    ("a.jsonl", lambda: b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"a\.jsonl: line 2 is not UTF-8"),
    ("a.jsonl", lambda: b'{"text": "ok"}\n{"text": "\\ud800"}\n', r"a\.jsonl: line 2 holds a lone surrogate"),
    ("a.json", lambda: b'[{"text": "ok"}]\n', r"a\.json holds a JSON array; JSON Lines .*jq -c"),
    (
        "a.csv",
        lambda: b"id,text\n1,ok\n2,bad,row\n",
        r"a\.csv: row 3 \(the header is row 1\) has 3 fields, the header 2",
    ),
    ("a.csv", lambda: b"id,body\n1,ok\n", r"a\.csv has no column 'text' \(data\.text_field\)"),
    ("a.csv", lambda: b'id,text\n1,"two\nlines"\n2,caf\xe9\n', r"a\.csv: row 3 \(the header is row 1\) is not UTF-8"),
    ("a.parquet", lambda: parquet(pa.table({"body": ["x"]})), r"a\.parquet has no column 'text' .*its columns: body"),
    ("a.parquet", lambda: parquet(pa.table({"text": [1, 2]})), r"a\.parquet: the column 'text' holds int64, not text"),
    (
        "a.parquet",
        lambda: parquet(
            pa.table({"text": pa.array([b"ok", b"ok", b"caf\xe9"], pa.binary())}), row_group_size=2
        ),  # fmt: skip
        r"a\.parquet: row 2 \(counted from 0, in row group 1\) is not UTF-8",
    ),
    ("a.parquet", lambda: b"PAR1 this is not parquet", r"a\.parquet is not a parquet file that can be read"),
    ("a.txt.gz", lambda: gzip.compress(b"text " * 10_000)[:-40], r"a\.txt\.gz: the \.gz data is truncated or damaged"),
    (
        "a.txt.zst",
        lambda: zstandard.ZstdCompressor().compress(bytes(range(256)).hex().encode() * 50)[:-40],
        r"a\.txt\.zst: the \.zst data is truncated or damaged",
    ),
    (
        "a.txt.zst",
        lambda: b"\x28\xb5\x2f\xfd" + bytes(range(64)),
        r"a\.txt\.zst: the \.zst data is truncated or damaged",
    ),
    (
        "a.jsonl.gz",
        lambda: gzip.compress(json_lines([{"text": "t" * 50}] * 2000))[:-40],
        r"a\.jsonl\.gz: the \.gz data is truncated or damaged",
    ),
    (
        "a.txt.bz2",
        lambda: bz2.compress("línea\n".encode() + b"caf\xe9\n"),
        r"a\.txt\.bz2 is not UTF-8 text \(invalid "
        r"byte 0xe9 at byte offset 10, line 2\)",
    ),
]


@pytest.mark.parametrize("name, content, message", BAD, ids=[f"{n}:{m[:30]}" for n, _, m in BAD])
def test_bad_data_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, cache, name, content, message):
    path = tmp_path / "data" / name
    path.parent.mkdir()
    path.write_bytes(content())
    with pytest.raises(UserError, match=message):
        load_corpus(str(path))
    assert not list(cache.rglob("*.npy")) and not list(cache.rglob("sources/*.json"))


def test_skip_leaves_bad_rows_out_and_counts_them_in_one_line(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "uno"}\nnot json\n{"body": 1}\n{"text": null}\n{"text": "dos"}\n')
    (tmp_path / "b.csv").write_bytes(b"text,n\ntres,1\nbad,2,3\ncuatro,4\n")
    corpus = load_corpus(str(tmp_path / "[ab].*"), options=ReadOptions(bad_rows="skip"))
    assert corpus.decode(corpus.ids) == "uno\n\ndos\n\ntres\n\ncuatro"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["charlstm: data: left out 3 bad rows (2 in a.jsonl, 1 in b.csv; the first: a.jsonl line 2 is "
                     "not JSON) and 1 row with no text (null or empty)"]  # fmt: skip
    (tmp_path / "c.jsonl").write_bytes(b'nope\n{"text": null}\n')
    with pytest.raises(UserError, match=r"c\.jsonl' holds no text \(left out 1 bad row .* and 1 row with no text"):
        load_corpus(str(tmp_path / "c.jsonl"), options=ReadOptions(bad_rows="skip"))


def test_a_format_without_its_library_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "a.parquet").write_bytes(parquet(pa.table({"text": ["x"]})))
    (tmp_path / "a.txt.zst").write_bytes(COMPRESS[".zst"](b"x"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(UserError, match=r"a\.parquet: parquet files need pyarrow: pip install 'charlstm\[data\]'"):
        load_corpus(str(tmp_path / "a.parquet"))
    with pytest.raises(UserError, match=r"a\.txt\.zst: \.zst files need the zstandard package: pip install"):
        load_corpus(str(tmp_path / "a.txt.zst"))


def test_training_on_bad_rows_stops_before_any_step_with_one_line(tmp_path):
    """Through the trainer: exit 2, one line, nothing in out_dir; `skip` trains and says what it left out."""
    (tmp_path / "a.jsonl").write_bytes(json_lines([{"text": "uno dos tres " * 400}] * 20) + b"{oops\n")
    out = tmp_path / "run"
    train = [sys.executable, "-m", "trainer.train", "--config", "configs/tiny.yaml", f"data.path={tmp_path}/a.jsonl",
             f"out_dir={out}", "train.max_steps=2", "model.hidden=16", "train.batch_size=2", "train.seq_len=16",
             f"data.cache_dir={tmp_path}/cache"]  # fmt: skip
    result = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path}/a.jsonl: line 21 is not JSON (data.bad_rows=skip leaves such rows out)"
    ]
    assert not (out / "ckpt.pt").exists()
    result = subprocess.run([*train, "data.bad_rows=skip"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("left out 1 bad row (1 in a.jsonl; the first: a.jsonl line 21 is not JSON)") == 1


def test_what_was_left_out_is_said_once_per_machine(tmp_path, capsys):
    """On the first process of each machine, and not again in its workers once the launcher's encode step on
    that machine has said it."""
    from trainer.resume import says_data_notes

    assert says_data_notes({}) and says_data_notes({"LOCAL_RANK": "0"})
    assert not says_data_notes({"LOCAL_RANK": "1"})
    assert not says_data_notes({"LOCAL_RANK": "0", "CHARLSTM_DATA_NOTED": "1"})
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "uno"}\n{"text": null}\n')
    load_corpus(str(tmp_path / "a.jsonl"), notes=False)
    assert capsys.readouterr().err == ""
    load_corpus(str(tmp_path / "a.jsonl"))
    assert capsys.readouterr().err == "charlstm: data: left out 1 row with no text (null or empty)\n"


def test_a_bad_byte_far_into_compressed_text_is_named_by_its_line(tmp_path, monkeypatch):
    import trainer.data.rows as rows

    monkeypatch.setattr(rows, "BLOCK_BYTES", 4)  # the bad byte lies many reads in
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"uno\ndos\ntres caf\xe9\ncuatro\n"))
    with pytest.raises(UserError, match=r"a\.txt\.gz is not UTF-8 text \(invalid byte 0xe9 at byte offset 16, line 3"):
        load_corpus(str(tmp_path / "a.txt.gz"))
