"""Forward + backward time of our DiT against diffusers' Latte (factorized space/time, the nearest peer),
built with the same width, depth, heads and token grid, measured in the same run on this CPU.

    python benchmarks/dit_cpu.py [--frames 8] [--latent 16] [--batch 2] [--repeats 5]

Latte's `num_layers` counts (spatial block, temporal block) pairs, as our blocks do (space + time attention
each), so both models get the same depth. Latte's spatial block carries cross-attention and its own MLP, and
its temporal block another MLP; ours has one MLP per block, so at equal depth Latte does more work per layer:
the table prints parameter counts beside the times. Last line: one JSON object with the time ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from videodit.config import DIT_PRESETS, DiTConfig
from videodit.dit import DiT


def timeit(fn, repeats: int) -> float:
    for _ in range(2):  # warm-up: first calls pay for allocation
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(preset: str, args) -> dict:
    p = DIT_PRESETS[preset]
    D, depth, heads = p["hidden"], p["depth"], p["heads"]
    text_dim, L = 64, 16
    B, T, Hl = args.batch, args.frames, args.latent
    ours = DiT(DiTConfig(preset=preset, text_dim=text_dim, chunk_frames=T, **p))
    x = torch.randn(B, 16, T, Hl, Hl)
    t = torch.rand(B)
    text = torch.randn(B, L, text_dim)
    mask = torch.ones(B, L, dtype=torch.bool)

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(x, t, text, mask).square().mean().backward()

    from diffusers import LatteTransformer3DModel

    latte = LatteTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=D // heads, in_channels=16, out_channels=16,
        num_layers=depth, cross_attention_dim=D, sample_size=Hl, patch_size=2, caption_channels=text_dim,
        video_length=T, norm_type="ada_norm_single", activation_fn="gelu-approximate",
    )
    xl = torch.randn(B, 16, T, Hl, Hl)
    tl = torch.randint(0, 1000, (B,))
    enc = torch.randn(B, L, text_dim)

    def step_latte():
        latte.zero_grad(set_to_none=True)
        out = latte(xl, timestep=tl, encoder_hidden_states=enc, return_dict=False)[0]
        out.square().mean().backward()

    tokens = T * (Hl // 2) ** 2
    t_ours = timeit(step_ours, args.repeats)
    t_latte = timeit(step_latte, args.repeats)
    return dict(preset=preset, tokens=tokens, ours_s=t_ours, latte_s=t_latte,
                ours_params=sum(q.numel() for q in ours.parameters()),
                latte_params=sum(q.numel() for q in latte.parameters()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=8, help="latent frames")
    ap.add_argument("--latent", type=int, default=16, help="latent height = width")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--presets", default="tiny,small")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = [bench(p, args) for p in args.presets.split(",")]
    print(f"{'preset':8} {'tokens':>7} {'ours ms':>9} {'latte ms':>9} {'ratio':>6} {'ours M':>8} {'latte M':>8}")
    for r in rows:
        print(f"{r['preset']:8} {r['tokens']:7d} {r['ours_s'] * 1e3:9.1f} {r['latte_s'] * 1e3:9.1f} "
              f"{r['ours_s'] / r['latte_s']:6.2f} {r['ours_params'] / 1e6:8.2f} {r['latte_params'] / 1e6:8.2f}")
    print(f"(batch {args.batch}, {args.frames} latent frames of {args.latent}x{args.latent}, patch 2, fp32, "
          f"{torch.get_num_threads()} threads; forward + backward, median of {args.repeats})")
    print(json.dumps({f"{r['preset']}_time_ratio_vs_latte": round(r["ours_s"] / r["latte_s"], 3) for r in rows}))


if __name__ == "__main__":
    main()
