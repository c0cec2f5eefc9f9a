import json
from pathlib import Path

import numpy as np
import pytest

from trainer import data
from trainer.data import EvalStreams, TrainStreams, digests, encode, load_corpus, split
from trainer.errors import UserError


def test_train_streams_tile_the_split_exactly():
    n, batch, seq = 10_007, 6, 25
    ids = np.arange(n)  # each id is its own position, so coverage is directly visible
    streams = TrainStreams(ids, batch, seq)
    windows = streams.windows_per_epoch
    assert windows == (n - 1) // (batch * seq)
    seen = []
    for step in range(windows):
        x, y = streams.window(step, 0, batch)
        assert x.shape == (batch, seq) and x.dtype == np.int64
        np.testing.assert_array_equal(y, x + 1)  # targets are the inputs shifted by one
        seen.append(x)
    per_stream = np.concatenate(seen, axis=1)  # (B, W*T): each stream read window after window
    for b in range(batch):  # contiguous within a stream, and stream b+1 starts where b ends
        np.testing.assert_array_equal(per_stream[b], np.arange(b * streams.stream_len, (b + 1) * streams.stream_len))
    covered = np.sort(per_stream.ravel())
    np.testing.assert_array_equal(covered, np.arange(batch * streams.stream_len))  # no gap, no overlap
    # the position is a pure function of the step; epochs wrap and reset the state
    np.testing.assert_array_equal(streams.window(windows + 3, 0, batch)[0], streams.window(3, 0, batch)[0])
    assert streams.starts_epoch(0) and streams.starts_epoch(windows) and not streams.starts_epoch(1)
    # a process's shard is exactly its rows of the global batch
    np.testing.assert_array_equal(streams.window(5, 2, 4)[0], streams.window(5, 0, batch)[0][2:4])


def test_eval_streams_cover_the_whole_split():
    ids = np.arange(1_003)
    evals = EvalStreams(ids, 4, 64)
    xs, ys = zip(*evals.windows(0, 4))
    x, y = np.concatenate(xs, axis=1), np.concatenate(ys, axis=1)
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(np.sort(x.ravel()), np.arange(4 * evals.stream_len))
    assert 4 * evals.stream_len >= len(ids) - 4  # at most B-1 characters are not predicted


def test_an_evaluation_budget_reads_the_same_bounded_part_of_every_stream():
    """train.eval_chars: each of the B streams is read for its first eval_chars // B characters, spread over the
    whole split (one piece at the start of each stream), the same at every call and for any sharding."""
    ids = np.arange(100_003)  # each id is its own position
    whole, bounded = EvalStreams(ids, 8, 64), EvalStreams(ids, 8, 64, max_chars=4_000)
    assert bounded.stream_len == whole.stream_len == 12_500 and bounded.read_len == 500
    xs, ys = zip(*bounded.windows(0, 8))
    x, y = np.concatenate(xs, axis=1), np.concatenate(ys, axis=1)  # (8, 500)
    assert x.shape == (8, 500) and bounded.chars == 4_000 == y.size
    np.testing.assert_array_equal(y, x + 1)
    for b in range(8):  # stream b's first 500 characters: the pieces start 12,500 apart
        np.testing.assert_array_equal(x[b], np.arange(b * 12_500, b * 12_500 + 500))
    again = np.concatenate([w[0] for w in bounded.windows(0, 8)], axis=1)
    halves = [np.concatenate([w[0] for w in bounded.windows(first, first + 4)], axis=1) for first in (0, 4)]
    np.testing.assert_array_equal(again, x)  # the same part every time
    np.testing.assert_array_equal(np.concatenate(halves), x)  # and on 2 processes, their rows of it
    assert EvalStreams(ids, 8, 64, max_chars=10**9).read_len == whole.read_len  # a larger budget: the whole split
    assert EvalStreams(ids, 8, 64, max_chars=4_007).chars == 4_000  # rounded down to whole characters per stream


