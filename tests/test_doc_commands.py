"""The commands the pages show, run: every code block of README.md and docs/*.md that the line before it marks
`<!-- runnable -->` (or `<!-- runnable: key=value ... -->`, overrides appended to each training command so that
it ends in seconds) runs in a scratch folder that holds what the pages assume: a novel, a folder of novels,
shards, a Spanish text, some text, and runs/tiny/ with a trained model exported. Every command must exit 0.
And every figure given as measured in docs/ names its machine."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ENGLISH, ROOT, SPANISH

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!-- runnable(?::\s*(.*?))?\s*-->\n```(bash|python|js)\n(.*?)\n```", re.S | re.M)
TRAINING = ("-m trainer.train", "./launch.sh", "accelerate launch")


@dataclass
class Block:
    page: str
    language: str
    code: str
    overrides: list[str]


def runnable_blocks() -> list[Block]:
    blocks = []
    for page in PAGES:
        for overrides, language, code in MARK.findall(page.read_text(encoding="utf-8")):
            blocks.append(Block(page.relative_to(ROOT).as_posix(), language, code, shlex.split(overrides or "")))
    return blocks


def bash_commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, comments dropped (shlex knows what is quoted)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(line)
    return commands


def with_overrides(command: str, overrides: list[str]) -> str:
    """A training command with the overrides after its own words (its comment dropped); any other as written."""
    words = shlex.split(command, comments=True)
    if "--help" in words or not any(marker in " ".join(words) for marker in TRAINING):
        return command
    return shlex.join([*words, *overrides])


@pytest.fixture(scope="module")
def scratch(trained_run, trained_onnx, tmp_path_factory) -> Path:
    """A folder as the pages' commands expect it, with `python` on the PATH being this interpreter."""
    here = tmp_path_factory.mktemp("pages")
    english = ENGLISH.read_text(encoding="utf-8")
    (here / "my_novel.txt").write_text(english[:40_000], encoding="utf-8")
    (here / "some_text.txt").write_text(english[-6_000:], encoding="utf-8")
    (here / "spanish.txt").write_text(SPANISH.read_text(encoding="utf-8"), encoding="utf-8")
    (here / "novels" / "more").mkdir(parents=True)
    (here / "novels" / "one.txt").write_text(english[:20_000], encoding="utf-8")
    (here / "novels" / "more" / "two.txt").write_text(english[20_000:40_000], encoding="utf-8")
    (here / "shards").mkdir()
    rows = "".join('{"text": ' + repr_json(english[i : i + 2_000]) + "}\n" for i in range(0, 40_000, 2_000))
    (here / "shards" / "part-0.jsonl").write_text(rows, encoding="utf-8")
    (here / "runs" / "tiny").mkdir(parents=True)
    shutil.copy(trained_run / "best.pt", here / "runs" / "tiny" / "best.pt")
    shutil.copy(trained_onnx, here / "runs" / "tiny" / "best.onnx")
    shutil.copy(trained_onnx, here / "best.onnx")
    shutil.copy(ROOT / "launch.sh", here / "launch.sh")  # it works in its own folder: runs/ lands here
    for shared in ("configs", "serve"):  # the configs by path, and the JavaScript samplers (node serve/js/...)
        (here / shared).symlink_to(ROOT / shared)
    (here / "bin").mkdir()
    # a script, not a link: a link to a virtual environment's python would not find its environment
    (here / "bin" / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (here / "bin" / "python").chmod(0o755)
    return here


def repr_json(text: str) -> str:
    import json

    return json.dumps(text)


def run_in(here: Path, argv: list[str], what: str) -> None:
    env = {**os.environ, "PATH": f"{here / 'bin'}:{os.environ['PATH']}", "PYTHON": sys.executable}
    done = subprocess.run(argv, cwd=here, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{what}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr, f"{what}\n{done.stderr[-2000:]}"


BLOCKS = runnable_blocks()


def test_the_pages_mark_their_commands_runnable():
    pages = {block.page for block in BLOCKS}
    assert "README.md" in pages and len(BLOCKS) >= 4, BLOCKS
    assert {block.language for block in BLOCKS} == {"bash", "python", "js"}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}-{i}" for i, b in enumerate(BLOCKS)])
def test_every_runnable_block_runs(block, scratch):
    if block.language == "bash":
        for command in bash_commands(block.code):
            if command.split()[0] == "node" and shutil.which("node") is None:
                pytest.skip("node is not installed")
            line = with_overrides(command, block.overrides)
            run_in(scratch, ["bash", "-c", line], f"{block.page}: {line}")
    elif block.language == "python":
        run_in(scratch, [sys.executable, "-c", block.code], f"{block.page}: the Python block")
    else:
        if shutil.which("node") is None:
            pytest.skip("node is not installed")
        (scratch / "block.mjs").write_text(block.code, encoding="utf-8")
        run_in(scratch, ["node", "block.mjs"], f"{block.page}: the JavaScript block")


def test_overrides_go_to_training_commands_only():
    cut = ["train.max_steps=4"]
    assert with_overrides("python -m trainer.train --config tiny out_dir=x   # a comment", cut).endswith(
        "out_dir=x train.max_steps=4"
    )
    assert with_overrides("./launch.sh configs/tiny.yaml", cut) == "./launch.sh configs/tiny.yaml train.max_steps=4"
    assert with_overrides("python -m trainer.train --help", cut) == "python -m trainer.train --help"
    sample = "python -m serve.sample m.onnx --prime $'\\n\\n'  # a comment"
    assert with_overrides(sample, cut) == sample  # as written: bash reads its quoting and its comment
    assert bash_commands("a \\\n  b  # c\n# only a comment\n\nd") == ["a  b  # c", "d"]


MACHINE = re.compile(r"Sapphire Rapids|EPYC|Xeon|Zen \d|H100|H200|GPU machine")
MEASURED = re.compile(r"\b\d[\d,]*(?:\.\d+)?\s?(?:chars/s|characters/s|ms\b|MB/s|nats\b|bpc\b|x sooner)")


def sections(page: Path) -> list[tuple[str, str]]:
    """(header, text) for each section of a page, code blocks left out (commands, not figures)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    parts = re.split(r"^(#{1,4} .*)$", text, flags=re.M)
    return [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)] + [("(top)", parts[0])]


def test_every_measured_figure_in_the_docs_names_its_machine():
    """A section of docs/ that gives a figure as measured (chars/s, ms, MB/s, nats, bpc) names the machine it was
    measured on in the same section."""
    unnamed = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for header, text in sections(page):
            figures = MEASURED.findall(text)
            if figures and not MACHINE.search(text):
                unnamed.append(f"{page.name} {header}: {figures[:3]}")
    assert not unnamed, "\n".join(unnamed)
