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


def answers_help(command: list[str]) -> str | None:
    """None if `command --help` exits 0 and prints something; else what went wrong."""
    result = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return None if result.returncode == 0 and result.stdout.strip() else f"{command} --help: {result.stderr[-500:]}"


def test_every_command_written_names_a_program_that_answers_help():
    from concurrent.futures import ThreadPoolExecutor

    modules, scripts = commands()
    assert {"trainer.train", "export.onnx", "serve.sample", "serve.score", "serve.web"} <= modules
    assert scripts == {"launch.sh", "setup.sh"}
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
    commands_written = [[sys.executable, "-m", m] for m in sorted(modules)] + [[str(ROOT / s)] for s in sorted(scripts)]
    with ThreadPoolExecutor(2) as pool:  # each is mostly an interpreter's start: two at a time on two cores
        failures = [failure for failure in pool.map(answers_help, commands_written) if failure]
    assert not failures, failures


PATH = re.compile(r"(?<![\w/.-])((?:trainer|serve|export|bench|tests|docs|configs|examples|\.ci)/[\w./-]*\w)")
JS_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def commentary(path: Path) -> str:
    """What a file says to its reader: Python's comments and docstrings, JavaScript's comments, the comments of
    shell and config files, a page's whole text. Code and data strings are left out (a test may name a file
    that does not exist on purpose)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return text
    if path.suffix in (".js", ".mjs"):
        return "\n".join(JS_COMMENT.findall(text))
    if path.suffix != ".py":
        return "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    import io
    import tokenize

    parts, previous = [], tokenize.NEWLINE
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            parts.append(token.string)
        elif token.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            parts.append(token.string)  # a docstring: a string that is a statement of its own
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token.type
    return "\n".join(parts)


def test_every_path_a_comment_or_page_names_exists():
    """A file path named in a comment, a docstring or a page (`trainer/dist/precision.py`, `docs/config.md`)
    points to a file or folder of the repository: moved files leave no stale pointers behind."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    suffixes = (".py", ".js", ".mjs", ".md", ".sh", ".yaml", ".toml", ".sbatch")
    missing = []
    for name in listed.split():
        path = ROOT / name
        if name.endswith(suffixes) and path.is_file() and "node_modules" not in name:
            named = {match.rstrip(".") for match in PATH.findall(commentary(path))}
            missing += [f"{name}: {target}" for target in sorted(named) if not (ROOT / target).exists()]
    assert not missing, missing
