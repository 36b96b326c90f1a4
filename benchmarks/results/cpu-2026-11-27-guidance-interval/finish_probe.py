"""How much of a clip's shapes the DiT's last steps keep, by guidance scale.

    python benchmarks/results/cpu-2026-11-27-guidance-interval/finish_probe.py CHECKPOINT NUM I0:SCALE...

NUM held-out 33-frame clips are encoded; each 2-latent-frame chunk is noised to t0 and finished chunk by chunk as
sampling does (anchor + a window of 2 finished chunks in the cache, Euler steps of the checkpoint's schedule from
t0), decoded, and scored by the evaluator's persistence against the clip's caption. I0 is the schedule index of
t0 (12 steps, shift 3: 3 -> 0.900, 5 -> 0.808, 7 -> 0.682, 9 -> 0.500); SCALE is a CFG scale, or "ck" for the
checkpoint's (first chunk / later chunks). The ground-truth frames and the VAE round trip are scored first.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from videodit.data.datasets import ShapesDataset  # noqa: E402
from videodit.data.evaluate import evaluate_video  # noqa: E402
from videodit.flow import schedule, timestep_shift  # noqa: E402
from videodit.generate import Pipeline  # noqa: E402
from videodit.vae import VAECache  # noqa: E402


def sampling_times(cfg) -> list[float]:
    """The checkpoint's sampling schedule (its steps, the shift of a training clip's token count)."""
    return schedule(cfg.sample.steps, timestep_shift((1 + (cfg.data.frames - 1) // 4) * 16, cfg.flow))


def finish_chunks(pipe: Pipeline, zn: Tensor, emb: Tensor, mask: Tensor, g: torch.Generator, pick) -> Tensor:
    """Finish each chunk of normalised latents zn (B, C, T, h, w) from its own latents noised to a step of the
    checkpoint's schedule, chunk by chunk as sampling does (anchor + a window of finished chunks in the cache).
    emb, mask: [captions..., negatives...] (2B rows). pick(start) -> (schedule index of t0, CFG scale) per chunk,
    called before the chunk's noise is drawn from g. -> the finished latents in VAE units (B, C, T, h, w)."""
    cfg = pipe.cfg
    B = zn.shape[0]
    ts = sampling_times(cfg)
    anchor, recent, outs = None, [], []
    for start in range(0, zn.shape[2], cfg.model.chunk_frames):
        gt = zn[:, :, start : start + cfg.model.chunk_frames]
        context = ([anchor] if anchor is not None else []) + recent
        i0, scale = pick(start)
        x = (1 - ts[i0]) * gt + ts[i0] * torch.randn(gt.shape, generator=g)
        for tc, tn in zip(ts[i0:-1], ts[i0 + 1 :]):
            v, _ = pipe.dit.forward_chunk(x.repeat(2, 1, 1, 1, 1), torch.full((2 * B,), tc), emb, mask, context, start)
            vc, vu = v.chunk(2)
            x = x + (tn - tc) * (vu + scale * (vc - vu))
        _, kv = pipe.dit.forward_chunk(x.repeat(2, 1, 1, 1, 1), torch.zeros(2 * B), emb, mask, context, start)
        if start == 0:
            anchor = kv
        else:
            recent = (recent + [kv])[-cfg.sample.window_chunks :]
        outs.append(x)
    return torch.cat(outs, 2) / cfg.flow.latent_scale + cfg.flow.latent_shift


def to_uint8(x: Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def main() -> None:
    torch.set_num_threads(2)
    pipe = Pipeline.load(sys.argv[1])
    cfg = pipe.cfg
    num = int(sys.argv[2])
    ds = ShapesDataset(num=num, frames=33, size=64, fps=8, seed=5, split="heldout")
    items = [ds[i] for i in range(num)]
    video = torch.stack([it["video"] for it in items])
    captions = [it["caption"] for it in items]
    ts = sampling_times(cfg)

    def persistence(frames: np.ndarray) -> float:
        return float(np.mean([evaluate_video(f, c)["persistence"] for f, c in zip(frames, captions)]))

    def decode(z: Tensor) -> np.ndarray:
        return to_uint8(pipe.vae.decode(z, VAECache())[0])

    with torch.no_grad():
        post, _ = pipe.vae.encode(video, VAECache())
        print(f"ground truth: persistence {persistence(to_uint8(video)):.3f}")
        print(f"VAE round trip: persistence {persistence(decode(post.mean)):.3f}")
        zn = (post.mean - cfg.flow.latent_shift) * cfg.flow.latent_scale
        emb, mask = pipe.text_encoder(captions + [""] * num)
        g = torch.Generator().manual_seed(0)
        for spec in sys.argv[3:]:
            i0, sc = int(spec.split(":")[0]), spec.split(":")[1]

            def pick(start: int, i0=i0, sc=sc) -> tuple[int, float]:
                later = cfg.sample.cfg_scale if start == 0 else cfg.sample.cfg_scale_later
                return i0, float(sc) if sc != "ck" else later

            z = finish_chunks(pipe, zn, emb, mask, g, pick)
            print(f"t0 {ts[i0]:.3f}, cfg {sc}: persistence {persistence(decode(z)):.3f}", flush=True)


if __name__ == "__main__":
    main()
