"""Convert published weights into videodit checkpoint folders.

    python -m videodit.convert wan-vae SRC OUT

`wan-vae`: Wan 2.1's VAE (videodit/vae_wan.py, `vae.arch: wan21`). SRC is either

  * a diffusers `AutoencoderKLWan` folder: config.json + diffusion_pytorch_model.safetensors (or its sharded
    .index.json), e.g. the `vae/` folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers; its config gives the sizes and the
    per-channel latent statistics (latents_mean / latents_std);
  * Wan's original weights file, `Wan2.1_VAE.pth` (read with torch.load(weights_only=True): nothing is
    unpickled but tensors), or a .safetensors file with the same key names; the sizes are read off the tensors
    and the latent statistics are Wan 2.1's published ones.

OUT is a new (or empty) folder: config.yaml (the full videodit config, `vae` section = the VAE's) and
vae.safetensors, the checkpoint folder `videodit-data cache --vae OUT`, `train.vae` and `load_vae` take. The
folder is written under a temporary name and renamed into place, so a failed conversion leaves no OUT; every
error is one line (missing / unexpected keys listed, a non-Wan file named as such). The key names are mapped by
this file's own table from the two layouts (Wan-Video/Wan2.1 wan/modules/vae.py, diffusers' AutoencoderKLWan)
to videodit's module paths, generated from the config, so any width and depth converts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from videodit.checkpoint import atomic_save_state, write_config
from videodit.config import VAE_PRESETS, Config, ConfigError, VAEConfig, validate
from videodit.video_io import share


class ConvertError(ValueError):
    """Weights that cannot be converted (unreadable, not the expected model, incomplete); the message says which."""


# ----------------------------------------------------------------------------------------------------
# Wan 2.1 VAE: our key -> the source's, per layout ("diffusers" or "original")

_RES = {  # a residual block's tensors: ours -> (diffusers, original)
    "norm1.gain": ("norm1.gamma", "residual.0.gamma"),
    "conv1.weight": ("conv1.weight", "residual.2.weight"),
    "conv1.bias": ("conv1.bias", "residual.2.bias"),
    "norm2.gain": ("norm2.gamma", "residual.3.gamma"),
    "conv2.weight": ("conv2.weight", "residual.6.weight"),
    "conv2.bias": ("conv2.bias", "residual.6.bias"),
}
_SHORTCUT = {"shortcut.weight": ("conv_shortcut.weight", "shortcut.weight"),
             "shortcut.bias": ("conv_shortcut.bias", "shortcut.bias")}
_ATTN = {"norm.gain": ("norm.gamma",) * 2, "qkv.weight": ("to_qkv.weight",) * 2, "qkv.bias": ("to_qkv.bias",) * 2,
         "proj.weight": ("proj.weight",) * 2, "proj.bias": ("proj.bias",) * 2}
_CONV = {"weight": ("weight",) * 2, "bias": ("bias",) * 2}
_NORM = {"gain": ("gamma",) * 2}
LAYOUTS = ("diffusers", "original")


def _add(table: dict[str, str], ours: str, src: str, sub: dict[str, tuple[str, str]], layout: str) -> None:
    i = LAYOUTS.index(layout)
    for a, b in sub.items():
        table[f"{ours}.{a}"] = f"{src}.{b[i]}"


def wan_key_map(cfg: VAEConfig, layout: str) -> dict[str, str]:
    """Every tensor of `vae_wan.WanVAE(cfg)`: our name -> its name in `layout` ("diffusers" or "original")."""
    d = layout == "diffusers"
    t: dict[str, str] = {}
    widths = [cfg.base_channels * m for m in cfg.channel_mults]
    n = len(widths)

    def res(ours: str, src: str, c_in: int, c_out: int) -> None:
        _add(t, ours, src, _RES | (_SHORTCUT if c_in != c_out else {}), layout)

    def middle(part: str, k: int, c: int) -> None:  # resblock, attention, resblock from our block k
        mid = f"{part}.mid_block" if d else f"{part}.middle"
        res(f"{part}.blocks.{k}", f"{mid}.resnets.0" if d else f"{mid}.0", c, c)
        _add(t, f"{part}.blocks.{k + 1}", f"{mid}.attentions.0" if d else f"{mid}.1", _ATTN, layout)
        res(f"{part}.blocks.{k + 2}", f"{mid}.resnets.1" if d else f"{mid}.2", c, c)

    # encoder: Wan's down blocks are one flat list of residual blocks and resamplers (spatial + temporal in one)
    _add(t, "encoder.conv_in", "encoder.conv_in" if d else "encoder.conv1", _CONV, layout)
    k, src, c = 0, 0, cfg.base_channels
    down = "encoder.down_blocks" if d else "encoder.downsamples"
    for i, w in enumerate(widths):
        for _ in range(cfg.num_res_blocks):
            res(f"encoder.blocks.{k}", f"{down}.{src}", c, w)
            k, src, c = k + 1, src + 1, w
        if i < n - 1:
            _add(t, f"encoder.blocks.{k}.conv", f"{down}.{src}.resample.1", _CONV, layout)
            k += 1
            if cfg.temporal_down[i]:
                _add(t, f"encoder.blocks.{k}.conv", f"{down}.{src}.time_conv", _CONV, layout)
                k += 1
            src += 1
    middle("encoder", k, c)
    _add(t, "encoder.norm_out", "encoder.norm_out" if d else "encoder.head.0", _NORM, layout)
    _add(t, "encoder.conv_out", "encoder.conv_out" if d else "encoder.head.2", _CONV, layout)
    _add(t, "quant_conv", "quant_conv" if d else "conv1", _CONV, layout)
    _add(t, "post_quant_conv", "post_quant_conv" if d else "conv2", _CONV, layout)

    # decoder: diffusers groups each stage into up_blocks.j (resnets, upsamplers.0); Wan's list is flat
    _add(t, "decoder.conv_in", "decoder.conv_in" if d else "decoder.conv1", _CONV, layout)
    c = widths[-1]
    middle("decoder", 0, c)
    k, flat = 3, 0
    for j, i in enumerate(reversed(range(n))):
        for r in range(cfg.num_res_blocks + 1):
            res(f"decoder.blocks.{k}", f"decoder.up_blocks.{j}.resnets.{r}" if d else f"decoder.upsamples.{flat}",
                c, widths[i])
            k, flat, c = k + 1, flat + 1, widths[i]
        if i > 0:
            up = f"decoder.up_blocks.{j}.upsamplers.0" if d else f"decoder.upsamples.{flat}"
            if cfg.temporal_down[i - 1]:
                _add(t, f"decoder.blocks.{k}.conv", f"{up}.time_conv", _CONV, layout)
                k += 1
            _add(t, f"decoder.blocks.{k}.conv", f"{up}.resample.1", _CONV, layout)
            k, flat, c = k + 1, flat + 1, c // 2
    _add(t, "decoder.norm_out", "decoder.norm_out" if d else "decoder.head.0", _NORM, layout)
    _add(t, "decoder.conv_out", "decoder.conv_out" if d else "decoder.head.2", _CONV, layout)
    return t


# ----------------------------------------------------------------------------------------------------
# reading a source


@dataclass
class WanSource:
    state: dict[str, Tensor]
    cfg: VAEConfig
    layout: str  # "diffusers" or "original"


def _wan21(**sizes) -> VAEConfig:
    """Wan 2.1's VAE config (the wan21 preset) with `sizes` replacing the preset's."""
    return VAEConfig(**{**VAE_PRESETS["wan21"], "preset": "wan21", **sizes})


def _read_tensors(path: Path) -> dict[str, Tensor]:
    """A .safetensors file, or a torch.save'd state dict read with weights_only=True (tensors only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and safetensors errors come in many types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"cannot read '{path}' as weights ({reason[:160]}); give Wan2.1_VAE.pth, a .safetensors "
                           f"file, or a diffusers AutoencoderKLWan folder") from None
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))  # {"state_dict": {...}}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConvertError(f"'{path}' holds no state dict of tensors; give Wan2.1_VAE.pth or a diffusers folder")
    return state


