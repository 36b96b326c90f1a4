"""Minute-long generation chunk by chunk in constant memory (diffusion forcing, Chen et al. 2024;
CausVid, Yin et al. 2024; rolling KV cache as in Self-Forcing, Huang et al. 2025).

The latent video is split into causal chunks of `model.chunk_frames` latent frames. Each new chunk starts
from noise and is denoised while its temporal attention reads the cached keys/values of an anchor (the first
chunk) and a rolling window of the most recent clean chunks. When it is clean, one more pass at t = 0 writes
its own keys/values to the cache, the streaming VAE decodes it, and its frames go straight to the mp4. Memory
is bounded by the window, and time grows linearly with length.

Under torchrun (`init_processes`) the processes split every chunk's tokens (videodit/sequence_parallel.py: frames
for most of a block, positions for its temporal attention, so each keeps its own positions' cache); rank 0 alone
decodes and writes, as the streaming VAE decodes chunk after chunk (docs/sequence-parallel.md).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from videodit.checkpoint import (
    CheckpointError,
    expert_config,
    load_dit,
    load_state,
    load_text_encoder,
    load_vae,
    read_config,
)
from videodit.config import Config, ConfigError, SampleConfig, check_sample, override
from videodit.dit import ChunkKV
from videodit.flow import interpolate, sample, timestep_shift
from videodit.sequence_parallel import apply_sequence_parallel, gather_positions, own_positions, whole_clip
from videodit.vae import denormalize_latents, normalize_latents


class GenerateError(ValueError):
    """A request the checkpoint cannot serve (length, size, prompt); the message says what to do."""


class UnknownWordsWarning(UserWarning):
    """A prompt holds words the checkpoint's text encoder reads as <unk> (sample.unknown_words: warn)."""


@dataclass
class Request:
    """One video, resolved against a checkpoint and validated by `Pipeline.request`: every field is the value used."""

    prompts: list[str]
    at: list[float]  # start time in seconds of each prompt (of the new part, after a given clip); at[0] == 0
    seconds: float  # length of the video made (after a given clip: of the continuation)
    width: int
    height: int
    fps: int
    sample: SampleConfig  # the sampling knobs: the checkpoint's, with the caller's overrides
    negative_prompt: str = ""
    seed: int = 0
    image: np.ndarray | None = None  # uint8 (height, width, 3): the first frame, already fitted
    video: Path | None = None  # a clip to continue: its first `video_frames` frames at `fps`, fitted, encoded
    video_frames: int = 0
    keep_input: bool = False  # write the given clip (as fitted) before the continuation
    notes: list[str] = field(default_factory=list)  # what was adapted (resized input, frames dropped): for the user


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed


def check_timeline(prompts: list[str], at: list[float] | None, seconds: float) -> None:
    """The prompt timeline's one check (Pipeline.request, and Pipeline.extend while a video is being made)."""
    if not prompts or any(not p.strip() for p in prompts):
        raise GenerateError("every --prompt must be non-empty text (use --negative-prompt for what to avoid)")
    if at is None or len(at) != len(prompts):
        raise GenerateError("give one --at start time (seconds) per --prompt, the first being 0")
    if not all(math.isfinite(a) for a in at) or at[0] != 0 or any(b <= a for a, b in zip(at, at[1:])):
        raise GenerateError(f"--at must be increasing finite start times, the first being 0, got {at}")
    if at[-1] >= seconds:
        raise GenerateError(f"--at {at[-1]:g} starts a prompt at or after the end of the video ({seconds:g} s); "
                            f"every --at must be below --seconds")


