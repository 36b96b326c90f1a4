"""Diffusion transformer over spacetime patches with factorized space/time attention.

Follows DiT (Peebles & Xie 2023) for adaLN-Zero timestep modulation, PixArt-α (Chen et al. 2023) for one
shared timestep projection plus per-block scale/shift/gate tables and text cross-attention, Latte (Ma et al.
2024) for factorizing attention into space and time, and diffusion forcing (Chen et al. 2024) / CausVid
(Yin et al. 2024) for per-frame timesteps and block-causal temporal attention, which let sampling proceed
chunk by chunk with a cache of past keys and values.

Each block: spatial self-attention within every frame -> temporal self-attention across frames at every
spatial location (block-causal over chunks) -> cross-attention to the text -> MLP.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from videodit.attention import apply_rope, attention, grid_angles, rope_angles, rope_cos_sin, sequence_angles
from videodit.config import DiTConfig
from videodit.patchify import check_divisible, patchify, unpatchify

# Per block, the keys and values its temporal attention produced for one chunk: (k, v), each
# (B S, heads, T_chunk, Dh), stored before the rotary embedding so they can be re-positioned in a window.
BlockKV = tuple[Tensor, Tensor]
ChunkKV = list[BlockKV]  # one BlockKV per block


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DiT): (...) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[..., None] * 1000.0 * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class SelfAttention(nn.Module):
    """Fused-QKV multi-head self-attention with RMS QK-norm and rotary positions."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        head_dim = dim // heads
        self.q_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.q_norm(q), self.k_norm(k), v  # each (B, heads, N, Dh)

    def out(self, o: Tensor) -> Tensor:
        return self.proj(rearrange(o, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        head_dim = dim // heads
        self.q_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """x (B, N, D), text (B, L, D), text_mask (B, L) bool -> (B, N, D)."""
        q = self.q_norm(rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads))
        k, v = rearrange(self.kv(text), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        o = attention(q, self.k_norm(k), v, mask=text_mask[:, None, None, :])  # (B, heads, N, Dh)
        return self.proj(rearrange(o, "b h n d -> b n (h d)"))


class TextRefinerBlock(nn.Module):
    """Pre-norm self-attention + MLP over the text tokens, with 1-D rotary positions (see DiTConfig.text_refiner)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm_a = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads, qk_norm)
        self.norm_m = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, mask: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        """x (B, L, D), mask (B, L) bool (False = padding, never attended to), rope (L, Dh/2) -> (B, L, D)."""
        q, k, v = self.attn.qkv_heads(self.norm_a(x))
        o = attention(apply_rope(q, rope), apply_rope(k, rope), v, mask=mask[:, None, None, :])
        x = x + self.attn.out(o)
        return x + self.mlp(self.norm_m(x))


class FrameLayout:
    """Which frames of the clip this process computes: all of them. The blocks' one hook for sequence parallelism
    (videodit/sequence_parallel.py swaps in a layout whose processes each hold a share of the frames, and move
    between "split by frame" and "split by position" around the temporal attention); nothing here communicates.
    Everything but the temporal attention is per frame or per token, so it runs on any share of the frames."""

    def shard(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> the frames this process computes (B, T_local, ...)."""
        return x

    def gather(self, x: Tensor) -> Tensor:
        """(B, T_local, ...) -> every frame (B, T, ...)."""
        return x

    def to_positions(self, x: Tensor) -> Tensor:
        """(B, T_local, S, D) -> (B, T, S_local, D): every frame of the positions whose history this process attends."""
        return x

    def to_frames(self, x: Tensor) -> Tensor:
        """(B, T, S_local, D) -> (B, T_local, S, D): the inverse of `to_positions`."""
        return x


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, temporal_impl: str = "sdpa"):
        super().__init__()
        self.temporal_impl = temporal_impl  # "sdpa" or "dense" (see attention.dense_attention)
        self.norm_s = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_s = SelfAttention(dim, heads, qk_norm)
        self.norm_t = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_t = SelfAttention(dim, heads, qk_norm)
        self.norm_c = nn.LayerNorm(dim, eps=1e-6)
        self.attn_c = CrossAttention(dim, heads, qk_norm)
        self.norm_m = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # per-block offsets added to the shared timestep projection: shift/scale/gate for space, time, MLP
        self.table = nn.Parameter(torch.zeros(9, dim))

    def forward(
        self,
        x: Tensor,
        mod: Tensor,
        text: Tensor,
        text_mask: Tensor,
        rope_s: tuple[Tensor, Tensor],
        rope_t: tuple[Tensor, Tensor],
        time_mask: Tensor | None,
        past: BlockKV,
        layout: FrameLayout,
    ) -> tuple[Tensor, BlockKV]:
        """x (B, T, S, D); mod (B, T, 9, D); rope_s (cos, sin) each (S, Dh/2); rope_t (cos, sin) each (Tp + T, Dh/2);
        time_mask (T, Tp + T) bool or None for full attention; past (k, v) each (B S, heads, Tp, Dh).
        With a sequence-parallel `layout`, x and mod hold this process's frames (T is its T_local), past and the
        returned (k, v) its positions (S_local), while rope_t and time_mask cover all frames (T_all)."""
        B, T, S, D = x.shape
        m = (mod + self.table)[:, :, None]  # (B, T, 1, 9, D)
        shift_s, scale_s, gate_s, shift_t, scale_t, gate_t, shift_m, scale_m, gate_m = m.unbind(dim=3)

        # spatial attention within each frame
        h = self.norm_s(x) * (1 + scale_s) + shift_s
        q, k, v = self.attn_s.qkv_heads(rearrange(h, "b t s d -> (b t) s d"))  # (B T, heads, S, Dh)
        o = attention(apply_rope(q, rope_s), apply_rope(k, rope_s), v)
        x = x + gate_s * rearrange(self.attn_s.out(o), "(b t) s d -> b t s d", b=B)

        # temporal attention at each location, over the past context and this call's frames
        h = layout.to_positions(self.norm_t(x) * (1 + scale_t) + shift_t)  # (B, T_all, S_local, D)
        q, k, v = self.attn_t.qkv_heads(rearrange(h, "b t s d -> (b s) t d"))  # (B S_local, heads, T_all, Dh)
        Tp = past[0].shape[2]
        k_all, v_all = (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)) if Tp else (k, v)
        rope_q = (rope_t[0][Tp:], rope_t[1][Tp:])
        o = attention(apply_rope(q, rope_q), apply_rope(k_all, rope_t), v_all, time_mask, self.temporal_impl)
        o = layout.to_frames(rearrange(self.attn_t.out(o), "(b s) t d -> b t s d", b=B))  # (B, T, S, D)
        x = x + gate_t * o

        # cross-attention to the text (not modulated, as in PixArt-α)
        h = rearrange(self.norm_c(x), "b t s d -> b (t s) d")
        x = x + rearrange(self.attn_c(h, text, text_mask), "b (t s) d -> b t s d", t=T)

        h = self.norm_m(x) * (1 + scale_m) + shift_m
        x = x + gate_m * self.mlp(h)
        return x, (k, v)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x (B, T, S, D), c (B, T, D) -> (B, T, S, out_dim)."""
        shift, scale = self.mod(c)[:, :, None].chunk(2, dim=-1)
        return self.linear(self.norm(x) * (1 + scale) + shift)


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden
        pt, ph, pw = cfg.patch
        self.patch_dim = cfg.in_channels * pt * ph * pw
        self.x_embed = nn.Linear(self.patch_dim, D)
        self.t_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        self.t_mod = nn.Sequential(nn.SiLU(), nn.Linear(D, 9 * D))  # shared by all blocks
        self.text_embed = nn.Sequential(nn.Linear(cfg.text_dim, D), nn.GELU(approximate="tanh"), nn.Linear(D, D))
        self.text_pool = (
            nn.Sequential(nn.Linear(cfg.text_dim, D), nn.SiLU(), nn.Linear(D, D)) if cfg.pooled_text else None
        )
        self.first_chunk = nn.Parameter(torch.zeros(D)) if cfg.first_chunk_embed else None
        self.text_refiner = nn.ModuleList(
            TextRefinerBlock(D, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.text_refiner)
        )
        self.blocks = nn.ModuleList(
            DiTBlock(D, cfg.heads, cfg.mlp_ratio, cfg.qk_norm, cfg.temporal_attention) for _ in range(cfg.depth)
        )
        self.final = FinalLayer(D, self.patch_dim)
        # which frames this process computes (all; videodit.sequence_parallel.apply_sequence_parallel replaces it)
        self.layout = FrameLayout()
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def xavier(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(xavier)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        # adaLN-Zero: every shift/scale/gate starts at 0, so each block starts as the identity
        nn.init.zeros_(self.t_mod[1].weight)
        nn.init.zeros_(self.t_mod[1].bias)
        for block in self.blocks:
            nn.init.zeros_(block.table)
        # a text refiner starts as the identity (its residual branches output zero)
        for block in self.text_refiner:
            for out in (block.attn.proj, block.mlp[2]):
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)
        # the output starts at zero
        nn.init.zeros_(self.final.mod[1].weight)
        nn.init.zeros_(self.final.mod[1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def chunk_tokens(self) -> int:
        """Temporal tokens per causal chunk (chunk_frames latent frames after temporal patching)."""
        return self.cfg.chunk_frames // self.cfg.patch[0] or 1

    def time_mask(self, T_past: int, T: int, device: torch.device) -> Tensor | None:
        """Block-causal mask (T, T_past + T): frame i sees frame j iff chunk(j) <= chunk(i). None = all allowed."""
        cf = self.chunk_tokens
        q_chunk = torch.arange(T_past, T_past + T, device=device) // cf
        k_chunk = torch.arange(T_past + T, device=device) // cf
        mask = k_chunk[None, :] <= q_chunk[:, None]
        return None if bool(mask.all()) else mask

    def _run(
        self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor, context: list[ChunkKV], start: int | None
    ):
        B, C, T_lat, H, W = x.shape
        if C != self.cfg.in_channels:
            raise ValueError(f"DiT expects {self.cfg.in_channels} latent channels, got {C}")
        check_divisible(T_lat, H, W, self.cfg.patch)
        pt = self.cfg.patch[0]
        dtype = self.x_embed.weight.dtype  # fp32 inputs meet bf16 weights under DeepSpeed's bf16 engine
        x, text = x.to(dtype), text.to(dtype)
        layout = self.layout
        tokens = self.x_embed(layout.shard(patchify(x, self.cfg.patch)))  # (B, T_local, S, D): this process's frames
        T, S = T_lat // pt, tokens.shape[2]

        if t.dim() == 1:
            t = t[:, None].expand(B, T)
        elif t.shape[1] == T_lat and pt > 1:
            t = t[:, ::pt]  # one timestep per temporal patch
        assert t.shape == (B, T), f"t must be (B,) or (B, T_latent), got {tuple(t.shape)}"
        c = self.t_embed(timestep_embedding(t, 256).to(tokens.dtype))  # (B, T, D)
        if self.text_pool is not None:
            w = text_mask.to(dtype)[..., None]  # (B, L, 1): padding does not count
            pooled = (text * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, text_dim)
            c = c + self.text_pool(pooled)[:, None]  # (B, T, D)
        T_past = sum(ckv[0][0].shape[2] for ckv in context)  # cached temporal tokens
        if start is None:  # x's first latent frame in the video: 0 without context, else past the cache
            start = T_past * pt
        if self.first_chunk is not None:  # the frames of the video's first chunk
            first = (torch.arange(T, device=c.device) + start // pt < self.chunk_tokens).to(c.dtype)
            c = c + first[None, :, None] * self.first_chunk.to(c.dtype)
        mod = self.t_mod(c).unflatten(-1, (9, -1))  # (B, T, 9, D)
        txt = self.text_embed(text)  # (B, L, D)
        head_dim = self.cfg.hidden // self.cfg.heads
        if len(self.text_refiner):
            rope_l = rope_cos_sin(sequence_angles(txt.shape[1], head_dim, self.cfg.rope_theta).to(x.device))
            for block in self.text_refiner:
                txt = block(txt, text_mask, rope_l)

        Hp, Wp = H // self.cfg.patch[1], W // self.cfg.patch[2]
        zero = torch.zeros(1)
        grid = grid_angles(zero, Hp, Wp, head_dim, self.cfg.rope_theta, self.cfg.rope_grid_scale)[0]
        rope_s = rope_cos_sin(grid.to(x.device))  # (S, Dh/2)
        angles_t = rope_angles(torch.arange(T_past + T), torch.zeros(1), torch.zeros(1), head_dim, self.cfg.rope_theta)
        rope_t = rope_cos_sin(angles_t[:, 0].to(x.device))  # (T_past + T, Dh/2): only the time pairs rotate
        time_mask = self.time_mask(T_past, T, x.device)
        mod, c = layout.shard(mod), layout.shard(c)  # (B, T_local, 9, D), (B, T_local, D): this process's frames

        new_kv: ChunkKV = []
        for i, block in enumerate(self.blocks):
            if context:
                past = (torch.cat([ckv[i][0] for ckv in context], 2), torch.cat([ckv[i][1] for ckv in context], 2))
            else:
                empty = tokens.new_zeros(B * S, self.cfg.heads, 0, head_dim)
                past = (empty, empty)
            tokens, kv = block(tokens, mod, txt, text_mask, rope_s, rope_t, time_mask, past, layout)
            new_kv.append(kv)
        out = layout.gather(self.final(tokens, c))  # (B, T, S, patch_dim)
        return unpatchify(out, self.cfg.patch, H, W), new_kv  # (B, C, T_lat, H, W)

    def forward(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor, start: int = 0) -> Tensor:
        """Velocity for the whole clip with block-causal temporal attention.

        x (B, C, T, H, W) noisy latents; t (B,) or (B, T) per latent frame in [0, 1];
        text (B, L, text_dim); text_mask (B, L) bool -> (B, C, T, H, W).
        start: the latent frame of the video that x begins at (0: x starts the video).
        """
        v, _ = self._run(x, t, text, text_mask, context=[], start=start)
        return v

    def forward_chunk(
        self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor, context: list[ChunkKV], start: int | None = None
    ) -> tuple[Tensor, ChunkKV]:
        """Velocity for one new chunk that attends to cached clean chunks (oldest first), and the chunk's own
        keys/values to append to the cache once it is clean. Positions count from the first context frame,
        so any window of past chunks (e.g. an anchor plus the most recent ones) is laid out contiguously.
        start: the chunk's first latent frame in the video; None = 0 without context, else a later chunk."""
        return self._run(x, t, text, text_mask, context=context, start=start)
