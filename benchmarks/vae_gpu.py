"""VAE speed on a CUDA GPU (issue 3): each kernel choice of `VideoVAE.set_kernels`, with cuDNN autotuning off
and on, against diffusers' `AutoencoderKLWan` built at the same width and compression, same clip, same run.

    python benchmarks/vae_gpu.py [--frames 49] [--size 256] [--preset full] [--profile OUT.txt]

Default shape: the issue's, 49 frames at 256x256 in bf16, the `full` preset (base width 128; the
Wan-architecture VAE is built at that width, not at Wan 2.1's released 96).
Before the whole decoder it times its parts at the decoder's three large shapes: a 3x3x3 causal conv as cuDNN's
3D conv (channels-last and contiguous); the x2 up-sampling as nearest + 3x3 conv and
as the equivalent transposed conv; the RMSNorm + SiLU pair as it was (an fp32 copy) and as it is.
Every variant of the whole decoder is checked against an fp32 decode (relative L2 error). Wan is timed
with autotuning off and on, and its faster figure is the one compared. On a CPU it runs the `tiny` preset at
9 x 64x64 (a smoke test of the script; CPU figures come from benchmarks/vae.py).
Last line: one JSON object (`device`, `decode_fps`, `wan_decode_fps`, `decode_speedup_vs_wan`, `best`, ...).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from _util import count_flops, matmul_ceiling, median_time, wan_vae_like
from torch import nn

from videodit.config import VAE_PRESETS, VAEConfig
from videodit.vae import KERNELS, VideoVAE, _up_as_transposed, decode_video


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def cudnn_benchmark(on: bool) -> None:
    torch.backends.cudnn.benchmark = on


def bench_parts(shapes, dev, dtype, repeats: int) -> list[dict]:
    """The decoder's large layers alone: conv kernels, up-sampling, norm + SiLU."""
    rows = [row for c, t, s in shapes for row in _parts_at(c, t, s, dev, dtype, repeats)]
    cudnn_benchmark(False)
    return rows


