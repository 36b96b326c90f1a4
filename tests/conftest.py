import os
import subprocess

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh size-limited tmpfs folder: a real full disk. Mounting needs root (CI and the dev
    machines run as root); elsewhere the test is skipped with that reason."""
    mounts = []

    def mount(size: str):
        mnt = tmp_path / f"tmpfs{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                           text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a size-limited tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmpfs):
    """A 96 KiB disk: fills up while writing an mp4 or the second shard of a tiny cache."""
    return tmpfs("96k")
