"""`python -m trainer.data`: resolve and encode a corpus into the id cache (launch.sh runs it on every machine
before a run of several processes), or write its validation split as text."""

from __future__ import annotations

import sys
from pathlib import Path

from trainer.data.cache import id_chunks, load_corpus, split
from trainer.data.formats import ReadOptions
from trainer.data.sources import BUILTINS
from trainer.errors import UserError
from trainer.files import atomic_write


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.data SPEC` or `--config FILE [key=value ...]`: resolve and encode a corpus (as the
    config's data.path, data.normalize and data.cache_dir say), print where its ids live. launch.sh runs it
    on every machine before a run of several processes, so that no process waits for a long first encode in
    a collective."""
    import argparse

    from trainer.config import check_processes, load_config

    parser = argparse.ArgumentParser(prog="trainer.data", description="Encode a corpus into the id cache.")
    parser.add_argument("spec", nargs="?", help="a data.path value: a file, a folder, a glob, tinyshakespeare, "
                        f"{', '.join(BUILTINS)}")  # fmt: skip
    parser.add_argument("--config", help="take data.path and the other data.* keys from this config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the config, e.g. data.path=novel.txt")
    parser.add_argument("--processes", type=int, help="with --config: check that the run fits this many processes")
    parser.add_argument(
        "--write-val",
        metavar="FILE",
        help="with --config: write the validation split (data.val_fraction) to FILE as text, for "
        "`python -m serve.score MODEL FILE` to score it whole",
    )
    args = parser.parse_args(argv)
    try:
        val_fraction = None
        if args.config is not None:
            overrides = [args.spec, *args.overrides] if args.spec else args.overrides
            cfg = load_config(args.config, overrides)
            if args.processes is not None:
                check_processes(cfg, args.processes)
            spec, cache_dir, form = cfg.data.path, cfg.data.cache_dir, cfg.data.normalize
            val_fraction, options = cfg.data.val_fraction, ReadOptions.of(cfg.data)
        elif args.spec is not None and not args.overrides and args.write_val is None:
            spec, cache_dir, form, options = args.spec, None, "NFC", ReadOptions()
        else:
            print("error: give a data.path value, or --config FILE [key=value ...] (with --write-val)", file=sys.stderr)
            return 2
        corpus = load_corpus(spec, cache_dir, form, options)
        if args.write_val is not None:
            _, val_ids = split(corpus.ids, val_fraction)
            try:
                with atomic_write(Path(args.write_val)) as out:
                    for chunk in id_chunks(val_ids):
                        out.write(corpus.decode(chunk).encode("utf-8"))
            except OSError as e:
                raise UserError(f"--write-val {args.write_val}: cannot be written: {e.strerror or e}") from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(corpus.ids):,} characters, vocab {len(corpus.vocab)}, sha256 {corpus.sha256[:16]}; "
        f"ids cached in {corpus.ids.filename}"
        + (f"; validation split written to {args.write_val}" if args.write_val else "")
    )
    return 0
