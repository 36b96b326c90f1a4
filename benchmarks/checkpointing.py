"""Activation checkpointing policies (`train.activation_checkpointing` + `train.checkpoint_policy`): peak memory
and step time of a DiT training step with none, "full" and "save_matmuls", each in a fresh process so its peak
is its own (peak RSS on CPU, peak allocated memory on CUDA).

    python benchmarks/checkpointing.py [--preset small] [--batch 4] [--frames 8] [--latent 16]

Last line: one JSON object, per policy `{policy}_peak_mib` and `{policy}_step_s`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

POLICIES = ("none", "full", "save_matmuls")


def one(policy: str, args) -> dict:
    from videodit.config import DIT_PRESETS, DiTConfig
    from videodit.dit import DiT
    from videodit.flow import flow_loss
    from videodit.train.parallelize import apply_activation_checkpointing

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = DiT(DiTConfig(preset=args.preset, text_dim=64, chunk_frames=2, **DIT_PRESETS[args.preset])).to(dev)
    if policy != "none":
        apply_activation_checkpointing(model, policy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 16, args.frames, args.latent, args.latent, device=dev)
    t, noise = torch.rand(args.batch, args.frames, device=dev), torch.randn_like(x)
    text, mask = torch.randn(args.batch, 20, 64, device=dev), torch.ones(args.batch, 20, dtype=torch.bool, device=dev)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = flow_loss(lambda a, b: model(a, b, text, mask), x, t, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(peak_mib=round(peak, 1), step_s=round(min(times[1:]), 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--policy", help=argparse.SUPPRESS)  # internal: measure one policy in this process
    args = ap.parse_args()
    if args.policy:
        print(json.dumps(one(args.policy, args)))
        return
    out = {}
    print(f"{args.preset}, batch {args.batch} x {args.frames} latent frames x {args.latent}x{args.latent}")
    print(f"{'policy':14} {'peak MiB':>9} {'s/step':>8}")
    for policy in POLICIES:
        cmd = [sys.executable, __file__, "--policy", policy, "--preset", args.preset, "--batch", str(args.batch),
               "--frames", str(args.frames), "--latent", str(args.latent)]  # fmt: skip
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{policy:14} {r['peak_mib']:9.1f} {r['step_s']:8.3f}", flush=True)
        out.update({f"{policy}_peak_mib": r["peak_mib"], f"{policy}_step_s": r["step_s"]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