def test_windows_read_from_the_cache_are_the_ids(tmp_path):
    """The streams read a memory-mapped cache with positional reads (so that the pages read do not stay mapped):
    the same windows as indexing the ids, for the training split and for the validation split (a view that
    starts inside the file)."""
    path = tmp_path / "text.txt"
    path.write_text("".join(chr(0x61 + (i * 7919) % 26) + ("\n" if i % 61 == 0 else "") for i in range(40_000)))
    corpus = load_corpus(str(path), cache_dir=tmp_path / "cache")
    train_ids, val_ids = split(corpus.ids, 0.2)
    streams, evals = TrainStreams(train_ids, 8, 32), EvalStreams(val_ids, 8, 32, max_chars=2_000)
    assert streams.reader.file is not None and evals.reader.file is not None  # the positional reads are used
    in_memory = np.asarray(corpus.ids).copy()
    train_copy, val_copy = split(in_memory, 0.2)
    for step in (0, 1, 57, streams.windows_per_epoch + 3):
        for mine, theirs in zip(streams.window(step, 2, 6), TrainStreams(train_copy, 8, 32).window(step, 2, 6)):
            np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(evals.windows(0, 8), EvalStreams(val_copy, 8, 32, max_chars=2_000).windows(0, 8)):
        np.testing.assert_array_equal(mine[0], theirs[0])
        np.testing.assert_array_equal(mine[1], theirs[1])
    assert data.file_position(val_ids)[1] > data.file_position(corpus.ids)[1]  # the view starts inside the file
    np.testing.assert_array_equal(np.concatenate(list(data.id_chunks(val_ids))), val_copy)  # read by plain reads


def test_the_validation_split_written_as_text(tmp_path, capsys):
    """`python -m trainer.data --config ... --write-val FILE`: the split that serve.score can score whole."""
    from helpers import EMPTY_CONFIG, ENGLISH

    out = tmp_path / "val.txt"
    assert data.main(["--config", str(EMPTY_CONFIG), f"data.path={ENGLISH}", "--write-val", str(out)]) == 0
    corpus = load_corpus(str(ENGLISH))
    assert out.read_text(encoding="utf-8") == corpus.decode(split(corpus.ids, 0.1)[1])
    assert data.main([str(ENGLISH), "--write-val", str(out)]) == 2  # the split needs the config's val_fraction
    assert "--config" in capsys.readouterr().err


def test_validation_is_the_last_fraction():
    ids = np.arange(1000)
    train, val = split(ids, 0.1)
    assert len(val) == 100 and val[0] == 900 and train[-1] == 899


def test_unicode_round_trip(tmp_path):
    text = "¿Qué tal, señor Muñoz? ¡Olé! Ça va. Crème brûlée, naïve, Ångström, 日本語 🙂👍\n" * 3
    path = tmp_path / "unicode.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.decode(corpus.ids) == text
    assert corpus.vocab == sorted(set(text))
    assert all(len(ch) == 1 for ch in corpus.vocab)
    assert corpus.ids.dtype == np.uint8


