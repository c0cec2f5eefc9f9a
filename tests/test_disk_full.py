"""A disk that fills up while a checkpoint is written: one line naming the file, the space it needed and what
was free; a non-zero exit; the earlier checkpoints intact and no partial file; a rerun after space is freed
resumes. On a real tmpfs too small for the next save (root), and with ENOSPC injected into the write."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
import torch
from helpers import run_train

from trainer import checkpoint as checkpoint_module
from trainer import files as files_module
from trainer.checkpoint import DiskFullError, load_checkpoint, save_checkpoint


def small_checkpoint(step: int) -> dict:
    return {
        "format": "charlstm-ckpt/1",
        "model": {"w": torch.full((1000,), float(step))},
        "vocab": ["a"],
        "config": {},
        "step": step,
        "val_loss": None,
    }


def test_no_room_is_found_before_the_write(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, small_checkpoint(1))
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda folder: type("U", (), {"free": 1234})())
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(path, small_checkpoint(2))
    message = str(caught.value)
    assert str(path) in message and "MB and 0.0 MB are free" in message and "rerun to resume" in message
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_enospc_in_the_middle_of_the_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, small_checkpoint(1))
    real_open = open

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(bytes(data)[:100])  # some bytes land, then the device is full
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(files_module, "open", lambda p, mode="r": FullDisk(real_open(p, mode)), raising=False)
    with pytest.raises(DiskFullError, match="the device said it is full"):
        save_checkpoint(path, small_checkpoint(2))
    assert load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_tmpfs_stops_the_run_in_one_line_and_a_rerun_resumes(tiny_run, corpus_100k, tmp_path, capsys):
    size = (tiny_run / "ckpt.pt").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    # room for ckpt.pt and best.pt of step 20 and the small files, not for a third checkpoint at step 40
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(2.5 * size) + 65536}", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "run"
        capsys.readouterr()
        assert run_train(f"data.path={corpus_100k}", f"out_dir={out}") == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "no space left to write" in lines[0] and ".pt: it needs" in lines[0], lines
        assert "MB are free" in lines[0]
        assert load_checkpoint(out / "ckpt.pt")["step"] == 20 and load_checkpoint(out / "best.pt")["step"] == 20
        assert not list(out.glob(".*.tmp"))  # no partial file
        subprocess.run(["mount", "-o", f"remount,size={20 * size}", str(disk)], check=True)  # space freed
        assert run_train(f"data.path={corpus_100k}", f"out_dir={out}") == 0
        resumed, uninterrupted = load_checkpoint(out / "ckpt.pt"), load_checkpoint(tiny_run / "ckpt.pt")
        assert resumed["step"] == 40
        for key, value in uninterrupted["model"].items():
            assert torch.equal(value, resumed["model"][key]), key
    finally:
        subprocess.run(["umount", str(disk)], check=True)
