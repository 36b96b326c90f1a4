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
from videodit.generate import Pipeline
from videodit.vae import VAECache

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from finish_probe import finish_chunks  # noqa: E402

torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
ck, out, num, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pipe = Pipeline.load(ck)
cfg = pipe.cfg
ds = ShapesDataset(num=num, frames=33, size=64, fps=8, seed=seed)
B = 16
g = torch.Generator().manual_seed(seed)
Z, X = [], []
t_start = time.time()
with torch.no_grad():
    for b0 in range(0, num, B):
        items = [ds[i] for i in range(b0, min(num, b0 + B))]
        video = torch.stack([it["video"] for it in items])  # (b, 3, 33, 64, 64)
        b = video.shape[0]
        post, _ = pipe.vae.encode(video, VAECache())
        zn = (post.mean - cfg.flow.latent_shift) * cfg.flow.latent_scale
        emb, mask = pipe.text_encoder([it["caption"] for it in items] + [""] * b)

        def pick(start: int) -> tuple[int, float]:  # t0 at random between 0.81 and 0.50, the checkpoint's scales
            scale = cfg.sample.cfg_scale if start == 0 else cfg.sample.cfg_scale_later
            return int(torch.randint(5, 10, (1,), generator=g)), scale

        z_hat = finish_chunks(pipe, zn, emb, mask, g, pick)
        Z.append(z_hat)
        X.append(((video + 1) * 127.5).round().to(torch.uint8))
        print(f"{b0 + b}/{num} clips, {time.time() - t_start:.0f} s", flush=True)
save_file({"z": torch.cat(Z).contiguous(), "video": torch.cat(X).contiguous()}, out)
