"""trainer.score: a checkpoint's loss on a text, static and after dynamic evaluation (the model learning from
the text as it reads it, each segment scored before it is learned from)."""

import hashlib
import json
import shutil

import pytest
import torch
from helpers import one_line_error, run_cli

from export.onnx import main as export_main
from export.onnx import model_from_checkpoint
from serve.sampler import Sampler
from serve.score import score
from trainer.checkpoint import load_checkpoint
from trainer.dynamic import DynamicOptions, decay_rates, gradient_rms, score_dynamic, score_static
from trainer.gradient_stats import stats_path
from trainer.score import encode_text
from trainer.score import main as score_main

# About 2,000 characters of a play the English test text does not hold, in its alphabet: a new document.
NEW_TEXT = (
    "First Keeper:\nUnder this thick-grown brake we'll shroud ourselves;\nFor through this laund anon the deer will"
    " come;\nAnd in this covert will we make our stand,\nCulling the principal of all the deer.\n\nSecond Keeper:\nI'll"
    " stay above the hill, so both may shoot.\n\nFirst Keeper:\nThat cannot be; the noise of thy cross-bow\nWill scare"
    " the herd, and so my shoot is lost.\nHere stand we both, and aim we at the best:\nAnd, for the time shall not"
    " seem tedious,\nI'll tell thee what befell me on a day\nIn this self-place where now we mean to stand.\n\n"
)


def model_and_ckpt(run_dir):
    ckpt = load_checkpoint(run_dir / "ckpt.pt")
    return model_from_checkpoint(ckpt, run_dir / "ckpt.pt"), ckpt


def ids_of(text, ckpt):
    return encode_text(text, ckpt["vocab"], ckpt.get("normalize", "NFC"), "skip", "the text")


def training_rms(model, ckpt, segment=5):
    from trainer.gradient_stats import training_ids

    return gradient_rms(model, training_ids(ckpt, None, None), segment, 100)


def test_static_equals_serve_score_one_stream(trained_run, trained_onnx, tmp_path, capsys):
    """The static figure is the exported model's `serve.score --streams 1`, on a whole text and on its first N."""
    (tmp_path / "new.txt").write_text(NEW_TEXT * 2, encoding="utf-8")
    sampler = Sampler(trained_onnx)
    for bound in ([], ["--max-chars", "777"]):
        assert score_main([str(trained_run / "ckpt.pt"), str(tmp_path / "new.txt"), "--json", "--quiet", *bound]) == 0
        result = json.loads(capsys.readouterr().out)
        assert list(result) == ["static"] and set(result["static"]) == {"nats", "bpc", "chars"}
        offline = score(sampler, NEW_TEXT * 2, streams=1, max_chars=777 if bound else None)
        assert result["static"]["nats"] == pytest.approx(offline, abs=1e-5)
        assert result["static"]["chars"] == (777 if bound else len(NEW_TEXT) * 2 - 1)
        assert result["static"]["bpc"] == pytest.approx(result["static"]["nats"] / 0.6931471805599453, rel=1e-12)


def test_a_text_read_twice_is_predicted_far_better_the_second_time(trained_run):
    """With the rms rule at the reference implementation's settings (lr 5e-5, decay 2e-3) the model adapts: the
    second copy of a new text scores far better than the first, and better than the model that does not learn
    scores it. The defaults pull back harder (decay 1e-2) and gain less here, but still on both counts."""
    model, ckpt = model_and_ckpt(trained_run)
    ids = ids_of(NEW_TEXT * 2, ckpt)
    half = len(NEW_TEXT)
    static = score_static(model, ids, keep_losses=True).losses
    rms = training_rms(model, ckpt)
    reference = DynamicOptions("rms", lr=5e-5, decay=2e-3)
    dynamic = score_dynamic(model, ids, reference, rms, keep_losses=True).losses
    first, second = dynamic[: half - 1].mean(), dynamic[half - 1 :].mean()
    assert second < 0.93 * first  # it has learned the text it read (2.29 against 2.50 nats)
    assert second < 0.9 * static[half - 1 :].mean()  # (against 2.60)
    # Reading the first copy, before any repetition, it already helps (a new document's names and words)
    assert first < static[: half - 1].mean()
    model.load_state_dict(ckpt["model"])
    default = score_dynamic(model, ids, DynamicOptions(), rms, keep_losses=True).losses
    first, second = default[: half - 1].mean(), default[half - 1 :].mean()
    assert second < 0.97 * first  # (2.40 against 2.52)
    assert second < 0.95 * static[half - 1 :].mean()


