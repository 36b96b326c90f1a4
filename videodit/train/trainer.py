"""The trainer: the loop, EMA, the learning-rate schedule, checkpoints that resume exactly, and the export to a
checkpoint folder that sample.py loads.

Everything that makes a run reproducible is derived from (seed, step): the global batch, the timesteps, the
noise and the text dropout are drawn for the whole global batch and each rank takes its slice, so a run gives
the same weights on 1 or N processes and a resumed run equals an uninterrupted one. DeepSpeed, autocast,
EMA and activation checkpointing are applied to the model from outside."""

from __future__ import annotations

import contextlib
import copy
import errno
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from videodit import lora
from videodit.checkpoint import CheckpointError, atomic_save_state, read_config, write_config
from videodit.config import Config, ConfigError, load_config
from videodit.data.datasets import collate
from videodit.dit import DiT
from videodit.sequence_parallel import apply_sequence_parallel, new_groups
from videodit.train import TrainError, run_folder
from videodit.train.batches import BatchPlan, StepBatches, build_dataset, ignore_stop_signals
from videodit.train.distributed import (
    Dist,
    all_mean,
    all_reduce_max,
    check_sequence_parallel_degree,
    check_sequence_parallel_split,
    deepspeed_config,
    device_of,
    full_params,
    import_deepspeed,
    init_dist,
    install_safe_deepspeed_load,
)
from videodit.train.logs import WandbLogger, save_loss_curve
from videodit.train.parallelize import apply_activation_checkpointing, compile_blocks
from videodit.train.tasks import DiTTask, VAETask


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


def named_params(module: nn.Module, trainable_only: bool = False) -> dict[str, Tensor]:
    # the same names as an unwrapped model's state_dict, also under activation checkpointing
    return {k.replace("_checkpoint_wrapped_module.", ""): p for k, p in module.named_parameters()
            if p.requires_grad or not trainable_only}


def resolve_precision(cfg: Config) -> str:
    p = cfg.train.precision
    if p == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return p


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = run_folder.checkpoints(run_dir)
    return done[0] if done else None


