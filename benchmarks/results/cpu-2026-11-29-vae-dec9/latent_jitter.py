"""How much frame-to-frame jitter the shipped DiT's latents carry beyond the ground truth's.

For the first N held-out prompts of set 1000: 20 s of latents from the shipped pipeline, and the VAE's latents of
the ground-truth render of the same prompt; the RMS of the second temporal difference z[t+1] - 2 z[t] + z[t-1]
of each. Independent per-frame noise of std s adds 6 s^2 to its mean square, so s ~ sqrt((gen^2 - gt^2) / 6)
(rough: the two videos start elsewhere and move at their own speeds). Run from the repository root:
PYTHONPATH=. python benchmarks/results/cpu-2026-11-29-vae-dec9/latent_jitter.py 8
"""

import sys

import numpy as np
import torch

from videodit.data.shapes import make_example, render_clip
from videodit.generate import Pipeline, Request
from videodit.vae import encode_video


def second_diff_ms(z: torch.Tensor) -> float:
    """Mean square of the second temporal difference of latents (C, T, h, w), after the first (image) frame."""
    z = z[:, 1:]
    return (z[:, 2:] - 2 * z[:, 1:-1] + z[:, :-2]).pow(2).mean().item()


def main() -> None:
    torch.set_num_threads(2)
    pipe = Pipeline.load("checkpoints/tiny")
    excess = []
    for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 8):
        spec, cap = make_example(1000, i, "heldout")
        req = Request(prompts=[cap], at=[0.0], seconds=20, seed=1000 + i)
        z = torch.cat(list(pipe.latent_chunks(req)), 2)[0].float()  # (C, T, h, w), raw latents
        frames = render_clip(spec, frames=1 + 4 * (z.shape[1] - 1))
        x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            g = encode_video(pipe.vae, x)[0].float()
        gen, gt = second_diff_ms(z), second_diff_ms(g)
        excess.append(max(gen - gt, 0.0))
        print(f"{i} objects {len(spec.objects)}: second-difference RMS generated {gen ** 0.5:.4f}, ground truth "
              f"{gt ** 0.5:.4f}; implied per-frame noise std {(excess[-1] / 6) ** 0.5:.4f}; latent std generated "
              f"{z.std():.3f}, ground truth {g.std():.3f}", flush=True)
    print(f"mean implied per-frame noise std: {(np.mean(excess) / 6) ** 0.5:.4f}")


if __name__ == "__main__":
    main()