def test_id_dtype_grows_with_the_vocab(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2  # 300 distinct CJK characters
    path = tmp_path / "cjk.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.ids.dtype == np.uint16 and len(corpus.vocab) == 300
    assert corpus.decode(corpus.ids) == text


def test_chunked_encoding_across_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "TEXT_CHUNK_BYTES", 7)  # ranges of 7 bytes, each extended to its next newline
    text = "añoñ🙂é" * 50 + "plain ascii " * 20
    path = tmp_path / "chunks.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.decode(corpus.ids) == text
    lines = "añoñ🙂é\n" * 50 + "plain ascii\n" * 20 + "🙂 the last line has no newline"  # many ranges
    path.write_text(lines, encoding="utf-8")
    assert len(encode._line_ranges(path)) == 71
    corpus = load_corpus(str(path))
    assert corpus.decode(corpus.ids) == lines and corpus.vocab == sorted(set(lines))


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello world\n" * 100, encoding="utf-8")
    load_corpus(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]  # nothing beside the corpus
    cached = sorted((data.user_cache_dir() / "ids").glob("*.ids.npy"))
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    assert isinstance(load_corpus(str(path)).ids, np.memmap)
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes  # reused, not rebuilt
    path.write_text("другой текст\n" * 100, encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.decode(corpus.ids) == "другой текст\n" * 100
    assert len(list((data.user_cache_dir() / "ids").glob("*.ids.npy"))) == len(cached) + 1
    moved = load_corpus(str(path), cache_dir=tmp_path / "elsewhere")  # data.cache_dir
    assert str(moved.ids.filename).startswith(str(tmp_path / "elsewhere" / "ids"))


def damage_ids_truncated(ids: Path, record: Path) -> None:
    ids.write_bytes(ids.read_bytes()[:-7])


def damage_ids_in_range(ids: Path, record: Path) -> None:
    """Bytes changed to other valid ids: without a digest this would train on wrong text unnoticed."""
    payload = bytearray(ids.read_bytes())
    payload[-1], payload[-2] = payload[-2], payload[-1] ^ 1
    ids.write_bytes(bytes(payload))


def damage_ids_out_of_range(ids: Path, record: Path) -> None:
    payload = bytearray(ids.read_bytes())
    payload[-3:] = b"\xff\xff\xff"
    ids.write_bytes(bytes(payload))


def damage_record_garbled(ids: Path, record: Path) -> None:
    record.write_text('{"vocab": {"a": 1}, "corpus_sha256": 3}', encoding="utf-8")


def damage_record_vocab_changed(ids: Path, record: Path) -> None:
    content = json.loads(record.read_text(encoding="utf-8"))
    content["vocab"][0], content["vocab"][1] = content["vocab"][1], content["vocab"][0]
    record.write_text(json.dumps(content), encoding="utf-8")


@pytest.mark.parametrize(
    "damage",
    [
        damage_ids_truncated,
        damage_ids_in_range,
        damage_ids_out_of_range,
        damage_record_garbled,
        damage_record_vocab_changed,
    ],
)
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, capsys, damage):
    path = tmp_path / "text.txt"
    text = "Una señora muy señora, ¿verdad? 🙂\n" * 40
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(str(path), cache_dir=tmp_path / "cache")
    ids_path = Path(corpus.ids.filename)
    damage(ids_path, ids_path.with_name(ids_path.name.replace(".ids.npy", ".json")))
    del corpus
    capsys.readouterr()
    rebuilt = load_corpus(str(path), cache_dir=tmp_path / "cache")
    assert rebuilt.decode(rebuilt.ids) == text
    assert "is damaged; rebuilding it" in capsys.readouterr().err
    load_corpus(str(path), cache_dir=tmp_path / "cache")
    assert capsys.readouterr().err == ""  # whole again


def test_not_utf8_names_the_byte_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "TEXT_CHUNK_BYTES", 5)
    path = tmp_path / "bad.txt"
    path.write_bytes("ñandú ".encode() * 3 + b"ok\xffrest")
    offset = len("ñandú ".encode() * 3) + 2
    with pytest.raises(UserError, match=f"byte offset {offset}\\b"):
        load_corpus(str(path))
    path.write_bytes(b"abc\xc3")  # truncated multi-byte sequence at the end
    with pytest.raises(UserError, match="byte offset 3"):
        load_corpus(str(path))


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="holds no text"):
        load_corpus(str(tmp_path))  # a folder: its files joined, and its one file is empty


def test_python_docs_builtin():
    """The offline quickstart's text: the reference documentation every CPython ships, as prose."""
    corpus = load_corpus("builtin:python-docs")
    text = corpus.decode(corpus.ids[:50_000])
    assert 300_000 < len(corpus.ids) < 2_000_000 and len(corpus.vocab) < 200
    assert "statement" in text and "The " in text and "\\n" not in text  # real newlines, not escaped ones


