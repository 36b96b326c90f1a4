"""Sequence parallelism for the factorized DiT: one clip's tokens split across the processes of a group.

Spatial attention mixes the tokens of one frame, temporal attention the tokens of one position, cross-attention
and the MLP act per token. So a group of N processes holds T/N frames each (every position of them) for all of a
block but its temporal attention, and swaps to S/N positions each (every frame of them) for the temporal
attention: one all-to-all before it and one after it carry a block, each moving a token's D-vector once. That is
half the bytes of DeepSpeed-Ulysses' head swap (which moves q, k and v to head shards and the output back), and
the degree need not divide the number of heads, only T' and S. The keys and values a temporal attention caches
for chunked sampling are per position, so each process keeps its own positions' cache and nothing else moves.

The model is unchanged: `apply_sequence_parallel` replaces the DiT's `FrameLayout` (videodit/dit.py, which
computes every frame in one process) by `SequenceParallel`, from outside, as torchtitan applies its parallelisms.
The DiT then takes and returns the whole clip on every process of the group, as before; inside, each process
embeds and runs its own frames, and the output is gathered. RoPE positions, per-frame timesteps, the block-causal
mask and the first-chunk embedding are computed for the whole clip, so the result equals one process's.

Gradients: both exchanges and the gather are differentiated exactly, so the parameter gradients of a process
are its share of the gradient of the sum of the group's losses. When every process of the group computes the
same loss (the same samples, noise and t), that sum is N times the loss, and averaging the gradients over all
processes, as plain data parallelism does (DeepSpeed ZeRO, DDP), gives the loss's gradient: no process group but
the sequence-parallel one needs to know about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor

from videodit.dit import ChunkKV, DiT, FrameLayout


class _Exchange(torch.autograd.Function):
    """all_to_all over dim 0: block j of every process's input goes to process j, and block i of the output came
    from process i. The exchange is its own adjoint, so its backward is the same exchange of the gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return _exchange(x, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _exchange(grad, ctx.group), None


def _exchange(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


class _GatherFrames(torch.autograd.Function):
    """(B, T_local, ...) on each process -> (B, T, ...) on all of them, in rank order. Backward, the adjoint: every
    process's gradient of the gathered tensor, summed over the group, at this process's frames (an all-reduce of
    an output-sized tensor: small next to a block's exchanges, and gloo has it)."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group, ctx.rank, ctx.frames = group, dist.get_rank(group), x.shape[1]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)  # autograd's own buffer is not ours to change
        dist.all_reduce(grad, group=ctx.group)
        return grad.narrow(1, ctx.rank * ctx.frames, ctx.frames), None


def check_split(frames: int, positions: int, degree: int) -> None:
    """ValueError unless `frames` token frames (T') and `positions` tokens per frame (S) both split evenly over
    `degree` processes."""
    bad = [f"{n} {what}" for n, what in ((frames, "token frames (T')"), (positions, "tokens per frame (S)"))
           if n % degree]
    if bad:
        raise ValueError(f"sequence parallelism over {degree} processes splits the frames and the positions of a "
                         f"clip evenly, but {' and '.join(bad)} do not divide by {degree}")


class SequenceParallel(FrameLayout):
    """The frames of a clip split in rank order over the processes of `group` (see the module docstring)."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.degree = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def __deepcopy__(self, memo) -> SequenceParallel:
        return self  # a process group is a handle to shared state, never copied

    def shard(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        if T % self.degree:
            raise ValueError(f"{T} token frames do not split over {self.degree} sequence-parallel processes")
        n = T // self.degree
        return x.narrow(1, self.rank * n, n)

    def gather(self, x: Tensor) -> Tensor:
        return _GatherFrames.apply(x, self.group)

    def to_positions(self, x: Tensor) -> Tensor:
        if x.shape[2] % self.degree:
            raise ValueError(f"{x.shape[2]} tokens per frame do not split over {self.degree} sequence-parallel "
                             "processes")
        y = _Exchange.apply(rearrange(x, "b t (n s) d -> n b t s d", n=self.degree), self.group)
        return rearrange(y, "n b t s d -> b (n t) s d")  # (B, T, S_local, D)

    def to_frames(self, x: Tensor) -> Tensor:
        y = _Exchange.apply(rearrange(x, "b (n t) s d -> n b t s d", n=self.degree), self.group)
        return rearrange(y, "n b t s d -> b t (n s) d")  # (B, T_local, S, D)


def apply_sequence_parallel(dit: DiT, group: dist.ProcessGroup) -> DiT:
    """Split `dit`'s clips over the processes of `group` (in place; returns `dit`). Every process of the group then
    calls it with the same whole-clip inputs and gets the whole output. A group of one process changes nothing."""
    dit.layout = SequenceParallel(group) if dist.get_world_size(group) > 1 else FrameLayout()
    return dit


def new_groups(degree: int) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """(sequence-parallel group, data-parallel group) of this process: sequence-parallel groups of `degree`
    consecutive ranks (so a group stays within a node where it can), data-parallel groups of the ranks with the
    same place in theirs. Every process must call it (creating a group is collective)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if degree < 1 or world % degree:
        raise ValueError(f"a sequence-parallel degree of {degree} does not divide the {world} processes")
    sp = dp = None
    for first in range(0, world, degree):
        g = dist.new_group(list(range(first, first + degree)))
        sp = g if first <= rank < first + degree else sp
    for place in range(degree):
        g = dist.new_group(list(range(place, world, degree)))
        dp = g if rank % degree == place else dp
    return sp, dp


# ---- chunked sampling (videodit/generate.py): a chunk whose token frames do not split runs whole on every process


def gather_positions(kv: ChunkKV, batch: int, group: dist.ProcessGroup) -> ChunkKV:
    """A chunk's cached keys and values of this process's positions, (B S_local, heads, T, Dh) per block -> those
    of every position, (B S, heads, T, Dh), on every process of `group` (positions in rank order, as `to_positions`
    splits them). `batch`: B."""
    n = dist.get_world_size(group)
    out = []
    for k, v in kv:
        both = rearrange(torch.stack([k, v]), "two (b s) h t d -> two b s h t d", b=batch).contiguous()
        parts = [torch.empty_like(both) for _ in range(n)]
        dist.all_gather(parts, both, group=group)
        whole = rearrange(torch.cat(parts, dim=2), "two b s h t d -> two (b s) h t d")
        out.append((whole[0], whole[1]))
    return out


def own_positions(kv: ChunkKV, batch: int, group: dist.ProcessGroup) -> ChunkKV:
    """The inverse of `gather_positions`: every position's keys and values -> this process's share."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)

    def own(x: Tensor) -> Tensor:
        x = rearrange(x, "(b s) h t d -> b s h t d", b=batch)
        share = x.shape[1] // n
        return rearrange(x.narrow(1, rank * share, share), "b s h t d -> (b s) h t d")

    return [(own(k), own(v)) for k, v in kv]


@contextmanager
def whole_clip(dit: DiT) -> Iterator[DiT]:
    """Within the block, `dit` computes every frame in this process (its sequence-parallel layout set aside)."""
    layout, dit.layout = dit.layout, FrameLayout()
    try:
        yield dit
    finally:
        dit.layout = layout
