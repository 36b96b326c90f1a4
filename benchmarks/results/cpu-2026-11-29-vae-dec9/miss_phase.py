"""Where in time the two-object prompts lose their objects: the miss rate by a frame's place in its 8-frame chunk
(two latent frames of four video frames each), and the lengths of the runs of missed frames.

A missed frame is one where the evaluator's persistence fails for an object (its colour not found, or found with
another shape). Sources: a folder of sampled mp4s with its eval report (`--videos DIR --report JSON`), or the
VAE round trip of the ground-truth renders of the same prompts (`--truth-vae CHECKPOINT --report JSON`). From the
repository root:

    PYTHONPATH=. python benchmarks/results/cpu-2026-11-29-vae-dec9/miss_phase.py --videos runs/vae7_s1000 \
        --report benchmarks/results/cpu-2026-11-29-vae-dec7/report_vae7_s1000.json
"""

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for eval_sample.vae_round_trip

from eval_sample import vae_round_trip  # noqa: E402

from videodit.data.evaluate import SHAPES, track_objects  # noqa: E402
from videodit.data.shapes import make_example, render_clip  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", required=True)
    ap.add_argument("--videos", help="folder of NNN.mp4 in the report's order")
    ap.add_argument("--truth-vae", help="checkpoint whose VAE round-trips the ground-truth renders instead")
    ap.add_argument("--seed", type=int, default=1000, help="the prompt set of the report (ground truth only)")
    args = ap.parse_args()
    rep = json.load(open(args.report))
    pipe = None
    if args.truth_vae:
        from videodit.generate import Pipeline

        pipe = Pipeline.load(args.truth_vae)
    bad, total, runs = np.zeros(8), np.zeros(8), []
    for i, v in enumerate(rep["per_video"]):
        if v["objects"] != 2:
            continue
        if pipe is not None:
            spec, cap = make_example(args.seed, i, "heldout")
            assert cap == v["prompt"], (cap, v["prompt"])
            frames = vae_round_trip(pipe, render_clip(spec, frames=v["frames"] + 1))[: v["frames"]]
        else:
            with av.open(f"{args.videos}/{i:03d}.mp4") as c:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        for q, tr in track_objects(frames, v["prompt"]):
            miss = ~(tr["found"] & (tr["shape"] == SHAPES.index(q.shape)))
            place = (np.arange(1, len(miss)) - 1) % 8  # frame 0 is the first latent frame alone
            np.add.at(total, place, 1)
            np.add.at(bad, place, miss[1:])
            edges = np.flatnonzero(np.diff(np.r_[0, miss.astype(int), 0]))
            runs += list(edges[1::2] - edges[::2])
    r = np.array(runs)
    print("miss rate % by place in the chunk (0-3: its first latent frame, 4-7: its second):",
          np.round(100 * bad / total, 1).tolist())
    print(f"overall {100 * bad.sum() / total.sum():.1f}%; runs of missed frames: {len(r)}, median length "
          f"{np.median(r):.0f}; share of missed frames in runs of <= 4 frames {r[r <= 4].sum() / r.sum():.2f}, "
          f"in runs of > 24 frames {r[r > 24].sum() / r.sum():.2f}")


if __name__ == "__main__":
    main()
