"""Train the DiT (rectified flow) or the VAE, on one CPU process or across GPUs/nodes with DeepSpeed ZeRO.

    python train.py --config configs/tiny.yaml                      # one process (CPU or one GPU)
    deepspeed --num_gpus 8 train.py --config configs/base.yaml --train.zero_stage 2
    torchrun --nproc_per_node 2 train.py --config configs/tiny.yaml --train.zero_stage 2   # CPU: gloo

Everything that makes a run reproducible is derived from (seed, step): the global batch, the timesteps, the
noise and the text dropout are drawn for the whole global batch and each rank takes its slice, so a run gives
the same weights on 1 or N processes and a resumed run equals an uninterrupted one. DeepSpeed, autocast,
EMA and activation checkpointing live here, applied to the model from outside.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from videodit.checkpoint import (
    CheckpointError,
    atomic_save_state,
    load_state,
    load_text_encoder,
    load_vae,
    read_config,
    save_text_encoder,
    write_config,
)
from videodit.config import Config, ConfigError, load_config, to_dict
from videodit.data.video_io import DataError
from videodit.dit import DiT
from videodit.flow import anchor_gap_index, flow_loss, sample_t, take_frames
from videodit.speed import apply_activation_checkpointing, compile_blocks


class TrainError(RuntimeError):
    """A problem the user can fix (bad data path, batch that does not divide, ...): message, exit code 2."""


# ----------------------------------------------------------------------------------------------------
# distributed set-up


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_dist(use_deepspeed: bool) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or use_deepspeed:
        if not use_deepspeed:
            raise TrainError(f"{world} processes need DeepSpeed: add --train.zero_stage 1, 2 or 3")
        deepspeed = import_deepspeed()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if world > 1 or "MASTER_ADDR" in os.environ:
            deepspeed.init_distributed(dist_backend=backend)
        else:  # a single process without a launcher: a one-member group on this machine
            os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            deepspeed.init_distributed(dist_backend=backend)
    rank = int(os.environ.get("RANK", "0"))
    return Dist(rank=rank, world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise TrainError("train.zero_stage > 0 needs DeepSpeed: pip install -e '.[train]'") from e
    return deepspeed


def all_reduce_max(x: float, dist: Dist) -> float:
    if dist.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device_of(dist))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def device_of(dist: Dist) -> torch.device:
    return torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------------------------------
# data


def build_dataset(cfg: Config):
    from videodit.data import datasets

    d = cfg.data
    if d.source == "shapes":
        return datasets.ShapesDataset(num=d.num_clips, frames=d.frames, size=d.size, fps=d.fps, seed=d.seed,
                                      p_two=None if d.p_two < 0 else d.p_two)
    if d.source == "manifest":
        if not d.manifest or not Path(d.manifest).is_file():
            raise TrainError(f"data.manifest '{d.manifest}' not found; make one with `videodit-data prep`")
        return datasets.ClipDataset(d.manifest, frames=d.frames, size=d.size, fps=d.fps)
    missing = [p for p in datasets.shard_folders(d.shards) if not p.is_dir()] if d.shards else [""]
    if missing:
        raise TrainError(f"data.shards '{missing[0]}' not found; make shards with `videodit-data cache`")
    return datasets.ShardDataset(d.shards)


def global_batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """The dataset indices of the global batch at `step`: epochs are seeded permutations, walked in order."""
    per_epoch = max(n // batch, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    perm = (perm * math.ceil(batch / n)) if n < batch else perm
    return perm[pos * batch : (pos + 1) * batch]


class BatchPlan:
    """The dataset indices of each step's global batch. One clip shape: `global_batch_indices`. Several (a
    shards folder cached with several --frames, i.e. buckets): every batch is drawn from one bucket, by
    `BucketBatchSampler` with the global batch size and epochs seeded by (seed, epoch), so a step's batch is
    still a function of the step alone (resume gives the same batches)."""

    def __init__(self, dataset, batch: int, seed: int):
        from videodit.data.datasets import BucketBatchSampler

        self.n, self.batch, self.seed = len(dataset), batch, seed
        shapes = [tuple(s) for s in getattr(dataset, "shapes", [])]
        self.sampler = None
        if len(set(shapes)) > 1:
            try:
                self.sampler = BucketBatchSampler(shapes, batch, seed=seed)
            except DataError as e:
                raise TrainError(f"{e}: lower data.batch_size or cache more clips of each length") from None
            self.per_epoch = len(self.sampler)
        self._epoch, self._batches = -1, []

    def __call__(self, step: int) -> list[int]:
        if self.sampler is None:
            return global_batch_indices(self.n, self.batch, step, self.seed)
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._batches = epoch, self.sampler.global_batches()
        return self._batches[pos]


class StepBatches(torch.utils.data.Sampler):
    """The global batches of steps [start, end) in order: a DataLoader with workers prefetches them, and the
    batch of a step is the same as without workers (BatchPlan)."""

    def __init__(self, plan: BatchPlan, start: int, end: int):
        self.plan, self.start, self.end = plan, start, end

    def __iter__(self):
        for step in range(self.start, self.end):
            yield self.plan(step)

    def __len__(self) -> int:
        return max(self.end - self.start, 0)


def collate(items: list[dict]) -> dict:
    out: dict = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if isinstance(vals[0], Tensor):
            if key in ("text_emb", "text_mask"):  # pad the text to the longest in the batch
                L = max(v.shape[0] for v in vals)
                vals = [torch.cat([v, v.new_zeros(L - v.shape[0], *v.shape[1:])]) for v in vals]
            out[key] = torch.stack(vals)
        else:
            out[key] = vals
    return out


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 31 + stream) % (2**63))


# ----------------------------------------------------------------------------------------------------
# tasks: what a step computes. The network is wrapped with its loss so DeepSpeed sees one module.


class DiTLoss(nn.Module):
    def __init__(self, dit: DiT, detail_weight: float = 0.0, temporal_weight: float = 0.0):
        super().__init__()
        self.dit = dit
        self.detail_weight = detail_weight
        self.temporal_weight = temporal_weight

    def forward(self, x0: Tensor, noise: Tensor, t: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        return flow_loss(lambda xt, tt: self.dit(xt, tt, text, text_mask), x0, t, noise, self.detail_weight,
                         self.temporal_weight)


class VAELoss(nn.Module):
    def __init__(self, vae: nn.Module, cfg: Config):
        super().__init__()
        self.vae = vae
        self.cfg = cfg

    def forward(self, video: Tensor, step: Tensor) -> Tensor:
        from videodit.vae_loss import vae_loss

        loss, _ = vae_loss(self.vae, video, self.cfg.vae, int(step.item()))
        return loss


class DiTTask:
    """Turns a global batch into the per-rank inputs of DiTLoss: latents, noise, t and text, all from (seed, step)."""

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.text_encoder = load_text_encoder_for(cfg)
        if cfg.model.text_dim != self.text_encoder.dim:
            raise TrainError(f"model.text_dim ({cfg.model.text_dim}) must equal the text encoder's width "
                             f"({self.text_encoder.dim}); set --model.text_dim {self.text_encoder.dim}")
        self.text_encoder.to(device)
        self.vae = None
        if cfg.train.vae:  # the run (and its export) records the VAE it was trained with, pixel_mean and all
            try:
                cfg.vae = read_config(cfg.train.vae).vae
            except (CheckpointError, ConfigError) as e:
                raise TrainError(f"train.vae: {e}") from e
        elif cfg.data.source == "shards":
            print("warning: no train.vae: the export will hold no VAE, and sample.py needs one", file=sys.stderr)
        if cfg.data.source != "shards":
            if not cfg.train.vae:
                raise TrainError("training the DiT on clips needs a trained VAE: set train.vae to its checkpoint "
                                 "folder (train one with configs/vae_tiny.yaml), or train on cached shards")
            try:
                self.vae = load_vae(cfg.train.vae, cfg).to(device).requires_grad_(False)  # cfg.vae is its own
            except (CheckpointError, ConfigError) as e:
                raise TrainError(str(e)) from e
            if self.vae.cfg.latent_channels != cfg.model.in_channels:
                raise TrainError(f"model.in_channels ({cfg.model.in_channels}) must equal the VAE's latent channels "
                                 f"({self.vae.cfg.latent_channels})")
        self.null_emb, self.null_mask = self.text_encoder([""])

    def model(self) -> nn.Module:
        dit = DiT(self.cfg.model)
        if self.cfg.train.init:
            missing, unexpected = dit.load_state_dict(load_init(self.cfg.train.init, "dit.safetensors"), strict=False)
            # an export from before model.first_chunk_embed or model.text_refiner starts with the new vector at
            # zero and the refiner as the identity: the same model
            new = {k for k in missing if k == "first_chunk" or k.startswith("text_refiner.")}
            if unexpected or set(missing) - new:
                raise TrainError(f"train.init: '{self.cfg.train.init}' does not match this model (missing "
                                 f"{missing[:3]}, unexpected {unexpected[:3]}); give an export of the same config")
        return DiTLoss(dit, self.cfg.flow.detail_weight, self.cfg.flow.temporal_weight)

    @torch.no_grad()
    def latents(self, batch: dict) -> Tensor:
        if "latents" in batch:
            z = batch["latents"].to(self.device)
        else:
            from videodit.vae import encode_video

            z = encode_video(self.vae, batch["video"].to(self.device))
        f = self.cfg.flow
        return (z - f.latent_shift) * f.latent_scale

    def estimate_latent_stats(self, dataset) -> None:
        """Unit-variance latents (as SD's scale factor): measured once on a few clips, stored in the config."""
        f = self.cfg.flow
        if f.latent_scale > 0:
            return
        items = collate([dataset[i] for i in range(min(len(dataset), 16))])
        f.latent_scale, f.latent_shift = 1.0, 0.0
        z = self.latents(items)
        f.latent_shift = float(z.mean())
        f.latent_scale = float(1.0 / z.std().clamp_min(1e-6))

    def inputs(self, batch: dict, step: int, sl: slice) -> dict:
        """Per-rank model inputs for the global batch `batch` (its rows `sl` belong to this rank)."""
        cfg = self.cfg
        B = len(batch["caption"])
        g = step_generator(cfg.train.seed, step, 1)
        drop = torch.rand(B, generator=g) < cfg.flow.text_dropout
        x0 = self.latents({k: (v[sl] if isinstance(v, (Tensor, list)) else v) for k, v in batch.items()})
        gapped = None
        if cfg.flow.anchor_gap_prob > 0:  # load_config: needs per_chunk_t
            keep = cfg.sample.window_chunks + 1  # the recent chunks of the cache and the one being made
            index = anchor_gap_index(B, x0.shape[2], cfg.model.chunk_frames, keep, cfg.flow.anchor_gap_prob, g)
            if index is not None:
                x0 = take_frames(x0, index[sl])
                gapped = index[:, cfg.model.chunk_frames] > cfg.model.chunk_frames
        shape = (B, *x0.shape[1:])
        noise = torch.randn(shape, generator=g)[sl]
        _, C, T, H, W = shape
        pt, ph, pw = cfg.model.patch
        tokens = (T // pt) * (H // ph) * (W // pw)
        t = sample_t(B, T, cfg.model.chunk_frames, tokens, cfg.flow, g)[sl]
        if gapped is not None:
            # the chunk after the gap is only ever context, as in sampling (clean, no loss): a loss on it would
            # teach that the chunk after the first may jump, which sampling's second chunk must not
            context = gapped[sl, None] & (torch.arange(T) < 2 * cfg.model.chunk_frames)
            t = t.masked_fill(context, 0.0)
        if "text_emb" in batch:
            emb, mask = batch["text_emb"][sl], batch["text_mask"][sl].bool()
        else:
            emb, mask = self.text_encoder(batch["caption"][sl])
        emb, mask = emb.to(self.device), mask.to(self.device)
        # text dropout: swap in the empty prompt's embedding, padded to the batch's length
        d = drop[sl].to(self.device)
        L = max(emb.shape[1], self.null_emb.shape[1])
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], L - emb.shape[1], emb.shape[2])], 1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], L - mask.shape[1])], 1)
        null = torch.cat([self.null_emb, self.null_emb.new_zeros(1, L - self.null_emb.shape[1], emb.shape[2])], 1)
        nmask = torch.cat([self.null_mask, self.null_mask.new_zeros(1, L - self.null_mask.shape[1])], 1)
        emb = torch.where(d[:, None, None], null.to(emb), emb)
        mask = torch.where(d[:, None], nmask.to(mask), mask)
        return dict(x0=x0, noise=noise.to(self.device), t=t.to(self.device), text=emb, text_mask=mask)

    def export(self, module: nn.Module, folder: Path) -> None:
        atomic_save_state(module.dit.state_dict(), folder / "dit.safetensors")
        if self.cfg.train.vae:  # also when training on shards: the export must decode what the DiT makes
            shutil.copyfile(Path(self.cfg.train.vae) / "vae.safetensors", folder / ".vae.tmp")
            os.replace(folder / ".vae.tmp", folder / "vae.safetensors")
        save_text_encoder(self.text_encoder, folder)


