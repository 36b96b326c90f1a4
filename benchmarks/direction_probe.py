"""Does the DiT's first chunk listen to the direction words? A teacher-forced probe, no sampling.

    python benchmarks/direction_probe.py [--checkpoint checkpoints/tiny] [--num 96]

For procedural clips (train split) and their captions, the first chunk of latents is noised to several t and
the checkpoint's velocity error on it is measured with the caption, with the same caption whose direction is
reversed (same template, same words otherwise: "moving left" -> "moving right") and, for scale, with another
clip's caption. A model that decides the initial motion from the text loses clearly more with the reversed
caption; a model that ignores the direction words loses the same. The second chunk, given a clean first chunk,
is the control: its motion is fixed by the context, so the text should matter little there. The first chunk's
later frames given a clean first frame (what flow.clean_first_frame_prob trains and sample.first_frame_first
samples) are the case where the direction words should matter most: the picture is known, its motion is not.

Last line: one JSON object with the relative loss increase (%) of the first chunk at each t.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _util import clean_latents, load_probe_model, probe_args  # noqa: E402

from videodit.data.shapes import SPLITS, caption, render_clip, sample_spec  # noqa: E402
from videodit.flow import interpolate  # noqa: E402

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def reversed_motion(motion: str) -> str:
    return "-".join(OPPOSITE[p] for p in motion.split("-"))


def example_pair(seed: int, index: int) -> tuple[np.ndarray, str, str]:
    """Clip `index` of the train split: (frames uint8 (T, H, W, 3) of 9 frames, caption, reversed caption)."""
    rng = np.random.default_rng([seed, SPLITS["train"], index])
    spec = sample_spec(rng, "train")
    flipped = dataclasses.replace(
        spec, objects=tuple(dataclasses.replace(o, motion=reversed_motion(o.motion)) for o in spec.objects)
    )
    rng2 = copy.deepcopy(rng)  # the same template choices for both captions
    return render_clip(spec, frames=9, fps=8, size=64), caption(spec, rng), caption(flipped, rng2)


def main() -> None:
    args = probe_args(__doc__, 96, "clips")
    cfg, dit, vae, te = load_probe_model(args.checkpoint)
    clips, caps, flips = zip(*(example_pair(args.seed, i) for i in range(args.num)))
    print(f"{args.num} clips; e.g. '{caps[0]}' -> '{flips[0]}'")
    f = cfg.flow
    cf = cfg.model.chunk_frames
    with torch.no_grad():
        x0 = clean_latents(vae, f, clips)  # (B, C, 3, h, w)
        texts = [te(list(c)) for c in (caps, flips, caps[1:] + caps[:1])]
        noise = torch.randn(x0.shape)
        rows, out = [], {}
        parts = (("first chunk", 0, cf), ("first chunk | clean frame 0", 1, cf),
                 ("second chunk | clean first", cf, min(2 * cf, x0.shape[2])))
        for name, lo, hi in parts:
            for tv in (1.0, 0.95, 0.85, 0.6):
                t = torch.zeros(len(x0), hi)
                t[:, lo:hi] = tv
                xt = interpolate(x0[:, :, :hi], noise[:, :, :hi], t)
                target = (noise - x0)[:, :, lo:hi]
                loss = [(dit(xt, t, e, m.bool())[:, :, lo:hi] - target).pow(2).mean().item() for e, m in texts]
                gain = 100 * (loss[1] / loss[0] - 1)
                rows.append((name, tv, *loss, gain, 100 * (loss[2] / loss[0] - 1)))
                if hi <= cf:
                    out[f"{'first_chunk' if lo == 0 else 'clean_frame0'}_t{tv:g}"] = round(gain, 2)
    head = ("frames", "t", "caption", "reversed", "increase", "other clip", "increase")
    print("\n{:>28} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9}".format(*head))
    for name, tv, a, b, c, g, gs in rows:
        print(f"{name:>28} {tv:>5.2f} {a:>9.4f} {b:>9.4f} {g:>+8.1f}% {c:>10.4f} {gs:>+8.1f}%")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
