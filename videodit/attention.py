"""Attention kernels and 3D rotary position embeddings (RoFormer, Su et al. 2021; axial 3D split as in
Wan / Lumina / Latte-style video transformers).

One function, `attention`, picks the kernel: torch SDPA always works (and itself dispatches to flash /
memory-efficient / cuDNN kernels on CUDA); xformers is used when installed, on CUDA, for unmasked
calls. Everything here is pure PyTorch with no required compiled extension.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    try:
        import xformers.ops as xops  # optional GPU extra; never imported at module import time
    except Exception:  # ImportError, or a broken build on this machine
        return None
    return xops


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, impl: str = "sdpa") -> Tensor:
    """q (B, heads, N, Dh), k/v (B, heads, M, Dh), mask broadcastable to (B, heads, N, M), True = attend.

    impl "dense" computes the attention as two batched matmuls and a softmax (`dense_attention`).
    """
    if impl == "dense":
        return dense_attention(q, k, v, mask)
    if mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        xops = _xformers_ops()
        if xops is not None:
            # xformers wants (B, N, heads, Dh)
            out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention as plain tensor ops, for very short sequences (the ~16-frame temporal attention).

    A fused SDPA kernel launched over (B*H*W*heads) sequences of 16 tokens is bound by its per-tile overhead;
    at these lengths the whole score matrix is tiny, and under torch.compile the scale, mask and softmax fuse
    into one kernel between two batched matmuls. The softmax runs in fp32. Same inputs and result as `attention`.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (B, heads, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


def _inverse_frequencies(n: int, theta: float) -> Tensor:
    return 1.0 / theta ** (torch.arange(n, dtype=torch.float64) / max(n, 1))


def rope_frequencies(head_dim: int, theta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Split the rotated pairs of a head over (t, h, w): time gets the remainder after two equal spatial shares."""
    pairs = head_dim // 2
    n_hw = pairs // 3
    n_t = pairs - 2 * n_hw
    return _inverse_frequencies(n_t, theta), _inverse_frequencies(n_hw, theta), _inverse_frequencies(n_hw, theta)


def sequence_angles(length: int, head_dim: int, theta: float) -> Tensor:
    """Angles (length, head_dim // 2) of a 1-D sequence (text tokens): every rotated pair turns with the index."""
    return (torch.arange(length, dtype=torch.float64)[:, None] * _inverse_frequencies(head_dim // 2, theta)).float()


def rope_angles(
    t_pos: Tensor, h_pos: Tensor, w_pos: Tensor, head_dim: int, theta: float
) -> Tensor:
    """Angles (T, S, head_dim // 2) for a grid of T frames × S = len(h_pos) spatial positions."""
    ft, fh, fw = rope_frequencies(head_dim, theta)
    T, S = t_pos.numel(), h_pos.numel()
    at = t_pos.double()[:, None] * ft  # (T, n_t)
    ah = h_pos.double()[:, None] * fh  # (S, n_hw)
    aw = w_pos.double()[:, None] * fw  # (S, n_hw)
    return torch.cat(
        [at[:, None, :].expand(T, S, -1), ah[None].expand(T, S, -1), aw[None].expand(T, S, -1)], dim=-1
    ).float()  # (T, S, head_dim // 2)


def grid_angles(t_pos: Tensor, H: int, W: int, head_dim: int, theta: float, scale: float = 1.0) -> Tensor:
    """Angles of an H x W grid whose (row, column) positions are multiplied by `scale`."""
    hh, ww = torch.meshgrid(torch.arange(H) * scale, torch.arange(W) * scale, indexing="ij")
    return rope_angles(t_pos, hh.flatten(), ww.flatten(), head_dim, theta)


def rope_cos_sin(angles: Tensor) -> tuple[Tensor, Tensor]:
    """(cos, sin) of rotation angles, fp32: computed once per forward and shared by every block (recomputing
    them inside each block showed up as fused cos/sin kernels in the forward and backward of the compiled xl
    step, see benchmarks/gpu_profile.py)."""
    angles = angles.float()
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate consecutive channel pairs of x (..., N, Dh) by the angles whose (cos, sin) are `rope`, each
    (N, Dh // 2) (broadcast over leading axes; see `rope_cos_sin`).

    Computed in fp32 (explicit .float()) because rotating bf16 values loses the relative-offset property.
    """
    xf = x.float().unflatten(-1, (-1, 2))  # (..., N, Dh/2, 2)
    cos, sin = rope
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)
