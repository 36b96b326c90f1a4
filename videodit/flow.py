"""Rectified flow (Liu et al. 2022; Lipman et al. 2022) as used by SD3 (Esser et al. 2024).

x_t = (1 - t) x_0 + t ε, and the network predicts the velocity ε - x_0. Training samples t from a
logit-normal distribution and shifts it toward noise as the number of tokens grows (more tokens carry
more redundant signal, so the same t destroys less information). With diffusion forcing, each causal
chunk of latent frames draws its own t. Sampling integrates dx/dt = v from t = 1 to 0 with Euler or Heun
steps, with classifier-free guidance. The network is only ever called as `model(x_t, t)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from videodit.config import FlowConfig

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x_t, t (B,) or (B, T)) -> v


def timestep_shift(tokens: int, cfg: FlowConfig) -> float:
    if cfg.shift > 0:
        return cfg.shift
    return min(max(math.sqrt(tokens / cfg.shift_base_tokens), 1.0), cfg.shift_max)


def shift_t(t: Tensor, shift: float) -> Tensor:
    """Map t in [0, 1] toward 1 (noise) by `shift` (SD3 eq. 23); shift = 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def sample_t(
    batch: int, frames: int, chunk_frames: int, tokens: int, cfg: FlowConfig, generator: torch.Generator | None
) -> Tensor:
    """Training timesteps (B, frames): one per sample, or one per causal chunk when cfg.per_chunk_t."""
    n = math.ceil(frames / chunk_frames) if cfg.per_chunk_t else 1
    shift = timestep_shift(tokens, cfg)
    uniform_prob = cfg.uniform_t_prob
    if cfg.t_max >= 1.0:
        u = torch.sigmoid(torch.randn(batch, n, generator=generator) * cfg.logit_std + cfg.logit_mean)
        u_max = 1.0
    else:  # the same distribution conditioned on t <= t_max: each part truncated, mixed by its share below t_max
        u_max = cfg.t_max / (shift - (shift - 1) * cfg.t_max)  # shift_t(u_max) = t_max
        z_max = (math.log(u_max / (1 - u_max)) - cfg.logit_mean) / cfg.logit_std
        below = float(torch.special.ndtr(torch.tensor(z_max, dtype=torch.float64)))  # P(logit-normal u <= u_max)
        p = torch.rand(batch, n, generator=generator, dtype=torch.float64) * below
        u = torch.sigmoid(torch.special.ndtri(p) * cfg.logit_std + cfg.logit_mean).float()
        q = cfg.uniform_t_prob
        uniform_prob = q * u_max / (q * u_max + (1 - q) * below) if q > 0 else 0.0
    if uniform_prob > 0:  # a share of uniform draws covers the ends of [0, 1] that logit-normal starves
        uniform = torch.rand(batch, n, generator=generator) < uniform_prob
        u = torch.where(uniform, torch.rand(batch, n, generator=generator) * u_max, u)
    t = shift_t(u, shift)  # (B, n)
    if cfg.t_max < 1.0:
        t = t.clamp_max(cfg.t_max)  # float rounding of the inverse shift
    if cfg.per_chunk_t and n > 1:
        # teacher forcing: a clean prefix of 1 .. n-1 chunks, as when continuing a video from its past
        clean = torch.rand(batch, generator=generator) < cfg.clean_context_prob
        prefix = torch.randint(1, n, (batch,), generator=generator) * clean  # (B,), 0 = no clean prefix
        t = torch.where(torch.arange(n)[None] < prefix[:, None], torch.zeros_like(t), t)
    t = t.repeat_interleave(chunk_frames if cfg.per_chunk_t else frames, dim=1)[:, :frames]
    if cfg.clean_first_frame_prob > 0 and frames > 1:  # a known first picture: learn its motion from the text
        first = (torch.rand(batch, generator=generator) < cfg.clean_first_frame_prob) & (t[:, 0] > 0)
        t = t.clone()
        t[first, 0] = 0.0
    return t


def anchor_gap_index(
    batch: int, frames: int, chunk_frames: int, keep_chunks: int, prob: float, generator: torch.Generator | None
) -> Tensor | None:
    """Latent frames (B, chunk_frames * (1 + keep_chunks)) to train on when cutting clips the way chunked
    sampling lays out its cache: the first chunk (the anchor), then `keep_chunks` contiguous chunks that start
    at least two chunks in (a gap of one chunk or more), with probability `prob` per clip; the other clips keep
    their first chunk_frames * (1 + keep_chunks) frames. None when `frames` leaves no room for a gap."""
    last_start = (frames - keep_chunks * chunk_frames) // chunk_frames  # the latest chunk the kept run can start at
    if last_start < 2:
        return None
    gap = torch.rand(batch, generator=generator) < prob
    start = torch.randint(2, last_start + 1, (batch,), generator=generator)
    start = torch.where(gap, start, torch.ones_like(start)) * chunk_frames  # 1 chunk in = no gap
    anchor = torch.arange(chunk_frames).expand(batch, -1)
    run = start[:, None] + torch.arange(keep_chunks * chunk_frames)
    return torch.cat([anchor, run], 1)


