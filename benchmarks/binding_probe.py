"""Does the DiT know which attribute belongs to which object? A teacher-forced probe on two-object clips.

    python benchmarks/binding_probe.py [--checkpoint checkpoints/tiny] [--num 64]

For procedural two-object clips (train split) the checkpoint's velocity error is measured with the caption,
with the same words but the two objects' colours swapped ("a red circle ... and a blue square ..." -> "a blue
circle ... and a red square ...") and with their motions swapped (the same template draws; a motion may be
worded differently). A model that reads the text as a bag of words cannot tell the colour swap from the caption
and barely the motion swap; a model that binds colour, shape and motion to their object loses clearly more
with either. Clips whose colours start with a vowel are
skipped, so that the article ("a" / "an") never changes between the captions. Two cases: the whole clip noisy,
and the first chunk's later frames given a clean first frame (where the motion is the thing left to know).

Last line: one JSON object with the relative loss increase (%) for each swap, case and t.
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


def swapped(spec, field: str):
    a, b = spec.objects
    return dataclasses.replace(spec, objects=(dataclasses.replace(a, **{field: getattr(b, field)}),
                                              dataclasses.replace(b, **{field: getattr(a, field)})))


def examples(seed: int, num: int) -> list[tuple[np.ndarray, str, str, str]]:
    """`num` two-object clips: (frames uint8 (9, H, W, 3), caption, colours swapped, motions swapped)."""
    out, index = [], 0
    while len(out) < num:
        rng = np.random.default_rng([seed, SPLITS["train"], index])
        index += 1
        spec = sample_spec(rng, "train", num_objects=2)
        if any(o.colour[0] in "aeiou" for o in spec.objects) or spec.objects[0].motion == spec.objects[1].motion:
            continue
        caps = [caption(s, copy.deepcopy(rng)) for s in (spec, swapped(spec, "colour"), swapped(spec, "motion"))]
        out.append((render_clip(spec, frames=9, fps=8, size=64), *caps))
    return out


def main() -> None:
    args = probe_args(__doc__, 64, "two-object clips")
    cfg, dit, vae, te = load_probe_model(args.checkpoint)
    clips, caps, colour_caps, motion_caps = zip(*examples(args.seed, args.num))
    print(f"{args.num} two-object clips; e.g.\n  '{caps[0]}'\n  '{colour_caps[0]}'\n  '{motion_caps[0]}'")
    print(f"text refiner blocks: {cfg.model.text_refiner}")
    f = cfg.flow
    cf = cfg.model.chunk_frames
    with torch.no_grad():
        x0 = clean_latents(vae, f, clips)  # (B, C, 3, h, w)
        texts = [te(list(c)) for c in (caps, colour_caps, motion_caps)]
        noise = torch.randn(x0.shape)
        rows, out = [], {}
        T = x0.shape[2]
        for name, lo in (("whole clip", 0), ("given clean frame 0", 1)):
            hi = T if lo == 0 else cf
            for tv in (0.95, 0.85, 0.6, 0.3):
                t = torch.zeros(len(x0), T)
                t[:, lo:hi] = tv
                xt = interpolate(x0, noise, t)
                target = (noise - x0)[:, :, lo:hi]
                loss = [(dit(xt, t, e, m.bool())[:, :, lo:hi] - target).pow(2).mean().item() for e, m in texts]
                gc, gm = (100 * (loss[i] / loss[0] - 1) for i in (1, 2))
                rows.append((name, tv, *loss, gc, gm))
                key = "whole" if lo == 0 else "frame0"
                out[f"colour_{key}_t{tv:g}"], out[f"motion_{key}_t{tv:g}"] = round(gc, 2), round(gm, 2)
    head = ("case", "t", "caption", "colours swapped", "increase", "motions swapped", "increase")
    print("\n{:>20} {:>5} {:>9} {:>16} {:>9} {:>16} {:>9}".format(*head))
    for name, tv, a, b, c, gc, gm in rows:
        print(f"{name:>20} {tv:>5.2f} {a:>9.4f} {b:>16.4f} {gc:>+8.1f}% {c:>16.4f} {gm:>+8.1f}%")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
