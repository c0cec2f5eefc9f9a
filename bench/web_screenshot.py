"""The picture of the web sampler in README.md and docs/serving.md: `python -m serve.web MODEL` in headless
Chromium, one seeded generation, the generated text inspected (coloured by surprise), then a screenshot of the
page.

    python bench/web_screenshot.py serve/models/shakespeare.onnx docs/web_sampler.png [--prime ROMEO:]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ROOT  # noqa: F401 (puts the repository on the import path)

from tests import headless


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--prime", default="ROMEO:")
    parser.add_argument("--length", type=int, default=400)
    args = parser.parse_args()
    with headless.served(args.model) as url, headless.chromium() as browser:
        page = headless.open_page(browser, url)
        page.set_viewport_size({"width": 1000, "height": 800})
        [text] = headless.generate(page, args.prime, args.length, top_k=5, temperature=0.8, seed=7)
        page.fill("#inspect-input", args.prime + text[:160])
        page.click("#inspect-run")
        page.wait_for_selector("#inspect-result", state="visible", timeout=60_000)
        page.screenshot(path=str(args.out), full_page=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
