"""The run folder (train.out_dir) belongs to one run.

A fresh run refuses a folder that holds another run's files unless told to start over (`--overwrite`), and a
resumed run takes only checkpoints written with its own config: the keys that shape the model or the training
trajectory must match. Where files live, how often to log or save, how the same math is computed (compile,
activation checkpointing, ZeRO stage, sequence parallelism, precision) and `train.steps` (a run is resumed to train
longer) may change.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from videodit.config import Config, to_dict

# what a run writes into its folder; config.yaml is rewritten by every run, the rest is removed by --overwrite
RUN_FILES = ("checkpoints", "export", "config.yaml", "loss.png", "samples", "wandb")
CLEARED = ("checkpoints", "export", "samples", "loss.png")

# keys that may differ between a run and its resume
FREE_KEYS = {
    "train.out_dir", "train.steps", "train.log_every", "train.ckpt_every", "train.sample_every",
    "train.keep_checkpoints", "train.wandb", "train.wandb_project", "train.nan_policy",
    "train.vae", "train.init", "train.deepspeed",  # paths: the weights they held are in the checkpoint
    "train.precision", "train.activation_checkpointing", "train.checkpoint_policy", "train.compile",
    "train.zero_stage", "train.offload_optimizer",  # a checkpoint of another ZeRO stage fails to load, with a message
    "train.sequence_parallel",  # ZeRO partitions over all ranks whatever the degree, and the math is the same
    "data.shards", "data.manifest", "data.num_workers", "text.pretrained", "model.temporal_attention",
    "flow.latent_scale", "flow.latent_shift",  # measured at the start of the run; a resume takes the saved ones
}  # fmt: skip


def present(run_dir: Path) -> list[str]:
    """The run files already in `run_dir`."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def clear(run_dir: Path) -> None:
    """Remove an old run's checkpoints, export, samples and loss curve (--overwrite)."""
    for name in CLEARED:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("step_"))


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of the run, newest (highest step) first."""
    done = [p for p in (run_dir / "checkpoints").glob("step_*")
            if p.name[5:].isdigit() and (p / "COMPLETE").exists()]  # fmt: skip
    return sorted(done, key=step_of, reverse=True)


def run_values(cfg: Config) -> dict[str, Any]:
    """The values that define a run, by dotted key."""
    flat = {f"{section}.{k}": v for section, keys in to_dict(cfg).items() for k, v in keys.items()}
    keep = {k: v for k, v in flat.items() if k not in FREE_KEYS and not k.startswith("sample.")}
    if cfg.flow.anchor_gap_prob > 0:  # the only sampling key that shapes training batches
        keep["sample.window_chunks"] = cfg.sample.window_chunks
    return keep


def differences(saved: Config, cfg: Config) -> list[str]:
    """'key: saved -> now' for every run-defining key whose value differs."""
    a, b = run_values(saved), run_values(cfg)
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def describe(diffs: list[str], first: int = 4) -> str:
    return "; ".join(diffs[:first]) + (f"; and {len(diffs) - first} more" if len(diffs) > first else "")
