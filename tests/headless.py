"""The page in headless Chromium, for the tests and the benchmarks (bench/ imports it as tests.headless): `python -m
serve.web` in a child process and Debian's chromium driven by Playwright (`pip install playwright`; its own
browser download is not needed). Nothing here runs on import."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# No first-run work and no background connections: on a closed network Chromium's attempts to reach its
# services only slow it down.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The page has settled: a model is loaded, a generation ended, or a message is shown.
SETTLED = (
    "['ready', 'done', 'stopped'].includes(document.body.dataset.state) || !document.getElementById('message').hidden"
)


def chromium_path() -> str | None:
    """CHARLSTM_CHROMIUM, else `chromium` on the PATH (Debian's package), else None."""
    found = os.environ.get("CHARLSTM_CHROMIUM") or shutil.which("chromium")
    return found if found and Path(found).is_file() else None


@contextmanager
def served(model: Path | None) -> Iterator[str]:
    """`python -m serve.web MODEL --port 0` for the duration: yields the page's URL (with ?model=)."""
    args = [sys.executable, "-m", "serve.web", *([str(model)] if model else []), "--port", "0"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/\S*", line)
        if url is None:
            process.wait(timeout=30)
            raise RuntimeError(f"serve.web did not start: {process.stderr.read().strip() or line}")
        yield url.group(0)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Playwright's Browser) on Debian's chromium."""
    from playwright.sync_api import sync_playwright  # a dev dependency: imported only when a browser is wanted

    path = chromium_path()
    if path is None:
        raise RuntimeError("no chromium found (Debian: apt-get install chromium; or set CHARLSTM_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, block: str | None = None, timeout_ms: int = 60_000):
    """A fresh page on `url`, settled; page.errors collects uncaught page errors; `block` aborts the requests
    that match it (a glob)."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    if block:
        page.route(block, lambda route: route.abort())
    page.goto(url)
    page.wait_for_function(SETTLED, timeout=timeout_ms)
    return page


def generate(
    page,
    prime: str,
    length: int,
    top_k="",
    temperature="1",
    top_p="",
    seed="",
    samples=1,
    regex="",
    choices=(),
    beam="",
) -> list[str]:
    """Fill the page's controls, press Generate and wait for the end: the generated text of each sample
    (the prime not included). A message in the page raises it as an AssertionError."""
    for selector, value in (
        ("#prime", prime),
        ("#length", length),
        ("#top-k", top_k),
        ("#temperature", temperature),
        ("#top-p", top_p),
        ("#seed", seed),
        ("#samples", samples),
        ("#regex", regex),
        ("#choices", "\n".join(choices)),
        ("#beam", beam),
    ):
        page.fill(selector, str(value))
    page.evaluate("document.body.dataset.state = 'clicked'")  # the last run's 'done' is not this one's
    page.click("#generate")
    page.wait_for_function(SETTLED, timeout=300_000)
    if not page.is_hidden("#message"):
        raise AssertionError(page.inner_text("#message-text"))
    return page.eval_on_selector_all("#output .generated", "spans => spans.map(s => s.textContent)")


# chars/s of the sampler core in the page's runtime (onnxruntime-web, WASM, one thread), after a warm-up
SPEED = """async ([url, chars, samples]) => {
  const { Sampler } = await import('./core.js');
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const sampler = await Sampler.create(ort, bytes, { sessionOptions: { executionProviders: ['wasm'] } });
  await sampler.generate('The', 50, { topK: 5, seed: 0, numSamples: samples });
  const start = performance.now();
  await sampler.generate('The', chars, { topK: 5, seed: 0, numSamples: samples });
  return chars * samples / ((performance.now() - start) / 1000);
}"""


def browser_chars_per_s(model: Path, chars: int, samples: int) -> float:
    """Sampling speed in headless Chromium: a fresh server and browser, top-k 5, all samples together."""
    with served(model) as url, chromium() as browser:
        page = open_page(browser, url)
        model_url = re.search(r"\?model=(\S+)", url).group(1)
        return page.evaluate(SPEED, [model_url, chars, samples])