@pytest.mark.parametrize("rule", ["rms", "sgd"])
def test_each_character_is_scored_before_the_model_learns_from_it(trained_run, rule):
    """Two texts alike in their first 7 characters and different after: their scores for those characters are
    the same, wherever a segment ends (7 is inside the second segment of 5). A model that learned a segment
    before scoring it would score characters 5 and 6 with what comes after them."""
    model, ckpt = model_and_ckpt(trained_run)
    a, b = ids_of("ROMEO: What light", ckpt), ids_of("ROMEO: The night", ckpt)
    assert torch.equal(a[:7], b[:7]) and not torch.equal(a[7:10], b[7:10])
    options = DynamicOptions(rule=rule, lr=0.01 if rule == "rms" else 1.0)
    rms = training_rms(model, ckpt) if rule == "rms" else None
    scores = []
    for ids in (a, b):
        model.load_state_dict(ckpt["model"])
        scores.append(score_dynamic(model, ids, options, rms, keep_losses=True).losses)
    assert torch.allclose(scores[0][:6], scores[1][:6], rtol=0, atol=1e-6)
    assert (scores[0][6:9] - scores[1][6:9]).abs().max() > 1e-3  # the next characters do differ


def test_with_lr_zero_dynamic_is_static_exactly_and_the_weights_stay(trained_run):
    model, ckpt = model_and_ckpt(trained_run)
    ids = ids_of(NEW_TEXT, ckpt)
    for rule in ("rms", "sgd"):
        rms = training_rms(model, ckpt) if rule == "rms" else None
        dynamic = score_dynamic(model, ids, DynamicOptions(rule, lr=0.0, decay=0.5), rms)
        # The same segments; autograd's forward may take other kernels than no_grad's, hence not bitwise
        assert dynamic.nats == pytest.approx(score_static(model, ids, segment=5).nats, rel=1e-7)
        for name, value in model.state_dict().items():
            assert torch.equal(value, ckpt["model"][name]), name


def test_the_decay_pulls_the_weights_back(trained_run):
    """With the same steps, a larger decay ends nearer the trained weights; the rates are the paper's, clipped
    at 1 / decay so a pull back never overshoots."""
    model, ckpt = model_and_ckpt(trained_run)
    ids, rms = ids_of(NEW_TEXT, ckpt), training_rms(model, ckpt)

    def distance(decay):
        model.load_state_dict(ckpt["model"])
        score_dynamic(model, ids, DynamicOptions("rms", lr=2e-4, decay=decay), rms)
        return sum(float((p - ckpt["model"][n]).norm() ** 2) for n, p in model.state_dict().items()) ** 0.5

    assert distance(0.02) < 0.85 * distance(0.0)  # 4.97 against 6.40
    rates = decay_rates(rms, 0.1)
    mean = torch.stack([v.mean() for v in rms.values()]).mean()
    for name, value in rms.items():
        assert torch.allclose(rates[name], torch.clamp(value / mean, max=10.0))
    assert max(float(r.max()) for r in rates.values()) == pytest.approx(10.0)  # some weights reach the clip


