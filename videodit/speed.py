"""Speed switches shared by the trainer and the benchmarks (each has a plain fallback that runs on CPU)."""

from __future__ import annotations

from torch import nn


def compile_blocks(module: nn.Module, **compile_kwargs) -> int:
    """Regional compilation: torch.compile each block of every nn.ModuleList in place (after activation
    checkpointing, so a checkpointed block is compiled with its recompute). Identical blocks share one
    compiled graph, so compile time is that of one block, and parameter names are unchanged (checkpoints and
    exports stay interchangeable with uncompiled runs). Returns the number of blocks compiled."""
    n = 0
    for parent in module.modules():
        if isinstance(parent, nn.ModuleList):
            for child in parent:
                child.compile(**compile_kwargs)
                n += 1
    return n
