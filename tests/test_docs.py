"""The pages hold: every relative link and image in README.md and docs/ points to a file that exists, and every
`python -m ...`, `./launch.sh` and `./setup.sh` command written in them names a module or script that exists
and answers --help."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
MODULE = re.compile(r"python -m ([A-Za-z_][\w.]*)")
SCRIPT = re.compile(r"(?<![\w/.])\./(launch|setup)\.sh\b")


def test_there_are_pages():
    names = {page.name for page in PAGES}
    assert {"README.md", "training.md", "machines.md", "serving.md", "config.md", "benchmarks.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_relative_links_and_images_point_to_files(page):
    text = page.read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto:
    missing = []
    for target in targets:
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.name}: links to nothing: {missing}"


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headers, as GitHub makes them."""
    slugs = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_anchors_name_headers_that_exist(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if "#" not in target or re.match(r"[a-z]+:", target):
            continue
        path, anchor = target.split("#", 1)
        linked = (page.parent / path) if path else page
        if linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{page.name}: anchors that name no header: {broken}"


def commands() -> tuple[set[str], set[str]]:
    modules, scripts = set(), set()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        modules |= set(MODULE.findall(text))
        scripts |= {f"{name}.sh" for name in SCRIPT.findall(text)}
    return modules, scripts


def test_every_command_written_names_a_program_that_answers_help():
    modules, scripts = commands()
    assert {"trainer.train", "export.onnx", "serve.sample", "serve.score", "serve.web"} <= modules
    assert scripts == {"launch.sh", "setup.sh"}
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0 and result.stdout.strip(), f"python -m {module} --help: {result.stderr[-500:]}"
    for script in sorted(scripts):
        result = subprocess.run([str(ROOT / script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.strip(), f"./{script} --help: {result.stderr[-500:]}"
