"""Fine-tune the VAE decoder on (DiT-finished latents -> ground-truth frames) pairs from decoder_pairs.py, plus the
VAE's own latents (--p-own); writes a checkpoint folder with the new vae.safetensors. A negative result: README.md.
"""
import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from videodit.checkpoint import load_vae, read_config
from videodit.vae import VAECache
from videodit.vae_loss import ssim

p = argparse.ArgumentParser()
p.add_argument("--checkpoint", default="checkpoints/tiny")
p.add_argument("--pairs", required=True)
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--lr", type=float, default=2e-4)
p.add_argument("--crop", type=int, default=4, help="latent crop side (0 = whole frame)")
p.add_argument("--p-own", type=float, default=0.25, help="share of samples decoded from the VAE's own latents")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
cfg = read_config(a.checkpoint)
vae = load_vae(a.checkpoint, cfg).train()
vae.encoder.requires_grad_(False)
data = {}
for f in a.pairs.split(","):
    for k, v in load_file(f).items():
        data.setdefault(k, []).append(v)
Z, V = torch.cat(data["z"]), torch.cat(data["video"])
N = len(Z)
print(f"{N} pairs, z {tuple(Z.shape[1:])}, video {tuple(V.shape[1:])}")
params = [q for q in vae.decoder.parameters()]
opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
warm = 50


def lr_factor(s: int) -> float:  # linear warm-up, cosine down to 0.1
    return min(1, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, s / a.steps))))


sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
g = torch.Generator().manual_seed(a.seed)
t0 = time.time()
log = []
for step in range(a.steps):
    idx = torch.randint(0, N, (a.batch,), generator=g)
    z, video = Z[idx].float(), V[idx].float() / 127.5 - 1
    own = torch.rand(a.batch, generator=g) < a.p_own
    if own.any():
        with torch.no_grad():
            post, _ = vae.encode(video[own], VAECache())
            z[own] = post.sample(g)
    if a.crop:
        c = a.crop
        h = z.shape[-1]
        ys = torch.randint(0, h - c + 1, (a.batch,), generator=g).tolist()
        xs = torch.randint(0, h - c + 1, (a.batch,), generator=g).tolist()
        z = torch.stack([zz[:, :, y:y + c, x:x + c] for zz, y, x in zip(z, ys, xs)])
        video = torch.stack([vv[:, :, 8 * y:8 * (y + c), 8 * x:8 * (x + c)] for vv, y, x in zip(video, ys, xs)])
    recon = vae.decoder(z, None) + vae._pixel_mean(video)
    l1 = (recon - video).abs().mean()
    s = ssim(recon, video)
    loss = l1 + cfg.vae.ssim_weight * (1 - s)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    log.append((step, loss.item(), l1.item()))
    if step % 25 == 0 or step == a.steps - 1:
        recent = log[-25:]
        loss_avg, l1_avg = (sum(r[k] for r in recent) / len(recent) for k in (1, 2))
        print(f"step {step} loss {loss_avg:.4f} l1 {l1_avg:.4f} "
              f"lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f} s", flush=True)
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
for f in Path(a.checkpoint).iterdir():
    if f.is_file() and f.name != "vae.safetensors":
        shutil.copy(f, out / f.name)
    elif f.is_dir() and not (out / f.name).exists():
        shutil.copytree(f, out / f.name)
save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(out / "vae.safetensors"))
json.dump(log, open(out / "decft_log.json", "w"))
print("saved", out)
