"""Attach a low-noise expert to a checkpoint: the steps of sampling at noise levels t below sample.expert_t then
use the expert's weights (after eDiff-I, Balaji et al. 2022, and Wan 2.2's high/low-noise experts).

    python -m videodit.expert --checkpoint checkpoints/tiny --expert runs/dit_low/export --t 0.55

The expert is a DiT fine-tuned with flow.t_max >= t (train.py ... --flow.t_max 0.6), usually of the checkpoint's
shape; its dit.safetensors is copied to CKPT/dit_low.safetensors and CKPT/config.yaml gets sample.expert_t = t.
An expert shaped otherwise (finer patches from `python -m videodit.repatch`, more blocks) is allowed when it reads
the same latents and text (model.in_channels, chunk_frames, text_dim); its config then goes to CKPT/dit_low.yaml.
Every write goes to a temporary file first. `sample.py --sample.expert_t 0` samples without the expert again. `--bf16`
stores the expert's weights in bfloat16 (half the bytes; they are cast back to the model's dtype on load).

    python -m videodit.expert --checkpoint checkpoints/tiny --extract runs/low_init

goes the other way: the attached expert as a folder of its own (dit.safetensors in float32 + the config that shapes
it), a `--train.init` to fine-tune it further or the `--expert` of another checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from videodit.checkpoint import (
    CheckpointError,
    atomic_save_state,
    cast_state,
    expert_config,
    load_dit,
    load_state,
    read_config,
    write_config,
)
from videodit.config import ConfigError

# what the expert must share with the main DiT: the latents it denoises, the chunking of the timeline, the text
SHARED = ("in_channels", "chunk_frames", "text_dim")


def attach_expert(checkpoint: str | Path, expert: str | Path, t: float, bf16: bool = False) -> None:
    """Copy expert/dit.safetensors to checkpoint/dit_low.safetensors (bf16: in bfloat16) and set sample.expert_t = t."""
    checkpoint, expert = Path(checkpoint), Path(expert)
    cfg, ecfg = read_config(checkpoint), read_config(expert)
    if not 0 < t <= 1:
        raise ConfigError(f"--t (the noise level below which the expert takes over) must be in (0, 1], got {t:g}")
    clash = [k for k in SHARED if getattr(ecfg.model, k) != getattr(cfg.model, k)]
    if clash:
        raise ConfigError(f"the expert's model config differs from the checkpoint's in {', '.join(clash)}; an expert "
                          f"must read the same latents, chunks and text (train it with --train.init {checkpoint}, "
                          f"or a re-patched copy from `python -m videodit.repatch`)")
    if (ecfg.flow.latent_scale, ecfg.flow.latent_shift) != (cfg.flow.latent_scale, cfg.flow.latent_shift):
        raise ConfigError("the expert was trained on differently normalised latents (flow.latent_scale / "
                          "latent_shift); train it from this checkpoint's VAE and statistics")
    if ecfg.flow.t_max < t:
        raise ConfigError(f"the expert was trained on t <= {ecfg.flow.t_max:g} only; use --t {ecfg.flow.t_max:g} "
                          f"or lower")
    state = load_state(expert / "dit.safetensors")
    load_dit(expert, ecfg, state=state)  # of the configured shape before anything is written
    if bf16:
        state = cast_state(state, torch.bfloat16)
    atomic_save_state(state, checkpoint / "dit_low.safetensors")
    if ecfg.model != cfg.model:
        write_config(ecfg, checkpoint, "dit_low.yaml")
    else:
        (checkpoint / "dit_low.yaml").unlink(missing_ok=True)  # an earlier, differently shaped expert's
    write_config(replace(cfg, sample=replace(cfg.sample, expert_t=t)), checkpoint)


def extract_expert(checkpoint: str | Path, out: str | Path) -> None:
    """Write checkpoint's low-noise expert to out/ as a DiT folder of its own: dit.safetensors with the floating-point
    weights in float32 (a bf16-stored expert is cast back) and config.yaml, the config that shapes it."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / "dit_low.safetensors").is_file():
        raise CheckpointError(f"checkpoint '{checkpoint}' has no low-noise expert (dit_low.safetensors) to extract")
    ecfg = expert_config(checkpoint)
    state = load_state(checkpoint / "dit_low.safetensors")
    load_dit(checkpoint, ecfg, "dit_low.safetensors", state=state)  # of the configured shape before anything is written
    atomic_save_state(cast_state(state, torch.float32), out / "dit.safetensors")
    write_config(ecfg, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m videodit.expert", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder to attach the expert to")
    ap.add_argument("--expert", help="export folder of the expert (dit.safetensors + config.yaml)")
    ap.add_argument("--t", type=float, help="noise level below which the expert samples")
    ap.add_argument("--bf16", action="store_true", help="store the expert's weights in bfloat16 (half the size)")
    ap.add_argument("--extract", metavar="OUT", help="instead: write the checkpoint's expert to OUT in float32")
    args = ap.parse_args(argv)
    if args.extract is not None:
        if args.expert is not None or args.t is not None or args.bf16:
            ap.error("--extract takes only --checkpoint (it reads the expert already attached)")
    elif args.expert is None or args.t is None:
        ap.error("give --expert and --t to attach an expert, or --extract OUT to write the attached one out")
    try:
        if args.extract is not None:
            extract_expert(args.checkpoint, args.extract)
        else:
            attach_expert(args.checkpoint, args.expert, args.t, args.bf16)
    except (CheckpointError, ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.extract is not None:
        print(f"wrote the low-noise expert of {args.checkpoint} to {args.extract} (float32)")
        return 0
    print(f"attached {args.expert} to {args.checkpoint} as its low-noise expert below t = {args.t:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
