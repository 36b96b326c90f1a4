"""Paired check of the non-square sizes on more prompts: each held-out prompt at 64x64, 96x64 and 64x96 with the
same seed; per-video persistence / direction differences against 64x64 (mean +/- standard error). Public API only.

    python experiments/cpu-2026-12-04-own-frames/sizes.py --num 36 --seconds 8 --seed 2000 --out /tmp/sizes
"""
import argparse
import json
from pathlib import Path

import numpy as np

from videodit.data.shapes import make_example
from videodit.eval.shapes import evaluate_video
from videodit.generate import Pipeline, generate
from videodit.video_io import read_video

ap = argparse.ArgumentParser()
ap.add_argument("--checkpoint", default="checkpoints/tiny")
ap.add_argument("--num", type=int, default=36)
ap.add_argument("--seconds", type=float, default=8.0)
ap.add_argument("--seed", type=int, default=2000)
ap.add_argument("--out", required=True)
args = ap.parse_args()
pipe = Pipeline.load(args.checkpoint)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
sizes = {"64x64": (64, 64), "96x64": (96, 64), "64x96": (64, 96)}
scores = {k: [] for k in sizes}
for i in range(args.num):
    _, caption = make_example(args.seed, i, "heldout")
    for name, wh in sizes.items():
        path = out / f"{i:03d}_{name}.mp4"
        generate(pipe, pipe.request(caption, seconds=args.seconds, seed=args.seed + i, size=wh), path)
        scores[name].append(evaluate_video(read_video(path), caption, fps=8))
result = {}
for name in sizes:
    for key in ("persistence", "direction", "shape", "colour"):
        vals = np.array([s[key] if s[key] is not None else np.nan for s in scores[name]], float)
        base = np.array([s[key] if s[key] is not None else np.nan for s in scores["64x64"]], float)
        d = (vals - base)[~np.isnan(vals - base)] * 100
        se = float(d.std(ddof=1) / np.sqrt(len(d)))
        result[f"{name} {key}"] = dict(mean=round(float(np.nanmean(vals) * 100), 1), paired=round(float(d.mean()), 2),
                                       se=round(se, 2))
for k, v in result.items():
    print(f"{k:<22} {v['mean']:6.1f}   paired vs 64x64 {v['paired']:+6.2f} +/- {v['se']:.2f}")
print(json.dumps(dict(num=args.num, seconds=args.seconds, seed=args.seed, result=result)))
