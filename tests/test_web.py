"""The browser sampler: `python -m serve.web` and the page, driven in headless Chromium (Debian's chromium,
through Playwright from PyPI): the same seed gives the same text as Python, and bad input gives the page's
messages."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import urllib.error
import urllib.request

import headless
import onnx
import pytest
from helpers import ROOT, one_line_error, run_cli

from serve.sampler import Sampler

ORT_DIST = ROOT / "serve" / "js" / "node_modules" / "onnxruntime-web" / "dist"


def needs(condition: bool, reason: str) -> None:
    """Skip where the machine lacks a part, but never in CI: .ci/run installs them all."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the browser tests (./setup.sh --dev installs what they need)")
        pytest.skip(reason)


def needs_web_files() -> None:
    needs((ORT_DIST / "ort.wasm.min.js").is_file(), "onnxruntime-web is not installed (cd serve/js && npm ci)")


@pytest.fixture(scope="module")
def server(trained_onnx):
    """`python -m serve.web` on a free port, serving the trained fixture model: the page's URL."""
    needs_web_files()
    with headless.served(trained_onnx) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    needs(headless.chromium_path() is not None, "no chromium (as root, ./setup.sh --dev installs Debian's)")
    needs(importlib.util.find_spec("playwright") is not None, "playwright is not installed (pip install -e '.[dev]')")
    with headless.chromium() as chromium:
        yield chromium


def test_page_generates_the_same_text_as_python(server, browser, trained_onnx, spanish_onnx, tmp_path):
    """Greedy, seeded (top-k and temperature), top-p and batched samples: the page's text equals Python's,
    character for character, over 500 characters; a Spanish prime with ñ, ¿ and an emoji round-trips through a
    model dropped on the page."""
    url = server
    page = headless.open_page(browser, url)
    assert page.eval_on_selector("body", "b => b.dataset.state") == "ready"
    python = Sampler(trained_onnx, device="cpu")
    info = page.inner_text("#model-info")
    assert f"{len(python.vocab)} characters" in info
    assert f"{int(python.metadata['step']):,}" in info
    assert f"{float(python.metadata['val_loss']):.4f} nats/char" in info
    assert f"{python.config['model']['layers']} × {python.config['model']['hidden']}" in info

    assert headless.generate(page, "ROMEO:", 500, top_k=1) == [python.generate("ROMEO:", 500, top_k=1)]
    seeded = headless.generate(page, "The ", 500, top_k=5, temperature=0.8, seed=7)
    assert seeded == [python.generate("The ", 500, top_k=5, temperature=0.8, seed=7)]
    assert headless.generate(page, "The ", 500, top_p=0.9, seed=3) == [python.generate("The ", 500, top_p=0.9, seed=3)]
    batched = headless.generate(page, "A", 300, top_k=10, temperature=1.3, top_p=0.95, seed=11, samples=3)
    assert batched == python.generate("A", 300, top_k=10, temperature=1.3, top_p=0.95, seed=11, num_samples=3)
    assert len(set(batched)) == 3
    assert re.fullmatch(r"900 chars in [\d.]+ s: [\d,]+ chars/s", page.inner_text("#speed"))

    dropped = page.evaluate_handle(  # a file dropped on the page, as a user drags one from a file manager
        "([bytes, name]) => { const data = new DataTransfer();"
        " data.items.add(new File([new Uint8Array(bytes)], name)); return data; }",
        [list(spanish_onnx.read_bytes()), spanish_onnx.name],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    page.wait_for_function(f"document.getElementById('info-name').dataset.name === '{spanish_onnx.name}'")
    prime = "El libro empieza años ¿ñ 🙂"
    assert headless.generate(page, prime, 300, top_k=1) == [
        Sampler(spanish_onnx, device="cpu").generate(prime, 300, top_k=1)
    ]
    assert page.inner_text("#output pre").startswith(prime)
    page.screenshot(path=str(tmp_path / "web_sampler.png"), full_page=True)
    assert (tmp_path / "web_sampler.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.errors == []


def test_page_messages_on_bad_input(server, browser, trained_onnx, tmp_path):
    """A foreign .onnx, a file that is not ONNX, prime characters the model lacks (offered to drop), bad
    option values, a model URL that fails, and WASM or onnxruntime-web failing to load: each is one message in
    the page, and the model in use stays loaded. Stop ends a long generation."""
    url = server
    page = headless.open_page(browser, url)
    python = Sampler(trained_onnx, device="cpu")

    page.fill("#prime", "The ☃ snow")
    page.click("#generate")
    page.wait_for_selector("#message:not([hidden])")
    assert "does not know: '☃' (U+2603)" in page.inner_text("#message-text")
    page.click("#drop-unknown")
    page.wait_for_function("document.body.dataset.state === 'done'")
    kept = page.eval_on_selector("#output .generated", "s => s.textContent")
    assert kept == python.generate("The ☃ snow", 500, top_k=5, temperature=0.8, seed=0, unknown="skip")
    assert page.inner_text("#output pre").startswith("The  snow")

    page.fill("#top-k", "0")
    page.click("#generate")
    assert "top_k must be between 1 and the vocabulary size" in page.inner_text("#message-text")
    page.fill("#top-k", "5")
    page.fill("#temperature", "-1")
    page.click("#generate")
    assert "temperature must be >= 0, got -1" in page.inner_text("#message-text")
    page.fill("#temperature", "1")
    page.fill("#length", "")
    page.click("#generate")
    assert "length needs an integer" in page.inner_text("#message-text")

    foreign = tmp_path / "identity.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    onnx.save(onnx.helper.make_model(graph), foreign)
    for path, expected in (
        (foreign, "identity.onnx is not a charlstm model"),
        (ROOT / "README.md", "README.md is not an ONNX model"),
    ):
        page.set_input_files("#model-file", str(path))
        page.wait_for_selector("#message:not([hidden])")
        message = page.inner_text("#message-text")
        assert expected in message and f"still using {trained_onnx.name}" in message
        assert page.eval_on_selector("body", "b => b.dataset.state") == "ready"

    page.fill("#prime", "The ")
    page.fill("#length", "100000")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#output .generated').textContent.length > 20")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'stopped'")
    assert 20 < len(page.eval_on_selector("#output .generated", "s => s.textContent")) < 100000

    missing = headless.open_page(browser, url.split("?")[0] + "?model=/model/nothing.onnx")
    assert "could not fetch the model /model/nothing.onnx (HTTP 404)" in missing.inner_text("#message-text")
    no_wasm = headless.open_page(browser, url, block="**/*.wasm")
    assert "onnxruntime-web could not start its WebAssembly runtime" in no_wasm.inner_text("#message-text")
    no_runtime = headless.open_page(browser, url, block="**/ort.wasm.min.js")
    assert "onnxruntime-web did not load" in no_runtime.inner_text("#message-text")
    for each in (page, missing, no_wasm, no_runtime):
        assert each.errors == []


def fetch(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method)) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], b""


