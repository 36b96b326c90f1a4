"""Where the time of one DiT training step goes on a CUDA GPU: torch.profiler over a few steps of the
benchmark shape (issue 7: 4 clips x 16 latent frames x 32x32, patch 2, bf16 autocast, fused AdamW), the
top kernels by GPU time, eager and with regional compilation.

    python benchmarks/gpu_profile.py [--preset xl] [--temporal dense] [--no-eager]
"""

from __future__ import annotations

import argparse
import sys

import torch

from videodit.config import DIT_PRESETS, DiTConfig
from videodit.dit import DiT
from videodit.flow import flow_loss
from videodit.train.parallelize import compile_blocks


def profile(preset: str, temporal: str, compiled: bool, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = DiT(DiTConfig(preset=preset, text_dim=4096, chunk_frames=4, temporal_attention=temporal,
                          **DIT_PRESETS[preset])).to(dev)
    if compiled:
        compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x0 = torch.randn(4, 16, 16, 32, 32, device=dev)
    noise, t = torch.randn_like(x0), torch.rand(4, 16, device=dev)
    text, mask = torch.randn(4, 120, 4096, device=dev), torch.ones(4, 120, dtype=torch.bool, device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = flow_loss(lambda a, b: model(a, b, text, mask), x0, t, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.self_device_time_total for e in events)
    print(f"\n{preset} {'compiled' if compiled else 'eager'}, temporal {temporal}: GPU time per step "
          f"{total / 3 / 1e3:.1f} ms")
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:rows]
    for e in top:
        print(f"{e.self_device_time_total / 3 / 1e3:8.2f} ms {100 * e.self_device_time_total / total:5.1f}%  "
              f"{e.count // 3:5d}x  {e.key[:110]}")
    torch._dynamo.reset()
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="xl", choices=list(DIT_PRESETS))
    ap.add_argument("--temporal", default="dense", choices=["sdpa", "dense"])
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_profile.py needs a CUDA GPU")
    if not args.no_eager:
        profile(args.preset, args.temporal, False, args.rows)
    profile(args.preset, args.temporal, True, args.rows)


if __name__ == "__main__":
    main()
