"""Typed configuration: dataclasses are the single source of defaults.

A run is described by one `Config`. YAML files under `configs/` hold overrides of the defaults, and
dotted command-line flags (`--model.depth 4`) override the YAML. Size presets are plain dicts that a
`preset` key expands before any explicit key is applied. Unknown keys and wrong types fail loudly,
naming the key (nanoGPT's configurator, made strict and typed).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHECKPOINT_POLICIES = ("full", "save_matmuls")  # train.checkpoint_policy (videodit.train.parallelize)


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the key and what to do."""


@dataclass
class DiTConfig:
    preset: str = "tiny"  # a size from DIT_PRESETS (tiny, small, base, xl); explicit keys override it
    in_channels: int = 16  # latent channels of the VAE
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw) in latent units
    hidden: int = 128  # token width
    depth: int = 4  # DiT blocks (spatial, temporal, cross-attention, MLP each)
    heads: int = 4  # attention heads; hidden / heads is the head width (even, for rotary positions)
    mlp_ratio: float = 4.0  # MLP width / hidden
    text_dim: int = 64  # width of the text encoder's embeddings
    chunk_frames: int = 2  # latent frames (after patchify) per causal chunk of temporal attention
    rope_theta: float = 10000.0  # base of the rotary position frequencies
    qk_norm: bool = True  # RMSNorm on queries and keys (stable attention logits)
    # kernel of the short temporal attention: "sdpa" (torch's fused kernels) or "dense" (two batched matmuls
    # and a softmax, which torch.compile fuses; cheaper than a launch-bound fused kernel at ~16 tokens)
    temporal_attention: str = "sdpa"
    # also condition every block's adaLN on the masked mean of the text embeddings (as SD3 / Hunyuan add a
    # pooled text vector to the timestep): global attributes (colour, shape, motion) reach every token
    # directly instead of only through cross-attention
    pooled_text: bool = True
    # add a learned vector to the adaLN conditioning of the video's first chunk. Temporal RoPE is relative, so
    # without it a chunk that starts a video and a later chunk whose context is still noise look alike, and
    # the first chunk is drawn from the whole clip's mixture (for bouncing shapes: the wrong way half the time)
    first_chunk_embed: bool = False
    # self-attention blocks over the text tokens, with 1-D rotary positions, before the cross-attention (as
    # HunyuanVideo's token refiner). A small frozen T5 gives nearly a bag of words (the tiny one: the token
    # "circle" after "red" or after "blue" has cosine 0.9998), so nothing tells the DiT which colour, shape and
    # motion belong together in a two-object prompt; the refiner's local attention can bind them. Its output
    # projections start at zero: a model gains a refiner as the identity and keeps its behaviour.
    text_refiner: int = 0
    # spatial rotary positions are (row, column) times this. 1 for a DiT trained at its own patch size; a DiT
    # re-patched from one with k times larger spatial patches (`python -m videodit.repatch`) uses 1/k, so its
    # tokens keep the distances the weights were trained on
    rope_grid_scale: float = 1.0


DIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=128, depth=4, heads=4),
    "small": dict(hidden=384, depth=12, heads=6),
    "base": dict(hidden=768, depth=12, heads=12),
    "xl": dict(hidden=1152, depth=28, heads=16),  # the DiT-XL / Latte-XL class
}


@dataclass
class VAEConfig:
    preset: str = "tiny"  # a size from VAE_PRESETS (tiny, small, full, wan21); explicit keys override it
    # the network: "videodit" (this project's VAE) or "wan21" (Wan 2.1's, computed exactly; videodit/vae_wan.py).
    # Wan's released weights load after `python -m videodit.convert wan-vae`; its decoder has num_res_blocks + 1
    # residual blocks per stage, as Wan's
    arch: str = "videodit"
    latent_channels: int = 16  # channels of the latents the DiT sees
    base_channels: int = 16  # width of the first (full-resolution) stage
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)  # one stage per entry; a x2 spatial downsampling between stages
    num_res_blocks: int = 1  # residual blocks per stage (encoder and decoder alike)
    temporal_down: tuple[bool, ...] = (False, True, True)  # which downsamplings also halve time (as Wan 2.1)
    # mean RGB of the training data in [-1, 1]; the VAE codes the difference. Dark data (the procedural
    # shapes: about -0.74) otherwise starts training with a global colour offset that Adam spreads over
    # every weight until the VAE collapses to the mean video.
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # per-channel statistics of the VAE's latents (Wan 2.1: its 16 latents_mean / latents_std): the DiT sees
    # (z - latent_mean) / latent_std, channel by channel, and flow.latent_scale / latent_shift are not estimated.
    # Empty (this project's VAEs): no per-channel step; the flow's scalar scale and shift normalise alone
    latent_mean: tuple[float, ...] = ()
    latent_std: tuple[float, ...] = ()  # see latent_mean; one positive entry per latent channel, or empty
    # train the decoder only (with train.init): the latent space, and so a DiT trained on it, stays valid
    freeze_encoder: bool = False
    # loss weights (training)
    kl_weight: float = 1e-6  # weight of the KL term (VAE training)
    ssim_weight: float = 0.2  # weight of the 1 - SSIM term (VAE training)
    # L1 weighted per pixel by flow.detail_weights of the clip (mean 1 per frame): the pixels that stand out of
    # their frame (the objects, their edges) count more than the flat background that is most of it. 0 = plain L1
    detail_weight: float = 0.0
    gan_weight: float = 0.0  # 0 disables the patch-GAN term
    gan_start_step: int = 2000  # step at which the patch-GAN term switches on


