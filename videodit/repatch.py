"""Re-patch a trained DiT to smaller spatial patches, or grow it deeper: warm starts for a bigger model.

    python -m videodit.repatch --checkpoint checkpoints/tiny --patch 1 1 1 --out runs/p111_init
    python -m videodit.repatch --checkpoint checkpoints/tiny --depth 6 --out runs/d6_init

Every weight but the two that touch the patches carries over unchanged (the blocks see `hidden`-wide tokens
whatever the patch). With spatial patches r times smaller (r = old / new, the same along height and width):

  * the patch embedding of a new token is the sum of the old one's r x r sub-position columns, so a token whose
    latent pixels all equal those of a flat old patch gets exactly that patch's embedding;
  * the output projection of a new token is the mean of the old one's r x r sub-position rows (and biases),
    i.e. the old model's mean prediction over the patch;
  * `model.rope_grid_scale` is divided by r: the new r x r tokens of an old patch sit at fractional positions
    inside it, and the spatial attention keeps the distances it was trained on.

The result is not the old model (it sees r^2 times as many tokens per frame); it is a starting point that trains
far faster than random weights.

`--depth N` (more blocks than the checkpoint's) inserts the new blocks evenly among the old ones, each a copy of
the block before it with its four residual outputs (space, time and text attention projections, the MLP's last
layer) zeroed: a zero residual makes the new block the identity, so the grown DiT computes exactly what the old
one did (KV cache included) and training starts from the old model's loss, not a worse one; the copied
attention and MLP weights give the new block useful features once its outputs move off zero (after
stacking-style growth, e.g. Gong et al. 2019 and Chen et al. 2022, "bert2BERT").

`--bf16` (alone or with the above) stores the weights in bfloat16: half the bytes, for shipping a checkpoint; they
are cast back to the model's dtype on load (the low-noise expert's `python -m videodit.expert --bf16` does the same).
A checkpoint stored so (the shipped one) is read back in float32 first: re-patching and growing compute in float32,
and without `--bf16` the result is a float32 training init.

Writes `dit.safetensors` + `config.yaml` to --out (use with `--train.init OUT
--config OUT/config.yaml`); the VAE and text encoder stay where they are (`--train.vae`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from videodit.checkpoint import CheckpointError, atomic_save_state, cast_state, load_state, read_config, write_config
from videodit.config import Config, ConfigError, validate


def repatch_state(state: dict[str, Tensor], cfg: Config, patch: tuple[int, int, int]) -> tuple[dict, Config]:
    """The state dict and config of `cfg`'s DiT re-patched to `patch` (see the module docstring)."""
    pt, ph, pw = cfg.model.patch
    nt, nh, nw = patch
    if nt != pt:
        raise ConfigError(f"--patch: only the spatial patch can change (temporal {pt} -> {nt} asked)")
    if min(patch) < 1 or ph % nh or pw % nw or ph // nh != pw // nw:
        raise ConfigError(f"--patch {nt} {nh} {nw}: height and width must divide the checkpoint's patch "
                          f"({pt} {ph} {pw}) by the same factor")
    r = ph // nh
    C = cfg.model.in_channels
    D = state["x_embed.weight"].shape[0]
    # patch vectors are laid out (c, pt, ph, pw) (videodit.patchify); split ph = nh * r and pw = nw * r
    split = (C, pt, nh, r, nw, r)
    out = dict(state)
    w_in = state["x_embed.weight"].reshape(D, *split)  # (D, C, pt, nh, r, nw, r)
    out["x_embed.weight"] = w_in.sum((4, 6)).reshape(D, -1).contiguous()
    w_out = state["final.linear.weight"].reshape(*split, D)
    out["final.linear.weight"] = w_out.mean((3, 5)).reshape(-1, D).contiguous()
    b_out = state["final.linear.bias"].reshape(split)
    out["final.linear.bias"] = b_out.mean((3, 5)).reshape(-1).contiguous()
    model = replace(cfg.model, patch=tuple(patch), rope_grid_scale=cfg.model.rope_grid_scale / r)
    new_cfg = replace(cfg, model=model)
    validate(new_cfg)
    return out, new_cfg


