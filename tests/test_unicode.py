"""Unicode normal forms: the corpus is put into data.normalize (NFC by default) before its vocabulary is built,
the form travels with the model, and every sampler puts a prime into it."""

import json
import shutil
import subprocess
import unicodedata

import numpy as np
import onnx
import pytest
from helpers import SPANISH, run_train

from export.onnx import main as export_main
from serve import Sampler
from trainer.checkpoint import load_checkpoint
from trainer.data import load_corpus

SPANISH_TEXT = SPANISH.read_text(encoding="utf-8")
NFD_PRIME, NFC_PRIME = unicodedata.normalize("NFD", "El niño"), unicodedata.normalize("NFC", "El niño")
SMALL = ["train.batch_size=4", "train.seq_len=16", "data.val_fraction=0.2", "train.max_steps=30"]


def train_and_export(tmp_path_factory, text: str, *overrides: str):
    folder = tmp_path_factory.mktemp("unicode")
    corpus = folder / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    assert run_train(f"data.path={corpus}", f"out_dir={folder}", *SMALL, *overrides) == 0
    assert export_main([str(folder / "ckpt.pt")]) == 0
    return folder


@pytest.fixture(scope="module")
def nfd_corpus_model(tmp_path_factory):
    """The Spanish text stored decomposed (ñ as n + U+0303), trained with the default data.normalize=NFC."""
    return train_and_export(tmp_path_factory, unicodedata.normalize("NFD", SPANISH_TEXT))


def test_nfd_corpus_in_nfc_samples_with_either_prime(nfd_corpus_model):
    ckpt = load_checkpoint(nfd_corpus_model / "ckpt.pt")
    assert ckpt["normalize"] == "NFC" and "ñ" in ckpt["vocab"] and "\u0303" not in ckpt["vocab"]
    sampler = Sampler(nfd_corpus_model / "ckpt.onnx")
    assert sampler.normalize == "NFC"
    greedy = sampler.generate(NFC_PRIME, 80, top_k=1)
    assert sampler.generate(NFD_PRIME, 80, top_k=1) == greedy  # the same ids after normalization


def test_nfc_corpus_samples_with_an_nfd_prime(tmp_path_factory):
    folder = train_and_export(tmp_path_factory, unicodedata.normalize("NFC", SPANISH_TEXT))
    sampler = Sampler(folder / "ckpt.onnx")
    assert sampler.generate(NFD_PRIME, 50, top_k=1) == sampler.generate(NFC_PRIME, 50, top_k=1)


def test_none_keeps_the_code_points(tmp_path_factory, capsys):
    folder = train_and_export(tmp_path_factory, unicodedata.normalize("NFD", SPANISH_TEXT), "data.normalize=none")
    vocab = load_checkpoint(folder / "ckpt.pt")["vocab"]
    assert "\u0303" in vocab and "ñ" not in vocab
    sampler = Sampler(folder / "ckpt.onnx")
    assert sampler.normalize == "none"
    sampler.generate(NFD_PRIME, 20, top_k=1)  # decomposed, as the corpus
    with pytest.raises(Exception, match="does not know: 'ñ'"):
        sampler.generate(NFC_PRIME, 20, top_k=1)


def test_the_id_cache_is_keyed_by_the_form(tmp_path):
    path = tmp_path / "nfd.txt"
    path.write_text(unicodedata.normalize("NFD", "año señor niño\n") * 30, encoding="utf-8")
    composed = load_corpus(str(path), form="NFC")
    raw = load_corpus(str(path), form="none")
    assert composed.ids.filename != raw.ids.filename
    assert "ñ" in composed.vocab and "\u0303" in raw.vocab
    assert len(composed.ids) < len(raw.ids)
    assert composed.decode(composed.ids) == unicodedata.normalize("NFC", path.read_text(encoding="utf-8"))
    assert raw.decode(raw.ids) == path.read_text(encoding="utf-8")


def test_normalization_is_the_same_across_chunk_edges(tmp_path, monkeypatch):
    from trainer.data import encode

    text = unicodedata.normalize("NFD", "año señor\nniño\n" * 40 + "Ñandú sin salto de línea al final")
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(encode, "TEXT_CHUNK_BYTES", 5)  # many ranges; each ends at a newline: n keeps its U+0303
    corpus = load_corpus(str(path), cache_dir=tmp_path / "cache")
    assert corpus.decode(corpus.ids) == unicodedata.normalize("NFC", text)


def test_a_model_exported_before_the_form_existed_reads_as_none(nfd_corpus_model, tmp_path):
    proto = onnx.load(str(nfd_corpus_model / "ckpt.onnx"))
    kept = [p for p in proto.metadata_props if p.key != "normalize"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    old, new = Sampler(tmp_path / "old.onnx"), Sampler(nfd_corpus_model / "ckpt.onnx")
    assert old.normalize == "none"
    assert old.generate(NFC_PRIME, 60, top_k=1) == new.generate(NFC_PRIME, 60, top_k=1)  # the prime as given


def test_javascript_puts_the_prime_into_the_form(nfd_corpus_model):
    from helpers import ROOT

    js = ROOT / "serve" / "js"
    if shutil.which("node") is None or not (js / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("node or onnxruntime-node not installed")
    model = nfd_corpus_model / "ckpt.onnx"
    result = subprocess.run(
        ["node", str(js / "sample.js"), str(model), "--prime", NFD_PRIME, "--length", "80", "--top-k", "1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == NFD_PRIME + Sampler(model).generate(NFC_PRIME, 80, top_k=1) + "\n"
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert (
        meta["normalize"] == "NFC" and json.loads(meta["vocab"]) == load_checkpoint(model.with_suffix(".pt"))["vocab"]
    )
    assert np.array_equal(Sampler(model).encode(NFD_PRIME), Sampler(model).encode(NFC_PRIME))
