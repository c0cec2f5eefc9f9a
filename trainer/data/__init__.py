"""Corpus -> character ids -> sharded stateful streams, one module a job:

- sources.py: where a text comes from (a file, a folder, a glob, the built-ins, the Tiny Shakespeare download);
- formats.py: what a file holds by its name (text, JSON Lines, CSV/TSV, Parquet, Arrow; compressed), `ReadOptions`;
- rows.py: a file -> its documents in bounded batches, bad rows said or counted (`Tally`); columns.py: the
  same for Parquet and Arrow;
- join.py: the documents of all files as one text in pieces, its sha256 on the way;
- streamed.py: such a corpus encoded as one stream into the id cache (`load_streamed`);
- digests.py: the sha256 of files and the index that spares hashing a large one again;
- encode.py: a text file -> ids into its vocabulary, in parallel for a large corpus;
- cache.py: the id cache (keyed by the corpus' sha256, memory-mapped, locked while built), `Corpus`,
  `load_corpus` and `split`;
- streams.py: the splits as B stateful streams (`TrainStreams`, `EvalStreams`);
- cli.py: `python -m trainer.data` (__main__.py).

What other modules use is importable from here.
"""

from trainer.data.cache import Corpus, cache_paths, file_position, id_chunks, load_corpus, split
from trainer.data.cli import main
from trainer.data.digests import Digests, cache_root, user_cache_dir
from trainer.data.encode import NORMAL_FORMS, encode_file, id_dtype, normalize
from trainer.data.formats import ReadOptions
from trainer.data.sources import BUILTINS, FILE_SEPARATOR, TINYSHAKESPEARE_URL, resolve_corpus
from trainer.data.streams import EvalStreams, TrainStreams, WindowReader

__all__ = [
    "BUILTINS",
    "FILE_SEPARATOR",
    "NORMAL_FORMS",
    "TINYSHAKESPEARE_URL",
    "Corpus",
    "Digests",
    "ReadOptions",
    "EvalStreams",
    "TrainStreams",
    "WindowReader",
    "cache_paths",
    "cache_root",
    "encode_file",
    "file_position",
    "id_chunks",
    "id_dtype",
    "load_corpus",
    "main",
    "normalize",
    "resolve_corpus",
    "split",
    "user_cache_dir",
]
