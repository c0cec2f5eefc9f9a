"""`python bench/gpu_env.py NAME=MODULE ...`: the GPU check's env stage. Prints one JSON line: the GPU, driver,
CUDA, cuDNN, NCCL, the TF32 flags, which of the packages import (NAME=MODULE: the package's name and the module
that proves it), and the corpus the later stages use. Nothing here needs a GPU: on a CPU the GPU fields are null."""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def packages(pairs: list[str]) -> tuple[dict, list[str]]:
    """{name: version or "present"} of the packages that import, and the names of those that do not."""
    found, missing = {}, []
    for pair in pairs:
        name, module = pair.split("=", 1)
        try:
            found[name] = getattr(importlib.import_module(module), "__version__", "present")
        except Exception:  # noqa: BLE001 (a broken install is as missing as an absent one)
            missing.append(name)
    return found, missing


def driver() -> dict:
    """nvidia-smi's view of GPU 0, or {} without nvidia-smi (a CPU machine, or a container without it)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    query = "--query-gpu=name,driver_version,memory.total"
    result = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
    fields = [part.strip() for part in (result.stdout.splitlines() or [""])[0].split(",")]
    return dict(zip(["smi_gpu", "driver", "memory"], fields)) if len(fields) == 3 else {"nvidia_smi": result.stdout}


def gpu() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda else None
    except (AttributeError, RuntimeError):  # a torch built without NCCL
        nccl = None
    return {
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpus": torch.cuda.device_count(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": nccl,
        "bf16": torch.cuda.is_bf16_supported() if cuda else None,
        # PyTorch's defaults: TF32 in cuDNN (the LSTM) on, in plain matmuls (the head) off
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def corpus(dry_run: bool) -> str:
    """CORPUS if set; on the dry run the repository's English text; else Tiny Shakespeare when the cache holds it
    (there is no network to download it), else the Python documentation (465k characters, offline, quick)."""
    if os.environ.get("CORPUS"):
        return os.environ["CORPUS"]
    if dry_run:
        return "tests/data/english.txt"
    from trainer.data import user_cache_dir

    return "tinyshakespeare" if (user_cache_dir() / "tinyshakespeare.txt").is_file() else "builtin:python-docs"


def main() -> int:
    pairs = [arg for arg in sys.argv[1:] if "=" in arg]
    found, missing = packages(pairs)
    figures = {"python": platform.python_version(), "packages": found, "missing": missing}
    if "torch" in found:
        figures |= gpu()
        from trainer.dist.precision import choose_precision, device_type

        figures["auto_precision"] = choose_precision("auto", device_type()).mode
    figures |= driver()
    figures["corpus"] = corpus("--dry-run" in sys.argv)
    print(json.dumps(figures))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