def _read_diffusers(folder: Path) -> WanSource:
    cfg_path = folder / "config.json"
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot read '{cfg_path}' ({e}); a diffusers AutoencoderKLWan folder holds config.json "
                           f"and diffusion_pytorch_model.safetensors") from None
    if not isinstance(raw, dict):
        raise ConvertError(f"'{cfg_path}' is not a diffusers config (a JSON object)")
    name = raw.get("_class_name", "AutoencoderKLWan")
    if name != "AutoencoderKLWan":
        raise ConvertError(f"'{folder}' holds a diffusers {name}, not a Wan VAE (AutoencoderKLWan)")
    unsupported = {"is_residual": (False, "Wan 2.2's residual VAE"), "attn_scales": ([], "attention in the stages"),
                   "patch_size": (None, "patchified input"), "in_channels": (3, "other than RGB input"),
                   "out_channels": (3, "other than RGB output"),
                   "decoder_base_dim": (raw.get("base_dim", 96), "a decoder wider than the encoder")}
    for key, (ok, what) in unsupported.items():
        if raw.get(key, ok) not in (ok, None):
            raise ConvertError(f"'{folder}': {key} = {raw[key]!r} ({what}) is not Wan 2.1's VAE; only Wan 2.1's "
                               f"architecture converts")
    try:
        z = int(raw.get("z_dim", 16))
        cfg = _wan21(base_channels=int(raw.get("base_dim", 96)), latent_channels=z,
                     channel_mults=tuple(int(m) for m in raw.get("dim_mult", (1, 2, 4, 4))),
                     num_res_blocks=int(raw.get("num_res_blocks", 2)),
                     temporal_down=tuple(bool(b) for b in raw.get("temperal_downsample", (False, True, True))),
                     latent_mean=tuple(float(v) for v in raw.get("latents_mean", VAE_PRESETS["wan21"]["latent_mean"])),
                     latent_std=tuple(float(v) for v in raw.get("latents_std", VAE_PRESETS["wan21"]["latent_std"])))
    except (TypeError, ValueError) as e:
        raise ConvertError(f"'{cfg_path}' has a malformed size or statistic ({e})") from None
    single = folder / "diffusion_pytorch_model.safetensors"
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if single.is_file():
        state = _read_tensors(single)
    elif index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConvertError(f"cannot read '{index}' ({e})") from None
        state = {}
        for f in files:
            state.update(_read_tensors(folder / f))
    else:
        raise ConvertError(f"'{folder}' has no diffusion_pytorch_model.safetensors (a diffusers AutoencoderKLWan "
                           f"folder holds config.json and the weights)")
    return WanSource(state, cfg, "diffusers")


