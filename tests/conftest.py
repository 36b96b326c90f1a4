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


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory):
    """A random-init tiny VAE checkpoint folder: enough to turn clips into latents for DiT training tests."""
    from videodit.checkpoint import save_module, write_config
    from videodit.config import Config
    from videodit.vae import VideoVAE

    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    cfg = Config()
    save_module(VideoVAE(cfg.vae), folder / "vae.safetensors")
    write_config(cfg, folder)
    return folder


@pytest.fixture(scope="module")
def wan_ref():
    """A random diffusers AutoencoderKLWan, the reference for our Wan 2.1 VAE: Wan 2.1's structure (2 res blocks per
    encoder stage, 3 per decoder stage, mid attention, temporal down-sampling (False, True, True), z 16) at base 8;
    every weight perturbed, the norms' gains too, so a mis-mapped tensor shows."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the dev extra) holds the reference VAE")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae
