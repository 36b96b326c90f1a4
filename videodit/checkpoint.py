"""Checkpoints for use (not for resume): a folder of safetensors files plus the resolved config.

    CKPT/config.yaml          the full resolved Config (videodit.config)
    CKPT/dit.safetensors      DiT weights (EMA weights when exported from training)
    CKPT/dit_low.safetensors  optional: a low-noise expert DiT (sample.expert_t)
    CKPT/dit_low.yaml         the expert's config, only when its DiT is shaped unlike dit.safetensors
    CKPT/vae.safetensors      VAE weights
    CKPT/text_encoder/        the T5 encoder (save_pretrained: config.json + model.safetensors)

Nothing is ever unpickled: weights are safetensors (the text encoder too: a folder with only pickled weights is
refused), the config is YAML read with safe_load, and DeepSpeed's own resume files are read with
torch.load(weights_only=True). Weights that load but hold NaN or Inf are refused, naming the file.
Every write goes to a temporary name first and is renamed into place, so a crash leaves no half file.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from videodit.config import Config, ConfigError, load_config, save_config
from videodit.video_io import share


class CheckpointError(FileNotFoundError):
    """A checkpoint folder that is missing, unreadable or incomplete; the message says what to do."""


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
                      ) -> None:
    """safetensors' save_file, whose write errors (a full disk, a quota) come out as OSError with their errno."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = next((c for c in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EACCES)
                     if f"os error {c})" in str(e)), None)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e


def atomic_save_state(state: dict[str, torch.Tensor], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_safetensors({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp)
        share(tmp)  # mkstemp makes 0600 files; a checkpoint is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state with its floating-point tensors in `dtype`: bfloat16 to ship (half the bytes on disk; `load_into`
    casts them back), float32 to read a bf16-stored file back for computing on it."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def save_module(module: nn.Module, path: str | Path) -> None:
    atomic_save_state(module.state_dict(), path)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({e}); re-export the checkpoint") from e


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights holding NaN or Inf: they load without complaint and give an all-black video."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"'{path}' holds non-finite values (NaN/Inf) in {len(bad)} tensor(s), e.g. '{bad[0]}': "
                              f"the weights are damaged; re-export them from a good training checkpoint")


def load_into(module: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Load `path` (or `state`, already read from it) into `module`; every key must match, every value be finite."""
    state = load_state(path) if state is None else state
    check_finite(state, path)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not match the model built from its config.yaml "
            f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)"
        )
    return module


def read_config(folder: str | Path) -> Config:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder '{folder}' not found; pass --checkpoint DIR holding config.yaml")
    try:
        return load_config(folder / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint '{folder}' has no valid config.yaml: {e}") from e


def write_config(cfg: Config, folder: str | Path, name: str = "config.yaml") -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    save_config(cfg, tmp)
    share(tmp)
    os.replace(tmp, folder / name)


def save_text_encoder(text_encoder: nn.Module, folder: str | Path) -> None:
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".text_encoder."))
    share(tmp, folder=True)  # mkdtemp makes 0700 folders; a checkpoint is meant to be shared
    try:
        text_encoder.save_pretrained(tmp)
        for f in tmp.iterdir():  # transformers writes its weights through a 0600 temporary file
            share(f)
        final = folder / "text_encoder"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_text_encoder(folder: str | Path, cfg: Config | None = None):
    from videodit.text_encoder import TextEncoder

    folder = Path(folder)
    cfg = cfg or read_config(folder)
    if (folder / "text_encoder").is_dir():
        te = TextEncoder.from_pretrained(folder / "text_encoder", cfg.text.max_length)
        check_finite(te.model.state_dict(), folder / "text_encoder")
        return te
    if cfg.text.pretrained:
        return TextEncoder.from_pretrained(cfg.text.pretrained, cfg.text.max_length)
    raise CheckpointError(f"checkpoint '{folder}' has no text_encoder/ folder and its config names no pretrained T5")


def load_vae(folder: str | Path, cfg: Config | None = None):
    """The VAE of a checkpoint folder, of the architecture its config names (vae.arch: videodit or wan21)."""
    from videodit.vae_wan import build_vae

    cfg = cfg or read_config(folder)
    with torch.device("meta"):  # no random initialisation (seconds for Wan 2.1's 127M weights): load_into fills all
        vae = build_vae(cfg.vae)
    return load_into(vae.to_empty(device="cpu"), Path(folder) / "vae.safetensors").eval()


def load_dit(folder: str | Path, cfg: Config | None = None, name: str = "dit.safetensors",
             state: dict[str, torch.Tensor] | None = None):
    """The DiT of a checkpoint folder; name "dit_low.safetensors" is its low-noise expert (sample.expert_t).
    `state`: that file's tensors, already read (see load_into)."""
    from videodit.dit import DiT

    cfg = cfg or read_config(folder)
    return load_into(DiT(cfg.model), Path(folder) / name, state).eval()


def expert_config(folder: str | Path, cfg: Config | None = None) -> Config:
    """The config that shapes a checkpoint's low-noise expert: CKPT/dit_low.yaml when the expert's DiT differs from
    the main one (e.g. finer patches; written by `python -m videodit.expert`), else the checkpoint's own."""
    own = Path(folder) / "dit_low.yaml"
    if not own.is_file():
        return cfg or read_config(folder)
    try:
        return load_config(own)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint '{folder}' has an unreadable dit_low.yaml (the expert's config): {e}") from e
