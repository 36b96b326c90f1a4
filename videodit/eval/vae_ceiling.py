"""The VAE's ceiling on the shapes evaluator, by object count: the ground-truth renders of held-out prompts,
through mp4, the checkpoint's VAE (encode + decode) and mp4 again, scored like generated videos.

    python -m videodit.eval.vae_ceiling [--checkpoint checkpoints/tiny] [--seconds 20] [--seeds 1000,2000,3000]

A DiT sampling this VAE's latents cannot be expected to beat these figures: they are what the decoder makes of
the encoder's own latents. Prints one line per prompt set, then one JSON object (persistence, colour and shape
of the ground truth and of its round trip, for one-object and two-object prompts and all together).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from videodit.data.shapes import make_example, render_clip
from videodit.eval.sample import seam_args, vae_round_trip
from videodit.eval.shapes import evaluate_videos
from videodit.generate import Pipeline
from videodit.video_io import read_video, write_video

METRICS = ("persistence", "colour", "shape")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m videodit.eval.vae_ceiling", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/tiny")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each clip")
    ap.add_argument("--seeds", default="1000,2000,3000", help="held-out prompt sets (videodit.eval.sample --seed)")
    ap.add_argument("--num", type=int, default=50, help="prompts per set")
    args = ap.parse_args()

    pipe = Pipeline.load(args.checkpoint)
    cfg = pipe.cfg
    fps, size = cfg.data.fps, cfg.data.size
    n = 1 + 4 * ((round(args.seconds * fps) - 1) // 4)  # the VAE takes 1 + 4k frames
    seam = seam_args(cfg)
    scores: dict[tuple[int, str], list[dict]] = {}  # (objects, "truth" / "vae") -> per-video scores, all sets
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        for seed in (int(s) for s in args.seeds.split(",")):
            this_set: dict[tuple[int, str], list[dict]] = {}
            for i in range(args.num):
                spec, prompt = make_example(seed, i, "heldout")
                write_video(path, render_clip(spec, fps=fps, size=size, frames=n), fps)
                truth = read_video(path)
                with torch.no_grad():
                    write_video(path, vae_round_trip(pipe, truth), fps)
                for name, frames in (("truth", truth), ("vae", read_video(path))):
                    v = evaluate_videos([frames], [prompt], **seam)["per_video"][0]
                    this_set.setdefault((len(spec.objects), name), []).append(v)
            print(f"set {seed} persistence: " + ", ".join(
                f"{k} object(s) {name} {100 * np.mean([v['persistence'] for v in vs]):.1f} (n={len(vs)})"
                for (k, name), vs in sorted(this_set.items())), flush=True)
            for key, vs in this_set.items():
                scores.setdefault(key, []).extend(vs)

    def summary(vs: list[dict]) -> dict:
        return {m: round(100 * float(np.mean([float(v[m]) for v in vs if v.get(m) is not None])), 2) for m in METRICS}

    out = {}
    for name in ("truth", "vae"):
        for k in (1, 2):
            out[f"{name}_{k}_objects"] = summary(scores.get((k, name), []))
        out[f"{name}_all"] = summary([v for (_, nm), vs in scores.items() if nm == name for v in vs])
    print(json.dumps(out | dict(seconds=(n - 1) / fps, checkpoint=args.checkpoint)))


if __name__ == "__main__":
    main()