VAE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(base_channels=16, channel_mults=(1, 2, 4, 4), num_res_blocks=1),  # ~2M params, CPU
    "small": dict(base_channels=64, channel_mults=(1, 2, 4, 4), num_res_blocks=2),
    # 128 wide with two residual blocks per stage and no attention: the size class of the published causal video VAEs,
    # but not Wan 2.1's architecture (96 wide, three decoder blocks per stage, mid-block attention)
    "full": dict(base_channels=128, channel_mults=(1, 2, 4, 4), num_res_blocks=2),
    # Wan 2.1's VAE as released (Wan2.1_VAE.pth, diffusers' AutoencoderKLWan): 2 residual blocks per encoder stage and
    # 3 per decoder stage, z 16, and its per-channel latent statistics
    "wan21": dict(arch="wan21", base_channels=96, channel_mults=(1, 2, 4, 4), num_res_blocks=2,
                  temporal_down=(False, True, True), latent_channels=16,
                  latent_mean=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
                  latent_std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)),
}
VAE_ARCHS = ("videodit", "wan21")  # vae.arch


@dataclass
class TextConfig:
    # local folder or hub id of a T5 / mT5 / umT5 encoder; empty: train.vae's text_encoder/ if it has one, else the
    # tiny built-in ByT5-style T5. On shards it must be the one they were cached with (checked; a converted VAE has
    # no text encoder, so pass the cache's --text-encoder here)
    pretrained: str = ""
    max_length: int = 128  # ByT5 tokens are bytes: 128 holds the longest shapes caption
    # the tiny built-in encoder (used when `pretrained` is empty)
    tiny_d_model: int = 64
    tiny_layers: int = 2  # its encoder layers
    tiny_heads: int = 4  # its attention heads
    tiny_d_ff: int = 128  # its feed-forward width
    # its tokenizer: "byte" (ByT5's, any text) or "words" (the shapes caption language's 82 words, anything
    # else <unk>): a random frozen encoder hands the DiT a word as one token instead of a run of bytes to
    # assemble, which a tiny DiT learns to follow far sooner (see README, "The shipped model")
    tiny_tokenizer: str = "byte"


