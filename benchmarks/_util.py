"""Shared measuring helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """Achieved FLOP/s of a large square matmul: the ceiling MFU is measured against, in the same run."""
    if device.type == "cpu":
        n = 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = median_time(lambda: a @ b, device, repeats=10, warmup=3)
    return 2 * n**3 / t


def wan_vae_like(cfg) -> torch.nn.Module:
    """diffusers' AutoencoderKLWan built at a VAEConfig's width, depth, latent channels and compression (eval)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=cfg.base_channels, z_dim=cfg.latent_channels, dim_mult=list(cfg.channel_mults),
        num_res_blocks=cfg.num_res_blocks, temperal_downsample=list(cfg.temporal_down),
    ).eval()  # fmt: skip


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as torch.utils.flop_counter counts them (matmuls, convolutions, SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def probe_args(doc: str, num: int, num_help: str) -> argparse.Namespace:
    """Arguments of the teacher-forced probes (checkpoint, clips, dataset seed, threads); sets threads and seed."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[1] / "checkpoints" / "tiny"))
    ap.add_argument("--num", type=int, default=num, help=num_help)
    ap.add_argument("--seed", type=int, default=5, help="procedural dataset seed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args


def load_probe_model(checkpoint: str):
    """(config, DiT, VAE, text encoder) of a checkpoint folder."""
    from videodit.checkpoint import load_dit, load_text_encoder, load_vae, read_config

    cfg = read_config(checkpoint)
    return cfg, load_dit(checkpoint, cfg), load_vae(checkpoint, cfg), load_text_encoder(checkpoint, cfg)


@torch.no_grad()
def clean_latents(vae, flow, clips: Sequence) -> torch.Tensor:
    """uint8 clips, each (T, H, W, 3) -> the DiT's clean latents x0 (B, C, T', h, w), scaled as in training."""
    import numpy as np

    video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B, 3, T, H, W)
    z = torch.cat([vae.encode(v[None], vae.init_cache())[0].mean for v in video])
    return (z - flow.latent_shift) * flow.latent_scale