def _infer_original(state: dict[str, Tensor], path: Path) -> VAEConfig:
    """Wan's original layout carries no config: read the sizes off the tensors (the key check then confirms)."""
    try:
        base = state["encoder.conv1.weight"].shape[0]
        z = state["conv2.weight"].shape[0]
    except KeyError as e:
        raise ConvertError(f"'{path}' is not a Wan 2.1 VAE: it has no {e} (keys look like "
                           f"{', '.join(sorted(state)[:3])}, ...)") from None
    entries = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    stages: list[list[int]] = [[]]  # per stage: output widths of its residual blocks
    temporal: list[bool] = []
    for e in entries:
        p = f"encoder.downsamples.{e}"
        if f"{p}.resample.1.weight" in state:
            temporal.append(f"{p}.time_conv.weight" in state)
            stages.append([])
        elif f"{p}.residual.6.weight" in state:
            stages[-1].append(state[f"{p}.residual.6.weight"].shape[0])
        else:
            raise ConvertError(f"'{path}': encoder.downsamples.{e} is neither a residual block nor a resampler")
    nres = {len(s) for s in stages}
    if len(stages) < 2 or len(nres) != 1 or 0 in nres or any(len(set(s)) != 1 or s[0] % base for s in stages):
        raise ConvertError(f"'{path}': the encoder's blocks do not form Wan 2.1's stages (residual blocks per stage "
                           f"{[len(s) for s in stages]})")
    if z != len(VAE_PRESETS["wan21"]["latent_mean"]):
        raise ConvertError(f"'{path}' has {z} latent channels; Wan 2.1's latent statistics are for 16 (convert a "
                           f"diffusers folder, whose config.json carries its own latents_mean / latents_std)")
    return _wan21(base_channels=base, latent_channels=z, channel_mults=tuple(s[0] // base for s in stages),
                  num_res_blocks=nres.pop(), temporal_down=tuple(temporal))


def read_wan_vae(src: str | Path) -> WanSource:
    """The tensors, config and key layout of a Wan 2.1 VAE at `src` (a diffusers folder or an original file)."""
    src = Path(src)
    if src.is_dir():
        return _read_diffusers(src)
    if not src.is_file():
        raise ConvertError(f"'{src}' not found; give a diffusers AutoencoderKLWan folder or Wan2.1_VAE.pth")
    state = _read_tensors(src)
    if any(k.startswith("encoder.down_blocks.") for k in state):
        raise ConvertError(f"'{src}' is in diffusers' layout: give its folder (with config.json), not the file alone")
    return WanSource(state, _infer_original(state, src), "original")


# ----------------------------------------------------------------------------------------------------
# converting


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def wan_state(source: WanSource, where: str) -> dict[str, Tensor]:
    """Our state dict of `source`; every tensor of the model must be there, with its shape, and nothing else."""
    from videodit.vae_wan import WanVAE

    table = wan_key_map(source.cfg, source.layout)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        shapes = {k: v.shape for k, v in WanVAE(source.cfg).state_dict().items()}
    assert set(shapes) == set(table), "wan_key_map must cover exactly WanVAE's tensors"
    missing = sorted(s for s in table.values() if s not in source.state)
    unexpected = sorted(set(source.state) - set(table.values()))
    c = source.cfg
    if missing or unexpected:
        raise ConvertError(
            f"'{where}' does not match Wan 2.1's VAE ({source.layout} layout, base {c.base_channels}, mults "
            f"{list(c.channel_mults)}, {c.num_res_blocks} res blocks, z {c.latent_channels}): "
            + (f"missing {len(missing)} key(s): {_few(missing)}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {len(unexpected)} key(s): {_few(unexpected)}" if unexpected else ""))
    out = {}
    for ours, theirs in table.items():
        v = source.state[theirs]
        if v.numel() != shapes[ours].numel() or not v.is_floating_point():
            raise ConvertError(f"'{where}': '{theirs}' has shape {tuple(v.shape)} ({v.dtype}), expected "
                               f"{tuple(shapes[ours])} floats for this config")
        out[ours] = v.reshape(shapes[ours]).contiguous()  # Wan's (C, 1, 1, 1) gains, 1x1 Conv2d attention weights
    if bad := [k for k, v in out.items() if not torch.isfinite(v).all()]:
        raise ConvertError(f"'{where}' holds non-finite values (NaN/Inf) in {_few(bad)}: the file is damaged")
    return out


def convert_wan_vae(src: str | Path, out: str | Path) -> Config:
    """SRC (see the module docstring) -> the checkpoint folder OUT (config.yaml + vae.safetensors); -> its config."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(f"'{out}' already exists and is not an empty folder; give a new folder")
    source = read_wan_vae(src)
    state = wan_state(source, str(src))
    cfg = Config()
    cfg.vae = source.cfg
    cfg.model.in_channels = source.cfg.latent_channels
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConvertError(f"'{src}': {e}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        share(tmp, folder=True)
        atomic_save_state(state, tmp / "vae.safetensors")
        write_config(cfg, tmp)
        os.replace(tmp, out)  # onto nothing, or onto an empty folder
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from videodit.cli import ArgumentParser

    ap = ArgumentParser(prog="python -m videodit.convert", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    wan = sub.add_parser("wan-vae", help="Wan 2.1's VAE: a diffusers AutoencoderKLWan folder or Wan2.1_VAE.pth")
    wan.add_argument("src", help="diffusers AutoencoderKLWan folder, or Wan2.1_VAE.pth (or .safetensors, same keys)")
    wan.add_argument("out", help="new checkpoint folder (config.yaml + vae.safetensors)")
    args = ap.parse_args(argv)
    try:
        cfg = convert_wan_vae(args.src, args.out)
    except (ConvertError, OSError) as e:
        print(f"convert: {e}", file=sys.stderr)
        return 2
    v = cfg.vae
    print(f"converted Wan 2.1's VAE (base {v.base_channels}, z {v.latent_channels}) from '{args.src}' into "
          f"'{args.out}': use it as --vae {args.out} (videodit-data cache) or train.vae")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