class VAETask:
    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device

    def model(self) -> nn.Module:
        from videodit.vae import VideoVAE

        vae = VideoVAE(self.cfg.vae)
        if self.cfg.train.init:
            vae.load_state_dict(load_init(self.cfg.train.init, "vae.safetensors"))
        if self.cfg.vae.freeze_encoder:
            vae.encoder.requires_grad_(False)
        return VAELoss(vae, self.cfg)

    def estimate_latent_stats(self, dataset) -> None:
        pass

    def inputs(self, batch: dict, step: int, sl: slice) -> dict:
        video = batch["video"]  # (B, 3, T, H, W)
        c = self.cfg.data.crop
        if c:  # the VAE is convolutional: crops teach it the same thing for a fraction of the compute
            g = step_generator(self.cfg.train.seed, step, 2)
            B, _, _, H, W = video.shape
            ys = torch.randint(0, H - c + 1, (B,), generator=g).tolist()
            xs = torch.randint(0, W - c + 1, (B,), generator=g).tolist()
            video = torch.stack([v[:, :, y : y + c, x : x + c] for v, y, x in zip(video, ys, xs)])
        return dict(video=video[sl].to(self.device), step=torch.tensor(step))

    def export(self, module: nn.Module, folder: Path) -> None:
        atomic_save_state(module.vae.state_dict(), folder / "vae.safetensors")
        # the tiny T5 the DiT stage will use, so that this folder is all that `videodit-data cache --vae` and
        # `train.vae` need, and shards and the DiT see the same embeddings. A text.pretrained T5 is not copied:
        # checkpoint.load_text_encoder finds it again by the name in config.yaml.
        if not self.cfg.text.pretrained:
            save_text_encoder(load_text_encoder_for(self.cfg), folder)


