"""Speed switches shared by the trainer and the benchmarks (each has a plain fallback that runs on CPU).

Both act on a model's blocks: the entries of its outermost nn.ModuleLists (the DiT's `blocks`, the VAE's
`encoder.blocks` and `decoder.blocks`). A list nested inside a block belongs to that block.
"""

from __future__ import annotations

from torch import nn


def block_lists(module: nn.Module) -> list[nn.ModuleList]:
    """The outermost nn.ModuleLists of `module`, in definition order."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, m))
    return [m for _, m in found]


def apply_activation_checkpointing(module: nn.Module) -> None:
    """Recompute each block in the backward pass (torchtitan-style, from outside; state-dict names change only
    by the wrapper's prefix, which `train.named_params` strips)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for blocks in block_lists(module):
        for i, child in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(child)


def compile_blocks(module: nn.Module, **compile_kwargs) -> int:
    """Regional compilation: torch.compile each block in place (after activation checkpointing, so a
    checkpointed block is compiled with its recompute). Identical blocks share one compiled graph, so compile
    time is that of one block, and parameter names are unchanged (checkpoints and exports stay interchangeable
    with uncompiled runs). Returns the number of blocks compiled."""
    n = 0
    for blocks in block_lists(module):
        for child in blocks:
            child.compile(**compile_kwargs)
            n += 1
    return n