@dataclass
class FlowConfig:
    logit_mean: float = 0.0  # logit-normal sampling of t (SD3, Esser et al. 2024)
    logit_std: float = 1.0  # spread of the logit-normal t
    shift_base_tokens: int = 256  # the timestep shift is sqrt(tokens / base), clamped to [1, shift_max]
    shift_max: float = 3.0  # the largest token-count shift
    # a fixed timestep shift for training and sampling (> 0) instead of the token-count rule above. Video
    # models shift far toward noise (Wan 2.1 samples with 5, HunyuanVideo with 7): with a clean context the
    # motion of the next chunk is decided at high noise, which logit-normal(0, 1) alone rarely trains
    # (t > 0.9 in 1.4% of draws; 14% with shift 3)
    shift: float = 0.0
    # chance that a t is drawn uniformly in [0, 1] (then shifted) instead of logit-normal. Logit-normal(0, 1)
    # with shift 3 draws t > 0.97 in 0.9% of cases, yet sampling starts at t = 1 and its first steps are where
    # nothing but the text sets the background, colours and layout (x_t still hides them); a uniform share
    # of 0.3 trains t > 0.97 in 3.2% of draws (8.5% of the uniform ones)
    uniform_t_prob: float = 0.0
    # < 1: train only on noise levels t <= t_max (the same distribution, conditioned on t <= t_max): a low-noise
    # expert that takes over the last sampling steps (sample.expert_t), where small shapes are finished
    t_max: float = 1.0
    per_chunk_t: bool = True  # diffusion forcing: an independent t for every causal chunk
    # with per_chunk_t: chance that a random prefix of chunks is clean (t = 0), the context the model sees when
    # sampling chunk by chunk
    clean_context_prob: float = 0.5
    # chance that a clip whose first chunk is noisy gets a clean first latent frame (t = 0) instead: the model
    # then predicts how a known first picture moves, where the caption's direction is the main unknown (in a
    # whole noisy first chunk the text's say on motion is a few % of the loss and is barely learned); pairs
    # with sample.first_frame_first
    clean_first_frame_prob: float = 0.0
    # chance that a clip long enough is cut the way sampling lays out its cache: the first chunk (the anchor),
    # a gap of at least one chunk, then sample.window_chunks + 1 later chunks, at contiguous positions. From
    # the third chunk on, a video made chunk by chunk is conditioned on exactly that (the first chunk and the
    # recent ones), a jump contiguous training clips never show; needs clips longer than the cut (shards
    # cached with many frames, e.g. --frames 129) and per_chunk_t; batches of shorter clips are left whole
    anchor_gap_prob: float = 0.0
    # > 0: weight the loss toward latent positions that stand out of their frame (flow.detail_weights): small
    # objects are a few latent pixels of a mostly flat frame, so plain MSE spends little on their shape
    detail_weight: float = 0.0
    text_dropout: float = 0.1  # probability of the empty prompt during training (for CFG)
    # the DiT's latents are (z - latent_shift) * latent_scale, z the VAE's (after vae.latent_mean / latent_std when the
    # VAE has them); 0 = estimate at the start of training (1, with shift 0, when the VAE has per-channel statistics)
    latent_scale: float = 0.0
    latent_shift: float = 0.0  # see latent_scale (estimated with it)


@dataclass
class DataConfig:
    source: str = "shapes"  # "shapes" (rendered on the fly), "manifest" (clips decoded on the fly) or "shards"
    num_clips: int = 1000  # size of the procedural dataset (source = shapes)
    seed: int = 0  # procedural dataset seed
    p_two: float = -1.0  # share of two-object procedural clips (source = shapes); < 0 = the dataset's default
    shards: str = ""  # folder of cached latent shards (fast path); several joined by commas mix clip lengths
    manifest: str = ""  # clips manifest (JSONL) decoded on the fly
    frames: int = 17  # video frames per training clip (1 + 4k)
    size: int = 64  # square frame size in pixels
    fps: int = 8  # frames per second the clips are sampled at (and videos generated at)
    batch_size: int = 4  # global batch (all ranks, one optimizer step, before accumulation)
    num_workers: int = 0  # DataLoader worker processes prefetching training batches (0 = load in the trainer)
    crop: int = 0  # VAE training: random square crops of this size (a multiple of 8; 0 = whole frames)


@dataclass
class TrainConfig:
    task: str = "dit"  # "dit" or "vae"
    vae: str = ""  # checkpoint folder of a trained VAE (task dit): encodes clips on the fly, ships with the export
    init: str = ""  # an export folder whose weights start this run (fine-tuning; dit.safetensors / vae.safetensors)
    # LoRA (videodit/lora.py): train a low-rank adapter of this rank on train.init's DiT, which stays frozen; only
    # the adapter is optimised, checkpointed and exported (RUN/export/lora.safetensors + lora.yaml). 0 = off
    lora_rank: int = 0
    lora_alpha: float = 8.0  # the adapter's update is scaled by lora_alpha / lora_rank
    # the linear layers of every DiT block that get an adapter, by their path in the block (attention and MLP)
    lora_targets: tuple[str, ...] = ("attn_s.qkv", "attn_s.proj", "attn_t.qkv", "attn_t.proj", "attn_c.q", "attn_c.kv",
                                     "attn_c.proj", "mlp.0", "mlp.2")
    deepspeed: str = ""  # optional DeepSpeed JSON (configs/deepspeed/); batch, precision and clipping come from here
    out_dir: str = "runs/default"  # the run folder: checkpoints, logs, export
    steps: int = 1000  # optimizer steps of the run
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW's betas
    warmup_steps: int = 100  # linear warm-up of the learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    ema_decay: float = 0.999  # decay of the exponential moving average of the weights that is exported
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "bf16" or "fp32"
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass (less memory)
    checkpoint_policy: str = "full"  # "full" (recompute each block) or "save_matmuls" (recompute element-wise ops only)
    compile: bool = False  # regional torch.compile: each transformer / VAE block compiled once, in place
    zero_stage: int = 0  # 0 = plain DDP-style data parallel; 1, 2, 3 = DeepSpeed ZeRO
    offload_optimizer: bool = False  # ZeRO: keep the optimizer state in CPU memory
    # processes that share each clip: sequence parallelism (videodit/sequence_parallel.py), 1 = off. Groups of this
    # many consecutive ranks split each clip's frames (and its positions, for the temporal attention); it must divide
    # the number of processes and each clip's token frames and tokens per frame
    sequence_parallel: int = 1
    nan_policy: str = "stop"  # "stop" or "skip"
    seed: int = 0  # the run's seed: batches, timesteps, noise and dropout derive from (seed, step)
    log_every: int = 10  # steps between log lines
    ckpt_every: int = 200  # steps between resume checkpoints
    sample_every: int = 0  # 0 disables sample videos during training
    keep_checkpoints: int = 2  # newest complete resume checkpoints kept
    wandb: str = "offline"  # "online", "offline" or "disabled"
    wandb_project: str = "videodit"  # the wandb project runs log to