def _parts_at(c: int, t: int, s: int, dev, dtype, repeats: int) -> list[dict]:
    rows = []
    x = torch.randn(1, c, t + 2, s, s, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    conv = nn.Conv3d(c, c, 3, padding=(0, 1, 1)).to(dev, dtype)
    flops = 2 * 27 * c * c * t * s * s
    ref = conv(x.float().contiguous() if dev.type == "cpu" else x.contiguous()).float()
    for bench in (False, True):
        cudnn_benchmark(bench)
        for name, fn in (("conv3d channels-last", lambda: conv(x)),
                         ("conv3d contiguous", lambda: conv(x.contiguous()))):
            sec = median_time(fn, dev, repeats=repeats)
            rows.append(dict(part=f"conv {c}ch {t}x{s}^2", variant=name, autotune=bench, ms=sec * 1e3,
                             tflops=flops / sec / 1e12, err=rel_err(fn(), ref)))
    # up-sampling into this level: C_in = 2 c (the level below is twice as wide, except at the lowest)
    ci = min(2 * c, 512) if c < 512 else c
    f = torch.randn(t, ci, s // 2, s // 2, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
    up = nn.Conv2d(ci, c, 3, padding=1).to(dev, dtype)
    w = _up_as_transposed(up.weight)
    flops_i = 2 * 9 * ci * c * t * s * s
    ref = up(F.interpolate(f, scale_factor=2.0, mode="nearest")).float()
    for bench in (False, True):
        cudnn_benchmark(bench)
        for name, fn in (("nearest + 3x3 conv", lambda: up(F.interpolate(f, scale_factor=2.0, mode="nearest"))),
                         ("transposed 4x4 stride 2", lambda: F.conv_transpose2d(f, w, up.bias, 2, 1))):
            sec = median_time(fn, dev, repeats=repeats)
            rows.append(dict(part=f"up {ci}->{c}ch {t}x{s}^2", variant=name, autotune=bench, ms=sec * 1e3,
                             tflops=flops_i / sec / 1e12, err=rel_err(fn(), ref)))
    # norm + SiLU at this level
    gain = torch.ones(c, device=dev, dtype=dtype)
    h = x[:, :, :t]

    def before() -> torch.Tensor:  # the norm as it was: statistics on an fp32 copy
        y = F.rms_norm(h.float().permute(0, 2, 3, 4, 1), (c,), gain.float(), 1e-6)
        return F.silu(y.permute(0, 4, 1, 2, 3).to(h.dtype))

    def now() -> torch.Tensor:
        return F.silu(F.rms_norm(h.permute(0, 2, 3, 4, 1), (c,), gain, 1e-6).permute(0, 4, 1, 2, 3))

    variants = [("fp32 copy (before)", before), ("native dtype (now)", now)]
    ref = before().float()
    nbytes = 2 * h.numel() * h.element_size()  # read once, write once
    for name, fn in variants:
        sec = median_time(fn, dev, repeats=repeats)
        rows.append(dict(part=f"norm+silu {c}ch {t}x{s}^2", variant=name, autotune=None, ms=sec * 1e3,
                         gbs=nbytes / sec / 1e9, err=rel_err(fn(), ref)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-parts", action="store_true", help="skip the per-layer timings")
    ap.add_argument("--profile", default="", help="write the top GPU kernels of the fastest decode here")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    frames, size = args.frames or (49 if cuda else 9), args.size or (256 if cuda else 64)
    preset = args.preset or ("full" if cuda else "tiny")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    out: dict = dict(device=name, preset=preset, frames=frames, size=size, dtype=str(dtype).split(".")[-1])
    print(f"{name}, {preset} VAE, {frames} x {size}x{size}, {out['dtype']}", flush=True)
    if cuda:
        out["matmul_tflops"] = round(matmul_ceiling(dev, dtype) / 1e12, 1)
        a = torch.empty(2**30, device=dev, dtype=torch.uint8)
        b = torch.empty_like(a)
        out["copy_gbs"] = round(2 * a.numel() / median_time(lambda: b.copy_(a), dev, repeats=10) / 1e9, 1)
        del a, b
        print(f"ceilings: bf16 matmul {out['matmul_tflops']} TFLOP/s, copy {out['copy_gbs']} GB/s", flush=True)

    base = VAE_PRESETS[preset]["base_channels"]
    s = size
    shapes = [(base, frames, s), (2 * base, frames, s // 2), (4 * base, (frames - 1) // 2 + 1, s // 4)]
    if not args.no_parts:
        print("\n-- the decoder's large layers alone", flush=True)
        for r in bench_parts(shapes, dev, dtype, args.repeats):
            rate = f"{r['tflops']:7.1f} TFLOP/s" if "tflops" in r else f"{r['gbs']:7.1f} GB/s   "
            tune = {None: "", False: "", True: " (autotuned)"}[r["autotune"]]
            print(f"{r['part']:<28} {r['variant'] + tune:<36} {r['ms']:8.2f} ms {rate}  rel err {r['err']:.1e}",
                  flush=True)

    ours = VideoVAE(VAEConfig(preset=preset, **VAE_PRESETS[preset])).to(dev).eval()
    cfg = ours.cfg
    x = torch.rand(1, 3, frames, size, size, device=dev) * 2 - 1
    with torch.no_grad():
        z32 = ours.encode(x, ours.init_cache())[0].mean
        ref = ours.decode(z32, ours.init_cache())[0]  # fp32 reference (conv3d, interp)
        ours = ours.to(dtype)
        z = z32.to(dtype)
        flops = count_flops(lambda: ours.decode(z, ours.init_cache()))
    out["decode_tflop"] = round(flops / 1e12, 2)
    print(f"\n-- whole decoder: {flops / 1e12:.2f} TFLOP per clip", flush=True)
    results = []
    with torch.no_grad():
        for bench in (False, True):
            cudnn_benchmark(bench)
            for up in KERNELS["upsample"]:
                ours.set_kernels(up)
                sec = median_time(lambda: ours.decode(z, ours.init_cache()), dev, repeats=args.repeats)
                err = rel_err(ours.decode(z, ours.init_cache())[0], ref)
                results.append(dict(upsample=up, autotune=bench, s=sec, err=err))
                print(f"ours  upsample={up:<10} autotune={bench!s:<5} "
                      f"{frames / sec:8.1f} frames/s  {flops / sec / 1e12:6.1f} TFLOP/s  rel err vs fp32 {err:.1e}",
                      flush=True)
    best = min(results, key=lambda r: r["s"])
    default = next(r for r in results if (r["upsample"], r["autotune"]) == ("interp", False))

    wan = wan_vae_like(cfg).to(dev, dtype)
    wan_dec, wan_enc = {}, {}
    with torch.no_grad():
        xw = x.to(dtype)
        zw = wan.encode(xw).latent_dist.mode()
        for bench in (False, True):
            cudnn_benchmark(bench)
            wan_dec[bench] = median_time(lambda: wan.decode(zw), dev, repeats=args.repeats)
            wan_enc[bench] = median_time(lambda: wan.encode(xw), dev, repeats=args.repeats)
            print(f"Wan   autotune={bench!s:<5} decode {frames / wan_dec[bench]:8.1f} frames/s, encode "
                  f"{frames / wan_enc[bench]:8.1f} frames/s", flush=True)
        wan_fps = frames / min(wan_dec.values())
        # our encode with the best decode's settings, and streaming decode (1-s latent chunks) as sample.py runs it
        cudnn_benchmark(best["autotune"])
        ours.set_kernels(best["upsample"])
        enc_s = median_time(lambda: ours.encode(xw, ours.init_cache()), dev, repeats=args.repeats)
        stream_s = median_time(lambda: decode_video(ours, z, chunk_latents=2, tile=0), dev, repeats=args.repeats)
    print(f"ours  encode {frames / enc_s:.1f} frames/s (Wan best {frames / min(wan_enc.values()):.1f}); streaming "
          f"decode in 2-latent chunks {frames / stream_s:.1f} frames/s", flush=True)

    if args.profile and cuda:
        from torch.profiler import ProfilerActivity, profile

        with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            ours.decode(z, ours.init_cache())
            torch.cuda.synchronize()
        Path(args.profile).write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
        print(f"profile of the fastest decode -> {args.profile}")

    tag = f"upsample={best['upsample']}, autotune={best['autotune']}"
    fps, fps0 = frames / best["s"], frames / default["s"]
    print(f"\nfastest: {tag}: {fps:.1f} frames/s vs Wan {wan_fps:.1f} ({fps / wan_fps:.2f}x; "
          f"before this work's kernels {fps0:.1f}, {fps0 / wan_fps:.2f}x)")
    out.update(
        decode_fps=round(frames / best["s"], 1), wan_decode_fps=round(wan_fps, 1),
        decode_speedup_vs_wan=round(frames / best["s"] / wan_fps, 3), best=tag,
        decode_fps_before=round(frames / default["s"], 1), decode_err_vs_fp32=float(f"{best['err']:.2e}"),
        decode_tflops=round(flops / best["s"] / 1e12, 1), encode_fps=round(frames / enc_s, 1),
        wan_encode_fps=round(frames / min(wan_enc.values()), 1), stream_decode_fps=round(frames / stream_s, 1),
        variants={f"{r['upsample']}/{'tuned' if r['autotune'] else 'default'}":
                  round(frames / r["s"], 1) for r in results},
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
