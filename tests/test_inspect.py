"""serve.inspect: each character's surprise and top 5 against the model's own softmax and serve.score, the cell
ranking against a planted cell, the gate arithmetic against onnxruntime's h and c and against PyTorch's gates,
the report, and bad input."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import ENGLISH, one_line_error, run_cli

from serve.inspect import inspect_text
from serve.inspect.features import builtin_features, parse_feature, regex_feature
from serve.sampler import Sampler
from serve.score import score

HIDDEN, PLANTED = 8, 5  # the planted model's cells per layer, and the unit that flips at every double quote


def excerpt(chars: int = 3000) -> str:
    """A part of the English test text dense in double quotes, from its first quote on."""
    text = ENGLISH.read_text(encoding="utf-8")
    start = text.index('"', 61000)
    return text[start : start + chars]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 2-layer model whose weights are set by hand: layer 0's unit PLANTED flips its cell at every double quote
    (input gate open and forget gate shut on '"' only; its candidate is -tanh(10 h) + 3.8, the opposite sign of
    its own output), every other weight small and random. Exported with export.onnx: (path, torch model)."""
    from export.onnx import main as export_main
    from trainer.model import CharLSTM

    vocab = sorted(set(ENGLISH.read_text(encoding="utf-8")))
    torch.manual_seed(0)
    model = CharLSTM(len(vocab), 4, HIDDEN, 2, 0.0)
    quote = torch.tensor([ch == '"' for ch in vocab], dtype=torch.float32)
    u, H = PLANTED, HIDDEN
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        model.embed.weight[:, 0] = quote
        lstm = model.lstms[0]
        for gate in range(4):  # unit u's rows of the i, f, g, o gates: nothing but what is set below
            row = gate * H + u
            lstm.weight_ih_l0[row] = 0
            lstm.weight_hh_l0[row] = 0
            lstm.bias_ih_l0[row] = lstm.bias_hh_l0[row] = 0
        lstm.weight_ih_l0[u, 0], lstm.bias_ih_l0[u] = 30.0, -15.0  # input gate: open on '"' only
        lstm.weight_ih_l0[H + u, 0], lstm.bias_ih_l0[H + u] = -30.0, 15.0  # forget gate: shut on '"' only
        lstm.weight_hh_l0[2 * H + u, u], lstm.bias_ih_l0[2 * H + u] = -10.0, 3.8  # candidate: flip the sign
        lstm.bias_ih_l0[3 * H + u] = 15.0  # output gate: open
    out = tmp_path_factory.mktemp("planted")
    config = {"model": {"embed": 4, "hidden": H, "layers": 2, "dropout": 0.0}, "data": {"path": "planted"}}
    ckpt = {"format": "charlstm-ckpt/1", "model": model.state_dict(), "vocab": vocab, "config": config}
    torch.save({**ckpt, "step": 0, "val_loss": None}, out / "planted.pt")
    assert export_main([str(out / "planted.pt"), "--eval-text", str(ENGLISH)]) == 0
    return out / "planted.onnx", model.eval(), vocab


def test_the_planted_quote_cell_comes_first(planted):
    path, _, _ = planted
    figures = inspect_text(path, excerpt())
    best = figures["features"]["inside double quotes"][0]
    assert (best["layer"], best["unit"]) == (0, PLANTED)
    assert abs(best["r"]) > 0.9
    ranked = [abs(cell["r"]) for cell in figures["features"]["inside double quotes"] if cell["r"] is not None]
    assert ranked == sorted(ranked, reverse=True)
    assert len(figures["features"]["inside double quotes"]) == 2 * 2 * HIDDEN  # c and h of every cell
    # a feature constant over the text has r null for every cell
    assert all(cell["r"] is None for cell in figures["features"]["inside comment"])


