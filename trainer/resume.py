"""How the processes of a run start together: the same text everywhere, and one reader of each checkpoint.

On machines that do not share a disk, only the main process's node has out_dir (ckpt.pt) and, usually,
train.init_from; the other nodes need the corpus and nothing else. So the main process alone opens those
files, checks them, and hands every process the same payload through the process group (`broadcast_from_main`): a
rerun resumes exactly wherever the files live. Before that, every process loads its own copy of the corpus
and compares its sha256, Unicode form and vocabulary with the main process's in one small collective.

Anything wrong that a process finds while starting (a missing corpus on one node, a checkpoint that does not
fit) ends every process with the same one line (`all_or_none`): a process that stopped alone would leave the
others waiting in their next collective.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from trainer.checkpoint import Checkpoint, load_checkpoint
from trainer.config import Config
from trainer.data import Corpus, ReadOptions, load_corpus
from trainer.dist.group import all_or_none, attempt, broadcast_from_main, gather_objects, node_name, raise_first
from trainer.errors import UserError
from trainer.launch.exit_status import DATA_NOTED


class TextIdentity(NamedTuple):
    sha256: str  # of the corpus bytes
    normalize: str  # the Unicode form
    vocab_sha256: str  # of the vocabulary, as JSON

    def short(self) -> str:
        return f"sha256 {self.sha256[:16]}, {self.normalize}, vocabulary {self.vocab_sha256[:12]}"


def load_here(cfg: Config) -> tuple[Corpus | None, str | None]:
    """This process's corpus from its own disk (encoded and cached once per machine), or why not. Called before
    the process group exists, so that no collective waits for a long first encode."""
    data = cfg.data
    notes = says_data_notes(os.environ)
    return attempt(lambda: load_corpus(data.path, data.cache_dir, data.normalize, ReadOptions.of(data), notes))


def says_data_notes(environ: Mapping[str, str]) -> bool:
    """Whether this process says what the corpus' reading left out: the first process of each machine, unless
    the launcher's encode step on the machine has said it already."""
    return environ.get("LOCAL_RANK", "0") == "0" and not environ.get(DATA_NOTED)


def same_text_everywhere(loaded: tuple[Corpus | None, str | None], cfg: Config, accelerator) -> Corpus:
    """The corpus load_here gave, once every process has loaded one and all are the main process's text: the
    same bytes, Unicode form and vocabulary. Any process's error is raised on all. One collective."""
    corpus, error = loaded
    identity = None
    if corpus is not None:
        vocab_sha256 = hashlib.sha256(json.dumps(corpus.vocab).encode()).hexdigest()
        identity = TextIdentity(corpus.sha256, cfg.data.normalize, vocab_sha256)
    gathered = gather_objects(accelerator, (node_name(), error, identity))
    raise_first([(where, message) for where, message, _ in gathered])
    main_where, _, main_identity = gathered[0]
    for where, _, identity in gathered[1:]:
        if identity != main_identity:
            raise UserError(
                f"{where} trains on another text than the main process: {identity.short()} there, "
                f"{main_identity.short()} on {main_where}: data.path must hold the same text on every node"
            )
    return corpus


# ---------------------------------------------------------------- the two checkpoints a run may start from


def read_resume_checkpoint(path: Path, cfg: Config, corpus: Corpus, accelerator) -> Checkpoint | None:
    """out_dir/ckpt.pt as the main process reads and checks it (None when there is none), on every process."""

    def read() -> Checkpoint | None:
        if not accelerator.is_main_process or not path.exists():
            return None
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, cfg, corpus, path)
        return ckpt

    return broadcast_from_main(all_or_none(accelerator, read), accelerator)


def fine_tuning(cfg: Config, corpus: Corpus, accelerator) -> tuple[Corpus, Checkpoint | None]:
    """With train.init_from: its checkpoint (read by the main process, handed to all), and the corpus with
    ids into its vocabulary followed by the characters the new text adds (characters only the old text had
    stay). Its model shape must match."""
    if cfg.train.init_from is None:
        return corpus, None
    path = Path(cfg.train.init_from)

    def read() -> Checkpoint | None:
        if not accelerator.is_main_process:
            return None
        init = load_checkpoint(path)
        for key in ("embed", "hidden", "layers"):
            before, now = init["config"].get("model", {}).get(key), getattr(cfg.model, key)
            if before != now:
                raise UserError(
                    f"train.init_from {path} has model.{key}={before}, this config says {now}: they must match"
                )
        return {key: init[key] for key in ("model", "vocab", "config", "step")}  # its optimizer state stays behind

    init = broadcast_from_main(all_or_none(accelerator, read), accelerator)
    added = sorted(set(corpus.vocab) - set(init["vocab"]))
    if accelerator.is_main_process:
        shown = " ".join(repr(ch) for ch in added[:20]) + (" ..." if len(added) > 20 else "")
        print(f"charlstm: init_from {path} (step {init['step']}): {len(added)} characters added to its "
              f"{len(init['vocab'])}" + (f": {shown}" if added else ""), file=sys.stderr)  # fmt: skip
    vocab = init["vocab"] + added
    return all_or_none(accelerator, lambda: corpus.with_vocab(vocab, cfg.data.cache_dir, cfg.data.normalize)), init


def check_resumable(ckpt: Checkpoint, cfg: Config, corpus: Corpus, path: Path) -> None:
    """Refuse, naming the difference, a checkpoint that does not fit this run; nothing gets overwritten."""
    if ckpt["vocab"] != corpus.vocab:
        raise UserError(
            f"{path} was trained on a different vocabulary ({len(ckpt['vocab'])} characters, this corpus has "
            f"{len(corpus.vocab)}): use another out_dir"
        )
    if ckpt.get("corpus_sha256", corpus.sha256) != corpus.sha256:
        before = ckpt["config"].get("data", {}).get("path", "?")
        raise UserError(
            f"{path} was trained on another text ({before}) than data.path={cfg.data.path}, with the same "
            f"characters: an out_dir belongs to one run; to train on this text from it, use another out_dir "
            f"and train.init_from={path}"
        )
    for key in ("model.embed", "model.hidden", "model.layers", "train.batch_size", "train.seq_len"):
        section, name = key.split(".")
        before, now = ckpt["config"].get(section, {}).get(name), getattr(getattr(cfg, section), name)
        if before != now:
            raise UserError(
                f"{path} holds a run with {key}={before}, this config says {now}: "
                "use another out_dir, or the same value to resume"
            )
    for key in ("optimizer", "streams"):
        if key not in ckpt:
            raise UserError(f"{path} has no {key!r} state to resume from (export it, or use another out_dir)")
    total = ckpt.get("max_steps") if cfg.train.max_steps == "auto" else cfg.train.max_steps
    if total is not None and ckpt["step"] > total:
        raise UserError(f"{path} is at step {ckpt['step']}, past train.max_steps={total}")
