"""Wan 2.1's causal video VAE (Wan Team 2025, "Wan: Open and Advanced Large-Scale Video Generative Models"),
computed exactly, on videodit's streaming contract (`vae.StreamingVAE`).

The function is the released one (Wan-Video/Wan2.1 wan/modules/vae.py, diffusers' AutoencoderKLWan), so its
weights load after `python -m videodit.convert wan-vae` and give the same latents and frames:

  * every 3x3x3 conv is causal in time with a zero past (two black frames before the first);
  * RMSNorm over channels (Wan writes it as F.normalize * sqrt(C) * gamma) and SiLU;
  * spatial down-sampling pads right and bottom by one, then a stride-2 3x3 conv; temporal down-sampling passes
    the first frame through unchanged and takes stride-2 windows (3 frames, no padding) from frame 0 on;
  * temporal up-sampling passes the first latent frame through and replaces every later one by the two frames a
    causal (3, 1, 1) conv predicts from the later frames alone (a zero past, the first frame skipped); spatial
    up-sampling is nearest x2 then a 3x3 conv that halves the channels;
  * the middle of the encoder and of the decoder is resblock, single-head spatial attention (within each
    frame), resblock; 1x1x1 quant / post-quant convs; the decoder has num_res_blocks + 1 blocks per stage; the
    decoded frames are clamped to [-1, 1].

Wan's reference code runs the encoder on 1, 4, 4, ... frames and the decoder on one latent frame at a time,
keeping each conv's past in a list threaded through default arguments. Here the state is an explicit `VAECache`
(each conv's past frames under its module path), so any chunking gives the same tensors, and a whole chunk goes
through each conv in one call, channels-last, with the kernels `vae.py` picks (oneDNN on CPU, the up-sampling as
one transposed conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from videodit.config import ConfigError, VAEConfig
from videodit.vae import (
    DiagonalGaussian,
    SpaceUp,
    StreamingVAE,
    VAECache,
    VideoVAE,
    _channels_last,
    _conv,
    _per_frame,
    _windows,
    _with_past,
)


class RMSNorm(nn.Module):
    """Wan's norm over channels at each (t, h, w): x / max(||x||, 1e-12) * sqrt(C) * gain, i.e. RMSNorm; per pixel,
    hence causal and chunk-exact. The statistics are taken in fp32 whatever the dtype."""

    def __init__(self, channels: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))

    def _scale(self, xl: Tensor) -> Tensor:
        """sqrt(C) / max(||x||, 1e-12) per pixel of the channels-last view xl (B, T, H, W, C), in xl's dtype. The
        norm accumulates in fp32 whatever the dtype; in bf16 it is read back as bf16 (an fp32 copy of the whole
        activation costs more than the norm itself on CPU) and the scale is formed in fp32 from it."""
        norm = torch.linalg.vector_norm(xl, dim=-1, keepdim=True).float()  # (B, T, H, W, 1)
        return (xl.shape[-1] ** 0.5 / norm.clamp_min(1e-12)).to(xl.dtype)

    def forward(self, x: Tensor) -> Tensor:
        xl = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C): a contiguous view of the channels-last activation
        return (xl * self._scale(xl) * self.gain.to(x.dtype)).permute(0, 4, 1, 2, 3)

    def act(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """SiLU(norm(x)), the pair every conv is preceded by, as (B, C, T, H, W) channels-last. Without autograd it
        is three passes over one tensor (F.rms_norm + silu make six on CPU), written into `out` when given (a
        contiguous (B, T, H, W, C) tensor, e.g. the frames of a conv input after its past)."""
        if torch.is_grad_enabled() and (x.requires_grad or self.gain.requires_grad):
            y = F.silu(self(x))
            if out is None:
                return y
            out.copy_(y.permute(0, 2, 3, 4, 1))
            return out.permute(0, 4, 1, 2, 3)
        xl = x.permute(0, 2, 3, 4, 1)
        y = torch.mul(xl, self._scale(xl), out=out).mul_(self.gain.to(x.dtype))  # out None: a new tensor
        return F.silu(y, inplace=True).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W), channels-last memory


class CausalConv(nn.Conv3d):
    """A (kt, k, k) conv, causal in time with a zero past (Wan's padding), zero-padded in space; the weights are
    the plain Conv3d's. `norm` (applied as norm.act to x, not to the past, which is cached after it) and `add_to`
    fuse the ops around it without changing what is computed."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int] = (3, 3, 3)):
        kt, kh, kw = kernel
        super().__init__(c_in, c_out, kernel, padding=(0, kh // 2, kw // 2))
        self.key = ""  # the module path; WanVAE sets it so the cache can find this conv's past frames

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None, norm: RMSNorm | None = None,
                add_to: Tensor | None = None) -> Tensor:
        assert self.key, "CausalConv.key is set by WanVAE; build it inside a WanVAE"
        past = None if cache is None else cache.get(self.key)
        if past is None:  # the start of the video: a zero past
            B, C, _, H, W = x.shape
            past = x.new_zeros(B, C, self.kernel_size[0] - 1, H, W)
        return _windows(_with_past(past, x, norm), self, self.key, cache, add_to)


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = RMSNorm(c_in)
        self.conv1 = CausalConv(c_in, c_out)
        self.norm2 = RMSNorm(c_out)
        self.conv2 = CausalConv(c_out, c_out)
        self.shortcut = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        h = self.conv1(x, cache, self.norm1)  # (B, C', T, H, W)
        skip = x if self.shortcut is None else _conv(x, self.shortcut)
        # the second conv adds into the skip path: in inference in place, into this block's input (every block's
        # input is the previous layer's fresh output, used by nothing after this block)
        return self.conv2(h, cache, self.norm2, add_to=skip)


class Attention(nn.Module):
    """Single-head self-attention over the pixels of each frame (no state: frames never see one another)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = RMSNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        B, C, T, H, W = x.shape
        tokens = rearrange(self.norm(x), "b c t h w -> (b t) (h w) c")  # a view of the channels-last activation
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)  # (B T, H W, C) each
        y = self.proj(F.scaled_dot_product_attention(q, k, v))  # (B T, H W, C)
        return x + rearrange(y, "(b t) (h w) c -> b c t h w", b=B, h=H)  # (B, C, T, H, W), channels-last


class SpaceDown(nn.Module):
    """x2 spatial down-sampling per frame: pad right and bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        return _per_frame(lambda f: _conv(F.pad(f, (0, 1, 0, 1)), self.conv), x)  # (B, C, T, H/2, W/2)


class TimeDown(nn.Module):
    """x2 temporal down-sampling: frame 0 passes through; output j >= 1 is a (3, 1, 1) conv over frames 2j-2, 2j-1,
    2j. So 1 + 2k frames -> 1 + k. The cache holds the frames not yet consumed by a window."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1))
        self.key = ""  # set by WanVAE

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        assert self.key, "TimeDown.key is set by WanVAE"
        pending = None if cache is None else cache.get(self.key)
        if pending is not None:
            return _windows(_with_past(pending, x), self.conv, self.key, cache)
        # the start of the video: frame 0 is output as it is, and opens the first window
        y = _windows(_channels_last(x), self.conv, self.key, cache)  # (B, C, (T - 1) / 2, H, W)
        return _channels_last(torch.cat([x[:, :, :1], y], dim=2))  # (B, C, 1 + (T - 1) / 2, H, W)


class TimeUp(nn.Module):
    """x2 temporal up-sampling: latent frame 0 passes through; every later frame t is replaced by two frames, the
    two halves of the channels of a causal (3, 1, 1) conv (c -> 2c) over frames 1, 2, ... with a zero past. So
    1 + k frames -> 1 + 2k."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, 2 * channels, (3, 1, 1))
        self.key = ""  # set by WanVAE

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        assert self.key, "TimeUp.key is set by WanVAE"
        past = None if cache is None else cache.get(self.key)
        head = None
        if past is None:  # the start of the video: frame 0 passes, the conv starts at frame 1 with a zero past
            head, x = x[:, :, :1], x[:, :, 1:]
            B, C, _, H, W = head.shape
            past = head.new_zeros(B, C, 2, H, W)
        # (B, 2C, T, H, W): channel r C + c -> frame 2t + r
        delta = _windows(_with_past(past, x), self.conv, self.key, cache)
        B, C2, T, H, W = delta.shape
        C = C2 // 2
        # written straight into the channels-last output, (B, T_out, H, W, C) in memory: one pass
        n0 = 0 if head is None else 1
        out = delta.new_empty(B, n0 + 2 * T, H, W, C)
        if head is not None:
            out[:, :1] = head.permute(0, 2, 3, 4, 1)
        d = delta.permute(0, 2, 3, 4, 1).unflatten(-1, (2, C)).permute(0, 1, 4, 2, 3, 5)  # (B, T, 2, H, W, C)
        out[:, n0:].view(B, T, 2, H, W, C).copy_(d)
        return out.permute(0, 4, 1, 2, 3)  # (B, C, T_out, H, W), channels-last memory


Block = ResBlock | Attention | SpaceDown | TimeDown | TimeUp | SpaceUp


class Encoder(nn.Module):
    """(B, 3, 1 + 4k, H, W) -> (B, 2 z, 1 + k, H/8, W/8): the posterior's mean and log-variance before quant_conv."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        c = cfg.base_channels
        self.conv_in = CausalConv(3, c)
        blocks: list[Block] = []
        for i, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, width))
                c = width
            if i < len(widths) - 1:
                blocks.append(SpaceDown(c))
                if cfg.temporal_down[i]:
                    blocks.append(TimeDown(c))
        blocks += [ResBlock(c, c), Attention(c), ResBlock(c, c)]  # middle, at the lowest resolution
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(c)
        self.conv_out = CausalConv(c, 2 * cfg.latent_channels)

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        h = self.conv_in(_channels_last(x), cache)  # (B, c0, T, H, W)
        for block in self.blocks:
            h = block(h, cache)
        return self.conv_out(h, cache, self.norm_out)  # (B, 2 z, T', h, w)


class Decoder(nn.Module):
    """(B, z, 1 + k, h, w) -> (B, 3, 1 + 4k, 8 h, 8 w), unclamped."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        c = widths[-1]
        self.conv_in = CausalConv(cfg.latent_channels, c)
        blocks: list[Block] = [ResBlock(c, c), Attention(c), ResBlock(c, c)]  # middle
        for i in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(c, widths[i]))
                c = widths[i]
            if i > 0:
                if cfg.temporal_down[i - 1]:
                    blocks.append(TimeUp(c))
                blocks.append(SpaceUp(c, c // 2))  # Wan's up-samplers halve the width
                c = c // 2
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(c)
        self.conv_out = CausalConv(c, 3)

    def forward(self, z: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        h = self.conv_in(z, cache)  # (B, c3, T', h, w)
        for block in self.blocks:
            h = block(h, cache)
        return self.conv_out(h, cache, self.norm_out)  # (B, 3, T, H, W)


class WanVAE(StreamingVAE):
    """Wan 2.1's VAE (vae.arch "wan21"): the same streaming API as VideoVAE (`encode`, `decode`, `init_cache`), so
    `encode_video`, `decode_stream` and `decode_video`, tiling included, work unchanged."""

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg)
        if cfg.arch != "wan21":
            raise ConfigError(f"WanVAE needs vae.arch wan21, got '{cfg.arch}'; build VAEs with build_vae(cfg)")
        if any(cfg.pixel_mean):
            raise ConfigError("vae.pixel_mean must be [0, 0, 0] with vae.arch wan21")
        z = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv3d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv3d(z, z, 1)
        self.decoder = Decoder(cfg)
        for name, m in self.named_modules():
            if isinstance(m, (CausalConv, TimeDown, TimeUp)):
                m.key = name
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                # the activations' layout: oneDNN otherwise re-lays out every weight on every call (loading, .to()
                # and the optimiser keep a parameter's layout; state_dict() writers make it contiguous)
                fmt = torch.channels_last_3d if m.weight.ndim == 5 else torch.channels_last
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)

    def _posterior(self, x: Tensor, cache: dict[str, Tensor] | None) -> DiagonalGaussian:
        h = _conv(self.encoder(x, cache), self.quant_conv)  # (B, 2 z, T', h, w)
        mean, logvar = h.chunk(2, dim=1)
        return DiagonalGaussian(mean.contiguous(), logvar.clamp(-30.0, 20.0).contiguous())

    def encode(self, x: Tensor, cache: VAECache) -> tuple[DiagonalGaussian, VAECache]:
        """Video chunk (B, 3, T, H, W) in [-1, 1] -> posterior over (B, z, T/4 (+1 first), H/8, W/8) (raw latents:
        `vae.normalize_latents` gives the DiT's). The first chunk has 1 + 4k frames, later ones 4k; results equal a
        whole-video pass."""
        self.check_video(x, cache)
        frames = dict(cache.frames)  # the caller's cache is never modified
        post = self._posterior(x, frames)
        return post, VAECache(frames, cache.seen + x.shape[2], "encode")

    def decode(self, z: Tensor, cache: VAECache) -> tuple[Tensor, VAECache]:
        """Raw latent chunk (B, z, T', h, w) -> frames (B, 3, 4 T' (- 3 for the first chunk), 8 h, 8 w), clamped to
        [-1, 1] as Wan's decoder does. Any number of latent frames per call."""
        self.check_latents(z, cache)
        frames = dict(cache.frames)
        x = self.decoder(_conv(_channels_last(z), self.post_quant_conv), frames)
        return x.clamp(-1.0, 1.0).contiguous(), VAECache(frames, cache.seen + z.shape[2], "decode")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Whole video for fine-tuning: (B, 3, T, H, W) -> (reconstruction from a posterior sample, unclamped, mean,
        logvar). Stateless (cache None), as activation checkpointing needs."""
        self.check_video(x, VAECache())
        x = x.to(self.quant_conv.weight.dtype)
        post = self._posterior(x, None)
        recon = self.decoder(_conv(_channels_last(post.sample()), self.post_quant_conv), None)
        return recon.contiguous(), post.mean, post.logvar


def build_vae(cfg: VAEConfig) -> StreamingVAE:
    """The VAE `cfg.arch` names: "videodit" (vae.VideoVAE) or "wan21" (WanVAE), randomly initialised."""
    return WanVAE(cfg) if cfg.arch == "wan21" else VideoVAE(cfg)