def direct_run(path, ids: np.ndarray):
    """Plain session.run, one character at a time: logits (n, V), h and c (n, L, H) after each step."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[1].shape
    h = c = np.zeros((shape[0], 1, shape[2]), dtype=np.float32)
    logits, hs, cs = [], [], []
    for token in ids:
        out, h, c = session.run(None, {"token": np.array([token]), "h": h, "c": c})
        logits.append(out[0])
        hs.append(h[:, 0])
        cs.append(c[:, 0])
    return np.array(logits, dtype=np.float64), np.array(hs, dtype=np.float64), np.array(cs, dtype=np.float64)


def test_streamed_correlations_equal_numpy_over_the_whole_trace(planted):
    """Pearson's r from the streamed sums (several chunks) equals np.corrcoef over every activation at once."""
    path, _, vocab = planted
    text = excerpt(1500)
    figures = inspect_text(path, text, features=["vowel=[aeiou]"])
    _, h, c = direct_run(path, np.array([vocab.index(ch) for ch in text]))
    acts = np.concatenate([np.tanh(c).reshape(len(text), -1), h.reshape(len(text), -1)], axis=1)
    values = builtin_features(text)
    values["vowel"] = regex_feature(text, re.compile("[aeiou]"))
    for name, cells in figures["features"].items():
        for cell in cells[:40]:
            column = (0 if cell["kind"] == "c" else 2 * HIDDEN) + cell["layer"] * HIDDEN + cell["unit"]
            if values[name].min() == values[name].max():
                assert cell["r"] is None
            else:
                assert cell["r"] == pytest.approx(np.corrcoef(acts[:, column], values[name])[0, 1], abs=1e-5)


def test_surprise_and_top5_are_the_models_softmax_and_the_score(trained_onnx, tmp_path):
    text = ENGLISH.read_text(encoding="utf-8")[5000:7000]
    figures = inspect_text(trained_onnx, text)
    sampler = Sampler(trained_onnx, device="cpu")
    ids = sampler.encode(text)
    logits, _, _ = direct_run(trained_onnx, ids)
    log_p = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    positions = figures["positions"]
    assert [p["char"] for p in positions] == list(text)
    assert positions[0]["bits"] is None and positions[0]["top"] is None
    for t in range(1, len(text)):
        assert positions[t]["bits"] == pytest.approx(-log_p[t - 1, ids[t]] / math.log(2), abs=1e-6)
        best = np.argsort(-log_p[t - 1], kind="stable")[:5]
        assert [ch for ch, _ in positions[t]["top"]] == [sampler.vocab[i] for i in best]
        assert [p for _, p in positions[t]["top"]] == pytest.approx(np.exp(log_p[t - 1, best]), abs=1e-7)
    bits = [p["bits"] for p in positions[1:]]
    assert figures["bpc"] == pytest.approx(sum(bits) / len(bits), abs=1e-12)
    assert figures["bpc"] == pytest.approx(score(sampler, text, streams=1) / math.log(2), abs=1e-5)
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    scored = run_cli("-m", "serve.score", str(trained_onnx), str(tmp_path / "text.txt"), "--streams", "1", "--quiet")
    assert float(scored.stdout.split()[2]) == pytest.approx(figures["bpc"], abs=1e-5)


def torch_gates(model, vocab: list[str], text: str) -> np.ndarray:
    """The sigmoid of the i, f, o gates of every layer at every step, from PyTorch's own weights: (n, L, 3, H)."""
    ids = torch.tensor([vocab.index(ch) for ch in text])
    h, c = model.zero_state(1)
    out = []
    with torch.no_grad():
        for token in ids:
            _, h_next, c_next = model.step(token[None], h, c)
            x, step = model.token_gates(token[None]), []
            for i, lstm in enumerate(model.lstms):
                if i > 0:  # the layer below's output at this step
                    x = h_next[i - 1] @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
                i_g, f_g, _, o_g = (x + h[i] @ lstm.weight_hh_l0.T).chunk(4, dim=1)
                step.append(torch.sigmoid(torch.cat([i_g, f_g, o_g])).numpy())
            h, c = h_next, c_next
            out.append(step)
    return np.array(out)


def test_gate_saturation_is_pytorchs_and_matches_onnxruntime(planted):
    path, model, vocab = planted
    text = excerpt(1200)
    saturation = inspect_text(path, text)["saturation"]
    assert saturation["reason"] is None and saturation["check"]["max_diff"] < 1e-5
    assert saturation["check"]["steps"] == len(text)
    gates = torch_gates(model, vocab, text)  # (n, L, 3, H)
    for i, layer in enumerate(saturation["layers"]):
        for g, name in enumerate(("input", "forget", "output")):
            assert layer[name]["low"] == pytest.approx((gates[:, i, g] < 0.1).mean(axis=0), abs=1e-12)
            assert layer[name]["high"] == pytest.approx((gates[:, i, g] > 0.9).mean(axis=0), abs=1e-12)
    # the planted unit: its input gate opens on quotes only, its output gate never shuts
    quotes = text.count('"') / len(text)
    assert saturation["layers"][0]["input"]["high"][PLANTED] == pytest.approx(quotes)
    assert saturation["layers"][0]["output"]["high"][PLANTED] == 1.0


