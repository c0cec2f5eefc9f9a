"""The build step the wheel needs beyond pyproject.toml: files that live outside the Python packages in the
repository are assembled into them, so that an installed charlstm works from any folder.

- configs/*.yaml -> the `shipped` folder of the trainer.config package (`charlstm-train --config tiny`);
- onnxruntime-web's three files that the page loads, from the npm package pinned in serve/js/package-lock.json
  (in serve/js/node_modules once `npm ci` ran) -> the `ort` folder of the serve.web package.

An sdist carries configs/ and those three files (MANIFEST.in), so a wheel built from it has them too. An
editable install (`pip install -e .`, what ./setup.sh does) assembles nothing: the programs find the files where
they are in the repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
ORT_DIST = Path("serve/js/node_modules/onnxruntime-web/dist")
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")  # serve/web's


class BuildWithAssets(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib)
        configs = sorted((ROOT / "configs").glob("*.yaml"))
        if not configs:
            raise SystemExit("error: configs/*.yaml not found: build from the repository or its sdist")
        shipped = target / "trainer" / "config" / "shipped"
        shipped.mkdir(parents=True, exist_ok=True)
        for config in configs:
            shutil.copyfile(config, shipped / config.name)
        missing = [name for name in ORT_FILES if not (ROOT / ORT_DIST / name).is_file()]
        if missing:
            raise SystemExit(
                f"error: {ORT_DIST / missing[0]} is missing: run `cd serve/js && npm ci` before building "
                "(the wheel carries onnxruntime-web's files for the web page)"
            )
        ort = target / "serve" / "web" / "ort"
        ort.mkdir(parents=True, exist_ok=True)
        for name in ORT_FILES:
            shutil.copyfile(ROOT / ORT_DIST / name, ort / name)


setup(cmdclass={"build_py": BuildWithAssets})
