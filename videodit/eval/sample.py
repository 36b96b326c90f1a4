"""Prompt-following and long-video consistency of a checkpoint, measured with the pixel-only shapes evaluator.

    python -m videodit.eval.sample [--checkpoint checkpoints/tiny] [--num 50] [--seconds 60]

Prompts are captions of the held-out split (colour x shape x motion combinations that training never saw).
Each is generated for --seconds, written to mp4 (the real output path, compression included) and scored:
colour, shape, initial direction, axis, persistence, drift (last 15% minus first 15%), seam ratio at the
chunk boundaries, dynamic degree. Controls beside the scores: ground-truth renders of the same captions'
clips, the same renders with shuffled captions, still first frames, and the renders' round trip through the
checkpoint's own VAE (first --vae-seconds of each; the ceiling a DiT on these latents can reach). Last line:
one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from videodit.config import ConfigError, sample_overrides
from videodit.data.shapes import make_example, render_clip
from videodit.eval.shapes import evaluate_videos, format_table
from videodit.generate import Pipeline, generate
from videodit.video_io import read_video, write_video

_PIPES: dict[str, Pipeline] = {}


def _init_worker(checkpoint: str, threads: int, loras: list[tuple[str, float]]) -> None:
    torch.set_num_threads(threads)
    _PIPES[checkpoint] = Pipeline.load(checkpoint, loras=loras)


def seam_args(cfg) -> dict:
    """evaluate_videos' seam arguments for videos a checkpoint of config `cfg` generated: its chunks in frames and
    where the first chunk boundary falls (the first latent frame decodes to one frame, the others to four)."""
    cf = cfg.model.chunk_frames
    return dict(chunk_frames=4 * cf, seam_offset=1 + 4 * (cf - 1), fps=cfg.data.fps)


def generate_one(checkpoint: str, prompt: str, seconds: float, seed: int, out: str, overrides: dict) -> Path:
    """One video of `prompt` into `out` with the checkpoint's sampling settings, `overrides` (sample.* key ->
    value) on top. The only call into videodit.generate: adapt here when its API changes."""
    pipe = _PIPES[checkpoint]
    return generate(pipe, pipe.request(prompt, seconds=seconds, seed=seed, sample=overrides), Path(out))


def _generate_job(job: tuple) -> Path:
    return generate_one(*job)


@torch.no_grad()
def vae_round_trip(pipe: Pipeline, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) with T = 1 + 4k -> the same frames encoded and decoded by the checkpoint's VAE."""
    from videodit.vae import decode_video, encode_video

    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    y = decode_video(pipe.vae, encode_video(pipe.vae, x.to(pipe.device)))
    return ((y[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m videodit.eval.sample", description=__doc__.split("\n")[0],
                                 epilog="Sampling: --sample.KEY VALUE (as sample.py); omitted = the checkpoint's")
    ap.add_argument("--checkpoint", default="checkpoints/tiny")
    ap.add_argument("--num", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--objects", type=int, default=0,
                    help="only prompts with this many objects (the first --num of them; each keeps its seed)")
    ap.add_argument("--seed", type=int, default=1000, help="held-out split seed (prompts) and sampling seed base")
    ap.add_argument("--split", choices=["heldout", "train"], default="heldout",
                    help="held-out combinations (the measure) or training ones (is generalisation the gap?)")
    ap.add_argument("--out", default="", help="keep the mp4s and a JSON report here")
    ap.add_argument("--vae-seconds", type=float, default=10.0,
                    help="seconds of each ground-truth clip to round-trip through the VAE (0 skips this control)")
    ap.add_argument("--jobs", type=int, default=1, help="generate in this many processes (threads split evenly)")
    ap.add_argument("--lora", action="append", default=[],
                    help="a LoRA adapter PATH[:SCALE] (as sample.py); repeatable")
    args, rest = ap.parse_known_args()
    try:
        overrides = sample_overrides(rest, "python -m videodit.eval.sample")
    except ConfigError as e:
        ap.error(str(e))

    from videodit.lora import parse_lora

    loras = [parse_lora(x) for x in args.lora]
    pipe = Pipeline.load(args.checkpoint, loras=loras)
    cfg = pipe.cfg
    fps, size = cfg.data.fps, cfg.data.size
    pool = [(i, make_example(args.seed, i, args.split)) for i in range(100 * args.num if args.objects else args.num)]
    pool = [(i, ex) for i, ex in pool if not args.objects or len(ex[0].objects) == args.objects][: args.num]
    index, examples = [i for i, _ in pool], [ex for _, ex in pool]
    prompts = [c for _, c in examples]
    seam = seam_args(cfg)
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="videodit_eval_"))
    out_dir.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    t0 = time.time()
    jobs = [(args.checkpoint, p, args.seconds, args.seed + i, str(out_dir / f"{i:03d}.mp4"), overrides)
            for i, p in zip(index, prompts)]
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:  # each worker loads the checkpoint once and takes an even share of the threads
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, torch.get_num_threads() // args.jobs)
            ex = stack.enter_context(ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"),
                                                         initializer=_init_worker,
                                                         initargs=(args.checkpoint, threads, loras)))
            results = ex.map(_generate_job, jobs)
        else:
            _PIPES[args.checkpoint] = pipe
            results = map(_generate_job, jobs)
        paths = list(tqdm(results, total=args.num, desc=f"generating {args.num} x {args.seconds:g} s", unit="video"))
    gen_s = time.time() - t0

    frames = int(round(args.seconds * fps))
    truth = []
    for spec, _ in examples:  # judged through the same codec as the generated videos
        write_video(out_dir / "truth.mp4", render_clip(spec, fps=fps, size=size, frames=frames), fps)
        truth.append(read_video(out_dir / "truth.mp4"))
    rng = np.random.default_rng(0)
    shuffled = [prompts[j] for j in rng.permutation(len(prompts))]
    still = [np.repeat(v[:1], len(v), 0) for v in truth]
    model = evaluate_videos([read_video(p) for p in paths], prompts, **seam)
    table = {
        "model": model["aggregate"],
        "ground truth": evaluate_videos(truth, prompts, **seam)["aggregate"],
        "shuffled captions": evaluate_videos(truth, shuffled, **seam)["aggregate"],
        "still first frame": evaluate_videos(still, prompts, **seam)["aggregate"],
    }
    vae_col = None
    if args.vae_seconds > 0:
        n = 1 + 4 * ((min(frames, round(args.vae_seconds * fps)) - 1) // 4)  # the VAE takes 1 + 4k frames
        vae_col = evaluate_videos(
            [vae_round_trip(pipe, v[:n]) for v in tqdm(truth, desc="VAE round trip", unit="clip")], prompts, **seam
        )["aggregate"]
        table[f"VAE round trip ({(n - 1) / fps:g} s)"] = vae_col
    print(f"{args.num} {args.split} prompts, {args.seconds:g} s each at {fps} fps, {size}x{size}; "
          f"generation {gen_s:.0f} s ({gen_s / args.num:.1f} s per video)")
    print(format_table(table))
    if args.out:
        (out_dir / "report.json").write_text(json.dumps(dict(table=table, per_video=model["per_video"]), indent=1,
                                                        default=str))
    a = model["aggregate"]
    keys = ("colour", "shape", "direction", "axis", "persistence", "drift_colour", "drift_shape",
            "drift_persistence", "seam_ratio", "dynamic")
    print(json.dumps({k: (None if a.get(k) is None else round(a[k], 3)) for k in keys}
                     | {f"vae_{k}": round(vae_col[k], 3) for k in ("colour", "shape", "persistence")
                        if vae_col and vae_col.get(k) is not None}
                     | dict(videos=args.num, seconds=args.seconds, gen_s_per_video=round(gen_s / args.num, 2))))


if __name__ == "__main__":
    main()