def test_int8_gates_from_dequantized_weights(trained_run, tmp_path):
    from export.onnx import main as export_main

    out = tmp_path / "int8.onnx"
    assert export_main([str(trained_run / "ckpt.pt"), "--int8", "-o", str(out)]) == 0
    saturation = inspect_text(out, ENGLISH.read_text(encoding="utf-8")[:1500])["saturation"]
    assert saturation["check"]["precision"] == "int8"
    assert saturation["reason"] is None, saturation["reason"]
    assert saturation["check"]["max_diff"] <= saturation["check"]["tolerance"]


def test_builtin_features_follow_their_rules():
    text = "a \"q\" don't 's'\n  f(x[1]) # c\n}"
    v = builtin_features(text)
    assert list(v["inside double quotes"][:6]) == [0, 0, 1, 1, 0, 0]
    assert v["inside single quotes"][text.index("n'")] == 0 and v["inside single quotes"][text.index("'t") + 1] == 0
    s = text.index("'s")
    assert list(v["inside single quotes"][s : s + 4]) == [1, 1, 0, 0]
    assert list(v["bracket depth"][text.index("f(") : text.index(")") + 1]) == [0, 1, 1, 2, 2, 1, 0]
    assert v["bracket depth"][-1] == 0  # never below 0
    assert v["inside comment"][text.index("#")] == 1 and v["inside comment"][text.index("# c") + 3] == 0
    assert v["indentation"][text.index("f(")] == 2 and v["indentation"][0] == 0
    assert list(v["position in line"][:3]) == [1, 2, 3] and v["position in line"][text.index("\n")] == 0
    assert list(v["position in word"][text.index("don") :][:6]) == [1, 2, 3, 4, 5, 0]
    assert list(regex_feature("abcab", re.compile("ab"))) == [1, 1, 0, 1, 1]
    assert parse_feature("x=a+")[0] == "x"


def test_cli_writes_a_report_and_its_json(trained_onnx, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(excerpt(2000), encoding="utf-8")
    report, data = tmp_path / "report.html", tmp_path / "figures.json"
    args = ["-m", "serve.inspect", str(trained_onnx), str(text), "--out", str(report), "--json", str(data)]
    done = run_cli(*args, "--feature", "digits=[0-9]+", "--max-chars", "1500")
    assert done.returncode == 0, done.stderr
    figures = json.loads(data.read_text(encoding="utf-8"))
    assert len(figures["positions"]) == 1500 and figures["text_chars"] == 2000
    assert set(figures["features"]) >= {"inside double quotes", "bracket depth", "digits"}
    assert re.search(r"[\d.]+ bpc", done.stdout)
    page = report.read_text(encoding="utf-8")
    embedded = re.search(r'id="figures">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded.replace("<\\/", "</")) == figures
    assert not re.search(r"src=|href=|<link|@import|url\(|fetch\(|import\(", page.replace(embedded, ""))


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda p: p.write_text("snow ☃ here"), [], "text.txt has characters the model does not know: '☃' (U+2603)"),
        (lambda p: p.write_text(""), [], "the text is empty"),
        (lambda p: p.write_text("some text"), ["--feature", "bad=(["], "--feature bad: bad regular expression"),
        (lambda p: p.write_text("some text"), ["--feature", "noequals"], "--feature needs NAME=REGEX"),
        (lambda p: p.write_text("some text"), ["--max-chars", "0"], "--max-chars must be >= 1, got 0"),
        (lambda p: p.write_bytes(b"caf\xe9 latin-1"), [], "not UTF-8 text (invalid byte at byte offset 3)"),
        (lambda p: None, [], "does not exist"),
    ],
    ids=["unknown", "empty", "regex", "no-name", "max-chars", "not-utf8", "missing"],
)
def test_bad_input_is_one_line(trained_onnx, tmp_path, setup, args, message):
    path = tmp_path / "text.txt"
    setup(path)
    done = run_cli("-m", "serve.inspect", str(trained_onnx), str(path), "--out", str(tmp_path / "r.html"), *args)
    assert done.returncode == 2 and message in one_line_error(done.stderr)
    assert not (tmp_path / "r.html").exists()


def test_unknown_skip_reads_the_known_characters(trained_onnx):
    figures = inspect_text(trained_onnx, "snow ☃ here", unknown="skip")
    assert "".join(p["char"] for p in figures["positions"]) == "snow  here"


