"""Shared measuring helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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
    """diffusers' AutoencoderKLWan built at a VAEConfig's width, depth, latent channels and compression (eval).

    This is a Wan-architecture VAE (its residual blocks, num_res_blocks + 1 decoder blocks per stage and mid-block
    attention) at *our* width: with the `full` preset base 128, not Wan 2.1's released VAE (base 96)."""
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