@dataclass
class SampleConfig:
    steps: int = 12  # sampling steps per chunk
    cfg_scale: float = 3.0  # classifier-free guidance scale (1 = none)
    # guidance for every chunk after the first (null: cfg_scale). The first chunk sets the motion, which strong
    # guidance stiffens; the later ones hold the prompted colour and shape over the minute, which it helps
    cfg_scale_later: float | None = None
    # guidance interval (after Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample
    # and Distribution Quality in Diffusion Models"): at noise levels t below cfg_low_t the steps use cfg_scale_low
    # instead. Strong guidance sets colour, shape and motion while the chunk is still noise; kept on the last,
    # nearly clean steps it over-sharpens small objects into the wrong shape. 0 = off (one scale all the way)
    cfg_low_t: float = 0.0
    cfg_scale_low: float = 1.0  # guidance scale of the steps below cfg_low_t
    # a low-noise expert (eDiff-I, Balaji et al. 2022; Wan 2.2's two experts): the steps at noise levels t below
    # expert_t use a second DiT (dit_low.safetensors in the checkpoint, trained with flow.t_max; shaped by
    # dit_low.yaml when it differs from the main one), so the last steps, where small shapes are finished, get a
    # whole network. 0 = off
    expert_t: float = 0.0
    sampler: str = "euler"  # "euler" or "heun"
    # stochastic sampling (flow.sample): each step draws fresh noise with this fraction of the exact posterior's
    # standard deviation (0 = the deterministic ODE, 1 = ancestral sampling). Re-drawn noise corrects part of each
    # step's error instead of carrying it to t = 0
    churn: float = 0.0
    window_chunks: int = 2  # recent clean chunks each new chunk attends to, besides the anchor (the first chunk)
    # keep the first chunk in the cache for the whole video (identity), laid out just before the window; off: a
    # plain rolling window of window_chunks, always contiguous in time as in training
    anchor: bool = True
    # noise level (t) at which a finished chunk enters the KV cache (0 = clean). A little noise hides the
    # chunk's own small errors from the chunks after it, so they do not compound (noise augmentation of
    # the context, as in GameNGen, Valevski et al. 2024); training already shows noisy past chunks
    context_noise: float = 0.0
    # sample the first chunk, keep its first latent frame, then sample the chunk's later frames again from
    # noise with that frame clean (t = 0), so the prompt sets the motion from a known start. Needs a model
    # trained with flow.clean_first_frame_prob > 0
    first_frame_first: bool = False
    max_seconds: float = 600.0  # the longest video a request may ask for
    # prompt words the text encoder cannot represent (a word-level vocabulary maps them to <unk>): "warn" names
    # them and the words it knows, then samples; "refuse" stops before sampling
    unknown_words: str = "warn"


@dataclass
class Config:
    model: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


PRESETS: dict[str, dict[str, dict[str, Any]]] = {"model": DIT_PRESETS, "vae": VAE_PRESETS}


# ----------------------------------------------------------------------------------------------------
# building configs from dicts, YAML and dotted overrides


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting the harmless cases (list -> tuple, int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any or (tp is type(None) and value is None):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) == len(args):
                return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    elif origin in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"config key '{key}' expects {name}, got {value!r} ({type(value).__name__})")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj: Any, updates: dict[str, Any], prefix: str) -> None:
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'; valid keys here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; give it a mapping, got {value!r}")
            _apply(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"config key '{dotted}' conflicts with a value given for '{p}'")
        d[parts[-1]] = value
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Options removed because they measured no gain (experiments/LOG.md, "Retired options"), with the value that meant
# "off". A config written before their removal (a checkpoint, a run folder) still loads when it has them off; one
# that uses them is refused, since this code can no longer do what it asks.
RETIRED: dict[str, Any] = {
    "sample.best_of": 1, "sample.select_t": None, "sample.history_guidance": 0.0, "sample.warm_start": 0.0,
    "flow.temporal_weight": 0.0, "vae.latent_noise": 0.0,
}