def close_tops(js: list, py: list, tol: float = 1e-4) -> bool:
    """The same 5 guesses with the same probabilities within tol, ties between the 5th and 6th allowed."""
    if [p for _, p in js] != pytest.approx([p for _, p in py], abs=tol):
        return False
    return [c for c, _ in js[:4]] == [c for c, _ in py[:4]] and (js[4][0] == py[4][0] or abs(js[4][1] - py[4][1]) < tol)


def test_page_inspects_as_python_does(trained_onnx, tmp_path):
    """The page's inspect view on 3,000 characters: surprise and top 5 at every position equal Python's within
    1e-4, the best cell of each feature and its r too; a click on the best next character appends it and offers
    Python's next guesses. The report opens from disk in the same browser and fetches nothing."""
    import headless
    from test_web import needs, needs_web_files  # skip as the page tests do where chromium is missing (not in CI)

    needs_web_files()
    needs(headless.chromium_path() is not None, "no chromium")
    text = ENGLISH.read_text(encoding="utf-8")[20000:23000]
    python = inspect_text(trained_onnx, text)
    with headless.served(trained_onnx) as url, headless.chromium() as browser:
        page = headless.open_page(browser, url)
        page.fill("#inspect-input", text)
        page.click("#inspect-run")
        page.wait_for_function("document.body.dataset.inspect === 'done'", timeout=240_000)
        js = page.evaluate(
            "() => ({ positions: inspection.positions, bpc: inspection.bpc, best: Object.fromEntries("
            "Object.entries(inspection.ranking).map(([k, v]) => [k, v.slice(0, 3)])) })"
        )
        assert [p["char"] for p in js["positions"]] == list(text)
        for t, (j, p) in enumerate(zip(js["positions"][1:], python["positions"][1:]), start=1):
            assert j["bits"] == pytest.approx(p["bits"], abs=1e-4), t
            assert close_tops(j["top"], p["top"]), (t, j["top"], p["top"])
        assert js["bpc"] == pytest.approx(python["bpc"], abs=1e-5)
        for name, cells in js["best"].items():
            by_cell = {(c["layer"], c["unit"], c["kind"]): c["r"] for c in python["features"][name]}
            for c in cells:
                expected = by_cell[(c["layer"], c["unit"], c["kind"])]
                assert (c["r"] is None) == (expected is None) and (c["r"] is None or abs(c["r"] - expected) < 1e-3)
        page.hover("#inspect-text span:nth-child(10)")
        assert page.inner_text("#inspect-details").startswith(f"#9 {json.dumps(text[9])}: ")
        first = page.get_attribute("#inspect-next button", "data-char")
        assert first == python_next(trained_onnx, text)[0][0]
        page.click("#inspect-next button")
        page.wait_for_function(f"inspection.positions.length === {len(text) + 1}")
        offered = page.eval_on_selector_all("#inspect-next button", "bs => bs.map(b => b.dataset.char)")
        assert offered == [ch for ch, _ in python_next(trained_onnx, text + first)]
        labels = page.evaluate(
            "async () => { const { nextLabel } = await import('./inspect_view.js');"
            " return [' ', '\\n', '\\t', 'a', 'ñ'].map(nextLabel); }"
        )
        assert labels == ["space", "\\n", "tab", "a", "ñ"]  # words, not control pictures the fonts may lack
        shown = "".join(page.eval_on_selector_all("#inspect-next button", "bs => bs.map(b => b.textContent)"))
        assert not any(0x2400 <= ord(ch) <= 0x243F for ch in shown)
        assert page.errors == []

        report = tmp_path / "report.html"
        (tmp_path / "text.txt").write_text(text[:1000], encoding="utf-8")
        done = run_cli("-m", "serve.inspect", str(trained_onnx), str(tmp_path / "text.txt"), "--out", str(report))
        assert done.returncode == 0, done.stderr
        offline = browser.new_page()
        requests = []
        offline.on("request", lambda request: requests.append(request.url))
        offline.goto(report.as_uri())
        assert offline.eval_on_selector_all("#text span", "s => s.length") == 1000
        offline.hover("#text span:nth-child(2)")
        assert "top 5" in offline.inner_text("#details")
        offline.click("button.cell[data-cell]")
        assert "coloured by cell" in offline.inner_text("#legend")
        assert requests == [report.as_uri()]


def python_next(model, text: str) -> list:
    """The model's top 5 guesses for the character after `text`."""
    return inspect_text(model, text + text[-1])["positions"][-1]["top"]