def out_of_space(error: BaseException) -> str:
    """'no space left on device' / 'disk quota exceeded' when `error` says so, else ''."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return os.strerror(error.errno).lower()
    return ""


def check_tensors(path: Path, tensors: dict[str, Tensor], shapes: dict[str, torch.Size]) -> None:
    missing, unexpected = sorted(shapes.keys() - tensors.keys()), sorted(tensors.keys() - shapes.keys())
    wrong = [k for k in shapes.keys() & tensors.keys() if tensors[k].shape != shapes[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path} does not hold this model's tensors (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}, other shapes {wrong[:3]})")


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            out[f"{idx}.{name}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    return out


def check_optimizer_tensors(path: Path, tensors: dict[str, Tensor], opt: torch.optim.Optimizer) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    for key, v in tensors.items():
        idx, _, name = key.partition(".")
        ok = idx.isdigit() and int(idx) < len(params)
        if ok and name.startswith("exp_avg"):
            ok = v.shape == params[int(idx)].shape
        if not ok:
            raise CheckpointError(f"{path} does not hold this optimizer's state (at '{key}')")


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


class Trainer:
    def __init__(self, cfg: Config, resume: str, dist: Dist, overwrite: bool = False):
        """`resume`: '' (a fresh run), 'auto' (the newest checkpoint of the run that loads) or a checkpoint
        folder. `overwrite`: start over in a run folder that holds another run (its files are removed once
        everything here has succeeded, before this run writes anything)."""
        self.cfg = cfg
        self.dist = dist
        self.device = device_of(dist)
        self.run_dir = Path(cfg.train.out_dir)
        self.resume, self.overwrite = resume, overwrite
        self.start_over = False
        found = run_folder.present(self.run_dir)
        if found and not resume:
            if not overwrite:
                raise TrainError(f"{self.run_dir} holds another run ({', '.join(found)}); pass --resume auto to "
                                 "continue it, --overwrite to start over, or choose another --train.out_dir")
            self.start_over = True
        self.precision = resolve_precision(cfg)
        t = cfg.train
        if self.precision == "bf16" and self.device.type == "cpu" and t.zero_stage == 0:
            raise TrainError("bf16 on CPU is only supported through DeepSpeed; use --train.precision fp32")
        check_sequence_parallel_degree(cfg, dist.world)
        self.dist = dist = replace(dist, sequence_parallel=t.sequence_parallel)
        per_step = cfg.data.batch_size
        if per_step % (dist.data_world * t.grad_accum):
            size = "world size" if t.sequence_parallel == 1 else "the data-parallel size (world / sequence_parallel)"
            raise TrainError(f"data.batch_size ({per_step}) must be divisible by {size} ({dist.data_world}) x "
                             f"train.grad_accum ({t.grad_accum})")
        self.micro = per_step // (dist.data_world * t.grad_accum)
        if t.zero_stage and t.nan_policy == "skip" and t.grad_accum > 1:
            raise TrainError("train.nan_policy skip with DeepSpeed needs train.grad_accum 1")
        if t.task == "vae" and t.zero_stage and cfg.vae.gan_weight > 0:
            raise TrainError("the VAE's GAN term is trained on one process; set --vae.gan_weight 0 or zero_stage 0")

        self.dataset = build_dataset(cfg)
        if len(self.dataset) == 0:
            raise TrainError("the training data is empty")
        check_sequence_parallel_split(cfg, self.dataset.shapes, latent=cfg.data.source == "shards")
        self.plan = BatchPlan(self.dataset, cfg.data.batch_size, self.batch_seed())
        self.task = DiTTask(cfg, self.device) if t.task == "dit" else VAETask(cfg, self.device)
        self.start_step = 0
        self.resume_from: Path | None = None
        # checkpoints are read whole and checked before any state changes; the first that reads sets the latent
        # statistics (the run's own, measured at its start), the model is built, then it is loaded
        readable = self.readable_checkpoints() if resume else iter(())
        first = next(readable, None)
        if first is not None:
            saved = first[1]["config"].flow
            cfg.flow.latent_scale, cfg.flow.latent_shift = saved.latent_scale, saved.latent_shift
        self.lora = t.lora_rank > 0  # an adapter of train.init's frozen DiT is trained, saved and exported
        if self.lora and cfg.flow.latent_scale <= 0:  # the base's latent space, not one measured on the new clips
            base = read_config(t.init).flow
            cfg.flow.latent_scale, cfg.flow.latent_shift = base.latent_scale, base.latent_shift
        self.task.estimate_latent_stats(self.dataset)

        torch.manual_seed(t.seed)
        self.module = self.task.model().to(self.device)
        if self.lora:
            try:
                lora.apply(self.module.dit, t.lora_rank, t.lora_alpha, t.lora_targets)
            except lora.LoRAError as e:
                raise TrainError(f"train.lora_targets: {e}") from None
        if t.activation_checkpointing:
            apply_activation_checkpointing(self.module, t.checkpoint_policy)
        if t.compile:
            compile_blocks(self.module)
        self.ema = EMA(named_params(self.module, self.lora), t.ema_decay)
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
            if t.sequence_parallel > 1:  # (more than one process: always DeepSpeed, see init_dist)
                # the ranks of a group split each clip; DeepSpeed sees all ranks as data parallel, partitions ZeRO
                # state over all of them and averages gradients over all of them, which is right for the group's
                # gradient shares (videodit/sequence_parallel.py)
                apply_sequence_parallel(self.module.dit, new_groups(t.sequence_parallel)[0])
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=self.module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
            )
        else:
            self.engine, self.optimizer, self.scheduler = None, optimizer, scheduler
        self.losses: list[tuple[int, float]] = []
        self.skipped = 0
        if first is not None:
            for folder, state in itertools.chain([first], readable):
                try:
                    self.load(folder, state)
                except CheckpointError as e:
                    if resume != "auto":
                        raise TrainError(f"--resume {folder}: {e}") from e
                    self.skip(folder, e)
                    continue
                self.resume_from = folder
                break
        if self.start_over and dist.main:
            old = ", ".join(run_folder.present(self.run_dir))
            print(f"--overwrite: removing the old run's {old} in {self.run_dir}")
            run_folder.clear(self.run_dir)
        self.barrier()
        self.stop_signal: str | None = None

    # ---- checkpointing
    def readable_checkpoints(self):
        """(folder, state) of the checkpoints to resume from, newest first, each read whole (`read_checkpoint`).
        --resume auto skips a damaged one with a warning and ends in a TrainError when none is left; a run
        folder whose config differs from this run's is refused (--overwrite: yields nothing, the run starts
        over). --resume DIR: that folder, which must hold this run's config."""
        if self.resume != "auto":
            folder = Path(self.resume)
            if not (folder / "COMPLETE").exists():
                raise TrainError(f"--resume {folder}: not a complete checkpoint folder")
            try:
                state = self.read_checkpoint(folder)
            except CheckpointError as e:
                raise TrainError(f"--resume {folder}: {e}") from e
            diffs = run_folder.differences(state["config"], self.cfg)
            if diffs:
                raise TrainError(f"--resume {folder}: the checkpoint was written with another config "
                                 f"({run_folder.describe(diffs)}); pass the same values to continue it")
            self.check_folder_config()
            yield folder, state
            return
        if not self.check_folder_config():
            return
        folders = run_folder.checkpoints(self.run_dir)
        for folder in folders:
            try:
                state = self.read_checkpoint(folder)
            except CheckpointError as e:
                self.skip(folder, e)
                continue
            if not self.same_run(folder, state["config"]):
                return
            yield folder, state
        if folders:
            raise TrainError(f"--resume auto: none of the {len(folders)} checkpoints under "
                             f"{self.run_dir / 'checkpoints'} loads (see the warnings above); rerun with "
                             "--overwrite to start over")

    def check_folder_config(self) -> bool:
        """Whether the run folder's config.yaml (if any) is this run's; another run's is refused, or with
        --overwrite the run starts over (False)."""
        path = self.run_dir / "config.yaml"
        if not path.exists():
            return True
        try:
            saved = load_config(path)
        except ConfigError as e:
            return self.same_run(path, None, f"its config cannot be read: {e}")
        return self.same_run(path, saved)

    def same_run(self, where: Path, saved: Config | None, why: str = "") -> bool:
        diffs = run_folder.differences(saved, self.cfg) if saved is not None else []
        if not diffs and not why:
            return True
        why = why or f"another config: {run_folder.describe(diffs)}"
        if not self.overwrite:
            raise TrainError(f"--resume {self.resume}: {where} belongs to another run ({why}); pass the same values "
                             "to continue it, --overwrite to start over, or choose another --train.out_dir")
        if self.dist.main:
            print(f"warning: {where} belongs to another run ({why}); --overwrite: starting over", file=sys.stderr)
        self.start_over = True
        return False

    def skip(self, folder: Path, error: Exception) -> None:
        if self.dist.main:
            print(f"warning: skipped checkpoint {folder}: {error}; trying the one before it", file=sys.stderr,
                  flush=True)

    def read_checkpoint(self, folder: Path) -> dict:
        """Everything a resume takes from `folder`, read whole and checked before any of the trainer's state
        changes. A damaged or unreadable file raises CheckpointError naming it."""

        def read(name: str, how):
            path = folder / name
            try:
                return how(path)
            except Exception as e:  # whatever a truncated or corrupted file raises
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise CheckpointError(f"{path} is damaged ({msg})") from None

        def trainer_state(path: Path) -> dict:
            st = json.loads(path.read_text())
            if not (isinstance(st, dict) and isinstance(st.get("step"), int) and isinstance(st.get("skipped"), int)
                    and isinstance(st.get("losses"), list)
                    and all(isinstance(x, list) and len(x) == 2 for x in st["losses"])):  # fmt: skip
                raise ValueError("not a trainer state (step, losses, skipped)")
            if folder.name.startswith("step_") and folder.name[5:].isdigit() and st["step"] != int(folder.name[5:]):
                raise ValueError(f"it holds step {st['step']}")
            return st

        state = dict(config=read("config.yaml", load_config), trainer=read("trainer.json", trainer_state))
        if self.cfg.train.zero_stage:
            if not (folder / "ds").is_dir():
                raise TrainError(f"{folder} was written without DeepSpeed; resume with the same train.zero_stage")
        else:
            if not (folder / "model.safetensors").exists():
                raise TrainError(f"{folder} was written by DeepSpeed; resume with the same train.zero_stage")
            state["model"] = read("model.safetensors", load_file)
            state["optimizer"] = read("optimizer.safetensors", load_file)
        state["ema"] = read("ema.safetensors", load_file)
        return state

    def load(self, folder: Path, state: dict) -> None:
        """Resume from `state` (read from `folder` by read_checkpoint); CheckpointError, with nothing changed,
        when its tensors do not fit this model (a damaged file), or when DeepSpeed cannot load its part."""
        check_tensors(folder / "ema.safetensors", state["ema"], {k: v.shape for k, v in self.ema.shadow.items()})
        step = state["trainer"]["step"]
        if self.engine is not None:
            try:
                self.engine.load_checkpoint(str(folder / "ds"), tag="state", load_module_strict=not self.lora)
            except Exception as e:  # a damaged DeepSpeed file; the next checkpoint tried loads over all of it
                raise CheckpointError(f"{folder / 'ds'} is damaged ({str(e).strip()[:200]})") from None
        else:
            check_tensors(folder / "model.safetensors", state["model"],
                          {k: v.shape for k, v in self.saved_state().items()})
            check_optimizer_tensors(folder / "optimizer.safetensors", state["optimizer"], self.optimizer)
            self.module.load_state_dict(state["model"], strict=not self.lora)  # LoRA: the adapter; the base is init
            load_optimizer_tensors(self.optimizer, state["optimizer"])
            self.scheduler.last_epoch = step
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
            for g, f in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
                g["lr"] = g["initial_lr"] * f(step)
        self.ema.shadow = {k: v.float() for k, v in state["ema"].items()}
        self.start_step = step
        self.losses = [tuple(x) for x in state["trainer"]["losses"]]
        self.skipped = state["trainer"]["skipped"]
        saved = state["config"].flow
        self.cfg.flow.latent_scale, self.cfg.flow.latent_shift = saved.latent_scale, saved.latent_shift

    def saved_state(self) -> dict[str, Tensor]:
        """What a resume checkpoint holds of the model: all of it, or with LoRA the adapter (the base is train.init)."""
        return named_params(self.module, True) if self.lora else self.module.state_dict()

    def save(self, step: int) -> Path:
        """A resume checkpoint, written to a temporary folder and renamed into place: a crash or a full disk
        leaves the previous checkpoints as they were. Older ones beyond train.keep_checkpoints are removed
        (by step, among those up to this one)."""
        ckpt_root = self.run_dir / "checkpoints"
        final = ckpt_root / f"step_{step:07d}"
        tmp = ckpt_root / f".tmp_step_{step:07d}"
        try:
            if self.dist.main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self.barrier()
            if self.engine is not None:
                self.engine.save_checkpoint(str(tmp / "ds"), tag="state", save_latest=False,
                                            exclude_frozen_parameters=self.lora)
            if self.dist.main:
                if self.engine is None:
                    atomic_save_state(self.saved_state(), tmp / "model.safetensors")
                    atomic_save_state(optimizer_tensors(self.optimizer), tmp / "optimizer.safetensors")
                atomic_save_state(self.ema.shadow, tmp / "ema.safetensors")
                write_config(self.cfg, tmp)
                state = dict(step=step, losses=self.losses, skipped=self.skipped)
                (tmp / "trainer.json").write_text(json.dumps(state))
                (tmp / "COMPLETE").write_text("ok\n")
        except BaseException as e:
            if self.dist.main:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = latest_checkpoint(self.run_dir)
            if out_of_space(e):
                kept = f"the previous checkpoint {previous.name} is intact" if previous else "no checkpoint before it"
                raise TrainError(f"{out_of_space(e)} while writing checkpoint {final.name} ({ckpt_root}); {kept}; "
                                 "free space and rerun with --resume auto") from e
            raise
        if self.dist.main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            done = [p for p in run_folder.checkpoints(self.run_dir) if run_folder.step_of(p) <= step]
            for p in done[self.cfg.train.keep_checkpoints :]:
                shutil.rmtree(p, ignore_errors=True)
        self.barrier()
        return final

    def export(self, folder: Path | None = None) -> Path:
        """EMA weights + config as a checkpoint folder that sample.py loads (with LoRA: the adapter folder that
        sample.py --lora loads over train.init). Written next to it under a
        temporary name and swapped in, so a crash or a full disk leaves the previous export as it was."""
        folder = folder or self.run_dir / "export"
        if self.dist.main:
            tmp, old = folder.with_name(f".tmp_{folder.name}"), folder.with_name(f".old_{folder.name}")
            if old.is_dir() and not folder.exists():  # a swap cut short: the old export is the export
                os.replace(old, folder)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            try:
                tmp.mkdir(parents=True)
                self.write_export(tmp)
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if out_of_space(e):
                    kept = "the previous export is intact" if folder.exists() else "there was no export before it"
                    raise TrainError(f"{out_of_space(e)} while writing the export {folder}; {kept}; free space and "
                                     "rerun with --export-only") from e
                raise
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return folder

    def write_export(self, folder: Path) -> None:
        if self.lora:  # the adapter alone (its EMA); sampling applies it to train.init's DiT with --lora
            lora.save_adapter(self.ema_adapter(), folder)
            return
        module = copy.deepcopy(self.task.model())
        missing, unexpected = module.load_state_dict(self.ema.shadow, strict=False)
        assert not unexpected and not [k for k in missing if k in dict(module.named_parameters())]
        self.task.export(module, folder)
        # an export holds one DiT: a low-noise expert the init checkpoint had is not part of it
        cfg = replace(self.cfg, sample=replace(self.cfg.sample, expert_t=0.0))
        write_config(cfg, folder)

    def ema_adapter(self) -> lora.Adapter:
        t, m = self.cfg.train, self.cfg.model
        tensors = {k.removeprefix("dit."): v for k, v in self.ema.shadow.items()}
        return lora.Adapter(t.lora_rank, t.lora_alpha, tuple(t.lora_targets), self.task.base_hash, m.hidden, m.depth,
                            tensors, base=t.init)

    def ema_dit(self) -> DiT:
        """A plain DiT with the EMA weights (with LoRA: train.init's DiT with the EMA adapter merged)."""
        if self.lora:
            dit = self.task.model().dit
            lora.merge(dit, self.ema_adapter(), 1.0, self.task.base_hash)
            return dit
        dit = DiT(self.cfg.model)
        with full_params(self.module, 0):
            dit.load_state_dict({k.removeprefix("dit."): v for k, v in self.ema.shadow.items()})
        return dit

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
            # the ranks of a sequence-parallel group take the same samples, and split each clip inside the DiT
            start = (a * dist.data_world + dist.data_rank) * self.micro
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
            self.ema.update(named_params(self.module, self.lora), step)
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
        from videodit.generate import Pipeline, generate

        dit = self.ema_dit()
        pipe = Pipeline(self.cfg, dit, self.task.vae, self.task.text_encoder, self.device)
        prompt = "a red circle moving to the right"
        out = self.run_dir / "samples" / f"step_{step:07d}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        # the network being trained alone: a low-noise expert its init checkpoint had is not part of the run
        generate(pipe, pipe.request(prompt, seconds=2.0, seed=0, sample={"expert_t": 0.0}), out)
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


