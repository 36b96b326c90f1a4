"""LoRA adapters for the DiT (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A target linear layer W (out, in) gains a low-rank update: y = W x + b + (alpha / rank) * B (A x), with A (rank, in)
random and B (out, rank) zero at the start, so a fresh adapter is the base model exactly. A fused projection
(the self-attentions' `qkv`, the cross-attention's `kv`) is one linear layer and gets one adapter over its
whole output, as LoRA does for GPT-2's fused `c_attn`. Adapters are applied to a built DiT from outside
(`apply`), like activation checkpointing; the model file does not know about them.

On disk an adapter is a folder:

    ADAPTER/lora.safetensors   '<layer>.lora_A' (rank, in) and '<layer>.lora_B' (out, rank) per target layer
    ADAPTER/lora.yaml          rank, alpha, targets, the base DiT's shape and the hash of its weights

Sampling merges adapters into a copy of the base weights (W += scale * alpha / rank * B A), so an adapter costs
nothing per step and several add up; `python -m videodit.lora merge` writes such a merged checkpoint folder.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from videodit.checkpoint import CheckpointError, atomic_save_state, check_finite, load_state, write_config

ADAPTER_FILE, ADAPTER_CONFIG = "lora.safetensors", "lora.yaml"
# what a target names: a linear layer inside every DiT block, by its path within the block
DEFAULT_TARGETS = ("attn_s.qkv", "attn_s.proj", "attn_t.qkv", "attn_t.proj", "attn_c.q", "attn_c.kv", "attn_c.proj",
                   "mlp.0", "mlp.2")


class LoRAError(CheckpointError):
    """An adapter that cannot be used with this base model, or an unreadable adapter; the message says what to do."""


class LoRALinear(nn.Linear):
    """nn.Linear plus a trainable low-rank update. It keeps the base layer's parameters under their own names
    (`weight`, `bias`), so the base model's state dict is unchanged and only `lora_A`/`lora_B` are new."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.scaling = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def delta(self) -> Tensor:
        """The update to `weight` that this adapter is: (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling


def target_layers(dit: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    """'blocks.<i>.<target>' -> the linear layer, for every block and target; an unknown target is an error."""
    found: dict[str, nn.Linear] = {}
    for i, block in enumerate(dit.blocks):
        linears = {k: m for k, m in block.named_modules() if isinstance(m, nn.Linear)}
        for t in targets:
            if t not in linears:
                raise LoRAError(f"LoRA target '{t}' is not a linear layer of a DiT block; choose among "
                                f"{', '.join(linears)}")
            found[f"blocks.{i}.{t}"] = linears[t]
    return found


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent), leaf, module)


def apply(dit: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """Freeze `dit` and give each target layer a trainable LoRA of `rank` (in place). -> trainable parameters."""
    if rank < 1:
        raise LoRAError(f"LoRA rank must be >= 1, got {rank}")
    layers = target_layers(dit, targets)
    dit.requires_grad_(False)
    for name, layer in layers.items():
        _set(dit, name, LoRALinear(layer, rank, alpha))
    return sum(p.numel() for p in dit.parameters() if p.requires_grad)


def adapter_state(dit: nn.Module) -> dict[str, Tensor]:
    """'<layer>.lora_A' / '<layer>.lora_B' of every LoRALinear in `dit` (checkpoint wrappers looked through)."""
    out = {}
    for name, m in dit.named_modules():
        if isinstance(m, LoRALinear):
            name = name.replace("_checkpoint_wrapped_module.", "")
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = m.lora_A, m.lora_B
    return out


def weights_hash(state: dict[str, Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes (sorted by name), e.g. a base DiT's weights as stored:
    the identity of the base an adapter was trained on. 16 hex digits."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class Adapter:
    rank: int
    alpha: float
    targets: tuple[str, ...]
    base_hash: str  # weights_hash of the base DiT's dit.safetensors
    hidden: int  # the base DiT's width and depth, to name a mismatch plainly
    depth: int
    tensors: dict[str, Tensor]
    base: str = ""  # where the base was (a note for people; the hash is what is checked)

    def meta(self) -> dict:
        return dict(format=1, rank=self.rank, alpha=self.alpha, targets=list(self.targets), base_hash=self.base_hash,
                    base=self.base, hidden=self.hidden, depth=self.depth)


def save_adapter(adapter: Adapter, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_state(adapter.tensors, folder / ADAPTER_FILE)
    tmp = folder / f".{ADAPTER_CONFIG}.tmp"
    tmp.write_text(yaml.safe_dump(adapter.meta(), sort_keys=False))
    tmp.replace(folder / ADAPTER_CONFIG)
    return folder


def load_adapter(path: str | Path) -> Adapter:
    """An adapter folder (or its lora.safetensors, lora.yaml beside it), read and checked for consistency."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_FILE).is_file():
        raise LoRAError(f"LoRA '{path}' not found: give an adapter folder holding {ADAPTER_FILE} and {ADAPTER_CONFIG} "
                        f"(a LoRA run's export folder)")
    try:
        meta = yaml.safe_load((folder / ADAPTER_CONFIG).read_text())
        rank, alpha, targets = int(meta["rank"]), float(meta["alpha"]), tuple(str(t) for t in meta["targets"])
        base_hash, hidden, depth = str(meta["base_hash"]), int(meta["hidden"]), int(meta["depth"])
    except Exception as e:  # not YAML, not a mapping, a key missing or mistyped
        raise LoRAError(f"LoRA '{folder / ADAPTER_CONFIG}' is not a readable adapter config ({type(e).__name__}: "
                        f"{str(e)[:120]}); re-export the adapter") from None
    try:
        tensors = load_state(folder / ADAPTER_FILE)
    except CheckpointError as e:
        raise LoRAError(f"LoRA '{folder / ADAPTER_FILE}' is damaged: {str(e)[:200]}; re-export the adapter") from None
    check_finite(tensors, folder / ADAPTER_FILE)
    expected = {f"blocks.{i}.{t}.lora_{ab}" for i in range(depth) for t in targets for ab in "AB"}
    if set(tensors) != expected or any(v.dim() != 2 or rank not in (v.shape[0] if k.endswith("A") else v.shape[1],)
                                       for k, v in tensors.items()):
        raise LoRAError(f"LoRA '{folder / ADAPTER_FILE}' does not hold the rank-{rank} tensors its {ADAPTER_CONFIG} "
                        "describes; the files do not belong together, re-export the adapter")
    return Adapter(rank, alpha, targets, base_hash, hidden, depth, tensors, str(meta.get("base", "")))


