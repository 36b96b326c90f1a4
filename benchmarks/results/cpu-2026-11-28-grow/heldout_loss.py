"""Flow-matching loss of DiT checkpoints on held-out cached clips, with the same noise and timesteps for each.

    PYTHONPATH=. python benchmarks/results/cpu-2026-11-28-grow/heldout_loss.py runs/heldout_f33 CKPT [CKPT ...]

Per checkpoint: the plain loss (MSE of the velocity over the noisy chunks, as `flow_loss`), the detail-weighted
one (`flow.detail_weight` 4, what the last stages trained), and the plain loss by noise level (t of the chunk).
Timesteps per chunk from the checkpoint's flow config (no clean-context prefix, so every chunk counts).
"""

import sys
from dataclasses import replace

import torch

from videodit.checkpoint import load_dit, read_config
from videodit.data.datasets import ShardDataset
from videodit.flow import detail_weights, interpolate, sample_t

sys.path.insert(0, ".")
from train import collate  # noqa: E402

BINS = [(0.0, 0.3), (0.3, 0.55), (0.55, 0.8), (0.8, 1.01)]


@torch.no_grad()
def main(shards: str, checkpoints: list[str], batch: int = 32) -> None:
    data = ShardDataset(shards)
    cfg0 = read_config(checkpoints[0])
    models = {c: load_dit(c) for c in checkpoints}
    sums = {c: dict(plain=0.0, detail=0.0, **{f"t{lo:.2f}-{hi:.2f}": [0.0, 0] for lo, hi in BINS}) for c in checkpoints}
    n = 0
    torch.set_num_threads(2)
    f = cfg0.flow
    flow = replace(f, clean_context_prob=0.0, clean_first_frame_prob=0.0)
    pt, ph, pw = cfg0.model.patch
    for start in range(0, len(data), batch):
        items = collate([data[i] for i in range(start, min(start + batch, len(data)))])
        x0 = (items["latents"] - f.latent_shift) * f.latent_scale
        B, C, T, H, W = x0.shape
        g = torch.Generator().manual_seed(start)
        tokens = (T // pt) * (H // ph) * (W // pw)  # as train.py, so a re-patched DiT gets its own timestep shift
        t = sample_t(B, T, cfg0.model.chunk_frames, tokens, flow, g)
        noise = torch.randn(x0.shape, generator=g)
        xt = interpolate(x0, noise, t)
        w = detail_weights(x0, 4.0)
        for c, m in models.items():
            err = (m(xt, t, items["text_emb"], items["text_mask"].bool()) - (noise - x0)).pow(2)  # (B, C, T, H, W)
            sums[c]["plain"] += err.mean().item() * B
            sums[c]["detail"] += (err * w).mean().item() * B
            per_frame = err.mean((1, 3, 4))  # (B, T)
            for lo, hi in BINS:
                sel = (t >= lo) & (t < hi)
                s = sums[c][f"t{lo:.2f}-{hi:.2f}"]
                s[0] += per_frame[sel].sum().item()
                s[1] += int(sel.sum())
        n += B
    print(f"{n} clips of {T * 4 - 3} frames from {shards}")
    for c in checkpoints:
        s = sums[c]
        bins = "  ".join(f"{k} {v[0] / max(v[1], 1):.4f}" for k, v in s.items() if k.startswith("t"))
        print(f"{c}: plain {s['plain'] / n:.4f}  detail-weighted {s['detail'] / n:.4f}  |  {bins}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
