"""GPU performance in one run: matmul ceiling, DiT-xl training MFU against diffusers' Latte (eager and with
its blocks compiled), VAE decode against diffusers' AutoencoderKLWan, 60 s sampling with DiT-base, and a
bf16-vs-fp32 accuracy check. Everything is measured in the same process on the same card.

    python benchmarks/gpu.py                 # on a CUDA GPU
    python benchmarks/gpu.py --smoke         # tiny shapes on CPU: checks the code paths only

Shapes (issue 7): 4 clips x 16 latent frames x 32x32 latents, patch 2, bf16 autocast, fused AdamW; VAE at
49 frames x 256x256 bf16; sampling 60 s at 256x256 with the `base` preset and random weights. MFU = FLOPs
counted by torch.utils.flop_counter for forward + backward, over the bf16 matmul ceiling of this run.
Last line: one JSON object (`device`, `xl_mfu`, `latte_compiled_mfu`, `vae_decode_speedup_vs_wan`,
`sample_60s_wall_s`, ...).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _util import count_flops, matmul_ceiling, median_time, wan_vae_like

from videodit.config import DIT_PRESETS, VAE_PRESETS, Config, DiTConfig, VAEConfig
from videodit.dit import DiT
from videodit.flow import flow_loss


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def train_step_fn(model: torch.nn.Module, forward, device: torch.device, dtype: torch.dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def fwd_bwd():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = forward()
        loss.backward()

    def step():
        fwd_bwd()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return fwd_bwd, step


def bench_ours(preset: str, B: int, T: int, S: int, device, dtype, repeats: int, compiled: bool = False,
               temporal: str = "sdpa", checkpoint: str = "") -> dict:
    from videodit.train.parallelize import apply_activation_checkpointing, compile_blocks

    torch.manual_seed(0)
    model = DiT(DiTConfig(preset=preset, text_dim=4096 if device.type == "cuda" else 64, chunk_frames=4,
                          temporal_attention=temporal, **DIT_PRESETS[preset])).to(device)
    text_dim = model.cfg.text_dim
    x0 = torch.randn(B, 16, T, S, S, device=device)
    noise, t = torch.randn_like(x0), torch.rand(B, T, device=device)
    text = torch.randn(B, 120, text_dim, device=device)
    mask = torch.ones(B, 120, dtype=torch.bool, device=device)
    fwd_bwd, step = train_step_fn(model, lambda: flow_loss(lambda a, b: model(a, b, text, mask), x0, t, noise),
                                  device, dtype)
    flops = count_flops(fwd_bwd)  # eager: the flop counter does not see inside compiled graphs
    model.zero_grad(set_to_none=True)
    if checkpoint:  # after counting: the flop counter would count the recompute as work done
        apply_activation_checkpointing(model, checkpoint)
    if compiled:
        compile_blocks(model)
        step()  # compile outside the timed region
    reset_peak(device)
    dt = median_time(step, device, repeats=repeats)
    return dict(step_s=dt, flops=flops, mem_gib=peak_gib(device), params=sum(p.numel() for p in model.parameters()))


def bench_latte(preset: str, B: int, T: int, S: int, device, dtype, repeats: int, compiled: bool) -> dict:
    from diffusers import LatteTransformer3DModel

    p = DIT_PRESETS[preset]
    torch.manual_seed(0)
    text_dim = 4096 if device.type == "cuda" else 64
    model = LatteTransformer3DModel(
        num_attention_heads=p["heads"], attention_head_dim=p["hidden"] // p["heads"], in_channels=16,
        out_channels=16, num_layers=p["depth"], cross_attention_dim=p["hidden"], sample_size=S, patch_size=2,
        caption_channels=text_dim, video_length=T, norm_type="ada_norm_single", activation_fn="gelu-approximate",
    ).to(device)
    x = torch.randn(B, 16, T, S, S, device=device)
    ts = torch.randint(0, 1000, (B,), device=device)
    enc = torch.randn(B, 120, text_dim, device=device)

    def forward():
        return model(x, timestep=ts, encoder_hidden_states=enc, return_dict=False)[0].float().square().mean()

    fwd_bwd, step = train_step_fn(model, forward, device, dtype)
    flops = count_flops(fwd_bwd)  # eager, before any compilation
    model.zero_grad(set_to_none=True)
    if compiled:  # regional compilation: each transformer block, the peer at its best
        for blocks in (model.transformer_blocks, model.temporal_transformer_blocks):
            for blk in blocks:
                blk.compile()
    step()  # compile outside the timed region
    reset_peak(device)
    dt = median_time(step, device, repeats=repeats)
    return dict(step_s=dt, flops=flops, mem_gib=peak_gib(device), params=sum(q.numel() for q in model.parameters()))


def release(device) -> None:
    """Free one model's compiled graphs and memory before the next is built."""
    import gc

    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def flash_usable(device) -> bool:
    """Whether the flash SDPA kernel runs our spatial attention's shape (xl: 16 heads of 72) in bf16."""
    if device.type != "cuda":
        return False
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(8, 16, 256, 72, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return True
    except RuntimeError:
        return False


def bench_vae(frames: int, size: int, device, dtype, repeats: int) -> dict:
    from videodit.vae import VideoVAE

    preset = "full" if device.type == "cuda" else "tiny"  # full: base 128; the Wan-architecture VAE is built at it
    ours = VideoVAE(VAEConfig(preset=preset, **VAE_PRESETS[preset])).to(device, dtype).eval()
    cfg = ours.cfg
    wan = wan_vae_like(cfg).to(device, dtype)
    x = torch.rand(1, 3, frames, size, size, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        z = ours.encode(x, ours.init_cache())[0].mean
        zw = wan.encode(x).latent_dist.mode()
        t_ours = median_time(lambda: ours.decode(z, ours.init_cache()), device, repeats=repeats)
        t_wan = median_time(lambda: wan.decode(zw), device, repeats=repeats)
        t_ours_enc = median_time(lambda: ours.encode(x, ours.init_cache()), device, repeats=repeats)
        t_wan_enc = median_time(lambda: wan.encode(x), device, repeats=repeats)
    return dict(ours_decode_fps=frames / t_ours, wan_decode_fps=frames / t_wan, ours_encode_fps=frames / t_ours_enc,
                wan_encode_fps=frames / t_wan_enc)


def bench_sample(seconds: float, size: int, preset: str, device, steps: int) -> float:
    from videodit.generate import Pipeline
    from videodit.text_encoder import TextEncoder
    from videodit.vae import VideoVAE

    cfg = Config()
    cfg.model = DiTConfig(preset=preset, **DIT_PRESETS[preset])
    cfg.data.size, cfg.flow.latent_scale, cfg.sample.steps = size, 1.0, steps
    torch.manual_seed(0)
    pipe = Pipeline(cfg, DiT(cfg.model), VideoVAE(cfg.vae), TextEncoder.from_config(cfg.text), device)
    req = pipe.request("a red circle moving to the right", seconds=seconds)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        n = sum(len(f) for f in pipe.frames(req))
    assert n == round(seconds * cfg.data.fps)
    return time.perf_counter() - t0


def bf16_error(device) -> float:
    torch.manual_seed(0)
    model = DiT(DiTConfig(**DIT_PRESETS["small"], chunk_frames=4)).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, t = torch.randn(2, 16, 8, 16, 16, device=device), torch.rand(2, 8, device=device)
    text, mask = torch.randn(2, 20, 64, device=device), torch.ones(2, 20, dtype=torch.bool, device=device)
    with torch.no_grad():
        ref = model(x, t, text, mask)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(x, t, text, mask).float()
    return float((low - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU to check the code paths")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    preset, B, T, S = ("xl", 4, 16, 32) if cuda else ("tiny", 1, 4, 8)
    vae_frames, vae_size = (49, 256) if cuda else (9, 32)
    dtype = torch.bfloat16
    repeats = args.repeats if cuda else 2
    out: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu (smoke)"}
    ceiling = matmul_ceiling(device, dtype)
    out["matmul_ceiling_tflops"] = round(ceiling / 1e12, 1)
    print(f"{out['device']}: bf16 matmul ceiling {ceiling / 1e12:.1f} TFLOP/s; {preset}, {B} clips x {T} x {S}x{S}")
    print(f"flash SDPA kernel usable for the spatial attention: {flash_usable(device)}")
    # each row printed as soon as it is measured, and a failing row reported without losing the others: a
    # GPU session is short and this runs once in it
    variants = [("videodit eager", lambda: bench_ours(preset, B, T, S, device, dtype, repeats)),
                ("videodit comp+dense", lambda: bench_ours(preset, B, T, S, device, dtype, repeats, compiled=True,
                                                           temporal="dense")),
                ("videodit comp+d+ckpt", lambda: bench_ours(preset, B, T, S, device, dtype, repeats, compiled=True,
                                                           temporal="dense", checkpoint="save_matmuls")),
                ("latte eager", lambda: bench_latte(preset, B, T, S, device, dtype, repeats, compiled=False)),
                ("latte compiled", lambda: bench_latte(preset, B, T, S, device, dtype, repeats, compiled=True))]
    if not cuda:  # compilation is slow and beside the point on CPU
        variants = [v for v in variants if "comp" not in v[0]] + [
            ("videodit dense", lambda: bench_ours(preset, B, T, S, device, dtype, repeats, temporal="dense"))]
    print(f"{'model':20} {'ms/step':>9} {'TFLOP/step':>11} {'MFU':>7} {'GiB':>7} {'params M':>9}", flush=True)
    rows = {}
    for name, fn in variants:
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - report and go on to the next measurement
            print(f"{name:20} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        finally:
            release(device)
        r["mfu"] = r["flops"] / r["step_s"] / ceiling
        rows[name] = r
        key = name.replace(" ", "_").replace("+", "_")
        out[f"{key}_mfu"], out[f"{key}_ms"] = round(r["mfu"], 4), round(r["step_s"] * 1e3, 1)
        print(f"{name:20} {r['step_s'] * 1e3:9.1f} {r['flops'] / 1e12:11.3f} {r['mfu']:7.1%} {r['mem_gib']:7.2f} "
              f"{r['params'] / 1e6:9.1f}", flush=True)
    ours = [(r["mfu"], n) for n, r in rows.items() if n.startswith("videodit")]
    if ours:
        best = max(ours)
        out["xl_mfu" if cuda else "smoke_mfu"] = round(best[0], 4)
        out["xl_best_variant"] = best[1]
    if "latte compiled" in rows:
        out["latte_compiled_mfu"] = round(rows["latte compiled"]["mfu"], 4)
    try:
        vae = bench_vae(vae_frames, vae_size, device, dtype, max(2, repeats // 3))
        print(f"VAE {vae_frames} x {vae_size}x{vae_size}: decode {vae['ours_decode_fps']:.1f} frames/s "
              f"(Wan {vae['wan_decode_fps']:.1f}), encode {vae['ours_encode_fps']:.1f} "
              f"(Wan {vae['wan_encode_fps']:.1f})", flush=True)  # fmt: skip
        out["vae_decode_speedup_vs_wan"] = round(vae["ours_decode_fps"] / vae["wan_decode_fps"], 3)
        out.update({k: round(v, 1) for k, v in vae.items()})
    except Exception as e:  # noqa: BLE001
        print(f"VAE benchmark failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
    release(device)
    err = bf16_error(device)
    out["bf16_rel_error"] = round(err, 5)
    print(f"bf16 vs fp32 relative error (DiT-small forward): {err:.2e} ({'ok' if err <= 1e-2 else 'TOO HIGH'})")
    print(json.dumps(out), flush=True)  # what is known so far, in case sampling outlasts the session
    seconds, size, sample_preset, steps = (60.0, 256, "base", 12) if cuda else (2.0, 32, "tiny", 2)
    try:
        wall = bench_sample(seconds, size, sample_preset, device, steps)
        out["sample_60s_wall_s" if cuda else "smoke_sample_wall_s"] = round(wall, 2)
        print(f"sampling {'60 s at 256x256 (base)' if cuda else 'smoke'}: {wall:.1f} s")
    except Exception as e:  # noqa: BLE001
        print(f"sampling failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