def parse_lora(text: str) -> tuple[str, float]:
    """'PATH' or 'PATH:SCALE' -> (path, scale); a path may itself hold ':' when no number follows the last one."""
    path, sep, tail = text.rpartition(":")
    if sep:
        try:
            scale = float(tail)
        except ValueError:
            return text, 1.0
        if not math.isfinite(scale):
            raise LoRAError(f"--lora {text}: the scale must be a finite number")
        return path, scale
    return text, 1.0


@torch.no_grad()
def merge(dit: nn.Module, adapter: Adapter, scale: float, base_hash: str, where: str = "") -> None:
    """Add `scale` x the adapter's update to `dit`'s weights in place; `base_hash` is the weights_hash of the file
    `dit` was loaded from, which must be the adapter's base. Scale 0 leaves every weight untouched."""
    name = where or "the LoRA"
    cfg = dit.cfg
    if (adapter.hidden, adapter.depth) != (cfg.hidden, cfg.depth):
        raise LoRAError(f"{name} was trained on a DiT of width {adapter.hidden} and depth {adapter.depth}; this "
                        f"checkpoint's is {cfg.hidden} x {cfg.depth}: use the checkpoint it was trained on "
                        f"({adapter.base or 'see its lora.yaml'})")
    if adapter.base_hash != base_hash:
        raise LoRAError(f"{name} was trained on another base model (weights hash {adapter.base_hash}, this "
                        f"checkpoint's DiT is {base_hash}): use the checkpoint it was trained on "
                        f"({adapter.base or 'see its lora.yaml'}), or train the LoRA on this one")
    layers = target_layers(dit, adapter.targets)
    for k, layer in layers.items():
        a, b = adapter.tensors[f"{k}.lora_A"], adapter.tensors[f"{k}.lora_B"]
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
            raise LoRAError(f"{name}: '{k}' is shaped for another model; use the checkpoint it was trained on")
        if scale != 0:
            w = layer.weight
            w += (scale * adapter.alpha / adapter.rank) * (b.float() @ a.float()).to(w.dtype)


# ----------------------------------------------------------------------------------------------------
# python -m videodit.lora merge --checkpoint CKPT --lora PATH[:SCALE] ... --out DIR


def merge_folder(checkpoint: str | Path, loras: list[tuple[str, float]], out: str | Path) -> Path:
    """A full checkpoint folder at `out`: `checkpoint` with the adapters merged into its DiT (one network: a
    low-noise expert is not copied and sample.expert_t is 0, as when sampling with --lora)."""
    from dataclasses import replace

    from videodit.checkpoint import load_dit, read_config

    checkpoint, out = Path(checkpoint), Path(out)
    if out.resolve() == checkpoint.resolve():
        raise LoRAError("--out must be a new folder, not the base checkpoint")
    if out.exists() and any(out.iterdir()):
        raise LoRAError(f"--out '{out}' exists and is not empty; choose a new folder")
    cfg = read_config(checkpoint)
    state = load_state(checkpoint / "dit.safetensors")
    dit = load_dit(checkpoint, cfg, state=state)
    h = weights_hash(state)
    for path, scale in loras:
        merge(dit, load_adapter(path), scale, h, f"LoRA '{path}'")
    tmp = out.with_name(f".tmp_{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        atomic_save_state(dit.state_dict(), tmp / "dit.safetensors")
        shutil.copyfile(checkpoint / "vae.safetensors", tmp / "vae.safetensors")
        if (checkpoint / "text_encoder").is_dir():
            shutil.copytree(checkpoint / "text_encoder", tmp / "text_encoder")
        write_config(replace(cfg, sample=replace(cfg.sample, expert_t=0.0)), tmp)
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from videodit.cli import ArgumentParser

    p = ArgumentParser(prog="python -m videodit.lora", description="LoRA adapters: merge into a full checkpoint.")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="write CHECKPOINT with the adapters merged into its DiT to --out")
    m.add_argument("--checkpoint", default="checkpoints/tiny", help="the base checkpoint folder")
    m.add_argument("--lora", action="append", required=True, help="adapter folder, optionally :SCALE (repeatable)")
    m.add_argument("--out", required=True, help="new checkpoint folder")
    args = p.parse_args(argv)
    try:
        loras = [parse_lora(x) for x in args.lora]
        out = merge_folder(args.checkpoint, loras, args.out)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (" + ", ".join(f"{p} x {s:g}" for p, s in loras) + " merged into its DiT)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
