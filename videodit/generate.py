"""Minute-long generation chunk by chunk in constant memory (diffusion forcing, Chen et al. 2024;
CausVid, Yin et al. 2024; rolling KV cache as in Self-Forcing, Huang et al. 2025).

The latent video is split into causal chunks of `model.chunk_frames` latent frames. Each new chunk starts
from noise and is denoised while its temporal attention reads the cached keys/values of an anchor (the first
chunk) and a rolling window of the most recent clean chunks. When it is clean, one more pass at t = 0 writes
its own keys/values to the cache, the streaming VAE decodes it, and its frames go straight to the mp4. Memory
is bounded by the window, and time grows linearly with length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from videodit.checkpoint import CheckpointError, expert_config, load_dit, load_text_encoder, load_vae, read_config
from videodit.config import Config
from videodit.dit import ChunkKV
from videodit.flow import interpolate, sample, timestep_shift


class GenerateError(ValueError):
    """A request the checkpoint cannot serve (length, size, prompt); the message says what to do."""


@dataclass
class Request:
    prompts: list[str]
    at: list[float]  # start time in seconds of each prompt; at[0] == 0
    seconds: float
    negative_prompt: str = ""
    fps: int = 0  # 0 = the checkpoint's
    size: int = 0  # 0 = the checkpoint's
    steps: int = 0  # 0 = the checkpoint's sample.steps
    cfg_scale: float = -1.0  # < 0 = the checkpoint's sample.cfg_scale
    cfg_scale_later: float = -1.0  # chunks after the first; < 0 = the checkpoint's sample.cfg_scale_later
    cfg_low_t: float = -1.0  # steps at t below this use cfg_scale_low; < 0 = the checkpoint's, 0 = off
    cfg_scale_low: float = -1.0  # < 0 = the checkpoint's sample.cfg_scale_low
    expert_t: float = -1.0  # steps at t below this use the low-noise expert; < 0 = the checkpoint's, 0 = off
    sampler: str = ""
    churn: float = -1.0  # < 0 = the checkpoint's sample.churn, 0 = the deterministic sampler
    best_of: int = 0  # candidates per chunk; 0 = the checkpoint's sample.best_of, 1 = no selection
    window_chunks: int = -1
    anchor: bool | None = None  # None = the checkpoint's sample.anchor
    context_noise: float = -1.0  # < 0 = the checkpoint's sample.context_noise
    history_guidance: float = -1.0  # < 0 = the checkpoint's sample.history_guidance
    first_frame_first: bool | None = None  # None = the checkpoint's sample.first_frame_first
    warm_start: float = -1.0  # < 0 = the checkpoint's sample.warm_start, 0 = off
    seed: int = 0


class Pipeline:
    def __init__(self, cfg: Config, dit, vae, text_encoder, device: torch.device, dit_low=None):
        self.cfg = cfg
        self.dit = dit.to(device).eval()
        self.dit_low = dit_low.to(device).eval() if dit_low is not None else None  # the low-noise expert
        self.vae = vae.to(device).eval()
        self.text_encoder = text_encoder.to(device).eval()
        self.device = device

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Pipeline:
        cfg = read_config(folder)
        dit, vae, text_encoder = load_dit(folder, cfg), load_vae(folder, cfg), load_text_encoder(folder, cfg)
        low = Path(folder) / "dit_low.safetensors"
        if cfg.sample.expert_t > 0 and not low.is_file():
            raise CheckpointError(f"'{folder}/config.yaml' sets sample.expert_t {cfg.sample.expert_t:g} but the "
                                  f"folder has no dit_low.safetensors (the low-noise expert); attach one with "
                                  f"`python -m videodit.expert` or set sample.expert_t: 0")
        dit_low = load_dit(folder, expert_config(folder, cfg), "dit_low.safetensors") if low.is_file() else None
        return cls(cfg, dit, vae, text_encoder, torch.device(device), dit_low)

    # ---- request checks
    def resolve(self, req: Request) -> Request:
        c, s = self.cfg, self.cfg.sample
        r = Request(**vars(req))
        r.fps = r.fps or c.data.fps
        r.size = r.size or c.data.size
        r.steps = r.steps or s.steps
        r.cfg_scale = s.cfg_scale if r.cfg_scale < 0 else r.cfg_scale
        r.cfg_scale_later = s.cfg_scale_later if r.cfg_scale_later < 0 else r.cfg_scale_later
        r.cfg_scale_later = r.cfg_scale if r.cfg_scale_later < 0 else r.cfg_scale_later
        r.cfg_low_t = s.cfg_low_t if r.cfg_low_t < 0 else r.cfg_low_t
        r.cfg_scale_low = s.cfg_scale_low if r.cfg_scale_low < 0 else r.cfg_scale_low
        r.expert_t = s.expert_t if r.expert_t < 0 else r.expert_t
        r.sampler = r.sampler or s.sampler
        r.churn = s.churn if r.churn < 0 else r.churn
        r.best_of = r.best_of or s.best_of
        r.window_chunks = s.window_chunks if r.window_chunks < 0 else r.window_chunks
        r.anchor = s.anchor if r.anchor is None else r.anchor
        r.context_noise = s.context_noise if r.context_noise < 0 else r.context_noise
        r.history_guidance = s.history_guidance if r.history_guidance < 0 else r.history_guidance
        r.first_frame_first = s.first_frame_first if r.first_frame_first is None else r.first_frame_first
        r.warm_start = s.warm_start if r.warm_start < 0 else r.warm_start
        if not (0 < r.seconds <= s.max_seconds):
            raise GenerateError(f"--seconds must be in (0, {s.max_seconds:g}], got {r.seconds:g}")
        if not r.prompts or any(not p.strip() for p in r.prompts):
            raise GenerateError("every --prompt must be non-empty text (use --negative-prompt for what to avoid)")
        if len(r.at) != len(r.prompts) or r.at[0] != 0 or any(b <= a for a, b in zip(r.at, r.at[1:])):
            raise GenerateError("--at must give one increasing start time per prompt, the first being 0")
        if r.fps != c.data.fps:
            raise GenerateError(f"this checkpoint was trained at {c.data.fps} fps; use --fps {c.data.fps}")
        unit = 8 * math.lcm(*(n.cfg.patch[1] for n in (self.dit, self.dit_low) if n is not None))
        if r.size % unit or not (unit * 2 <= r.size <= 4 * c.data.size):
            raise GenerateError(
                f"--size must be a multiple of {unit} between {unit * 2} and {4 * c.data.size} for this "
                f"checkpoint (trained at {c.data.size})"
            )
        if not 0 <= r.warm_start < 1:
            raise GenerateError(f"--warm-start must be in [0, 1) (0 = off), got {r.warm_start:g}")
        if not 0 <= r.context_noise < 1:
            raise GenerateError(f"--context-noise must be in [0, 1), got {r.context_noise:g}")
        if not (r.cfg_scale >= 0 and r.cfg_scale_later >= 0):
            raise GenerateError("--cfg and --cfg-later must be >= 0 (1 = no guidance)")
        if not (0 <= r.cfg_low_t <= 1 and r.cfg_scale_low >= 0):
            raise GenerateError(f"--cfg-low-t must be in [0, 1] (0 = off) and --cfg-low >= 0, got {r.cfg_low_t:g} "
                                f"and {r.cfg_scale_low:g}")
        if not 0 <= r.expert_t <= 1:
            raise GenerateError(f"--expert-t must be in [0, 1] (0 = no low-noise expert), got {r.expert_t:g}")
        if r.expert_t > 0 and self.dit_low is None:
            raise GenerateError("--expert-t needs a checkpoint with a low-noise expert (dit_low.safetensors); "
                                "use --expert-t 0 or attach one with `python -m videodit.expert`")
        if not r.history_guidance >= 0:
            raise GenerateError(f"--history-guidance must be >= 0 (0 = off), got {r.history_guidance:g}")
        if r.steps < 1:
            raise GenerateError("--steps must be >= 1")
        if not 0 <= r.churn <= 1:
            raise GenerateError(f"--churn must be in [0, 1] (0 = deterministic sampling), got {r.churn:g}")
        if not 1 <= r.best_of <= 64:
            raise GenerateError(f"--best-of must be between 1 and 64 (1 = no selection), got {r.best_of}")
        if r.sampler not in ("euler", "heun"):
            raise GenerateError(f"--sampler must be euler or heun, got '{r.sampler}'")
        return r

    def frame_count(self, req: Request) -> tuple[int, int]:
        """(video frames to write, latent frames to generate): latents cover 1 + 4k >= the frames."""
        n = max(1, round(req.seconds * req.fps))
        return n, 1 + math.ceil((n - 1) / 4)

    @torch.no_grad()
    def encode_prompts(self, req: Request) -> list[tuple[Tensor, Tensor]]:
        """Per prompt: (emb, mask) batched as [prompt, negative] (or [prompt] without guidance)."""
        out = []
        guided = any(s != 1.0 for s in (req.cfg_scale, req.cfg_scale_later)) or (
            req.cfg_low_t > 0 and req.cfg_scale_low != 1.0)
        for p in req.prompts:
            texts = [p, req.negative_prompt] if guided else [p]
            emb, mask = self.text_encoder(texts)
            out.append((emb.to(self.device), mask.to(self.device)))
        return out

    # ---- the latent chunks
    @torch.no_grad()
    def latent_chunks(self, req: Request) -> Iterator[Tensor]:
        """Yield each finished chunk of VAE latents (1, C, Tc, h, w), in order."""
        req = self.resolve(req)
        cfg = self.cfg
        _, T_lat = self.frame_count(req)
        cf = cfg.model.chunk_frames
        h = w = req.size // 8
        C = cfg.model.in_channels
        texts = self.encode_prompts(req)
        g = torch.Generator().manual_seed(req.seed)
        lat_train = 1 + (cfg.data.frames - 1) // 4
        tokens = lat_train * (cfg.data.size // 8 // cfg.model.patch[1]) * (cfg.data.size // 8 // cfg.model.patch[2])
        shift = timestep_shift(tokens, cfg.flow)
        # each network reads its own keys/values of the finished chunks: [anchor or None, recent chunks]
        nets = [self.dit] + ([self.dit_low] if req.expert_t > 0 else [])
        caches: list[tuple[ChunkKV | None, list[ChunkKV]]] = [(None, []) for _ in nets]
        z = None  # the chunk before
        for start in range(0, T_lat, cf):
            Tc = min(cf, T_lat - start)
            frame0 = 0 if start == 0 else 1 + 4 * (start - 1)
            which = max(i for i, a in enumerate(req.at) if a * req.fps <= frame0)
            emb, mask = texts[which]
            nb = emb.shape[0]
            contexts = [([a] if a is not None else []) + r for a, r in caches]
            context = contexts[0]

            def velocity(x: Tensor, t: Tensor, emb=emb, mask=mask, contexts=contexts, nb=nb, start=start) -> Tensor:
                # t is the step's noise level; (1, Tc) with a clean first frame in resample_after_first
                low = float(t.max()) < req.expert_t
                net, ctx = (self.dit_low, contexts[1]) if low else (self.dit, contexts[0])
                tb = t.repeat(nb, *[1] * (t.dim() - 1))
                v, _ = net.forward_chunk(x.repeat(nb, 1, 1, 1, 1), tb, emb, mask, ctx, start)
                vc, vu = (v, v) if nb == 1 else v.chunk(2)
                scale = req.cfg_scale if start == 0 else req.cfg_scale_later
                scale = req.cfg_scale_low if float(t.max()) < req.cfg_low_t else scale
                out = vu + scale * (vc - vu)
                if req.history_guidance and ctx:  # the first chunk has no past to guide by
                    v_alone, _ = net.forward_chunk(x, t, emb[:1], mask[:1], [], start)
                    out = out + req.history_guidance * (vc - v_alone)
                return out

            candidates = []
            for _ in range(req.best_of):
                noise = torch.randn(1, C, Tc, h, w, generator=g).to(self.device)
                t0 = req.warm_start if z is not None and req.warm_start > 0 else 1.0
                if t0 < 1:
                    noise = interpolate(z[:, :, -1:].expand_as(noise), noise, torch.full((1,), t0).to(noise))
                x = sample(velocity, noise, req.steps, shift=shift, method=req.sampler, churn=req.churn, generator=g,
                           start_t=t0)
                if start == 0 and req.first_frame_first and Tc > 1:
                    x = self.resample_after_first(velocity, x, g, req, shift)
                candidates.append(x)
            z = candidates[0]
            if len(candidates) > 1:
                noises = [torch.randn(z.shape, generator=g).to(z) for _ in cfg.sample.select_t]
                scores = [self.text_evidence(c, noises, emb, mask, context, start) for c in candidates]
                z = candidates[max(range(len(scores)), key=scores.__getitem__)]
            tc = torch.full((nb,), req.context_noise, device=self.device)
            ctx = interpolate(z, torch.randn(z.shape, generator=g).to(z), tc[:1]) if req.context_noise > 0 else z
            for i, net in enumerate(nets):
                _, kv = net.forward_chunk(ctx.repeat(nb, 1, 1, 1, 1), tc, emb, mask, contexts[i], start)
                anchor, recent = caches[i]
                if start == 0 and req.anchor:
                    anchor = kv
                else:
                    recent = (recent + [kv])[-req.window_chunks :] if req.window_chunks else []
                caches[i] = (anchor, recent)
            yield z / cfg.flow.latent_scale + cfg.flow.latent_shift

    def text_evidence(self, z: Tensor, noises: list[Tensor], emb: Tensor, mask: Tensor, context: list[ChunkKV],
                      start: int) -> float:
        """How much better the model denoises the chunk z (1, C, Tc, h, w) with the prompt than with the negative
        prompt: the summed squared-error difference at the noise levels sample.select_t with the given noises
        (without guidance, minus the error with the prompt). Higher = more like the prompt."""
        nb = emb.shape[0]
        score = 0.0
        for t, eps in zip(self.cfg.sample.select_t, noises):
            tb = torch.full((nb,), t, device=z.device)
            v, _ = self.dit.forward_chunk(interpolate(z, eps, tb[:1]).repeat(nb, 1, 1, 1, 1), tb, emb, mask, context,
                                          start)
            err = (v.float() - (eps - z).float()).pow(2).flatten(1).mean(1)  # (nb,)
            score += float(err[1] - err[0]) if nb == 2 else -float(err[0])
        return score

    def resample_after_first(self, velocity, z: Tensor, g: torch.Generator, req: Request, shift: float) -> Tensor:
        """Keep the first latent frame of the first chunk z (1, C, Tc, h, w) and sample its other frames again
        from fresh noise with that frame held clean (t = 0), as flow.clean_first_frame_prob trains."""
        first = z[:, :, :1]

        def rest_velocity(x: Tensor, t: Tensor) -> Tensor:
            tt = torch.cat([torch.zeros_like(t)[:, None], t[:, None].expand(-1, x.shape[2])], 1)  # (1, Tc)
            return velocity(torch.cat([first, x], 2), tt)[:, :, 1:]

        noise = torch.randn(z[:, :, 1:].shape, generator=g).to(z)
        rest = sample(rest_velocity, noise, req.steps, shift=shift, method=req.sampler, churn=req.churn, generator=g)
        return torch.cat([first, rest], 2)

    @torch.no_grad()
    def frames(self, req: Request) -> Iterator[np.ndarray]:
        """Yield uint8 frames (t, H, W, 3) chunk by chunk; exactly seconds × fps frames in all."""
        n, _ = self.frame_count(self.resolve(req))
        cache = self.vae.init_cache()
        written = 0
        for z in self.latent_chunks(req):
            x, cache = self.vae.decode(z.to(self.device), cache)  # (1, 3, t, H, W) in [-1, 1]
            x = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
            x = x[: n - written]
            written += len(x)
            if len(x):
                yield x


def contact_sheet(frames: list[np.ndarray], columns: int = 8) -> np.ndarray:
    rows = math.ceil(len(frames) / columns)
    H, W = frames[0].shape[:2]
    sheet = np.zeros((rows * H, columns * W, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * H : (r + 1) * H, c * W : (c + 1) * W] = f
    return sheet


def generate(
    pipeline: Pipeline, req: Request, out: str | Path, preview: str | Path | None = None, progress: bool = False
) -> Path:
    """Write the mp4 (atomically: it appears only when complete) and optionally a PNG contact sheet."""
    from videodit.data.video_io import VideoWriter

    req = pipeline.resolve(req)
    n, T_lat = pipeline.frame_count(req)
    chunks = math.ceil(T_lat / pipeline.cfg.model.chunk_frames)
    picks = set(np.linspace(0, n - 1, 16).round().astype(int).tolist())
    kept: list[np.ndarray] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=chunks, unit="chunk", desc=f"{req.seconds:g}s @ {req.fps}fps, {req.steps} steps")
    seen = 0
    with VideoWriter(out, fps=req.fps) as writer:
        for x in pipeline.frames(req):
            writer.write(x)
            kept += [x[i - seen] for i in sorted(picks) if seen <= i < seen + len(x)]
            seen += len(x)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    if preview:
        from PIL import Image

        p = Path(preview)
        tmp = p.with_name(f".{p.name}.tmp.png")
        Image.fromarray(contact_sheet(kept)).save(tmp)
        tmp.replace(p)
    return Path(out)
