"""Pairs (DiT-finished latents, ground-truth frames) for a decoder fine-tune: each chunk of a training clip's
latents is noised to t0 (schedule index 5-9 at random per chunk: 0.81-0.50) and finished by the DiT chunk by chunk
as in sampling (anchor + window, the checkpoint's CFG). A negative result: see README.md here.

    python decoder_pairs.py CHECKPOINT OUT.safetensors NUM SEED [THREADS]
"""
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from videodit.data.datasets import ShapesDataset
from videodit.flow import schedule, timestep_shift
from videodit.generate import Pipeline
from videodit.vae import VAECache

torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
ck, out, num, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pipe = Pipeline.load(ck)
cfg = pipe.cfg
ds = ShapesDataset(num=num, frames=33, size=64, fps=8, seed=seed)
B, cf, steps = 16, cfg.model.chunk_frames, cfg.sample.steps
lat_train = 1 + (cfg.data.frames - 1) // 4
shift = timestep_shift(lat_train * 16, cfg.flow)
ts = schedule(steps, shift)
g = torch.Generator().manual_seed(seed)
Z, X, T0 = [], [], []
t_start = time.time()
with torch.no_grad():
    for b0 in range(0, num, B):
        items = [ds[i] for i in range(b0, min(num, b0 + B))]
        video = torch.stack([it["video"] for it in items])  # (b, 3, 33, 64, 64)
        b = video.shape[0]
        post, _ = pipe.vae.encode(video, VAECache())
        zn = (post.mean - cfg.flow.latent_shift) * cfg.flow.latent_scale
        emb, mask = pipe.text_encoder([it["caption"] for it in items] + [""] * b)
        anchor, recent, outs = None, [], []
        T_lat = zn.shape[2]
        for start in range(0, T_lat, cf):
            gt = zn[:, :, start:start + cf]
            context = ([anchor] if anchor is not None else []) + recent
            scale = cfg.sample.cfg_scale if start == 0 else cfg.sample.cfg_scale_later
            i0 = int(torch.randint(5, 10, (1,), generator=g))
            t0 = ts[i0]
            x = (1 - t0) * gt + t0 * torch.randn(gt.shape, generator=g)
            for tc, tn in zip(ts[i0:-1], ts[i0 + 1:]):
                tt = torch.full((2 * b,), tc)
                v, _ = pipe.dit.forward_chunk(x.repeat(2, 1, 1, 1, 1), tt, emb, mask, context, start)
                vc, vu = v.chunk(2)
                x = x + (tn - tc) * (vu + scale * (vc - vu))
            _, kv = pipe.dit.forward_chunk(x.repeat(2, 1, 1, 1, 1), torch.zeros(2 * b), emb, mask, context, start)
            if start == 0:
                anchor = kv
            else:
                recent = (recent + [kv])[-cfg.sample.window_chunks:]
            outs.append(x)
        z_hat = torch.cat(outs, 2) / cfg.flow.latent_scale + cfg.flow.latent_shift
        Z.append(z_hat)
        X.append(((video + 1) * 127.5).round().to(torch.uint8))
        print(f"{b0 + b}/{num} clips, {time.time() - t_start:.0f} s", flush=True)
save_file({"z": torch.cat(Z).contiguous(), "video": torch.cat(X).contiguous()}, out)