def _drop_retired(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for dotted, off in RETIRED.items():
        section, key = dotted.split(".")
        sec = out.get(section)
        if isinstance(sec, dict) and key in sec:
            value = sec.pop(key)
            if off is not None and value != off:
                raise ConfigError(f"config key '{dotted}' was removed (it measured no gain; experiments/LOG.md); "
                                  f"delete it or set it to {off}")
    if isinstance(out.get("sample"), dict) and out["sample"].get("cfg_scale_later") == -1:
        out["sample"]["cfg_scale_later"] = None  # written as -1 ("same as cfg_scale") before null meant that
    return out


def from_dict(d: dict[str, Any]) -> Config:
    """Build a Config from a (possibly partial) nested dict; presets expand before explicit keys."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    cfg = Config()
    d = _drop_retired(d)
    for section, presets in PRESETS.items():
        sec = d.get(section)
        if isinstance(sec, dict) and "preset" in sec:
            name = sec["preset"]
            if name not in presets:
                raise ConfigError(
                    f"unknown preset '{name}' for '{section}.preset'; choose one of {', '.join(presets)}"
                )
            d[section] = {**presets[name], **sec}
    _apply(cfg, d, "")
    validate(cfg)
    return cfg


def override(obj: Any, updates: dict[str, Any], prefix: str) -> Any:
    """A copy of the section dataclass `obj` with `updates` (its own keys, e.g. {'churn': 0.5}) applied and
    type-checked; keys are named `prefix + key` in errors. Range checks are the caller's (check_sample, validate)."""
    out = copy.deepcopy(obj)
    _apply(out, updates, prefix)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists) that YAML/JSON can hold and `from_dict` reads back."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`['--model.depth', '4', '--train.lr=3e-4']` -> `{'model.depth': 4, 'train.lr': 3e-4}` (YAML-typed values)."""
    flat: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or "." not in a.split("=")[0]:
            raise ConfigError(
                f"unrecognised argument '{a}'; config overrides look like --section.key VALUE (e.g. --model.depth 4)"
            )
        if "=" in a:
            key, raw = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override '{a}' needs a value, e.g. {a} 4")
            key, raw = a[2:], args[i + 1]
            i += 2
        try:
            flat[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            flat[key] = raw
    return flat


def sample_overrides(args: list[str], tool: str) -> dict[str, Any]:
    """`['--sample.churn', '0.5']` -> `{'churn': 0.5}`: the only dotted overrides a sampling tool takes."""
    flat = parse_overrides(args)
    bad = [k for k in flat if not k.startswith("sample.")]
    if bad:
        raise ConfigError(f"unrecognised argument '--{bad[0]}': {tool} takes its own flags and --sample.KEY VALUE")
    return {k.removeprefix("sample."): v for k, v in flat.items()}


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides, validated."""
    d: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found; pass an existing YAML file, e.g. configs/tiny.yaml")
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file '{p}' is not UTF-8 text; give a YAML file (configs/*.yaml)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from e
        except OSError as e:
            raise ConfigError(f"cannot read config file '{p}': {e.strerror}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections (model:, train:, ...)")
    if overrides:
        flat = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        d = _merge(d, _nest(flat))
    return from_dict(d)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# The allowed range of every numeric key, checked in one place before any work: (low, high, what it is).
# Bounds are inclusive unless written as an open interval in the text; every value must also be finite.
INF = float("inf")
RANGES: dict[str, tuple[float, float, str]] = {
    "model.in_channels": (1, INF, ">= 1"),
    "model.hidden": (1, INF, ">= 1"),
    "model.depth": (1, INF, ">= 1"),
    "model.heads": (1, INF, ">= 1"),
    "model.mlp_ratio": (0, INF, "> 0"),
    "model.text_dim": (1, INF, ">= 1"),
    "model.chunk_frames": (1, INF, ">= 1"),
    "model.rope_theta": (0, INF, "> 0"),
    "model.rope_grid_scale": (0, INF, "> 0 (1 unless re-patched)"),
    "model.text_refiner": (0, INF, ">= 0 (text refiner blocks)"),
    "vae.latent_channels": (1, INF, ">= 1"),
    "vae.base_channels": (1, INF, ">= 1"),
    "vae.num_res_blocks": (1, INF, ">= 1"),
    "vae.kl_weight": (0, INF, ">= 0"),
    "vae.ssim_weight": (0, INF, ">= 0"),
    "vae.detail_weight": (0, INF, ">= 0 (0 = plain L1)"),
    "vae.gan_weight": (0, INF, ">= 0 (0 = off)"),
    "vae.gan_start_step": (0, INF, ">= 0"),
    "text.max_length": (1, INF, ">= 1"),
    "text.tiny_d_model": (1, INF, ">= 1"),
    "text.tiny_layers": (1, INF, ">= 1"),
    "text.tiny_heads": (1, INF, ">= 1"),
    "text.tiny_d_ff": (1, INF, ">= 1"),
    "flow.logit_std": (0, INF, "> 0"),
    "flow.shift_base_tokens": (1, INF, ">= 1"),
    "flow.shift_max": (1, INF, ">= 1"),
    "flow.shift": (0, INF, "> 0 (a fixed timestep shift) or 0 (from the token count)"),
    "flow.uniform_t_prob": (0, 1, "a probability in [0, 1]"),
    "flow.t_max": (0, 1, "in (0, 1] (the highest noise level trained)"),
    "flow.clean_context_prob": (0, 1, "a probability in [0, 1]"),
    "flow.clean_first_frame_prob": (0, 1, "a probability in [0, 1]"),
    "flow.anchor_gap_prob": (0, 1, "a probability in [0, 1]"),
    "flow.detail_weight": (0, INF, ">= 0 (0 = plain MSE)"),
    "flow.text_dropout": (0, 1, "a probability in [0, 1]"),
    "flow.latent_scale": (0, INF, ">= 0 (0 = estimate at the start of training)"),
    "data.num_clips": (1, INF, ">= 1"),
    "data.frames": (1, INF, "1 + 4k (e.g. 17)"),
    "data.size": (8, INF, "a multiple of 8"),
    "data.fps": (1, INF, ">= 1"),
    "data.batch_size": (1, INF, ">= 1"),
    "data.num_workers": (0, INF, ">= 0"),
    "data.crop": (0, INF, "a multiple of 8 (0 = whole frames)"),
    "train.lora_rank": (0, INF, ">= 0 (0 = no LoRA: the whole model is trained)"),
    "train.lora_alpha": (0, INF, "> 0"),
    "train.steps": (1, INF, ">= 1"),
    "train.lr": (0, INF, "> 0"),
    "train.weight_decay": (0, INF, ">= 0"),
    "train.warmup_steps": (0, INF, ">= 0"),
    "train.min_lr_ratio": (0, 1, "in [0, 1]"),
    "train.grad_clip": (0, INF, ">= 0 (0 = no clipping)"),
    "train.grad_accum": (1, INF, ">= 1"),
    "train.sequence_parallel": (1, INF, ">= 1 (1 = off)"),
    "train.ema_decay": (0, 1, "in [0, 1)"),
    "train.seed": (0, 2**63 - 1, "in [0, 2**63 - 1]"),
    "train.log_every": (1, INF, ">= 1"),
    "train.ckpt_every": (1, INF, ">= 1"),
    "train.sample_every": (0, INF, ">= 0 (0 = off)"),
    "train.keep_checkpoints": (1, INF, ">= 1"),
    "sample.steps": (1, 1000, "between 1 and 1000"),
    "sample.cfg_scale": (0, INF, ">= 0 (1 = no guidance)"),
    "sample.cfg_scale_later": (0, INF, ">= 0, or null for sample.cfg_scale"),
    "sample.cfg_low_t": (0, 1, "in [0, 1] (0 = off)"),
    "sample.cfg_scale_low": (0, INF, ">= 0"),
    "sample.expert_t": (0, 1, "in [0, 1] (0 = no low-noise expert)"),
    "sample.churn": (0, 1, "in [0, 1] (0 = deterministic sampling)"),
    "sample.window_chunks": (0, INF, ">= 0"),
    "sample.context_noise": (0, 1, "in [0, 1)"),
    "sample.max_seconds": (0, INF, "> 0"),
}
# keys whose low (>) or high (<) bound is excluded
OPEN_LOW = {"model.mlp_ratio", "model.rope_theta", "model.rope_grid_scale", "flow.logit_std", "flow.t_max",
            "train.lr", "train.lora_alpha", "sample.max_seconds"}
OPEN_HIGH = {"train.ema_decay", "sample.context_noise"}


def check_range(key: str, value: float, label: str | None = None) -> None:
    """Raise ConfigError naming `label` (default: the key) when `value` is not finite or outside RANGES[key]."""
    lo, hi, what = RANGES[key]
    ok = math.isfinite(value) and (value > lo if key in OPEN_LOW else value >= lo) and (
        value < hi if key in OPEN_HIGH else value <= hi)
    if not ok:
        raise ConfigError(f"{label or key} must be {what}, got {value:g}")


def check_sample(s: SampleConfig, label: Callable[[str], str] = lambda k: f"sample.{k}") -> None:
    """The sampling knobs' one validation (config files, `--sample.KEY`, sample.py's flags, the Python API);
    `label` names a key the way the caller's user wrote it (e.g. 'cfg_scale' -> '--cfg')."""
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if f"sample.{f.name}" in RANGES and value is not None:
            check_range(f"sample.{f.name}", value, label(f.name))
    if s.sampler not in ("euler", "heun"):
        raise ConfigError(f"{label('sampler')} must be euler or heun, got '{s.sampler}'")
    if s.unknown_words not in ("warn", "refuse"):
        raise ConfigError(f"{label('unknown_words')} must be warn or refuse, got '{s.unknown_words}'")