def test_a_large_corpus_is_not_read_again_to_find_its_cache(tmp_path, monkeypatch):
    """Files above HASH_WHOLE_BYTES (8 MB; 0 here) are hashed only when their size, mtime or inode change: a
    warm launch of a corpus of many GB costs a stat, not a read. An edit is still seen."""
    monkeypatch.setattr(digests, "HASH_WHOLE_BYTES", 0)
    hashed = []
    real = digests.sha256_file
    monkeypatch.setattr(digests, "sha256_file", lambda path: hashed.append(Path(path).suffix) or real(path))
    path = tmp_path / "big.txt"
    path.write_text("a large corpus\n" * 1000, encoding="utf-8")
    first = load_corpus(str(path), cache_dir=tmp_path / "cache")
    assert hashed == [".txt"]  # the corpus; the ids are hashed as they are written, for their record
    hashed.clear()
    again = load_corpus(str(path), cache_dir=tmp_path / "cache")
    assert hashed == [] and again.sha256 == first.sha256  # a stat of each, nothing read
    path.write_text("a larger corpus!\n" * 1000, encoding="utf-8")
    edited = load_corpus(str(path), cache_dir=tmp_path / "cache")
    assert edited.sha256 != first.sha256 and edited.decode(edited.ids[:16]) == "a larger corpus!"
    hashed.clear()
    ids_path = Path(edited.ids.filename)
    payload = bytearray(ids_path.read_bytes())
    payload[-1] ^= 1  # damaged in place: its stamp changes, so its digest is checked and the damage found
    ids_path.write_bytes(bytes(payload))
    rebuilt = load_corpus(str(path), cache_dir=tmp_path / "cache")
    assert ".npy" in hashed and rebuilt.decode(rebuilt.ids) == "a larger corpus!\n" * 1000
    folder = tmp_path / "books"  # a folder of many files: each is remembered, so a warm launch reads none
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.txt").write_text(f"book {i}\n" * 100, encoding="utf-8")
    joined = load_corpus(str(folder), cache_dir=tmp_path / "cache")
    hashed.clear()
    assert load_corpus(str(folder), cache_dir=tmp_path / "cache").sha256 == joined.sha256 and hashed == []
    (folder / "3.txt").write_text("book three, revised\n", encoding="utf-8")
    assert load_corpus(str(folder), cache_dir=tmp_path / "cache").sha256 != joined.sha256 and hashed


def test_remapping_into_another_vocabulary_streams_into_the_cache(tmp_path, monkeypatch):
    """Fine-tuning's remap (Corpus.with_vocab) goes chunk by chunk into the id cache, keyed by the vocabulary, and
    is reused by the next launch."""
    monkeypatch.setattr(digests, "CHUNK_BYTES", 1000)  # many chunks
    path = tmp_path / "text.txt"
    text = "Una señora muy señora, ¿verdad? 🙂\n" * 400
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(str(path), cache_dir=tmp_path / "cache")
    vocab = ["#", *reversed(corpus.vocab), "@"]  # another order, with characters the text lacks
    remapped = corpus.with_vocab(vocab, tmp_path / "cache")
    assert remapped.vocab == vocab and remapped.sha256 == corpus.sha256 and remapped.ids.dtype == np.uint8
    assert remapped.decode(remapped.ids) == text and isinstance(remapped.ids, np.memmap)
    assert remapped.ids.filename != corpus.ids.filename
    written = Path(remapped.ids.filename).stat().st_mtime_ns
    assert Path(corpus.with_vocab(vocab, tmp_path / "cache").ids.filename).stat().st_mtime_ns == written  # reused
    other = corpus.with_vocab([*vocab, "%"], tmp_path / "cache")  # another vocabulary: another entry
    assert other.ids.filename != remapped.ids.filename and other.decode(other.ids) == text


REMAP_UNDER_LIMIT = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))  # heap and anonymous memory; not a file's mapped pages
import numpy as np
from trainer.data import load_corpus
corpus = load_corpus(sys.argv[2], cache_dir=sys.argv[3])
try:
    np.empty(len(corpus.ids), dtype=np.uint8)
    print("the limit would let the whole array into memory")
    sys.exit(3)
except MemoryError:
    pass