def load_init(folder: str, name: str) -> dict[str, Tensor]:
    path = Path(folder) / name
    if not path.is_file():
        raise TrainError(f"train.init: '{path}' not found; give an export folder of the same task")
    return load_state(path)


def load_text_encoder_for(cfg: Config):
    from videodit.text_encoder import TextEncoder

    # an explicit text.pretrained wins; else the one that came with the VAE checkpoint; else the tiny built-in
    if not cfg.text.pretrained and cfg.train.vae and (Path(cfg.train.vae) / "text_encoder").is_dir():
        return load_text_encoder(cfg.train.vae)
    return TextEncoder.from_config(cfg.text)


# ----------------------------------------------------------------------------------------------------
# optimisation helpers


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGINT to the trainer: a scheduler that signals the whole process group
    (timeout, SLURM, Ctrl-C) must not kill them before the trainer has saved its checkpoint."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def lr_lambda(cfg: Config):
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        p = (step - t.warmup_steps) / max(t.steps - t.warmup_steps, 1)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    return f


class EMA:
    """Exponential moving average of the weights, kept in fp32 on every rank (gathered under ZeRO-3)."""

    def __init__(self, params: dict[str, Tensor], decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, Tensor], step: int) -> None:
        # warm-up (as in timm / Karras et al.): early on the average must forget the random initialisation;
        # with a fixed 0.999 a 2000-step run still kept 13% of it (0.999 ** 2000) and scored 7 dB below the weights
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in params.items():
            self.shadow[k].lerp_(v.detach().float(), 1 - decay)