def validate(cfg: Config) -> None:
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj):
            key, value = f"{section.name}.{f.name}", getattr(obj, f.name)
            if key in RANGES and not key.startswith("sample.") and value is not None:
                check_range(key, value)
    check_sample(cfg.sample)
    m = cfg.model
    if m.hidden % m.heads:
        raise ConfigError(f"model.hidden ({m.hidden}) must be divisible by model.heads ({m.heads})")
    if (m.hidden // m.heads) % 2:
        raise ConfigError("model.hidden / model.heads must be even (rotary embeddings rotate pairs)")
    if min(m.patch) < 1:
        raise ConfigError(f"model.patch entries must be >= 1, got {list(m.patch)}")
    if m.temporal_attention not in ("sdpa", "dense"):
        raise ConfigError(f"model.temporal_attention must be 'sdpa' or 'dense', got '{m.temporal_attention}'")
    if cfg.text.tiny_tokenizer not in ("byte", "words"):
        raise ConfigError(f"text.tiny_tokenizer must be 'byte' or 'words', got '{cfg.text.tiny_tokenizer}'")
    if cfg.text.tiny_d_model % cfg.text.tiny_heads:
        raise ConfigError(f"text.tiny_d_model ({cfg.text.tiny_d_model}) must be divisible by text.tiny_heads "
                          f"({cfg.text.tiny_heads})")
    if cfg.flow.anchor_gap_prob > 0 and not cfg.flow.per_chunk_t:
        raise ConfigError("flow.anchor_gap_prob needs flow.per_chunk_t: true (the anchor and the chunk after the gap "
                          "are clean context, which takes a timestep per chunk); set flow.per_chunk_t: true or "
                          "flow.anchor_gap_prob: 0")
    if (cfg.data.frames - 1) % 4:
        raise ConfigError(f"data.frames must be 1 + 4k (e.g. 17), got {cfg.data.frames}")
    if cfg.data.crop % 8 or cfg.data.crop > cfg.data.size:
        raise ConfigError(f"data.crop must be a multiple of 8 and at most data.size, got {cfg.data.crop}")
    if cfg.data.size % 8:
        raise ConfigError(f"data.size must be a multiple of 8, got {cfg.data.size}")
    if cfg.data.source not in ("shapes", "manifest", "shards"):
        raise ConfigError(f"data.source must be shapes, manifest or shards, got '{cfg.data.source}'")
    t = cfg.train
    if not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas must both be in [0, 1), got {list(t.betas)}")
    if t.task not in ("dit", "vae"):
        raise ConfigError(f"train.task must be 'dit' or 'vae', got '{t.task}'")
    if t.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got '{t.precision}'")
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage must be 0, 1, 2 or 3, got {t.zero_stage}")
    if t.sequence_parallel > 1 and t.task != "dit":
        raise ConfigError("train.sequence_parallel splits the DiT's tokens; train the VAE with sequence_parallel 1")
    if t.checkpoint_policy not in CHECKPOINT_POLICIES:
        raise ConfigError(f"train.checkpoint_policy must be one of {CHECKPOINT_POLICIES}, got '{t.checkpoint_policy}'")
    if t.nan_policy not in ("stop", "skip"):
        raise ConfigError(f"train.nan_policy must be 'stop' or 'skip', got '{t.nan_policy}'")
    if t.wandb not in ("online", "offline", "disabled"):
        raise ConfigError(f"train.wandb must be online, offline or disabled, got '{t.wandb}'")
    if t.lora_rank and not (t.task == "dit" and t.init):
        raise ConfigError("train.lora_rank trains an adapter of a trained DiT: set train.task dit and train.init to "
                          "its checkpoint folder (e.g. checkpoints/tiny)")
    if t.lora_rank and not t.lora_targets:
        raise ConfigError("train.lora_targets is empty; name at least one linear layer of a DiT block (e.g. mlp.0)")
    v = cfg.vae
    if v.arch not in VAE_ARCHS:
        raise ConfigError(f"vae.arch must be one of {', '.join(VAE_ARCHS)}, got '{v.arch}'")
    if len(v.latent_mean) != len(v.latent_std) or (v.latent_mean and len(v.latent_mean) != v.latent_channels):
        raise ConfigError(f"vae.latent_mean and vae.latent_std need one entry per latent channel "
                          f"({v.latent_channels}) or none, got {len(v.latent_mean)} and {len(v.latent_std)}")
    if not all(math.isfinite(m) for m in v.latent_mean) or not all(math.isfinite(s) and s > 0 for s in v.latent_std):
        raise ConfigError("vae.latent_mean must be finite and vae.latent_std finite and > 0")
    if v.arch == "wan21" and any(v.pixel_mean):
        raise ConfigError("vae.pixel_mean is this project's VAE's; Wan 2.1's VAE codes pixels as they are: set it to "
                          "[0, 0, 0] with vae.arch wan21")
    if cfg.vae.freeze_encoder and not (t.task == "vae" and t.init):
        raise ConfigError("vae.freeze_encoder fine-tunes a trained VAE's decoder: set train.task vae and train.init")


# ----------------------------------------------------------------------------------------------------
# the configuration reference (docs/configuration.md), generated from the dataclasses and their comments


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in this file: the one on its line, else the block of comment lines just above it."""
    import inspect

    lines, _ = inspect.getsourcelines(cls)
    out, block = {}, []
    for line in lines[1:]:
        text = line.strip()
        if text.startswith("#"):
            block.append(text.lstrip("# ").strip())
            continue
        name = text.split(":")[0].strip()
        if ":" in text and name.isidentifier() and not text.startswith(("def ", "@", '"""')):
            inline = text.split("  # ", 1)[1].strip() if "  # " in text else ""
            out[name] = inline or " ".join(block)
        block = []
    return out


def _first_sentence(text: str, limit: int = 200) -> str:
    text = re.split(r"(?<=\.)\s+(?=[A-Z])", text)[0]
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + " …"


def reference() -> str:
    """docs/configuration.md: every key of every section with its type, default and a one-line meaning."""
    def fmt(v: Any) -> str:
        return "null" if v is None else repr(list(v)) if isinstance(v, tuple) else repr(v)

    def type_name(tp: Any) -> str:
        return getattr(tp, "__name__", str(tp)).replace("typing.", "") if typing.get_origin(tp) is None else (
            str(tp).replace("typing.", ""))

    out = ["# Configuration reference", "",
           "Generated from the dataclasses in `videodit/config.py` by `python -m videodit.config --doc "
           "docs/configuration.md`; a test fails when this file is out of date. Set a key in a YAML file "
           "(`configs/*.yaml`, `section: {key: value}`) or on the command line as `--section.key VALUE` (train.py; "
           "sample.py takes `--sample.KEY VALUE`). Presets (`model.preset`, `vae.preset`) set several keys at "
           "once; explicit keys win. Numeric ranges are checked before any work (`RANGES` in `videodit/config.py`).",
           ""]
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        hints, notes, default = _hints(cls), _field_comments(cls), cls()
        out += [f"## `{section.name}`", "", (cls.__doc__ or "").strip() if cls.__doc__ and not
                cls.__doc__.startswith(cls.__name__ + "(") else "", "",
                "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            key = f"{section.name}.{f.name}"
            meaning = _first_sentence(notes.get(f.name, ""))
            meaning = meaning + ("" if meaning.endswith((".", "…")) else ".") if meaning else ""
            if key in RANGES:
                meaning += f" Range: {RANGES[key][2]}."
            cells = [f"`{key}`", type_name(hints[f.name]), f"`{fmt(getattr(default, f.name))}`", meaning.strip()]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
        if section.name in PRESETS:
            out += [f"Presets for `{section.name}.preset`: " + "; ".join(
                f"`{name}` ({', '.join(f'{k} {fmt(v)}' for k, v in p.items())})" for name, p in
                PRESETS[section.name].items()) + ".", ""]
    return "\n".join(line for i, line in enumerate(out) if line or (i and out[i - 1])) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m videodit.config", description="The configuration reference.")
    ap.add_argument("--doc", help="write the Markdown reference here (docs/configuration.md); else print it")
    args = ap.parse_args(argv)
    text = reference()
    if args.doc:
        Path(args.doc).write_text(text)
        print(f"wrote {args.doc}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
