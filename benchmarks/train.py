"""Training throughput of the DiT: samples/s and tokens/s for the `tiny` preset on this CPU and, on a CUDA
GPU, the MFU of the `xl` preset (bf16 autocast, fused AdamW) at 4 clips x 16 latent frames x 32x32 latents,
with FLOPs counted by torch.utils.flop_counter over a bf16 matmul ceiling measured in the same run.

    python benchmarks/train.py

Last line: one JSON object (`tiny_samples_per_s`, `tiny_tokens_per_s`, and `xl_mfu` where a GPU ran it).
"""

from __future__ import annotations

import argparse
import json

import torch
from _util import count_flops, matmul_ceiling, median_time

from videodit.config import DIT_PRESETS, DiTConfig
from videodit.dit import DiT
from videodit.flow import flow_loss


def make_step(preset: str, batch: int, frames: int, latent: int, device: torch.device, bf16: bool):
    torch.manual_seed(0)
    model = DiT(DiTConfig(preset=preset, text_dim=64, chunk_frames=2, **DIT_PRESETS[preset])).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x0 = torch.randn(batch, 16, frames, latent, latent, device=device)
    noise = torch.randn_like(x0)
    t = torch.rand(batch, frames, device=device)
    text = torch.randn(batch, 32, 64, device=device)
    mask = torch.ones(batch, 32, dtype=torch.bool, device=device)

    def fwd_bwd():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = flow_loss(lambda xt, tt: model(xt, tt, text, mask), x0, t, noise)
        loss.backward()

    def step():
        fwd_bwd()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    tokens = batch * frames * (latent // 2) ** 2
    return model, step, fwd_bwd, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    out: dict = {}

    cpu = torch.device("cpu")
    # the shipped model's training shape: 33 frames -> 9 latent frames of 8x8 (64x64 pixels)
    _, step, _, tokens = make_step("tiny", args.tiny_batch, 9, 8, cpu, bf16=False)
    dt = median_time(step, cpu, repeats=args.repeats)
    out["tiny_samples_per_s"] = round(args.tiny_batch / dt, 2)
    out["tiny_tokens_per_s"] = round(tokens / dt, 1)
    print(f"tiny on CPU ({torch.get_num_threads()} threads): batch {args.tiny_batch} x 9 x 8x8 latents, "
          f"{dt * 1e3:.0f} ms/step, {out['tiny_samples_per_s']} samples/s, {out['tiny_tokens_per_s']} tokens/s")

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        ceiling = matmul_ceiling(dev, torch.bfloat16)
        model, step, fwd_bwd, tokens = make_step("xl", 4, 16, 32, dev, bf16=True)
        flops = count_flops(fwd_bwd)  # forward + backward; the optimizer is not counted
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        dt = median_time(step, dev, repeats=args.repeats)
        out["xl_mfu"] = round(flops / dt / ceiling, 4)
        out["xl_step_ms"] = round(dt * 1e3, 1)
        out["xl_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["device"] = torch.cuda.get_device_name()
        print(f"xl on {out['device']}: {dt * 1e3:.1f} ms/step, {flops / 1e12:.2f} TFLOP/step, "
              f"ceiling {ceiling / 1e12:.0f} TFLOP/s, MFU {out['xl_mfu']:.1%}, peak {out['xl_peak_mem_gib']} GiB")
    else:
        print("no CUDA GPU here: xl MFU not measured")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