def take_frames(x: Tensor, index: Tensor) -> Tensor:
    """Latents (B, C, T, H, W) -> (B, C, T', H, W): the frames `index` (B, T') of each clip."""
    b, c, _, h, w = x.shape
    idx = index.to(x.device).view(b, 1, -1, 1, 1).expand(b, c, -1, h, w)
    return x.gather(2, idx)


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t for latents (B, C, T, H, W) and t (B,) or (B, T)."""
    tt = t.view(t.shape[0], 1, -1, 1, 1) if t.dim() == 2 else t.view(-1, 1, 1, 1, 1)
    return (1 - tt) * x0 + tt * noise


def detail_weights(x0: Tensor, strength: float, cap: float = 10.0) -> Tensor:
    """Per-position loss weights (B, 1, T, H, W) with mean 1 per frame that favour what stands out of a frame.
    d = the channel-norm distance of each latent pixel from the frame's spatial median, over its frame mean,
    capped at `cap`; the weight is (1 + strength * d) / (1 + strength * mean d), the mean taken after the cap.
    A flat background is most of the positions and the easiest to get right; small objects are a few latent
    pixels, so their shape is a small share of the loss. strength 0 = plain MSE."""
    B, C, T, H, W = x0.shape
    flat = x0.float().flatten(3)  # (B, C, T, H*W)
    d = (flat - flat.median(3, keepdim=True).values).norm(dim=1)  # (B, T, H*W)
    d = (d / d.mean(2, keepdim=True).clamp_min(1e-6)).clamp_max(cap)
    w = (1 + strength * d) / (1 + strength * d.mean(2, keepdim=True))
    return w.view(B, 1, T, H, W)


def flow_loss(model: VelocityFn, x0: Tensor, t: Tensor, noise: Tensor, detail_weight: float = 0.0) -> Tensor:
    """Mean squared error between the predicted and the true velocity ε - x_0, over the frames with t > 0
    (a clean context frame carries no noise to predict). detail_weight > 0 weights positions by
    `detail_weights` (mean 1 per frame, so the loss keeps its scale)."""
    pred = model(interpolate(x0, noise, t), t)
    err = (pred.float() - (noise - x0).float()).pow(2)  # (B, C, T, H, W)
    if detail_weight > 0:
        err = err * detail_weights(x0, detail_weight)
    B, T = x0.shape[0], x0.shape[2]
    if t.dim() == 1:
        loss = err.mean()
    else:
        # a per-sample mean over its noisy frames, then the batch mean: so that the mean of per-rank losses
        # equals the loss of the global batch (data parallel gives the same gradients as one process)
        w = (t > 0).float().view(B, 1, T, 1, 1).expand_as(err)
        loss = ((err * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)).mean()
    return loss


def schedule(steps: int, shift: float) -> list[float]:
    """Decreasing times 1 -> 0 (steps + 1 values), spaced uniformly then shifted toward noise."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift_t(ts, shift).tolist()


def posterior_std(t: float, s: float) -> float:
    """Standard deviation of x_s given x_t and x0 (s < t) on the path x_t = (1 - t) x0 + t eps: the forward step
    s -> t scales x_s by r = (1 - t) / (1 - s) and adds variance t^2 - r^2 s^2; Bayes gives that times s^2 / t^2."""
    r = (1 - t) / (1 - s)
    return s * math.sqrt(max(0.0, t * t - r * r * s * s)) / t


@torch.no_grad()
def sample(
    velocity: VelocityFn,
    noise: Tensor,
    steps: int,
    shift: float = 1.0,
    method: str = "euler",
    churn: float = 0.0,
    generator: torch.Generator | None = None,
    start_t: float = 1.0,
) -> Tensor:
    """Integrate from pure noise (t = 1) to data (t = 0). method: 'euler' or 'heun' (2nd order).
    start_t < 1: `noise` is already x at t = start_t (a partly noised picture); only the schedule's steps below
    start_t run, from start_t.

    churn (0..1) makes the sampler stochastic, as DDIM's eta (Song et al. 2021) does for diffusion: a step from
    t to s lands on x_s = (1 - s) x0 + sqrt(s^2 - sigma^2) eps + sigma z, where (x0, eps) is the step's estimate
    of the clean picture and its noise, z fresh Gaussian noise from `generator`, and sigma = churn x the standard
    deviation of the exact posterior x_s | x_t, x0 of the straight path x_t = (1 - t) x0 + t eps. 0 is the
    deterministic ODE (Euler or Heun); 1 is ancestral (DDPM-style) sampling. Fresh noise lets each step correct
    part of the errors the earlier steps left, instead of carrying them to t = 0 (Karras et al. 2022 call it
    "churn"). With an exact velocity, any churn lands every sample of a point mass on it.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler '{method}'; choose 'euler' or 'heun'")
    if not 0 <= churn <= 1:
        raise ValueError(f"churn must be in [0, 1], got {churn}")
    if not 0 < start_t <= 1:
        raise ValueError(f"start_t must be in (0, 1], got {start_t}")
    ts = schedule(steps, shift)
    if start_t < 1:
        ts = [start_t] + [t for t in ts if t < start_t]
    x = noise
    B = noise.shape[0]
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        tc = torch.full((B,), t_cur, dtype=noise.dtype, device=noise.device)
        v = velocity(x, tc)
        if method == "heun" and t_next > 0:  # average with the slope at the Euler step's end
            tn = torch.full((B,), t_next, dtype=noise.dtype, device=noise.device)
            v = 0.5 * (v + velocity(x + (t_next - t_cur) * v, tn))
        x = x + (t_next - t_cur) * v
        if churn > 0 and t_next > 0:
            x0, eps = x - t_next * v, x + (1 - t_next) * v  # x = (1 - t_next) x0 + t_next eps
            sigma = churn * posterior_std(t_cur, t_next)
            fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = (1 - t_next) * x0 + math.sqrt(t_next**2 - sigma**2) * eps + sigma * fresh
    return x