def test_server_hands_out_its_files_only(server, trained_onnx):
    """Loopback only; the page, the core, onnxruntime-web's three files and the model, with their MIME types;
    nothing else (no directory listing, no path out of the tree)."""
    url = server
    base = url.split("?")[0]
    assert base.startswith("http://127.0.0.1:")
    assert url.endswith(f"?model=/model/{trained_onnx.name}")
    expected = {
        "": "text/html; charset=utf-8",
        "app.js": "text/javascript; charset=utf-8",
        "core.js": "text/javascript; charset=utf-8",
        "style.css": "text/css; charset=utf-8",
        "ort/ort.wasm.min.js": "text/javascript; charset=utf-8",
        "ort/ort-wasm-simd-threaded.mjs": "text/javascript; charset=utf-8",
        "ort/ort-wasm-simd-threaded.wasm": "application/wasm",
        f"model/{trained_onnx.name}": "application/octet-stream",
    }
    for path, mime in expected.items():
        status, content_type, body = fetch(base + path)
        assert (status, content_type) == (200, mime), path
        assert len(body) > 0
    assert fetch(base + f"model/{trained_onnx.name}")[2] == trained_onnx.read_bytes()
    assert fetch(base + "ort/ort-wasm-simd-threaded.wasm", "HEAD")[:2] == (200, "application/wasm")
    for path in ("ort/", "ort/ort.all.min.js", "../setup.sh", "%2e%2e/setup.sh", "serve/web/__main__.py", "model/x"):
        assert fetch(base + path)[0] == 404, path


def test_server_bad_input_is_one_line(trained_onnx, tmp_path):
    needs_web_files()
    missing = run_cli("-m", "serve.web", str(tmp_path / "none.onnx"))
    assert missing.returncode == 2 and "does not exist" in one_line_error(missing.stderr)
    text = tmp_path / "text.onnx"
    text.write_text("not a model")
    bad = run_cli("-m", "serve.web", str(text))
    assert bad.returncode == 2 and "not a valid ONNX model" in one_line_error(bad.stderr)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("-m", "serve.web", str(trained_onnx), "--port", str(port))
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}: it is in use" in one_line_error(busy.stderr)
    wrong = run_cli("-m", "serve.web", str(trained_onnx), "--port", "70000")
    assert wrong.returncode == 2 and "--port must be between 0 and 65535" in one_line_error(wrong.stderr)


def test_page_gives_pythons_constrained_texts_and_beams(server, browser, trained_onnx):
    """The shared constrained cases (tests/data/constrained_cases.json) that the page's fields can say (a regex,
    choices, a beam width, with the sampling fields): the page's texts are Python's; a bad pattern is the page's
    one message."""
    import json

    from helpers import DATA

    python = Sampler(trained_onnx, device="cpu")
    page = headless.open_page(browser, server)
    cases = json.loads((DATA / "constrained_cases.json").read_text(encoding="utf-8"))["cases"]
    shown = [case for case in cases if not {"logit_bias", "end"} & set(case)]
    assert len(shown) >= 6
    for case in shown:
        options = {k: v for k, v in case.items() if k not in ("prime", "length")}
        want = [g.text for g in python.complete(case["prime"], case["length"], **options)]
        got = headless.generate(
            page,
            case["prime"],
            case["length"],
            top_k=case.get("top_k", ""),
            temperature=case.get("temperature", 1),
            top_p=case.get("top_p", ""),
            seed=case.get("seed", ""),
            samples=case.get("num_samples", 1),
            regex=case.get("regex", ""),
            choices=case.get("choices", ()),
            beam=case.get("beam_width", ""),
        )
        assert got == want, case
    with pytest.raises(AssertionError, match="lookahead"):
        headless.generate(page, "The ", 10, regex="a(?=b)")
