"""Speed switches shared by the trainer and the benchmarks (each has a plain fallback that runs on CPU).

Both act on a model's blocks: the entries of its outermost nn.ModuleLists (the DiT's `blocks`, the VAE's
`encoder.blocks` and `decoder.blocks`). A list nested inside a block belongs to that block.
"""

from __future__ import annotations

import functools

from torch import nn

from videodit.config import CHECKPOINT_POLICIES


def block_lists(module: nn.Module) -> list[nn.ModuleList]:
    """The outermost nn.ModuleLists of `module`, in definition order."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, m))
    return [m for _, m in found]


@functools.lru_cache(maxsize=1)
def _matmul_ops() -> frozenset:
    import torch

    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu", "convolution")  # fmt: skip
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def _save_matmuls_context():
    """Selective checkpointing: keep what the matmuls, convolutions and fused attention produced, recompute
    the cheap element-wise work (norms, modulation, RoPE, activations) in the backward pass."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    ops = _matmul_ops()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in ops else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_activation_checkpointing(module: nn.Module, policy: str = "full") -> None:
    """Recompute each block in the backward pass (torchtitan-style, from outside; state-dict names change only
    by the wrapper's prefix, which `train.named_params` strips).

    policy "full" keeps only each block's input (least memory, the whole forward again in the backward);
    "save_matmuls" also keeps the outputs of its matmuls and attention kernels and recomputes the element-wise
    ops between them: most of the memory of the eager step is those fp32 element-wise intermediates (see
    benchmarks/gpu_profile.py), and the FLOPs are in the matmuls, so it costs little recompute."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if policy not in CHECKPOINT_POLICIES:
        raise ValueError(f"checkpoint policy must be one of {CHECKPOINT_POLICIES}, got '{policy}'")
    kwargs = {"context_fn": _save_matmuls_context} if policy == "save_matmuls" else {}
    for blocks in block_lists(module):
        for i, child in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(child, **kwargs)


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
