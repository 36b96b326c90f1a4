"""Re-patch a trained DiT to smaller spatial patches: a warm start for a finer-grained model.

    python -m videodit.repatch --checkpoint checkpoints/tiny --patch 1 1 1 --out runs/p111_init

Every weight but the two that touch the patches carries over unchanged (the blocks see `hidden`-wide tokens
whatever the patch). With spatial patches r times smaller (r = old / new, the same along height and width):

  * the patch embedding of a new token is the sum of the old one's r x r sub-position columns, so a token whose
    latent pixels all equal those of a flat old patch gets exactly that patch's embedding;
  * the output projection of a new token is the mean of the old one's r x r sub-position rows (and biases),
    i.e. the old model's mean prediction over the patch;
  * `model.rope_grid_scale` is divided by r: the new r x r tokens of an old patch sit at fractional positions
    inside it, and the spatial attention keeps the distances it was trained on.

The result is not the old model (it sees r^2 times as many tokens per frame); it is a starting point that trains
far faster than random weights. Writes `dit.safetensors` + `config.yaml` to --out (use with `--train.init OUT
--config OUT/config.yaml`); the VAE and text encoder stay where they are (`--train.vae`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from torch import Tensor

from videodit.checkpoint import CheckpointError, atomic_save_state, load_state, read_config, write_config
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="folder with dit.safetensors + config.yaml")
    ap.add_argument("--patch", type=int, nargs=3, required=True, metavar=("PT", "PH", "PW"))
    ap.add_argument("--out", required=True, help="folder to write dit.safetensors + config.yaml to")
    args = ap.parse_args(argv)
    try:
        cfg = read_config(args.checkpoint)
        state = load_state(Path(args.checkpoint) / "dit.safetensors")
        new_state, new_cfg = repatch_state(state, cfg, tuple(args.patch))
        out = Path(args.out)  # both writers below create the folder
        atomic_save_state(new_state, out / "dit.safetensors")
        write_config(new_cfg, out)
    except (ConfigError, CheckpointError, OSError) as e:
        print(f"repatch: {e}", file=sys.stderr)
        return 2
    print(f"re-patched {tuple(cfg.model.patch)} -> {tuple(args.patch)} "
          f"(rope_grid_scale {new_cfg.model.rope_grid_scale:g}) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