vocab = ["#", *corpus.vocab]
remapped = corpus.with_vocab(vocab, sys.argv[3])
head, tail = remapped.decode(remapped.ids[:40]), remapped.decode(remapped.ids[-40:])
print(len(remapped.ids), repr(head), repr(tail))
"""


def test_fine_tuning_remaps_a_corpus_larger_than_its_memory(tmp_path):
    """A subprocess whose memory (RLIMIT_DATA) cannot hold the corpus' ids remaps them into another vocabulary:
    the remap streams through the ids in chunks (the whole array in memory: MemoryError)."""
    import subprocess
    import sys

    from helpers import ENGLISH, ROOT

    english = ENGLISH.read_text(encoding="utf-8")
    path = tmp_path / "big.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(1_700):  # 204 MB of ids (one byte each) against a limit of 170 MB
            f.write(english)
    corpus = load_corpus(str(path), cache_dir=tmp_path / "cache")  # encoded here, without the limit
    assert len(corpus.ids) > 200_000_000
    del corpus
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    limit = str(170 << 20)
    result = subprocess.run(
        [sys.executable, "-c", REMAP_UNDER_LIMIT, limit, str(path), str(tmp_path / "cache")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.split(" ", 1) == [str(1_700 * len(english)), f"{english[:40]!r} {english[-40:]!r}\n"]


def test_python_stdlib_builtin():
    corpus = load_corpus("builtin:python-stdlib")
    text = corpus.decode(corpus.ids[:20_000])
    assert "import" in text and "def " in text
    assert len(corpus.ids) > 5_000_000


def test_too_short_corpus_says_what_it_needs():
    with pytest.raises(UserError, match=r"needs at least 3,201.*smaller train.batch_size"):
        TrainStreams(np.arange(1000), 32, 100)
    with pytest.raises(UserError, match="validation split has 10 characters"):
        EvalStreams(np.arange(10), 32, 100)


def test_read_only_corpus_folder_uses_the_user_cache(tmp_path):
    """Like ../shared in CI: a folder without write bits is left alone, even when running as root."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    (folder / "text.txt").write_text("read-only corpus ñ\n" * 50, encoding="utf-8")
    folder.chmod(0o555)
    try:
        corpus = load_corpus(str(folder / "text.txt"))
        assert sorted(p.name for p in folder.iterdir()) == ["text.txt"]  # nothing written beside it
        assert str(corpus.ids.filename).startswith(str(data.user_cache_dir()))
        assert corpus.decode(corpus.ids) == "read-only corpus ñ\n" * 50
    finally:
        folder.chmod(0o755)


def test_a_folder_or_a_glob_is_its_files_joined(tmp_path):
    """Every file under a folder (recursively, hidden ones aside) or matched by a glob, in sorted path order,
    joined with a blank line; cached by content."""
    (tmp_path / "books" / "part2").mkdir(parents=True)
    (tmp_path / "books" / "a.txt").write_text("Capítulo uno.\n", encoding="utf-8")
    (tmp_path / "books" / "part2" / "b.txt").write_text("Capítulo dos 🙂", encoding="utf-8")
    (tmp_path / "books" / ".notes.txt").write_text("private", encoding="utf-8")
    joined = "Capítulo uno.\n" + data.FILE_SEPARATOR + "Capítulo dos 🙂"
    folder = load_corpus(str(tmp_path / "books"))
    assert folder.decode(folder.ids) == joined
    matched = load_corpus(str(tmp_path / "books" / "**" / "*.txt"))
    assert matched.decode(matched.ids) == joined and matched.sha256 == folder.sha256
    only_a = load_corpus(str(tmp_path / "books" / "a*"))
    assert only_a.decode(only_a.ids) == "Capítulo uno.\n"
    (tmp_path / "books" / "a.txt").write_text("Capítulo uno, otra vez.\n", encoding="utf-8")
    changed = load_corpus(str(tmp_path / "books"))
    assert changed.sha256 != folder.sha256 and changed.decode(changed.ids).startswith("Capítulo uno, otra vez.")


def test_folders_and_globs_that_cannot_train(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="the folder .* has no files"):
        load_corpus(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="the glob .* matches no file"):
        load_corpus(str(tmp_path / "*.nothing"))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "text.txt").write_text("fine\n", encoding="utf-8")
    (tmp_path / "mixed" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(UserError, match=r"image\.png is not UTF-8 text \(invalid byte 0x89 at byte offset 0, line 1\)"):
        load_corpus(str(tmp_path / "mixed"))
