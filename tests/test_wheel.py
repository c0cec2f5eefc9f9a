"""charlstm as a user installs it: a wheel built with `python -m build`, installed into a fresh virtual environment
with its dependencies from the registries, and every console script run from an empty folder: the bundled
model's sample, the page in headless Chromium (the same text as Python), the service, a training from a shipped
config's name, an export and an inspection. The wheel holds the page's files, the configs and the bundled
model, and nothing of the tests."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import headless
import pytest
from helpers import ENGLISH, ROOT
from test_web import browser, needs, needs_web_files  # noqa: F401 (browser: the fixture)

from serve.sampler import Sampler

pytestmark = pytest.mark.slow
SAMPLE = ["--prime", "ROMEO:", "--length", "300", "--top-k", "5", "--seed", "4"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    needs_web_files()  # the wheel carries onnxruntime-web's files: npm must have installed them
    needs(importlib.util.find_spec("build") is not None, "the build package is missing (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (found,) = out.glob("charlstm-*.whl")
    assert len(list(out.glob("charlstm-*.tar.gz"))) == 1
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel and its dependencies from the registries: its bin folder. Only
    torch is this environment's own, seen through a .pth file, so pip counts it installed at the version setup.sh
    pins (copying its several hundred MB would be most of this test's time); its own dependencies pip installs."""
    env = tmp_path_factory.mktemp("env")
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    where = [str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    site = Path(subprocess.run(where, capture_output=True, text=True, check=True).stdout.strip())
    (site / "torch_of_the_tests.pth").write_text(f"{link_torch(tmp_path_factory.mktemp('torch'))}\n")
    torch = f"torch=={importlib.metadata.version('torch')}"
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    done = subprocess.run([*pip, torch, f"{wheel}[cpu,server]"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return env / "bin"


def link_torch(folder: Path) -> Path:
    """A folder holding links to torch's top-level files and folders (its packages and its dist-info) alone."""
    dist = importlib.metadata.distribution("torch")
    tops = {Path(str(file)).parts[0] for file in dist.files if not str(file).startswith("..")}
    for top in tops - {"__pycache__"}:
        target = Path(dist.locate_file(top))
        if target.exists():
            (folder / top).symlink_to(target)
    return folder


def run(bin_dir: Path, program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(bin_dir / program), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def test_the_wheel_holds_the_page_the_configs_and_the_model_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
        assert f"serve/web/ort/{name}" in names
    assert {"serve/js/core.js", "serve/js/inspect.js", "serve/web/index.html", "serve/web/app.js"} <= set(names)
    assert {f"trainer/config/shipped/{p.name}" for p in (ROOT / "configs").glob("*.yaml")} <= set(names)
    assert {"serve/models/shakespeare.onnx", "serve/models/shakespeare.md"} <= set(names)
    data = [n for n in names if n.endswith(".txt") and ".dist-info/" not in n]
    assert not data and not [n for n in names if n.startswith("tests/") or "node_modules" in n]
    assert wheel.stat().st_size < 20_000_000


def test_every_program_works_from_an_empty_folder(installed, tmp_path):
    here = tmp_path / "empty"
    here.mkdir()
    sampled = run(installed, "charlstm-sample", *SAMPLE, cwd=here)
    assert sampled.returncode == 0, sampled.stderr
    assert "the bundled shakespeare model" in sampled.stderr.splitlines()[0]
    assert sampled.stdout == "ROMEO:" + Sampler.pretrained().generate("ROMEO:", 300, top_k=5, seed=4) + "\n"
    code = "from serve import Sampler; print(Sampler.pretrained().generate('ROMEO:', 300, top_k=5, seed=4))"
    assert run(installed, "python", "-c", code, cwd=here).stdout == sampled.stdout.removeprefix("ROMEO:")

    corpus = here / "corpus.txt"
    corpus.write_text(ENGLISH.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    # the bundled model's card: its two commands, the budget cut (a small text, 10 steps, fp32), train the recipe
    # from its name and export as the card says; the full command's loss is in docs/install.md
    train, export = card_commands()
    budget = ["data.path=corpus.txt", "train.max_steps=10", "train.max_minutes=null", "train.eval_every=10"]
    budget += ["train.save_every=10", "train.mixed_precision=no", "train.eval_chars=4000"]
    for command, extra in ((train, budget), (export, [])):
        done = run(installed, *command, *extra, cwd=here)
        assert done.returncode == 0, done.stderr[-2000:]
    again = Sampler(here / "shakespeare.onnx")
    assert again.config["model"] == Sampler.pretrained().config["model"] and again.metadata["step"] == "10"
    own = run(installed, "charlstm-sample", "shakespeare.onnx", "--length", "50", "--seed", "1", cwd=here)
    assert own.returncode == 0 and len(own.stdout) == 51 and "bundled" not in own.stderr
    (here / "shakespeare.onnx").unlink()
    inspected = run(installed, "charlstm-inspect", "corpus.txt", "--max-chars", "2000", "--unknown", "skip", cwd=here)
    assert inspected.returncode == 0, inspected.stderr
    assert (here / "report.html").is_file()
    planned = run(installed, "charlstm-quickstart", "--dry-run", cwd=here)
    assert planned.returncode == 0 and "--config" in planned.stdout and "tiny.yaml" in planned.stdout
    unknown = run(installed, "charlstm-train", "--config", "tinny", cwd=here)
    assert unknown.returncode == 2 and "'tinny' is neither a file nor a shipped config name" in unknown.stderr
    assert sorted(p.name for p in here.iterdir()) == ["corpus.txt", "report.html", "runs"]


def test_the_installed_page_and_service_use_the_bundled_model(installed, browser, tmp_path):  # noqa: F811
    python = Sampler.pretrained()
    site = run(installed, "python", "-c", "import serve.pretrained as p; print(p.pretrained_path())", cwd=tmp_path)
    bundled = Path(site.stdout.strip())
    assert hashlib.sha256(bundled.read_bytes()).digest() == hashlib.sha256(python_path().read_bytes()).digest()

    web = subprocess.Popen(
        [str(installed / "charlstm-web"), "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", web.stdout.readline()).group(0)
        page = headless.open_page(browser, url)  # the root URL, as a user types it: the served model loads
        assert page.eval_on_selector("body", "b => b.dataset.state") == "ready"
        text = headless.generate(page, "ROMEO:", 300, top_k=5, seed=4)
        assert text == [python.generate("ROMEO:", 300, top_k=5, seed=4)]
        assert page.errors == []
    finally:
        web.terminate()
        web.wait(timeout=10)

    service = subprocess.Popen(
        [str(installed / "charlstm-serve"), "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [service.stderr.readline()]
        while "serving" not in lines[-1] and lines[-1] and len(lines) < 20:
            lines.append(service.stderr.readline())
        assert "the bundled shakespeare model" in lines[0], lines
        address = re.search(r"on (http://127\.0\.0\.1:\d+)", lines[-1]).group(1)
        body = {"prompt": "ROMEO:", "max_tokens": 200, "top_k": 5, "seed": 8}
        request = urllib.request.Request(
            address + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["choices"][0]["text"] == python.generate("ROMEO:", 200, top_k=5, seed=8)
    finally:
        service.terminate()
        service.wait(timeout=30)


def card_commands() -> list[list[str]]:
    from test_pretrained import MODELS, commands

    return commands((MODELS / "shakespeare.md").read_text(encoding="utf-8"))


def python_path() -> Path:
    from serve.pretrained import pretrained_path

    return pretrained_path()