_RESIDUAL_OUTPUTS = ("attn_s.proj", "attn_t.proj", "attn_c.proj", "mlp.2")


def grow_sources(depth: int, new_depth: int) -> list[int | None]:
    """The layout of the grown stack: for each new block, the old block it is (an int), or None for a new
    block, which copies the block before it. The new blocks are spread evenly, e.g. 4 -> 6: 0 1 + 2 3 +."""
    extra = new_depth - depth
    layout: list[int | None] = []
    for j in range(depth):
        layout.append(j)
        layout.extend([None] * ((j + 1) * extra // depth - j * extra // depth))
    return layout


def grow_state(state: dict[str, Tensor], cfg: Config, depth: int) -> tuple[dict, Config]:
    """The state dict and config of `cfg`'s DiT grown to `depth` blocks (see the module docstring)."""
    old = cfg.model.depth
    if depth <= old:
        raise ConfigError(f"--depth {depth}: must be more than the checkpoint's {old} blocks")
    out = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    src = -1
    for i, j in enumerate(grow_sources(old, depth)):
        src = src if j is None else j
        for key, value in state.items():
            prefix = f"blocks.{src}."
            if key.startswith(prefix):
                name = key[len(prefix):]
                new = value.clone()
                if j is None and name.rsplit(".", 1)[0] in _RESIDUAL_OUTPUTS:
                    new.zero_()
                out[f"blocks.{i}.{name}"] = new
    new_cfg = replace(cfg, model=replace(cfg.model, depth=depth))
    validate(new_cfg)
    return out, new_cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="folder with dit.safetensors + config.yaml")
    ap.add_argument("--patch", type=int, nargs=3, metavar=("PT", "PH", "PW"), help="smaller spatial patches")
    ap.add_argument("--depth", type=int, help="more blocks (new ones start as the identity)")
    ap.add_argument("--bf16", action="store_true", help="store the weights in bfloat16 (half the bytes)")
    ap.add_argument("--out", required=True, help="folder to write dit.safetensors + config.yaml to")
    args = ap.parse_args(argv)
    if args.patch is None and args.depth is None and not args.bf16:
        ap.error("give --patch, --depth, --bf16 or several of them")
    try:
        cfg = read_config(args.checkpoint)
        # a bf16-stored checkpoint (the shipped one) is re-patched and grown in float32
        state = cast_state(load_state(Path(args.checkpoint) / "dit.safetensors"), torch.float32)
        new_state, new_cfg = state, cfg
        if args.patch is not None:
            new_state, new_cfg = repatch_state(new_state, new_cfg, tuple(args.patch))
        if args.depth is not None:
            new_state, new_cfg = grow_state(new_state, new_cfg, args.depth)
        if args.bf16:
            new_state = cast_state(new_state, torch.bfloat16)
        out = Path(args.out)  # both writers below create the folder
        atomic_save_state(new_state, out / "dit.safetensors")
        write_config(new_cfg, out)
    except (ConfigError, CheckpointError, OSError) as e:
        print(f"repatch: {e}", file=sys.stderr)
        return 2
    if args.patch is not None:
        print(f"re-patched {tuple(cfg.model.patch)} -> {tuple(args.patch)} "
              f"(rope_grid_scale {new_cfg.model.rope_grid_scale:g}) into {out}")
    if args.depth is not None:
        layout = " ".join("+" if j is None else str(j) for j in grow_sources(cfg.model.depth, args.depth))
        print(f"grew {cfg.model.depth} -> {args.depth} blocks (old blocks and new ones: {layout}) into {out}")
    if args.bf16:
        print(f"stored the weights in bfloat16 in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