def test_the_checkpoint_never_changes_and_saved_weights_export(trained_run, trained_onnx, tmp_path, capsys):
    ckpt_path = tmp_path / "ckpt.pt"  # a copy: the statistics are written beside it
    shutil.copyfile(trained_run / "ckpt.pt", ckpt_path)
    before = hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    (tmp_path / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    adapted = tmp_path / "adapted.pt"
    args = [str(ckpt_path), str(tmp_path / "new.txt"), "--dynamic", "--json", "--quiet"]
    assert score_main([*args, "--save", str(adapted)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert hashlib.sha256(ckpt_path.read_bytes()).hexdigest() == before
    assert result["dynamic"]["nats"] < result["static"]["nats"]
    settings = {key: value for key, value in result["dynamic"].items() if key not in ("nats", "bpc")}
    assert settings == {"chars": len(NEW_TEXT) - 1, "rule": "rms", "segment": 5, "lr": 5e-5, "decay": 1e-2}
    # The statistics are kept beside the checkpoint and read back: a second run gives the same figures.
    kept = stats_path(ckpt_path)
    assert kept.is_file() and torch.load(kept)["key"]["checkpoint_sha256"] == before
    stamp = kept.stat().st_mtime_ns
    assert score_main(args) == 0
    assert json.loads(capsys.readouterr().out) == result and kept.stat().st_mtime_ns == stamp
    # The adapted weights export like any checkpoint, and predict the text they adapted to better.
    assert export_main([str(adapted), "--output", str(tmp_path / "adapted.onnx")]) == 0
    adapted_static = score(Sampler(tmp_path / "adapted.onnx"), NEW_TEXT, streams=1)
    assert adapted_static < score(Sampler(trained_onnx), NEW_TEXT, streams=1) - 0.05


def test_bad_input_is_one_line(trained_run, tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt.pt")
    shutil.copyfile(trained_run / "ckpt.pt", ckpt)
    text = tmp_path / "text.txt"
    text.write_text(NEW_TEXT, encoding="utf-8")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "snow.txt").write_text("snow \u2603 here", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    cases = [
        ([str(text), str(text)], "not a charlstm checkpoint"),
        ([str(tmp_path / "none.pt"), str(text)], "does not exist"),
        ([ckpt, str(tmp_path / "missing.txt")], "does not exist"),
        ([ckpt, str(tmp_path / "empty.txt")], "at least 2 characters"),
        ([ckpt, str(tmp_path / "latin1.txt")], "not UTF-8 text"),
        ([ckpt, str(tmp_path / "snow.txt")], "characters the model does not know: '\u2603' (U+2603)"),
        ([ckpt, str(text), "--dynamic", "--segment", "0"], "--segment must be between 1 and 10,000"),
        ([ckpt, str(text), "--dynamic", "--lr", "-1"], "--lr must be a number from 0 to 1"),
        ([ckpt, str(text), "--dynamic", "--lr", "nan"], "--lr must be a number from 0 to 1"),
        ([ckpt, str(text), "--dynamic", "--decay", "1"], "--decay must be a number from 0 up to"),
        ([ckpt, str(text), "--max-chars", "0"], "--max-chars must be at least 1"),
        ([ckpt, str(text), "--save", str(tmp_path / "a.pt")], "--save keeps the weights dynamic evaluation"),
        ([ckpt, str(text), "--dynamic", "--save", ckpt], "is the checkpoint itself"),
        ([ckpt, str(text), "--dynamic", "--stats-text", str(tmp_path / "empty.txt")], "at least 2 characters"),
    ]
    for args, message in cases:
        assert score_main([*args, "--quiet"]) == 2, args
        assert message in one_line_error(capsys.readouterr().err), args
    assert not (tmp_path / "a.pt").exists()
    assert score_main([ckpt, str(tmp_path / "snow.txt"), "--unknown", "skip", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["static"]["chars"] == len("snow  here") - 1


def test_the_command_line(trained_run, tmp_path):
    """The real process: the report's two lines, and the statistics taken from the named text."""
    text, ckpt = tmp_path / "text.txt", tmp_path / "ckpt.pt"
    text.write_text(NEW_TEXT, encoding="utf-8")
    shutil.copyfile(trained_run / "ckpt.pt", ckpt)
    result = run_cli("-m", "trainer.score", str(ckpt), str(text), "--dynamic", "--stats-text", str(text))
    assert result.returncode == 0, result.stderr
    static, dynamic = result.stdout.splitlines()
    assert static.startswith("static ") and f"({len(NEW_TEXT) - 1:,} characters predicted, {text})" in static
    assert dynamic.startswith("dynamic ") and "rms, segment 5, lr 5e-05, decay 0.01" in dynamic
    assert "Traceback" not in result.stderr