class Pipeline:
    def __init__(self, cfg: Config, dit, vae, text_encoder, device: torch.device, dit_low=None,
                 group: dist.ProcessGroup | None = None, vae_dtype: torch.dtype = torch.float32):
        """group: the processes that sample together (sequence parallelism, `init_processes`); each makes the same
        calls with the same request, every chunk's tokens split over them, and rank 0 alone decodes (`frames`).
        vae_dtype: the VAE's compute dtype (bf16: faster on GPUs and AMX CPUs); latents reach the DiT in fp32."""
        self.cfg = cfg
        self.dit = dit.to(device).eval()
        self.dit_low = dit_low.to(device).eval() if dit_low is not None else None  # the low-noise expert
        self.vae = vae.to(device, vae_dtype).eval()
        self.text_encoder = text_encoder.to(device).eval()
        self.device = device
        self.group = group
        self.degree = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        if group is not None:
            for net in self.nets():
                apply_sequence_parallel(net, group)

    def nets(self) -> list:
        """The DiTs: the main one and the low-noise expert, if any."""
        return [n for n in (self.dit, self.dit_low) if n is not None]

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu",
             loras: Sequence[tuple[str | Path, float]] = (), group: dist.ProcessGroup | None = None,
             vae_dtype: torch.dtype = torch.float32) -> Pipeline:
        """The checkpoint in `folder`; `loras`: (adapter folder, scale) pairs merged into its DiT (videodit.lora).
        An adapter is trained on the main DiT: with any, sampling uses it for every step (sample.expert_t 0; set
        sample.expert_t to let the unadapted low-noise expert finish the last steps). `group`: see __init__."""
        from videodit.lora import load_adapter, merge, weights_hash

        cfg = read_config(folder)
        state = load_state(Path(folder) / "dit.safetensors")
        dit = load_dit(folder, cfg, state=state)
        vae, text_encoder = load_vae(folder, cfg), load_text_encoder(folder, cfg)
        if loras:
            base_hash = weights_hash(state)
            for path, scale in loras:
                merge(dit, load_adapter(path), scale, base_hash, f"--lora '{path}'")
            cfg.sample.expert_t = 0.0
        low = Path(folder) / "dit_low.safetensors"
        if cfg.sample.expert_t > 0 and not low.is_file():
            raise CheckpointError(f"'{folder}/config.yaml' sets sample.expert_t {cfg.sample.expert_t:g} but the "
                                  f"folder has no dit_low.safetensors (the low-noise expert); attach one with "
                                  f"`python -m videodit.expert` or set sample.expert_t: 0")
        dit_low = load_dit(folder, expert_config(folder, cfg), "dit_low.safetensors") if low.is_file() else None
        return cls(cfg, dit, vae, text_encoder, torch.device(device), dit_low, group, vae_dtype)

    # ---- the one place a request is resolved and checked (the CLI, the Python API and the app all come here)
    def request(self, prompts: list[str] | str, *, at: list[float] | None = None, seconds: float = 10.0,
                size: int | tuple[int, int] | None = None, fps: int | None = None, seed: int = 0,
                negative_prompt: str = "", sample: dict[str, Any] | None = None,
                image: str | Path | np.ndarray | None = None, video: str | Path | None = None,
                keep_input: bool = False, label: Callable[[str], str] = lambda k: f"sample.{k}") -> Request:
        """A validated Request. size: N or (width, height); omitted size/fps and sampling keys take the checkpoint's
        values; `sample` overrides keys of SampleConfig ({'churn': 0.5}); image: the first frame (a PNG/JPEG path or
        uint8 (H, W, 3)); video: a clip to continue (`seconds` more). An invalid value raises naming it (`label` names
        sampling keys the way the caller's user writes them, e.g. '--cfg')."""
        c = self.cfg
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        at = [0.0] if at is None and len(prompts) == 1 else at
        try:
            s = override(c.sample, sample or {}, "sample.")
            check_sample(s, label)
        except ConfigError as e:
            raise GenerateError(str(e)) from None
        fps = c.data.fps if fps is None else fps
        width, height = (c.data.size, c.data.size) if size is None else (size, size) if isinstance(size, int) else size
        if not (math.isfinite(seconds) and 0 < seconds <= s.max_seconds):
            raise GenerateError(f"--seconds must be in (0, {s.max_seconds:g}], got {seconds:g}")
        check_timeline(prompts, at, seconds)
        if fps != c.data.fps:
            raise GenerateError(f"this checkpoint was trained at {c.data.fps} fps; use --fps {c.data.fps}")
        self.check_size(width, height)
        self.check_split(width, height, self.degree)
        if s.expert_t > 0 and self.dit_low is None:
            raise GenerateError(f"{label('expert_t')} needs a checkpoint with a low-noise expert "
                                f"(dit_low.safetensors); "
                                f"use 0 or attach one with `python -m videodit.expert`")
        if not 0 <= seed <= SEED_MAX:
            raise GenerateError(f"--seed must be in [0, {SEED_MAX}], got {seed}")
        if image is not None and video is not None:
            raise GenerateError("give --image (a first frame) or --video (a clip to continue), not both")
        if keep_input and video is None:
            raise GenerateError("--keep-input writes the given clip before its continuation: it needs --video")
        self.check_words(prompts + ([negative_prompt] if negative_prompt else []), s.unknown_words, label)
        req = Request(prompts=prompts, at=[float(a) for a in at], seconds=float(seconds), width=width, height=height,
                      fps=fps, sample=s, negative_prompt=negative_prompt, seed=seed, keep_input=keep_input)
        if image is not None:
            req.image = self.load_image(image, width, height, req.notes)
        if video is not None:
            req.video, req.video_frames = self.check_clip(video, fps, req.notes)
        self.note_whole_chunk(req)
        return req

    def extend(self, req: Request, prompt: str, at: float,
               label: Callable[[str], str] = lambda k: f"sample.{k}") -> None:
        """Switch `req` to `prompt` from `at` seconds on, checked as `request` checks its timeline. Allowed while
        frames(req) runs: each chunk reads req.prompts/req.at as it starts and encodes a prompt when first used, so
        a prompt added between two chunks steers every chunk after (the app's mid-run prompt changes)."""
        check_timeline(req.prompts + [prompt], req.at + [at], req.seconds)
        self.check_words([prompt], req.sample.unknown_words, label)
        req.prompts.append(prompt)  # before its start time: a chunk never sees a time without its prompt
        req.at.append(float(at))

    def size_unit(self) -> int:
        """Frame sides must be multiples of this: the VAE's 8 times the DiTs' spatial patch."""
        nets = self.nets()
        return 8 * math.lcm(*(n.cfg.patch[1] for n in nets), *(n.cfg.patch[2] for n in nets))

    def check_size(self, width: int, height: int) -> None:
        """Both sides a multiple of size_unit(), between two units and 4x the training size; else name the nearest
        valid sizes."""
        unit, top = self.size_unit(), 4 * self.cfg.data.size

        def near(v: int) -> list[int]:
            lo = min(max(unit * 2, v // unit * unit), top // unit * unit)
            return sorted({lo, min(lo + unit, top // unit * unit)} if v % unit else {lo})

        if all(v % unit == 0 and unit * 2 <= v <= top for v in (width, height)):
            return
        options = [f"{w}x{h}" for w in near(width) for h in near(height)]
        raise GenerateError(f"--size {width}x{height} (width x height) cannot be made by this checkpoint: each side "
                            f"must be a multiple of {unit} between {unit * 2} and {top}; nearest: {', '.join(options)}")

    def token_grid(self, width: int, height: int, latent_frames: int) -> list[tuple[int, int]]:
        """(token frames T', tokens per frame S) of `latent_frames` latent frames at width x height, per DiT."""
        return [(latent_frames // n.cfg.patch[0], (height // 8 // n.cfg.patch[1]) * (width // 8 // n.cfg.patch[2]))
                for n in self.nets()]

    def check_split(self, width: int, height: int, degree: int) -> None:
        """Sequence parallelism over `degree` processes: GenerateError unless they split every (whole) chunk's
        token frames and every frame's tokens evenly; the message names the process counts or sizes that would."""
        if degree == 1:
            return
        cf = self.cfg.model.chunk_frames
        grid = self.token_grid(width, height, cf)
        fits = [d for d in range(1, max(max(g) for g in grid) + 1) if all(T % d == 0 and S % d == 0 for T, S in grid)]
        counts = f"launch {' or '.join(map(str, fits))} processes (torchrun --nproc_per_node)"
        if any(T % degree for T, _ in grid):
            raise GenerateError(f"sampling on {degree} processes splits each chunk's frames over them, but this "
                                f"checkpoint's chunks have {grid[0][0]} token frames (model.chunk_frames {cf}); "
                                f"{counts}")
        if any(S % degree for _, S in grid):
            unit, top = self.size_unit(), 4 * self.cfg.data.size
            sides = range(2 * unit, top + 1, unit)
            ok = [(w, h) for w in sides for h in sides if all(S % degree == 0 for _, S in self.token_grid(w, h, cf))]
            near = sorted(ok, key=lambda wh: (abs(wh[0] - width) + abs(wh[1] - height), -wh[0] * wh[1], wh))[:2]
            would = f"--size {' or '.join(f'{w}x{h}' for w, h in near)} would" if near else counts
            raise GenerateError(f"sampling on {degree} processes splits each frame's tokens over them, but --size "
                                f"{width}x{height} gives {grid[0][1]} tokens per frame; {would}")

    def last_chunk(self, req: Request) -> int:
        """Latent frames of the request's last chunk (the others have model.chunk_frames)."""
        cf = self.cfg.model.chunk_frames
        return (self.frame_count(req)[1] - 1) % cf + 1

    def splits(self, latent_frames: int) -> bool:
        """Whether a chunk of `latent_frames` latent frames splits evenly over the processes (frame by frame)."""
        return all(latent_frames % (n.cfg.patch[0] * self.degree) == 0 for n in self.nets())

    def note_whole_chunk(self, req: Request) -> None:
        """Sequence parallelism: a last chunk too short to split runs whole on every process (from every position's
        cache; exact, no faster than one process). Say so, with the lengths that would split every chunk."""
        last = self.last_chunk(req)
        if self.degree == 1 or self.splits(last):
            return
        n0 = max(1, round(req.seconds * req.fps))
        near = []
        for step in (-1, 1):
            n = n0 + step
            while 0 < n and n / req.fps <= req.sample.max_seconds and n / req.fps > req.at[-1]:
                if self.splits(self.last_chunk(replace(req, seconds=n / req.fps))):
                    near.append(f"{n / req.fps:g}")
                    break
                n += step
        req.notes.append(f"the last chunk has {last} latent frame(s), which do not split over {self.degree} "
                         f"processes: each computes it whole" + (f" (--seconds {' or '.join(near)} would split "
                                                                 f"every chunk)" if near else ""))

    def load_image(self, image: str | Path | np.ndarray, width: int, height: int, notes: list[str]) -> np.ndarray:
        """A first frame: a PNG/JPEG (any mode: alpha, greyscale and palettes become RGB) or uint8 (H, W, 3) ->
        uint8 (height, width, 3), resized and centre-cropped when its size differs (said in `notes`)."""
        from videodit.video_io import fit_frames

        if isinstance(image, np.ndarray):
            arr = image
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise GenerateError(f"an image array must be uint8 (H, W, 3), got {arr.dtype} {tuple(arr.shape)}")
        else:
            from PIL import Image, UnidentifiedImageError

            path = Path(image)
            if not path.is_file():
                raise GenerateError(f"--image '{path}' not found")
            try:
                with Image.open(path) as im:
                    if im.mode != "RGB":
                        notes.append(f"converted the image from mode {im.mode} to RGB"
                                     + (" (transparent pixels become their colour values)" if "A" in im.mode else ""))
                    arr = np.asarray(im.convert("RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise GenerateError(f"--image '{path}' is not a readable image (PNG or JPEG): {e}") from None
        if arr.shape[:2] != (height, width):
            notes.append(f"resized and centre-cropped the image from {arr.shape[1]}x{arr.shape[0]} to {width}x{height}")
        return fit_frames(arr[None], width, height)[0]

    def check_clip(self, video: str | Path, fps: int, notes: list[str]) -> tuple[Path, int]:
        """A clip to continue: readable, with a video stream and at least one chunk of latent frames at `fps`.
        -> (path, frames used): the longest 1 + 4k frames that fill whole chunks (the rest is said in `notes`)."""
        from videodit.video_io import VideoError, probe

        path = Path(video)
        try:
            info = probe(path)
        except VideoError as e:
            raise GenerateError(f"--video: {e}") from None
        available = int(math.floor(info["frames"] * fps / info["fps"] + 1e-6))  # frames at our fps
        cf = self.cfg.model.chunk_frames
        latents = (1 + (available - 1) // 4) // cf * cf if available else 0
        used = 1 + 4 * (latents - 1) if latents else 0
        if latents < cf:
            raise GenerateError(f"--video '{path}' has {available} frame(s) at {fps} fps; continuing needs at least "
                                f"{1 + 4 * (cf - 1)} (one chunk of {cf} latent frames)")
        if used < available:
            notes.append(f"continuing from the clip's first {used} of {available} frames at {fps} fps (whole chunks "
                         f"of {cf} latent frames; {available - used} dropped)")
        return path, used

    def check_words(self, prompts: list[str], mode: str, label: Callable[[str], str]) -> None:
        """Name the words the text encoder cannot represent: a warning, or with mode 'refuse' an error."""
        unknown = list(dict.fromkeys(w for p in prompts for w in self.text_encoder.unknown_words(p)))
        if not unknown:
            return
        known = self.text_encoder.vocabulary()
        msg = (f"this checkpoint's text encoder does not know {', '.join(repr(w) for w in unknown[:8])}"
               f"{' ...' if len(unknown) > 8 else ''} (read as <unk>, so they steer nothing)"
               + (f"; it knows {len(known)} words: {' '.join(known)}" if known else ""))
        if mode == "refuse":
            raise GenerateError(f"{msg}; rephrase, or set {label('unknown_words')} warn to sample anyway")
        warnings.warn(msg, UnknownWordsWarning, stacklevel=2)

    def frame_count(self, req: Request) -> tuple[int, int]:
        """(video frames to write, latent frames to generate). Alone the latents cover 1 + 4k >= the frames; after a
        given clip each new latent frame adds 4 frames. With keep_input the clip's frames are written too."""
        n = max(1, round(req.seconds * req.fps))
        if req.video is None:
            return n, 1 + math.ceil((n - 1) / 4)
        return n + (req.video_frames if req.keep_input else 0), math.ceil(n / 4)

    @torch.no_grad()
    def encode_prompts(self, req: Request) -> list[tuple[Tensor, Tensor]]:
        """Per prompt: (emb, mask) batched as [prompt, negative] (or [prompt] without guidance)."""
        return [self.encode_prompt(req, p) for p in req.prompts]

    @torch.no_grad()
    def encode_prompt(self, req: Request, prompt: str) -> tuple[Tensor, Tensor]:
        """(emb, mask) of one prompt, batched as [prompt, negative] (or [prompt] without guidance)."""
        s = req.sample
        later = s.cfg_scale if s.cfg_scale_later is None else s.cfg_scale_later
        guided = any(v != 1.0 for v in (s.cfg_scale, later)) or (s.cfg_low_t > 0 and s.cfg_scale_low != 1.0)
        emb, mask = self.text_encoder([prompt, req.negative_prompt] if guided else [prompt])
        return emb.to(self.device), mask.to(self.device)

    # ---- your own frames: the VAE's latents, normalised as the DiT sees them
    def _normalise(self, mean: Tensor) -> Tensor:
        """The VAE's raw latents -> the DiT's: the VAE's per-channel statistics (if any), then the flow's scalars."""
        return (normalize_latents(mean, self.cfg.vae) - self.cfg.flow.latent_shift) * self.cfg.flow.latent_scale

    def _denormalise(self, z: Tensor) -> Tensor:
        """The DiT's latents -> the VAE's raw ones, which its decoder takes (the inverse of _normalise)."""
        return denormalize_latents(z / self.cfg.flow.latent_scale + self.cfg.flow.latent_shift, self.cfg.vae)

    def _to_video(self, frames: np.ndarray) -> Tensor:
        """uint8 (t, H, W, 3) -> (1, 3, t, H, W) in [-1, 1] on the VAE's device and dtype."""
        w = next(self.vae.parameters())
        return (torch.from_numpy(frames).permute(3, 0, 1, 2)[None].to(w.device, torch.float32) / 127.5 - 1).to(w.dtype)

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) -> the normalised latent frame (1, C, 1, h, w) of a one-frame video."""
        post, _ = self.vae.encode(self._to_video(image[None]), self.vae.init_cache())
        return self._normalise(post.mean.float())

    @torch.no_grad()
    def encode_clip(self, req: Request) -> Iterator[tuple[Tensor, np.ndarray]]:
        """The given clip's first req.video_frames frames (resampled to req.fps, fitted), streamed through the VAE:
        (normalised latents (1, C, cf, h, w), the uint8 frames they encode) per chunk; memory stays flat."""
        from videodit.video_io import resampled_frames

        cf = self.cfg.model.chunk_frames
        cache = self.vae.init_cache()
        need = 1 + 4 * (cf - 1)  # frames of the first chunk; 4 cf for each one after it
        buf: list[np.ndarray] = []
        taken = 0
        for batch in resampled_frames(req.video, req.fps, req.width, req.height):
            buf.extend(batch[: req.video_frames - taken])
            taken += min(len(batch), req.video_frames - taken)
            while len(buf) >= need:
                frames, buf = np.stack(buf[:need]), buf[need:]
                post, cache = self.vae.encode(self._to_video(frames), cache)
                yield self._normalise(post.mean.float()), frames
                need = 4 * cf
            if taken == req.video_frames:
                break
        if taken < req.video_frames:
            raise GenerateError(f"--video '{req.video}' ended after {taken} frames at {req.fps} fps, fewer than its "
                                f"header says ({req.video_frames} expected); re-encode the file")

    # ---- the latent chunks
    @torch.no_grad()
    def latent_chunks(self, req: Request) -> Iterator[Tensor]:
        """Yield each newly generated chunk of VAE latents (1, C, Tc, h, w), in order."""
        for z, given in self.chunks(req):
            if given is None:
                yield z

    @torch.no_grad()
    def chunks(self, req: Request) -> Iterator[tuple[Tensor, np.ndarray | None]]:
        """Every chunk of VAE latents in order: (latents (1, C, Tc, h, w), the given frames they encode, or None for
        a generated chunk). A given clip's chunks enter the key/value caches exactly as finished generated ones do
        (anchor + recent window), so continuing a clip and continuing the model's own chunks are one code path."""
        cfg, s = self.cfg, req.sample
        later = s.cfg_scale if s.cfg_scale_later is None else s.cfg_scale_later
        _, T_new = self.frame_count(req)
        cf = cfg.model.chunk_frames
        h, w = req.height // 8, req.width // 8
        C = cfg.model.in_channels
        texts: dict[int, tuple[Tensor, Tensor]] = {}  # by index in req.prompts, encoded when first used

        def text(i: int) -> tuple[Tensor, Tensor]:
            if i not in texts:
                texts[i] = self.encode_prompt(req, req.prompts[i])
            return texts[i]

        g = torch.Generator().manual_seed(req.seed)
        lat_train = 1 + (cfg.data.frames - 1) // 4
        tokens = lat_train * (cfg.data.size // 8 // cfg.model.patch[1]) * (cfg.data.size // 8 // cfg.model.patch[2])
        shift = timestep_shift(tokens, cfg.flow)
        # each network reads its own keys/values of the finished chunks: [anchor or None, recent chunks]
        nets = [self.dit] + ([self.dit_low] if s.expert_t > 0 else [])
        caches: list[tuple[ChunkKV | None, list[ChunkKV]]] = [(None, []) for _ in nets]

        def contexts_of(nb: int, whole: bool) -> list[list[ChunkKV]]:
            """Each network's cache, oldest first; for a chunk that runs whole, every position's (sequence parallel)."""
            contexts = [([a] if a is not None else []) + r for a, r in caches]
            return [[gather_positions(kv, nb, self.group) for kv in c] for c in contexts] if whole else contexts

        def finish(z: Tensor, start: int, emb: Tensor, mask: Tensor, contexts: list[list[ChunkKV]], whole: bool):
            """Enter a finished chunk (noised to sample.context_noise) into every network's cache."""
            nb = emb.shape[0]
            tc = torch.full((nb,), s.context_noise, device=self.device)
            ctx = interpolate(z, torch.randn(z.shape, generator=g).to(z), tc[:1]) if s.context_noise > 0 else z
            for i, net in enumerate(nets):
                _, kv = self.forward_chunk(net, ctx.repeat(nb, 1, 1, 1, 1), tc, emb, mask, contexts[i], start, whole)
                anchor, recent = caches[i]
                if start == 0 and s.anchor:
                    anchor = kv
                else:
                    recent = (recent + [kv])[-s.window_chunks :] if s.window_chunks else []
                caches[i] = (anchor, recent)

        offset = 0  # latent frames given before the first generated one
        if req.video is not None:
            for z, frames in self.encode_clip(req):  # whole chunks: they split whenever check_split passed
                emb, mask = text(0)
                finish(z.to(self.device), offset, emb, mask, contexts_of(emb.shape[0], False), False)
                yield self._denormalise(z), frames
                offset += z.shape[2]
        first = self.encode_image(req.image).to(self.device) if req.image is not None else None
        for start in range(offset, offset + T_new, cf):
            Tc = min(cf, offset + T_new - start)
            # the chunk's first frame in the new part's time (each latent frame after a clip is 4 frames)
            frame0 = 4 * (start - offset) if offset else 0 if start == 0 else 1 + 4 * (start - 1)
            which = max(i for i, a in enumerate(req.at) if a * req.fps <= frame0)
            emb, mask = text(which)  # read as the chunk starts: Pipeline.extend may add prompts
            nb = emb.shape[0]
            whole = self.degree > 1 and not self.splits(Tc)  # a short last chunk: every process computes it whole
            contexts = contexts_of(nb, whole)

            def velocity(x: Tensor, t: Tensor, emb=emb, mask=mask, contexts=contexts, nb=nb, start=start,
                         whole=whole) -> Tensor:
                # t is the step's noise level; (1, Tc) with a clean first frame in sample_after_first
                low = float(t.max()) < s.expert_t
                net, ctx = (self.dit_low, contexts[1]) if low else (self.dit, contexts[0])
                tb = t.repeat(nb, *[1] * (t.dim() - 1))
                v, _ = self.forward_chunk(net, x.repeat(nb, 1, 1, 1, 1), tb, emb, mask, ctx, start, whole)
                vc, vu = (v, v) if nb == 1 else v.chunk(2)
                scale = s.cfg_scale if start == 0 else later
                scale = s.cfg_scale_low if float(t.max()) < s.cfg_low_t else scale
                return vu + scale * (vc - vu)

            if start == 0 and first is not None:  # image to video: the image is the clean first latent frame
                z = self.sample_after_first(velocity, first, Tc, g, req, shift) if Tc > 1 else first
            else:
                noise = torch.randn(1, C, Tc, h, w, generator=g).to(self.device)
                z = sample(velocity, noise, s.steps, shift=shift, method=s.sampler, churn=s.churn, generator=g)
                if start == 0 and s.first_frame_first and Tc > 1:
                    z = self.sample_after_first(velocity, z[:, :, :1], Tc, g, req, shift)
            if start == offset and not torch.isfinite(z).all():
                raise GenerateError("the first chunk's latents are not finite (NaN/Inf): the checkpoint's DiT or its "
                                    "sampling settings diverge; check the weights, or lower --cfg / --steps")
            finish(z, start, emb, mask, contexts, whole)
            yield self._denormalise(z), None

    def forward_chunk(self, net, x: Tensor, t: Tensor, emb: Tensor, mask: Tensor, context: list[ChunkKV],
                      start: int, whole: bool) -> tuple[Tensor, ChunkKV]:
        """net.forward_chunk. whole (sequence parallel, a chunk whose frames do not split): every process computes
        the chunk whole from every position's `context` and keeps its own positions' keys and values."""
        if not whole:
            return net.forward_chunk(x, t, emb, mask, context, start)
        with whole_clip(net):
            v, kv = net.forward_chunk(x, t, emb, mask, context, start)
        return v, own_positions(kv, x.shape[0], self.group)

    def sample_after_first(self, velocity, first: Tensor, Tc: int, g: torch.Generator, req: Request,
                           shift: float) -> Tensor:
        """A chunk of Tc latent frames whose first, `first` (1, C, 1, h, w), is given: the others are sampled from
        fresh noise with it held clean (t = 0), as flow.clean_first_frame_prob trains. first_frame_first keeps the
        first frame of a sampled chunk this way; image to video starts from the image's latent frame."""

        def rest_velocity(x: Tensor, t: Tensor) -> Tensor:
            tt = torch.cat([torch.zeros_like(t)[:, None], t[:, None].expand(-1, x.shape[2])], 1)  # (1, Tc)
            return velocity(torch.cat([first, x], 2), tt)[:, :, 1:]

        B, C, _, h, w = first.shape
        noise = torch.randn(B, C, Tc - 1, h, w, generator=g).to(first)
        s = req.sample
        rest = sample(rest_velocity, noise, s.steps, shift=shift, method=s.sampler, churn=s.churn, generator=g)
        return torch.cat([first, rest], 2)

    @torch.no_grad()
    def frames(self, req: Request) -> Iterator[np.ndarray]:
        """Yield uint8 frames (t, H, W, 3) chunk by chunk; exactly frame_count(req)[0] in all. A given clip is
        decoded too (the streaming decoder must see its latents before the continuation's) but written only with
        keep_input, as the fitted input frames. With a group of processes, rank 0 yields the frames and the others
        nothing (they compute their share of every chunk, but the decode's cache runs from chunk to chunk)."""
        n, _ = self.frame_count(req)
        cache = self.vae.init_cache()
        written = 0
        for z, given in self.chunks(req):
            if self.rank:
                continue
            x, cache = self.vae.decode(z.to(self.device, next(self.vae.parameters()).dtype), cache)  # (1, 3, t, H, W)
            if given is not None:
                if req.keep_input:
                    written += len(given)
                    yield given
                continue
            x = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
            x = x[: n - written]
            written += len(x)
            if len(x):
                yield x


def init_processes(device: str | None) -> tuple[torch.device, dist.ProcessGroup | None]:
    """The device to sample on and, under torchrun (WORLD_SIZE > 1), the group of all its processes, which then
    split every chunk (Pipeline(group=...)): each process takes the GPU of its local rank (nccl), or the CPU (gloo).
    In a plain process: pick_device(device) and no group."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return pick_device(device), None
    dev = pick_device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise GenerateError(f"--device {device}: under torchrun each process takes the GPU of its local rank; "
                                "give --device cuda")
        dev = pick_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise GenerateError(f"--device {device}: sampling on several processes needs CUDA (nccl) or the CPU (gloo)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return dev, dist.group.WORLD


def close_processes(group: dist.ProcessGroup | None) -> None:
    """The end of `init_processes`' group (nothing without one)."""
    if group is not None and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str | None) -> torch.device:
    """The device to sample on: `name` (cpu, cuda, cuda:N, mps) checked to exist; None = cuda when available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GenerateError(f"--device '{name}' is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerateError(f"--device {name}: this torch has no CUDA device; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise GenerateError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GenerateError(f"--device {name}: MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise GenerateError(f"--device '{name}' is not supported; use cpu, cuda or cuda:N")
    return device


def check_outputs(out: str | Path, preview: str | Path | None = None, group: dist.ProcessGroup | None = None) -> None:
    """Fail before any work if the mp4 (or the PNG preview) cannot be written where asked; creates their folders.
    With a group of processes, rank 0 (the writer) checks and every process raises its error."""
    if group is not None:
        error = [None]
        if dist.get_rank(group) == 0:
            try:
                check_outputs(out, preview)
            except GenerateError as e:
                error = [str(e)]
        dist.broadcast_object_list(error, src=dist.get_global_rank(group, 0), group=group)
        if error[0] is not None:
            raise GenerateError(error[0])
        return
    for path, flag, suffix in ((Path(out), "--out", ".mp4"), (Path(preview) if preview else None, "--preview", ".png")):
        if path is None:
            continue
        if path.is_dir():
            raise GenerateError(f"{flag} '{path}' is a folder; give a file name ending in {suffix}")
        if path.suffix.lower() != suffix:
            raise GenerateError(f"{flag} must end in {suffix}, got '{path}'")
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GenerateError(f"{flag}: cannot create the folder '{parent}': {e.strerror}") from None
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise GenerateError(f"{flag}: cannot write '{path}'; choose a writable path")


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
    """Write the mp4 (atomically: it appears only when complete) and optionally a PNG contact sheet. With a group of
    processes, every one calls it and rank 0 alone writes."""
    from videodit.video_io import VideoWriter, temp_path_for

    if pipeline.rank:  # the other processes compute their share of every chunk
        for _ in pipeline.frames(req):
            pass
        return Path(out)

    n, T_lat = pipeline.frame_count(req)
    chunks = math.ceil(T_lat / pipeline.cfg.model.chunk_frames)
    picks = set(np.linspace(0, n - 1, 16).round().astype(int).tolist())
    kept: list[np.ndarray] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=chunks, unit="chunk", desc=f"{req.seconds:g}s @ {req.fps}fps, {req.sample.steps} steps")
    seen = 0
    try:
        with VideoWriter(out, fps=req.fps) as writer:
            for x in pipeline.frames(req):
                writer.write(x)
                kept += [x[i - seen] for i in sorted(picks) if seen <= i < seen + len(x)]
                seen += len(x)
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()  # before any error message, not after it
    if preview:
        from PIL import Image

        p = Path(preview)
        tmp = temp_path_for(p)
        try:
            Image.fromarray(contact_sheet(kept)).save(tmp, format="PNG")
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return Path(out)