def run(cfg: Config, resume: str = "", export_only: bool = False, overwrite: bool = False) -> Path:
    """Train `cfg` (resuming from `resume`: '' = fresh, 'auto' or a checkpoint folder) and export; with
    `export_only`, export the latest checkpoint's EMA weights. `overwrite`: start over in a run folder that
    holds another run (see run_folder). Returns the export folder."""
    if export_only and overwrite:
        raise TrainError("--export-only exports the run in --train.out_dir; --overwrite would remove it")
    dist = init_dist(cfg.train.zero_stage > 0)
    trainer = Trainer(cfg, "auto" if export_only else resume, dist, overwrite=overwrite)
    if dist.main:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, trainer.run_dir)
        n = sum(p.numel() for p in trainer.module.parameters())
        if trainer.lora:
            k = sum(p.numel() for p in trainer.module.parameters() if p.requires_grad)
            print(f"LoRA rank {cfg.train.lora_rank} on {cfg.train.init}: {k / 1e6:.3f}M trainable parameters "
                  f"({100 * k / n:.2f}% of {n / 1e6:.2f}M)")
        sp = f", sequence parallel {cfg.train.sequence_parallel}" if cfg.train.sequence_parallel > 1 else ""
        print(f"{cfg.train.task}: {n / 1e6:.2f}M parameters, world {dist.world}{sp}, micro-batch {trainer.micro}, "
              f"precision {trainer.precision}, ZeRO {cfg.train.zero_stage}, start step {trainer.start_step}")
    if export_only and trainer.start_step == 0:
        raise TrainError(f"--export-only: no checkpoint under {trainer.run_dir / 'checkpoints'}; train first "
                         "(or point --train.out_dir at the run to export)")
    if not export_only:
        trainer.fit()
    folder = trainer.export()
    if dist.main:
        what = ("a LoRA adapter: lora.safetensors + lora.yaml, for sample.py --lora" if trainer.lora
                else "config.yaml + safetensors")
        print(f"exported {folder} ({what})")
    return folder
