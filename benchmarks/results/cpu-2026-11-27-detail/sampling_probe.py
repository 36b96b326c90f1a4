"""Quick probe of sampling-time changes on short videos: guidance variants and best-of-N chunk selection.

    python benchmarks/results/cpu-2026-11-27-detail/sampling_probe.py [--checkpoint DIR] [--num 24] [--seconds 10]
        [--mode cfg|apg|rescale] [--best N [--every] --score cls|lik|oracle]

An experiment, not a feature: it recompiles `videodit.generate` with two hooks (the guidance combination and the
making of each chunk) and fails loudly if that source no longer has the lines it hooks. Prompts come from a
held-out split the evaluations of README do not use (--seed 3000), so tuning here does not fit those sets.

  apg      adaptive projected guidance (Sadat et al. 2024) with eta = --eta: in x0 space, the guidance update's
           component along the conditional prediction is scaled by eta (0 = dropped).
  rescale  guidance rescale (Lin et al. 2024): the guided x0 takes the conditional x0's std, mixed by --phi.
  --best N make N candidates of the first chunk (of every chunk with --every) and keep the best by --score:
           cls = the model's own text evidence (unconditional minus conditional denoising error at fixed
           noises, as a diffusion classifier), lik = minus the conditional error, oracle = the shapes
           evaluator on the decoded candidate (an upper bound for any selection rule, not usable for sampling).
Prints one JSON line: the evaluator's scores, persistence of one- and two-object prompts, generation seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import videodit.generate as G  # noqa: E402
from videodit.data.evaluate import evaluate_video, evaluate_videos  # noqa: E402
from videodit.data.shapes import make_example  # noqa: E402
from videodit.flow import sample  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "tiny"))
ap.add_argument("--mode", choices=["cfg", "apg", "rescale"], default="cfg")
ap.add_argument("--eta", type=float, default=0.0)
ap.add_argument("--phi", type=float, default=0.7)
ap.add_argument("--cfg", type=float, default=-1)
ap.add_argument("--cfg-later", type=float, default=-1)
ap.add_argument("--num", type=int, default=24)
ap.add_argument("--seconds", type=float, default=10)
ap.add_argument("--seed", type=int, default=3000)
ap.add_argument("--best", type=int, default=1)
ap.add_argument("--every", action="store_true", help="select every chunk, not only the first")
ap.add_argument("--score", choices=["cls", "lik", "oracle"], default="cls")
ap.add_argument("--ts", default="0.3,0.5,0.7,0.9", help="noise levels of the cls / lik scores")
a = ap.parse_args()
torch.set_num_threads(2)


def combine(vc, vu, w, x, t):
    if a.mode == "cfg" or w == 1:
        return vu + w * (vc - vu)
    tt = (t[:, None, :, None, None] if t.dim() == 2 else t.view(-1, *[1] * (x.dim() - 1))).clamp_min(1e-6)
    x0c, x0u = x - tt * vc, x - tt * vu  # x_t = (1 - t) x0 + t eps, v = eps - x0
    d = x0c - x0u
    dims = tuple(range(1, x.dim()))
    if a.mode == "apg":
        n = x0c / torch.linalg.vector_norm(x0c, dim=dims, keepdim=True).clamp_min(1e-8)
        par = (d * n).sum(dims, keepdim=True) * n
        x0 = x0c + (w - 1) * ((d - par) + a.eta * par)
    else:
        x0g = x0u + w * d
        x0r = x0g * (x0c.std(dim=dims, keepdim=True) / x0g.std(dim=dims, keepdim=True))
        x0 = a.phi * x0r + (1 - a.phi) * x0g
    return (x - x0) / tt


def pick(self, velocity, g, req, shift, shape, emb, mask, context, start):
    n = a.best if (start == 0 or a.every) else 1
    cands = []
    for _ in range(n):
        z = sample(velocity, torch.randn(*shape, generator=g), req.steps, shift=shift, method=req.sampler)
        if start == 0 and req.first_frame_first and shape[2] > 1:
            z = self.resample_after_first(velocity, z, g, req, shift)
        cands.append(z)
    if n == 1:
        return cands[0]
    scores = []
    if a.score == "oracle":
        for z in cands:
            zz = z / self.cfg.flow.latent_scale + self.cfg.flow.latent_shift
            x, _ = self.vae.decode(zz, self.vae.init_cache())
            x = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
            x = np.concatenate([x, x]) if len(x) < 2 else x
            scores.append(evaluate_video(x, req.prompts[0], fps=req.fps)["persistence"] or 0)
        return cands[int(np.argmax(scores))]
    gs = torch.Generator().manual_seed(12345 + start)  # the same noises for every candidate
    ts = [float(x) for x in a.ts.split(",")]
    eps = [torch.randn(*shape, generator=gs) for _ in ts]
    for z in cands:
        s = 0.0
        for t, e in zip(ts, eps):
            v, _ = self.dit.forward_chunk(((1 - t) * z + t * e).repeat(2, 1, 1, 1, 1), torch.full((2,), t), emb, mask,
                                          context, start)
            lc, lu = ((v[:1] - (e - z)) ** 2).mean().item(), ((v[1:] - (e - z)) ** 2).mean().item()
            s += (lu - lc) if a.score == "cls" else -lc
        scores.append(s)
    return cands[int(np.argmax(scores))]


src = Path(G.__file__).read_text()
hooks = {
    """            noise = torch.randn(1, C, Tc, h, w, generator=g).to(self.device)
            z = sample(velocity, noise, req.steps, shift=shift, method=req.sampler)  # (1, C, Tc, h, w)
            if start == 0 and req.first_frame_first and Tc > 1:
                z = self.resample_after_first(velocity, z, g, req, shift)""":
    "            z = PICK(self, velocity, g, req, shift, (1, C, Tc, h, w), emb, mask, context, start)",
    "out = vu + (req.cfg_scale if start == 0 else req.cfg_scale_later) * (vc - vu)":
    "out = COMBINE(vc, vu, req.cfg_scale if start == 0 else req.cfg_scale_later, x, t)",
}
for old, new in hooks.items():
    if old not in src:
        sys.exit(f"videodit/generate.py changed; this probe cannot hook:\n{old}")
    src = src.replace(old, new)
G.__dict__.update(COMBINE=combine, PICK=pick)
exec(compile(src, G.__file__, "exec"), G.__dict__)
pipe = G.Pipeline.load(a.checkpoint)

prompts = [c for _, c in (make_example(a.seed, i, "heldout") for i in range(a.num))]
t0 = time.time()
vids = []
for i, p in enumerate(prompts):
    req = G.Request(prompts=[p], at=[0.0], seconds=a.seconds, seed=a.seed + i, cfg_scale=a.cfg,
                    cfg_scale_later=a.cfg_later)
    vids.append(np.concatenate(list(pipe.frames(req)), 0))
gen = time.time() - t0
cf = pipe.cfg.model.chunk_frames
r = evaluate_videos(vids, prompts, chunk_frames=4 * cf, seam_offset=1 + 4 * (cf - 1), fps=pipe.cfg.data.fps)
ag = r["aggregate"]
by = {n: [v["persistence"] for v in r["per_video"] if v["objects"] == n] for n in (1, 2)}
print(json.dumps(dict(mode=a.mode, best=a.best, every=a.every, score=a.score, cfg=a.cfg, cfg_later=a.cfg_later)
                 | {k: round(ag[k], 1) for k in ("colour", "shape", "direction", "persistence", "drift_colour",
                                                 "drift_shape")}
                 | {f"persistence_{n}obj": round(100 * float(np.mean(v)), 1) for n, v in by.items() if v}
                 | dict(gen_s=round(gen, 1))))