@contextlib.contextmanager
def full_params(module: nn.Module, zero_stage: int):
    """Full (gathered) parameters of `module` for reading, also under ZeRO-3."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def named_params(module: nn.Module) -> dict[str, Tensor]:
    # the same names as an unwrapped model's state_dict, also under activation checkpointing
    return {k.replace("_checkpoint_wrapped_module.", ""): p for k, p in module.named_parameters()}


def deepspeed_config(cfg: Config, dist: Dist, micro: int, precision: str) -> dict:
    t = cfg.train
    ds: dict = {}
    if t.deepspeed:
        p = Path(t.deepspeed)
        if not p.is_file():
            raise TrainError(f"train.deepspeed '{p}' not found (see configs/deepspeed/)")
        ds = json.loads(p.read_text())
    ours = {
        "train_batch_size": cfg.data.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
    }
    for key, value in ours.items():
        if key in ds and ds[key] not in (value, "auto"):
            raise TrainError(f"{t.deepspeed} sets {key}={ds[key]} but our config gives {value}; "
                             "set it once, in the videodit config, and remove it from the JSON")
        ds[key] = value
    zero = ds.setdefault("zero_optimization", {})
    if "stage" in zero and zero["stage"] != t.zero_stage:
        raise TrainError(f"{t.deepspeed} has ZeRO stage {zero['stage']} but train.zero_stage is {t.zero_stage}")
    zero["stage"] = t.zero_stage
    if t.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def resolve_precision(cfg: Config) -> str:
    p = cfg.train.precision
    if p == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return p


# ----------------------------------------------------------------------------------------------------
# resume checkpoints: run_dir/checkpoints/step_XXXXXXX/{trainer.json, ema.safetensors, model + optimizer}


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "COMPLETE").exists())
    return done[-1] if done else None


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            out[f"{idx}.{name}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def install_safe_deepspeed_load() -> None:
    """DeepSpeed unpickles its own checkpoint files; make it do so with weights_only=True."""
    from deepspeed.runtime.checkpoint_engine import torch_checkpoint_engine as tce

    def load(self, path: str, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=True)

    tce.TorchCheckpointEngine.load = load
    safe = []
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.zero.config import ZeroStageEnum

        safe.append(ZeroStageEnum)
    with contextlib.suppress(ImportError):
        from deepspeed.utils.tensor_fragment import fragment_address

        safe.append(fragment_address)
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.fp16.loss_scaler import LossScaler

        safe.append(LossScaler)
    import argparse as _argparse
    import collections

    safe += [_argparse.Namespace, collections.OrderedDict, set]
    torch.serialization.add_safe_globals(safe)


# ----------------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: Config, resume: str, dist: Dist):
        self.cfg = cfg
        self.dist = dist
        self.device = device_of(dist)
        self.run_dir = Path(cfg.train.out_dir)
        self.precision = resolve_precision(cfg)
        t = cfg.train
        if self.precision == "bf16" and self.device.type == "cpu" and t.zero_stage == 0:
            raise TrainError("bf16 on CPU is only supported through DeepSpeed; use --train.precision fp32")
        per_step = cfg.data.batch_size
        if per_step % (dist.world * t.grad_accum):
            raise TrainError(f"data.batch_size ({per_step}) must be divisible by world size ({dist.world}) x "
                             f"train.grad_accum ({t.grad_accum})")
        self.micro = per_step // (dist.world * t.grad_accum)
        if t.zero_stage and t.nan_policy == "skip" and t.grad_accum > 1:
            raise TrainError("train.nan_policy skip with DeepSpeed needs train.grad_accum 1")
        if t.task == "vae" and t.zero_stage and cfg.vae.gan_weight > 0:
            raise TrainError("the VAE's GAN term is trained on one process; set --vae.gan_weight 0 or zero_stage 0")

        self.dataset = build_dataset(cfg)
        if len(self.dataset) == 0:
            raise TrainError("the training data is empty")
        self.plan = BatchPlan(self.dataset, cfg.data.batch_size, self.batch_seed())
        self.task = DiTTask(cfg, self.device) if t.task == "dit" else VAETask(cfg, self.device)
        self.start_step = 0
        self.resume_from = None
        if resume:
            self.resume_from = latest_checkpoint(self.run_dir) if resume == "auto" else Path(resume)
            if resume != "auto" and not (self.resume_from / "COMPLETE").exists():
                raise TrainError(f"--resume {resume}: not a complete checkpoint folder")
        if self.resume_from is not None:  # the run's own config holds the latent statistics it trained with
            saved = load_config(self.resume_from / "config.yaml")
            cfg.flow.latent_scale, cfg.flow.latent_shift = saved.flow.latent_scale, saved.flow.latent_shift
        self.task.estimate_latent_stats(self.dataset)

        torch.manual_seed(t.seed)
        self.module = self.task.model().to(self.device)
        if t.activation_checkpointing:
            apply_activation_checkpointing(self.module, t.checkpoint_policy)
        if t.compile:
            compile_blocks(self.module)
        self.ema = EMA(named_params(self.module), t.ema_decay)
        opt_kwargs = dict(lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        if self.device.type == "cuda":
            opt_kwargs["fused"] = True
        trainable = [p for p in self.module.parameters() if p.requires_grad]  # all but a frozen VAE encoder
        optimizer = torch.optim.AdamW(trainable, **opt_kwargs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        if t.zero_stage:
            deepspeed = import_deepspeed()
            install_safe_deepspeed_load()
            ds_cfg = deepspeed_config(cfg, dist, self.micro, self.precision)
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=self.module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
            )
        else:
            self.engine, self.optimizer, self.scheduler = None, optimizer, scheduler
        self.losses: list[tuple[int, float]] = []
        self.skipped = 0
        if self.resume_from is not None:
            self.load(self.resume_from)
        self.stop_signal: str | None = None

    # ---- checkpointing
    def save(self, step: int) -> Path:
        ckpt_root = self.run_dir / "checkpoints"
        final = ckpt_root / f"step_{step:07d}"
        tmp = ckpt_root / f".tmp_step_{step:07d}"
        if self.dist.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        if self.engine is not None:
            self.engine.save_checkpoint(str(tmp / "ds"), tag="state", save_latest=False)
        if self.dist.main:
            if self.engine is None:
                atomic_save_state(self.module.state_dict(), tmp / "model.safetensors")
                atomic_save_state(optimizer_tensors(self.optimizer), tmp / "optimizer.safetensors")
            atomic_save_state(self.ema.shadow, tmp / "ema.safetensors")
            write_config(self.cfg, tmp)
            state = dict(step=step, losses=self.losses, skipped=self.skipped)
            (tmp / "trainer.json").write_text(json.dumps(state))
            (tmp / "COMPLETE").write_text("ok\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            old = sorted(p for p in ckpt_root.glob("step_*") if (p / "COMPLETE").exists())
            for p in old[: -self.cfg.train.keep_checkpoints]:
                shutil.rmtree(p, ignore_errors=True)
        self.barrier()
        return final

    def load(self, folder: Path) -> None:
        state = json.loads((folder / "trainer.json").read_text())
        if self.engine is not None:
            if not (folder / "ds").is_dir():
                raise TrainError(f"{folder} was written without DeepSpeed; resume with the same train.zero_stage")
            self.engine.load_checkpoint(str(folder / "ds"), tag="state")
        else:
            if not (folder / "model.safetensors").exists():
                raise TrainError(f"{folder} was written by DeepSpeed; resume with the same train.zero_stage")
            self.module.load_state_dict(load_state(folder / "model.safetensors"))
            load_optimizer_tensors(self.optimizer, load_state(folder / "optimizer.safetensors"))
            self.scheduler.last_epoch = state["step"]
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
            for g, f in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
                g["lr"] = g["initial_lr"] * f(state["step"])
        self.ema.shadow = {k: v.float() for k, v in load_state(folder / "ema.safetensors").items()}
        self.start_step = state["step"]
        self.losses = [tuple(x) for x in state["losses"]]
        self.skipped = state["skipped"]

    def export(self, folder: Path | None = None) -> Path:
        """EMA weights + config as a checkpoint folder that sample.py loads."""
        folder = folder or self.run_dir / "export"
        if self.dist.main:
            folder.mkdir(parents=True, exist_ok=True)
            module = copy.deepcopy(self.task.model())
            missing, unexpected = module.load_state_dict(self.ema.shadow, strict=False)
            assert not unexpected and not [k for k in missing if k in dict(module.named_parameters())]
            self.task.export(module, folder)
            # an export holds one DiT: a low-noise expert the init checkpoint had is not part of it
            cfg = replace(self.cfg, sample=replace(self.cfg.sample, expert_t=0.0))
            write_config(cfg, folder)
        self.barrier()
        return folder

    def barrier(self) -> None:
        if self.dist.world > 1:
            torch.distributed.barrier()

    # ---- one optimisation step
    def batch_seed(self) -> int:
        return self.cfg.data.seed + self.cfg.train.seed

    def batches(self, start: int, end: int):
        """Global batches of steps [start, end): loaded in this process, or by data.num_workers workers that
        prefetch a few steps ahead (a procedural or decoded dataset keeps a GPU fed this way)."""
        cfg = self.cfg
        if cfg.data.num_workers <= 0:
            for step in range(start, end):
                yield collate([self.dataset[i] for i in self.plan(step)])
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=StepBatches(self.plan, start, end),
            collate_fn=collate, num_workers=cfg.data.num_workers, prefetch_factor=4,
            pin_memory=self.device.type == "cuda", worker_init_fn=ignore_stop_signals,
        )  # fmt: skip
        yield from loader

    def train_step(self, step: int, batch: dict) -> float:
        cfg, dist = self.cfg, self.dist
        model = self.engine if self.engine is not None else self.module
        total = 0.0
        # bf16 without DeepSpeed: autocast. DeepSpeed's bf16 engine holds bf16 weights instead, and the models
        # cast their fp32 inputs to their weights' dtype on entry (DiT._run, VideoVAE.forward)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.precision == "bf16" and self.device.type == "cuda" and self.engine is None
            else contextlib.nullcontext()
        )
        for a in range(cfg.train.grad_accum):
            start = (a * dist.world + dist.rank) * self.micro
            inputs = self.task.inputs(batch, step, slice(start, start + self.micro))
            with autocast:
                loss = model(**inputs)
            bad = all_reduce_max(0.0 if torch.isfinite(loss) else 1.0, dist)
            if bad:
                return float("nan")
            if self.engine is not None:
                self.engine.backward(loss)
            else:
                (loss / cfg.train.grad_accum).backward()
            total += float(loss.detach()) / cfg.train.grad_accum
        if self.engine is not None:
            self.engine.step()
            self.grad_norm = float(self.engine.get_global_grad_norm() or 0.0)
        else:
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.train.grad_clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        with full_params(self.module, cfg.train.zero_stage):
            self.ema.update(named_params(self.module), step)
        return all_mean(total, dist)

    def fit(self, stop_after: int | None = None) -> None:
        cfg, dist = self.cfg, self.dist
        t = cfg.train
        from tqdm import tqdm

        logger = WandbLogger(cfg, dist) if dist.main else None
        bar = tqdm(total=t.steps, initial=self.start_step, disable=not dist.main, desc=f"train {t.task}",
                   dynamic_ncols=True, file=sys.stdout)
        self.install_signal_handlers()
        last_log = time.time()
        step = self.start_step
        end = t.steps if stop_after is None else min(t.steps, self.start_step + stop_after)
        batches = self.batches(step, end)
        while step < end:
            loss = self.train_step(step, next(batches))
            if not math.isfinite(loss):
                if t.nan_policy == "stop":
                    last = latest_checkpoint(self.run_dir)
                    raise TrainError(
                        f"loss became {loss} at step {step}; stopping. The last good checkpoint is "
                        f"{last or '(none yet)'}; lower train.lr or set train.nan_policy skip"
                    )
                self.skipped += 1
                if dist.main:
                    print(f"step {step}: non-finite loss, step skipped ({self.skipped} so far)", flush=True)
                if self.engine is None:
                    self.optimizer.zero_grad(set_to_none=True)
            else:
                self.losses.append((step, loss))
            step += 1
            bar.update(1)
            if dist.main and (step % t.log_every == 0 or step == end):
                dt = time.time() - last_log
                last_log = time.time()
                n = min(t.log_every, step) or 1
                sps = n * cfg.data.batch_size / max(dt, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                msg = dict(step=step, loss=round(loss, 5), lr=lr, grad_norm=round(self.grad_norm, 4),
                           samples_per_s=round(sps, 3), tokens_per_s=round(sps * self.tokens_per_sample(), 1),
                           skipped=self.skipped)
                bar.write(" ".join(f"{k}={v}" for k, v in msg.items()))
                if logger:
                    logger.log(msg, step)
            if t.sample_every and step % t.sample_every == 0 and t.task == "dit":
                self.sample_video(step, logger)
            if step % t.ckpt_every == 0 or step == t.steps or self.stop_signal:
                self.save(step)
            if self.stop_signal:
                if dist.main:
                    print(f"received {self.stop_signal}: checkpoint saved at step {step}; resume with --resume auto")
                break
        bar.close()
        if dist.main:
            save_loss_curve(self.losses, self.run_dir / "loss.png")
        if logger:
            logger.finish()

    def sample_video(self, step: int, logger: WandbLogger | None) -> None:
        """A short video from the EMA weights on a fixed prompt, saved under RUN/samples/ (and to wandb)."""
        if not self.dist.main:
            return
        from videodit.generate import Pipeline, Request, generate

        dit = DiT(self.cfg.model)
        with full_params(self.module, 0):
            dit.load_state_dict({k.removeprefix("dit."): v for k, v in self.ema.shadow.items()})
        pipe = Pipeline(self.cfg, dit, self.task.vae, self.task.text_encoder, self.device)
        prompt = "a red circle moving to the right"
        out = self.run_dir / "samples" / f"step_{step:07d}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        # the network being trained alone: a low-noise expert its init checkpoint had is not part of the run
        generate(pipe, Request(prompts=[prompt], at=[0.0], seconds=2.0, seed=0, expert_t=0.0), out)
        if logger:
            logger.video(out, prompt, step)

    def tokens_per_sample(self) -> int:
        d, m = self.cfg.data, self.cfg.model
        if self.cfg.train.task == "vae":
            return d.frames * d.size * d.size
        lat_t = 1 + (d.frames - 1) // 4
        return (lat_t // m.patch[0]) * (d.size // 8 // m.patch[1]) * (d.size // 8 // m.patch[2])

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self.stop_signal = signal.Signals(signum).name

        for s in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(s, handler)


def all_mean(x: float, dist: Dist) -> float:
    if dist.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device_of(dist))
    torch.distributed.all_reduce(t)
    return float(t.item()) / dist.world


class WandbLogger:
    def __init__(self, cfg: Config, dist: Dist):
        self.run = None
        mode = cfg.train.wandb
        if mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            print("wandb is not installed; logging to the console only (pip install -e '.[train]')")
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=cfg.train.wandb_project, mode=mode, dir=str(Path(cfg.train.out_dir)),
                              config=to_dict(cfg))

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def video(self, path: Path, caption: str, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({"sample": wandb.Video(str(path), caption=caption, format="mp4")}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def save_loss_curve(losses: list[tuple[int, float]], path: Path) -> None:
    """A small PNG of the loss (log scale) drawn with PIL, so no plotting dependency is needed."""
    from PIL import Image, ImageDraw

    if len(losses) < 2:
        return
    W, H, pad = 640, 360, 40
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    steps = [s for s, _ in losses]
    vals = [math.log10(max(v, 1e-12)) for _, v in losses]
    k = max(len(vals) // 200, 1)  # light smoothing for readability
    smooth = [sum(vals[max(0, i - k) : i + 1]) / len(vals[max(0, i - k) : i + 1]) for i in range(len(vals))]
    lo, hi = min(smooth), max(smooth)
    hi = hi if hi > lo else lo + 1

    def xy(s: float, v: float) -> tuple[float, float]:
        x = pad + (s - steps[0]) / max(steps[-1] - steps[0], 1) * (W - 2 * pad)
        return x, H - pad - (v - lo) / (hi - lo) * (H - 2 * pad)

    draw.rectangle([pad, pad, W - pad, H - pad], outline="black")
    draw.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(30, 90, 200), width=2)
    draw.text((pad, 10), f"loss (log10) {10**hi:.3g} .. {10**lo:.3g}", fill="black")
    draw.text((pad, H - pad + 8), f"step {steps[0]}", fill="black")
    draw.text((W - pad - 80, H - pad + 8), f"step {steps[-1]}", fill="black")
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="Any --section.key VALUE overrides the config (e.g. --model.depth 4).")
    p.add_argument("--config", help="YAML overrides of the defaults (configs/*.yaml)")
    p.add_argument("--resume", default="", help="'auto' (latest complete checkpoint in the run) or a folder")
    p.add_argument("--wandb", choices=["online", "offline", "disabled"], help="shorthand for --train.wandb")
    p.add_argument("--export-only", action="store_true", help="export the latest checkpoint's EMA and exit")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    try:
        cfg = load_config(args.config, rest)
        if args.wandb:
            cfg.train.wandb = args.wandb
        dist = init_dist(cfg.train.zero_stage > 0)
        trainer = Trainer(cfg, "auto" if args.export_only else args.resume, dist)
        if dist.main:
            trainer.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(cfg, trainer.run_dir)
            n = sum(p.numel() for p in trainer.module.parameters())
            print(f"{cfg.train.task}: {n / 1e6:.2f}M parameters, world {dist.world}, micro-batch {trainer.micro}, "
                  f"precision {trainer.precision}, ZeRO {cfg.train.zero_stage}, start step {trainer.start_step}")
        if args.export_only and trainer.start_step == 0:
            raise TrainError(f"--export-only: no checkpoint under {trainer.run_dir / 'checkpoints'}; train first "
                             "(or point --train.out_dir at the run to export)")
        if not args.export_only:
            trainer.fit()
        folder = trainer.export()
        if dist.main:
            print(f"exported {folder} (config.yaml + safetensors)")
        return 0
    except (ConfigError, TrainError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
