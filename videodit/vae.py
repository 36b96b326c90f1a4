"""Causal 3D video VAE with streaming (constant-memory) encode and decode.

The idea follows MAGVIT-v2 (Yu et al. 2023), CogVideoX (Yang et al. 2024) and Wan 2.1 (2025): every 3D
convolution is causal in time, padding only on the past side, so the latent of frame t depends on frames
<= t alone. The first frame has no past and is encoded on its own, so an image is a one-frame video and
`T = 1 + 4k` frames map to `1 + k` latent frames (x4 in time, x8 in space, KL bottleneck).

Because every layer is causal and per-frame otherwise (RMSNorm over channels, never GroupNorm across
time), a video can be pushed through in chunks: each causal conv keeps the few past frames it still needs
in an explicit `VAECache` that `encode` / `decode` take and return. Chunked equals whole, and memory is
flat in the length of the video. Temporal down-sampling is a causal conv with stride 2 in time whose
unconsumed input frames are cached as well, so chunk boundaries never change the result. Temporal
up-sampling is depth-to-time: each latent frame predicts two frames (the first latent frame only one).

Training stability: every head has an unnormalised path (a per-pixel RMSNorm cannot remove a constant
offset, which otherwise swamps the signal), the posterior starts with a small variance, and the VAE codes
the difference to the data's mean colour (`VAEConfig.pixel_mean`), so dark data does not start training
with a global offset that the optimiser spreads over every weight (it collapses to the mean video).

Streaming helpers at the bottom (`encode_video`, `decode_video`, `decode_stream`) chunk in time under a
memory budget and tile in space with overlapping tiles whose seams are blended linearly. They take any
`StreamingVAE`: this VAE, or Wan 2.1's (`vae_wan.py`, `vae.arch: wan21`; `vae_wan.build_vae(cfg)` picks by
arch), whose per-channel latent statistics `normalize_latents` applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from videodit.config import ConfigError, VAEConfig

# ----------------------------------------------------------------------------------------------------
# state and posterior


@dataclass(frozen=True)
class VAECache:
    """Streaming state of one encoder or decoder pass over one video (use a fresh cache per video).

    frames: the past input frames each causal conv still needs, by the conv's module path (a few frames
            per conv, so the cache stays small however long the video).
    seen:   frames consumed so far (video frames when encoding, latent frames when decoding).
    role:   "" for a fresh cache, then "encode" or "decode"; one cache never serves both.
    """

    frames: dict[str, Tensor] = field(default_factory=dict)
    seen: int = 0
    role: str = ""


class DiagonalGaussian(NamedTuple):
    """The posterior q(z | x); unpacks as `(mean, logvar)`, each (B, C, T', H/8, W/8)."""

    mean: Tensor
    logvar: Tensor

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * eps

    def kl(self) -> Tensor:
        """Elementwise KL(q || N(0, I)), same shape as `mean`."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)


# ----------------------------------------------------------------------------------------------------
# layers; every layer takes (x, cache). With a dict it reads its past from `cache` and writes its new past
# there under its own key (streaming). With None the input is a whole video from its first frame and nothing
# is kept: a pure function, as training and activation checkpointing (which re-runs a forward) need.


def _channels_last(x: Tensor) -> Tensor:
    """Activations live channels-last ((t, h, w, c) innermost): oneDNN and cuDNN convolve them without
    reordering, per-frame 2D ops see them as a free view, and the norm reduces over contiguous memory."""
    return x.contiguous(memory_format=torch.channels_last_3d)


# How the layers compute, never what: each choice gives the same function up to float rounding (tests). "auto"
# takes the device's entry here, the fastest measured (benchmarks/vae_gpu.py on an H100, bench/vae.py on CPU).
KERNELS = {"upsample": ("interp", "transposed")}
AUTO_KERNELS = {
    "cpu": {"upsample": "transposed"},
    "cuda": {"upsample": "transposed"},
}


def _kernel(kind: str, choice: str, x: Tensor) -> str:
    if choice != "auto":
        return choice
    return AUTO_KERNELS.get(x.device.type, AUTO_KERNELS["cpu"])[kind]


def _conv(x: Tensor, conv: nn.Conv2d | nn.Conv3d) -> Tensor:
    """The one place that picks a convolution kernel.

    PyTorch sends small CPU convolutions (batch 1, a few frames: exactly what streaming feeds) to a slow
    reference kernel instead of oneDNN, which makes chunked decoding several times slower per frame than
    whole-video decoding. We call oneDNN directly for fp32 on CPU (same math, with autograd); everything
    else (GPU, bf16, builds without oneDNN) takes the ordinary path.
    """
    mkldnn = torch.backends.mkldnn
    if x.device.type == "cpu" and x.dtype == torch.float32 and mkldnn.is_available() and mkldnn.enabled:
        return torch.mkldnn_convolution(
            x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
        )
    return conv._conv_forward(x, conv.weight, conv.bias)  # the plain convolution, also for subclasses with a forward


_FUSED_ADD: dict[torch.dtype, bool] = {}  # dtype -> whether oneDNN's in-place conv + add works in this build


def _fused_add_works(dtype: torch.dtype) -> bool:
    """Probe once per dtype, on a tiny conv, that oneDNN's `acc += conv(x)` (mkldnn::_convolution_pointwise_, its
    "add" post-op) exists in this build and computes what conv-then-add computes."""
    if dtype not in _FUSED_ADD:
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, 4, 3, 4, 4, generator=g).to(dtype).contiguous(memory_format=torch.channels_last_3d)
            w = torch.randn(4, 4, 3, 3, 3, generator=g).to(dtype).contiguous(memory_format=torch.channels_last_3d)
            b = torch.randn(4, generator=g).to(dtype)
            acc = torch.randn(1, 4, 1, 4, 4, generator=g).to(dtype).contiguous(memory_format=torch.channels_last_3d)
            want = acc.float() + F.conv3d(x.float(), w.float(), b.float(), padding=(0, 1, 1))
            got = torch.ops.mkldnn._convolution_pointwise_.binary(
                acc.clone(), x, w, b, [0, 1, 1], [1, 1, 1], [1, 1, 1], 1, "add", 1.0, None, [], None)
            ok = bool((got.float() - want).abs().max() <= 0.1 * want.abs().max())
        except (RuntimeError, AttributeError, NotImplementedError):  # no such op in this build, or refused
            ok = False  # here: every call takes conv-then-add
        _FUSED_ADD[dtype] = ok
    return _FUSED_ADD[dtype]


def _conv_add(acc: Tensor, x: Tensor, conv: nn.Conv2d | nn.Conv3d) -> Tensor:
    """acc + conv(x). Without autograd on CPU (fp32 or bf16, oneDNN), oneDNN adds the conv's result into acc in
    place as the conv writes it (its "add" post-op): no output tensor to allocate, no separate addition pass, and in
    bf16 one rounding instead of two. acc is then modified and returned; otherwise a new tensor."""
    fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    mkldnn = torch.backends.mkldnn
    if (
        not (torch.is_grad_enabled() and (acc.requires_grad or x.requires_grad or conv.weight.requires_grad))
        and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and acc.dtype == x.dtype
        and mkldnn.is_available() and mkldnn.enabled and acc.numel() > 0
        and acc.is_contiguous(memory_format=fmt) and x.is_contiguous(memory_format=fmt)
        and _fused_add_works(x.dtype)
    ):
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            acc, x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            "add", 1.0, None, [], None)
    return acc + _conv(x, conv)


def _with_past(past: Tensor, x: Tensor, norm: nn.Module | None = None) -> Tensor:
    """The frames [past, x] as one channels-last (B, C, P + T, H, W) tensor, x through norm.act(x, out=...) when a
    norm is given: each part is written once into the new tensor, so the conv input costs no concatenation pass."""
    B, C, T, H, W = x.shape
    P = past.shape[2]
    buf = x.new_empty(B, P + T, H, W, C)  # the memory of a channels-last (B, C, P + T, H, W) tensor
    buf[:, :P].copy_(past.permute(0, 2, 3, 4, 1))
    if norm is None:
        buf[:, P:].copy_(x.permute(0, 2, 3, 4, 1))
    else:
        norm.act(x, out=buf[:, P:])
    return buf.permute(0, 4, 1, 2, 3)


def _windows(xp: Tensor, conv: nn.Conv3d, key: str, cache: dict[str, Tensor] | None,
             add_to: Tensor | None = None) -> Tensor:
    """`conv` over the frames xp = [past, x] (from `_with_past`), valid in time (stride conv.stride[0]); with a
    cache, the frames not yet consumed by a window are kept under `key` for the next chunk. With `add_to`, the
    result is added to it (in place where `_conv_add` can)."""
    kt, st = conv.kernel_size[0], conv.stride[0]
    n = max(0, (xp.shape[2] - kt) // st + 1)  # complete windows
    if cache is not None:
        cache[key] = xp[:, :, n * st :].clone()  # a clone: a view would keep the whole chunk alive
    if n == 0:
        B, _, _, H, W = xp.shape
        return xp.new_zeros(B, conv.out_channels, 0, H, W) if add_to is None else add_to
    xw = xp[:, :, : (n - 1) * st + kt]
    return _conv(xw, conv) if add_to is None else _conv_add(add_to, xw, conv)  # (B, C', n, H, W)


class ChannelRMSNorm(nn.Module):
    """RMSNorm over channels at each (t, h, w): per frame and per pixel, hence causal and chunk-exact."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def act(self, x: Tensor) -> Tensor:
        """SiLU(norm(x)), the pair every conv is preceded by."""
        return F.silu(self(x))

    def forward(self, x: Tensor) -> Tensor:
        # F.rms_norm takes its statistics in fp32 whatever the input dtype (so bf16 normalises stably) and, on
        # CUDA, in one fused pass: no fp32 copy of the activation (3 of the 5 full-size passes it used to make)
        y = F.rms_norm(x.permute(0, 2, 3, 4, 1), (x.shape[1],), self.gain.to(x.dtype), self.eps)
        return y.permute(0, 4, 1, 2, 3)  # (B, C, T, H, W), channels-last memory


class CausalConv3d(nn.Module):
    """A 3D convolution padded only on the past side in time (zero padding in space).

    At the start of a video the past is the first frame repeated (replicate padding). Zero padding would
    show the first frame an artificial black past that no later frame sees, a step in time at every layer;
    replicating makes the first frame (and so an image) look like the start of a still video, which keeps
    its activations in the range of the later frames' and costs nothing. With temporal stride s the conv
    keeps, between calls, exactly the input frames not yet consumed by a window, so any chunking gives the
    same output.
    """

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int] = (3, 3, 3), stride_t: int = 1):
        super().__init__()
        kt, kh, kw = kernel
        self.kt, self.stride_t = kt, stride_t
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=(stride_t, 1, 1), padding=(0, kh // 2, kw // 2))
        self.key = ""  # the module path; VideoVAE sets it so the cache can find this conv's past frames

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        assert self.key, "CausalConv3d.key is set by VideoVAE; build convs inside a VideoVAE"
        past = None if cache is None else cache.get(self.key)
        if past is None:  # start of the video
            assert x.shape[2] > 0, "the first call needs at least one frame"
            past = x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)
        return _windows(_with_past(past, x), self.conv, self.key, cache)  # (B, C', n, H, W)


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 when the width changes) skip."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = ChannelRMSNorm(c_in)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = ChannelRMSNorm(c_out)
        self.conv2 = CausalConv3d(c_out, c_out)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        h = self.conv1(self.norm1.act(x), cache)  # (B, C', T, H, W)
        h = self.conv2(self.norm2.act(h), cache)
        return (x if self.skip is None else _conv(x, self.skip)) + h


def _per_frame(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a 2D op to every frame: (B, C, T, H, W) -> (B, C', T, H', W')."""
    B = x.shape[0]
    y = fn(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", b=B)


def _match_channels(x: Tensor, channels: int) -> Tensor:
    """Parameter-free channel change: average groups of channels, or repeat them (DC-AE's shortcuts)."""
    c = x.shape[1]
    if c >= channels:
        return x.unflatten(1, (channels, c // channels)).mean(dim=2)  # (B, channels, T, H, W)
    return x.repeat_interleave(channels // c, dim=1)


def _check_divisible(a: int, b: int, what: str) -> None:
    if max(a, b) % min(a, b):
        raise ConfigError(f"{what}: {a} and {b} channels must divide one another (vae.base_channels, "
                          f"vae.channel_mults and vae.latent_channels set them)")


class SpaceDown(nn.Module):
    """x2 spatial down-sampling per frame (stride-2 3x3 conv); no state."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        return _per_frame(lambda f: _conv(f, self.conv), x)  # (B, C, T, H/2, W/2)


class SpaceUp(nn.Module):
    """x2 spatial up-sampling per frame (nearest, then a 3x3 conv that also sets the new width)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.kernel = "auto"  # VideoVAE.set_kernels; "transposed": the same map as one transposed conv

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        if _kernel("upsample", self.kernel, x) == "transposed":
            w = _up_as_transposed(self.conv.weight)
            up = lambda f: F.conv_transpose2d(f, w, self.conv.bias, stride=2, padding=1)
        else:
            up = lambda f: _conv(F.interpolate(f, scale_factor=2.0, mode="nearest"), self.conv)
        return _per_frame(up, x)  # (B, C', T, 2 H, 2 W)


# Nearest x2 up-sampling then a 3x3 conv (padding 1) is a stride-2 transposed conv (padding 1) with a 4x4 kernel:
# an even output row 2m sees input rows m - 1 (tap 0) and m (taps 1 and 2), an odd one rows m (taps 0 and 1)
# and m + 1 (tap 2). In the transposed conv, output row o = 2 i - 1 + k takes input row i through kernel row
# k, so kernel rows (0, 1, 2, 3) = (w2, w1 + w2, w0 + w1, w0); the same along columns. 16 products per input
# pixel instead of 36, and the up-sampled input is never materialised.
_UP_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def _up_as_transposed(w: Tensor) -> Tensor:
    """3x3 conv weight (C', C, 3, 3) applied after nearest x2 -> conv_transpose2d weight (C, C', 4, 4)."""
    a = torch.tensor(_UP_TAPS, device=w.device, dtype=w.dtype)  # (4, 3)
    return torch.einsum("ky,oiyx,lx->iokl", a, w, a)


class TimeDown(nn.Module):
    """x2 causal temporal down-sampling: a (3, 1, 1) conv with stride 2 over [past, past, x0, x1, ...].

    Output 0 sees frame 0 alone; output j >= 1 sees frames 2j-2, 2j-1, 2j. So 1 + 2k frames -> 1 + k.
    Initialised to the mean of its window.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel=(3, 1, 1), stride_t=2)
        with torch.no_grad():
            self.conv.conv.weight.zero_()
            self.conv.conv.weight[:, :, :, 0, 0] += torch.eye(channels).unsqueeze(-1) / 3
            self.conv.conv.bias.zero_()

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        return self.conv(x, cache)  # (B, C, ~T/2, H, W)


class TimeUp(nn.Module):
    """x2 causal temporal up-sampling, depth to time: latent frame j -> frames (2j-1, 2j); frame 0 -> 0.

    A causal (3, 1, 1) conv predicts a residual for each of the two frames on top of repetition; it starts
    at zero, so the block starts as frame repetition. At the start of a video the first of the two frames
    of latent frame 0 is dropped, so 1 + k frames -> 1 + 2k.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, 2 * channels, kernel=(3, 1, 1))
        nn.init.zeros_(self.conv.conv.weight)
        nn.init.zeros_(self.conv.conv.bias)

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        first = cache is None or self.conv.key not in cache
        delta = self.conv(x, cache)  # (B, 2C, T, H, W), channel r C + c predicts frame 2t - 1 + r
        B, C, T, H, W = x.shape
        # Work on the memory-order views of the channels-last tensors and write the output straight into its
        # channels-last layout, (B, T, 2, H, W, C): one pass, where repeat_interleave + rearrange + add made
        # three strided copies in the default layout and a fourth back to channels-last.
        d = delta.permute(0, 2, 3, 4, 1).unflatten(-1, (2, C)).permute(0, 1, 4, 2, 3, 5)  # (B, T, 2, H, W, C)
        xm = _channels_last(x).permute(0, 2, 3, 4, 1).unsqueeze(2)  # (B, T, 1, H, W, C)
        y = torch.empty((B, T, 2, H, W, C), device=x.device, dtype=torch.result_type(x, delta))
        if torch.is_grad_enabled() and (x.requires_grad or delta.requires_grad):
            y.copy_(d).add_(xm)  # `out=` has no autograd; in-place ops on a fresh tensor do
        else:
            torch.add(xm, d, out=y)
        y = y.flatten(1, 2).permute(0, 4, 1, 2, 3)  # (B, C, 2T, H, W), channels-last memory
        return _channels_last(y[:, :, 1:]) if first else y


Block = ResBlock | SpaceDown | SpaceUp | TimeDown | TimeUp


class Encoder(nn.Module):
    """(B, 3, 1 + 4k, H, W) -> mean and log-variance of the posterior, each (B, C, 1 + k, H/8, W/8)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        c = widths[0]
        self.conv_in = CausalConv3d(3, c)
        blocks: list[Block] = []
        for i, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, width))
                c = width
            if i < len(widths) - 1:
                blocks.append(SpaceDown(c))
                if cfg.temporal_down[i]:
                    blocks.append(TimeDown(c))
        blocks += [ResBlock(c, c), ResBlock(c, c)]  # middle, at the lowest resolution
        self.blocks = nn.ModuleList(blocks)
        _check_divisible(c, cfg.latent_channels, "encoder output")
        self.latent_channels = cfg.latent_channels
        self.norm_out = ChannelRMSNorm(c)
        self.conv_out = CausalConv3d(c, 2 * cfg.latent_channels)
        # start close to a plain autoencoder: a unit posterior variance drowns the weak initial latents and
        # the decoder learns to ignore them (posterior collapse); a small one lets information through from
        # step 0, and the KL term shapes the variance from there
        with torch.no_grad():
            self.conv_out.conv.weight[cfg.latent_channels :].zero_()
            self.conv_out.conv.bias[cfg.latent_channels :].fill_(-6.0)

    def forward(self, x: Tensor, cache: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
        h = self.conv_in(_channels_last(x), cache)  # (B, c0, T, H, W)
        for block in self.blocks:
            h = block(h, cache)
        mean, logvar = self.conv_out(self.norm_out.act(h), cache).chunk(2, dim=1)  # (B, C, T', h, w) each
        # The residual stream is unnormalised; the head's per-pixel RMSNorm is not, and it cannot remove a
        # constant offset: once the stream grows one, the normalised head sees almost nothing of the input and
        # training collapses to predicting the mean video. An unnormalised path to the latent prevents that.
        mean = mean + _match_channels(h, self.latent_channels)
        return mean.contiguous(), logvar.contiguous()


class Decoder(nn.Module):
    """(B, C, 1 + k, h, w) -> (B, 3, 1 + 4k, 8 h, 8 w), mirroring the encoder."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        c = widths[-1]
        _check_divisible(cfg.latent_channels, c, "decoder input")
        self.conv_in = CausalConv3d(cfg.latent_channels, c)
        blocks: list[Block] = [ResBlock(c, c), ResBlock(c, c)]  # middle
        for i in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, widths[i]))
                c = widths[i]
            if i > 0:
                if cfg.temporal_down[i - 1]:
                    blocks.append(TimeUp(c))
                blocks.append(SpaceUp(c, widths[i - 1]))  # widen/narrow here: cheaper than at the next res
                c = widths[i - 1]
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = ChannelRMSNorm(c)
        self.conv_out = CausalConv3d(c, 3)
        self.read_out = nn.Conv3d(c, 3, 1)  # the unnormalised path to the pixels (see Encoder.forward)

    def forward(self, z: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        z = _channels_last(z)
        h = self.conv_in(z, cache) + _match_channels(z, self.conv_in.conv.out_channels)  # (B, c3, T', h, w)
        for block in self.blocks:
            h = block(h, cache)
        x = self.conv_out(self.norm_out.act(h), cache) + _conv(h, self.read_out)
        return x.contiguous()  # (B, 3, T, H, W)


# ----------------------------------------------------------------------------------------------------
# the model


class StreamingVAE(nn.Module):
    """The contract every VAE architecture keeps (this project's `VideoVAE`, Wan 2.1's `vae_wan.WanVAE`), so the
    streaming helpers below, the data cache, training and sampling work with either: `encode(x, cache)` ->
    (posterior, cache), `decode(z, cache)` -> (frames, cache), `init_cache()`, the input checks, `cfg`, and the
    factors `spatial_factor` (8) and `temporal_factor` (4). `vae_wan.build_vae(cfg)` builds the one `cfg.arch` names."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        n = len(cfg.channel_mults)
        if n < 2 or len(cfg.temporal_down) != n - 1:
            raise ConfigError(
                f"vae.temporal_down needs one entry per downsampling (len(vae.channel_mults) - 1 = {n - 1}), "
                f"got {len(cfg.temporal_down)}"
            )
        if cfg.base_channels < 1 or cfg.latent_channels < 1 or cfg.num_res_blocks < 0:
            raise ConfigError("vae.base_channels and vae.latent_channels must be >= 1, vae.num_res_blocks >= 0")
        self.cfg = cfg
        self.spatial_factor = 2 ** (n - 1)  # 8 with four stages
        self.temporal_factor = 2 ** sum(cfg.temporal_down)  # 4 with two temporal downsamplings

    def set_kernels(self, upsample: str = "auto") -> StreamingVAE:
        """Choose how the layers compute; the function stays the same (up to float rounding).

        upsample: "interp" (nearest x2, then the 3x3 conv) or "transposed" (the equivalent stride-2 transposed
        conv: 16 products per input pixel instead of 36). "auto": the fastest measured on the input's device
        (`AUTO_KERNELS`).
        """
        if upsample != "auto" and upsample not in KERNELS["upsample"]:
            raise ValueError(f"upsample kernel must be 'auto' or one of {KERNELS['upsample']}, got {upsample!r}")
        for m in self.modules():
            if isinstance(m, SpaceUp):
                m.kernel = upsample
        return self

    def init_cache(self) -> VAECache:
        """A fresh streaming state; use one for encoding a video and another for decoding one."""
        return VAECache()

    # -- input checks: user mistakes get a message that says what to do --

    def check_video(self, x: Tensor, cache: VAECache) -> None:
        s, f = self.spatial_factor, self.temporal_factor
        if x.ndim != 5:
            raise ValueError(
                f"expected a video (B, 3, T, H, W), got shape {tuple(x.shape)}; an image (B, 3, H, W) is "
                f"a one-frame video: pass x.unsqueeze(2)"
            )
        B, C, T, H, W = x.shape
        if C != 3:
            raise ValueError(f"expected 3 (RGB) channels at dim 1, got {C} (shape {tuple(x.shape)}); "
                             f"put channels before time: (B, 3, T, H, W)")
        if H % s or W % s:
            raise ValueError(
                f"frame size {H}x{W} is not a multiple of {s}; crop or pad to e.g. "
                f"{H // s * s or s}x{W // s * s or s}"
            )
        if cache.role == "decode":
            raise ValueError("this cache belongs to a decoder pass; start encoding with vae.init_cache()")
        if cache.seen == 0 and (T - 1) % f:
            raise ValueError(
                f"a video must have 1 + {f}k frames (1, {1 + f}, {1 + 2 * f}, ...), got {T}; "
                f"drop the last {(T - 1) % f} frame(s) or pad to {T + f - (T - 1) % f}"
            )
        if cache.seen > 0 and (T == 0 or T % f):
            raise ValueError(
                f"after the first chunk, feed a positive multiple of {f} frames per chunk, got {T}"
            )

    def check_latents(self, z: Tensor, cache: VAECache) -> None:
        C = self.cfg.latent_channels
        if z.ndim != 5 or z.shape[1] != C or z.shape[2] == 0:
            raise ValueError(
                f"expected latents (B, {C}, T', h, w) with T' >= 1, got shape {tuple(z.shape)}; "
                f"a single latent image is z.unsqueeze(2)"
            )
        if cache.role == "encode":
            raise ValueError("this cache belongs to an encoder pass; start decoding with vae.init_cache()")


class VideoVAE(StreamingVAE):
    """This project's causal VAE (the module docstring)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg)
        if cfg.arch != "videodit":
            raise ConfigError(f"vae.arch '{cfg.arch}' is not this VAE's; build it with vae_wan.build_vae(cfg)")
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        for name, m in self.named_modules():
            if isinstance(m, CausalConv3d):
                m.key = name

    def _pixel_mean(self, x: Tensor) -> Tensor:
        return torch.tensor(self.cfg.pixel_mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1, 1)

    # -- streaming API --

    def encode(self, x: Tensor, cache: VAECache) -> tuple[DiagonalGaussian, VAECache]:
        """Video chunk (B, 3, T, H, W) in [-1, 1] -> posterior over (B, C, T/4 (+1 first), H/8, W/8).

        The first chunk of a video has 1 + 4k frames, later chunks 4k; results equal a whole-video pass.
        """
        self.check_video(x, cache)
        frames = dict(cache.frames)  # the caller's cache is never modified
        mean, logvar = self.encoder(x - self._pixel_mean(x), frames)  # (B, C, T', h, w) each
        post = DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))
        return post, VAECache(frames, cache.seen + x.shape[2], "encode")

    def decode(self, z: Tensor, cache: VAECache) -> tuple[Tensor, VAECache]:
        """Latent chunk (B, C, T', h, w) -> frames (B, 3, 4 T' (- 3 for the first chunk), 8 h, 8 w).

        Any number of latent frames per call; the output is not clamped (clamp to [-1, 1] for display).
        """
        self.check_latents(z, cache)
        frames = dict(cache.frames)
        x = self.decoder(z, frames)
        return x + self._pixel_mean(x), VAECache(frames, cache.seen + z.shape[2], "decode")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Whole video for training: (B, 3, T, H, W) -> (reconstruction from a posterior sample, mean, logvar).
        Stateless (cache None), so activation checkpointing may re-run any block."""
        self.check_video(x, VAECache())
        x = x.to(self.encoder.conv_in.conv.weight.dtype)  # fp32 clips meet bf16 weights under DeepSpeed's bf16
        mean, logvar = self.encoder(x - self._pixel_mean(x), None)  # (B, C, T', h, w) each
        post = DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))
        recon = self.decoder(post.sample(), None) + self._pixel_mean(x)  # (B, 3, T, H, W)
        return recon, post.mean, post.logvar


# ----------------------------------------------------------------------------------------------------
# per-channel latent statistics (vae.latent_mean / latent_std): part of the VAE, so whichever VAE made the latents,
# the DiT sees them normalised. Raw latents (the VAE's own, what shards store) <-> normalised ones.


def _stats(z: Tensor, cfg: VAEConfig) -> tuple[Tensor, Tensor]:
    shape = (1, -1) + (1,) * (z.ndim - 2)  # per channel, dim 1 of (B, C, T, h, w)
    mean = torch.tensor(cfg.latent_mean, device=z.device, dtype=torch.float32).view(shape)
    std = torch.tensor(cfg.latent_std, device=z.device, dtype=torch.float32).view(shape)
    return mean, std


def normalize_latents(z: Tensor, cfg: VAEConfig) -> Tensor:
    """(z - latent_mean) / latent_std per channel (computed in fp32, returned in z's dtype); z itself when the VAE
    has no statistics (this project's VAEs, whose flow.latent_scale / latent_shift normalise alone)."""
    if not cfg.latent_mean:
        return z
    mean, std = _stats(z, cfg)
    return ((z.float() - mean) / std).to(z.dtype)


def denormalize_latents(z: Tensor, cfg: VAEConfig) -> Tensor:
    """The inverse of `normalize_latents`: what the VAE's decoder takes."""
    if not cfg.latent_mean:
        return z
    mean, std = _stats(z, cfg)
    return (z.float() * std + mean).to(z.dtype)


# ----------------------------------------------------------------------------------------------------
# streaming in time under a memory budget, tiling in space


def _model_dtype(vae: StreamingVAE) -> torch.dtype:
    return next(vae.parameters()).dtype


def _bytes_per_pixel(vae: StreamingVAE) -> int:
    """Peak activation bytes per output pixel and frame: ~8 full-resolution tensors of base_channels.

    Measured peak RSS of a decode chunk: ~21-30 x base_channels bytes in fp32 (tiny and small presets).
    """
    return 8 * vae.cfg.base_channels * torch.finfo(_model_dtype(vae)).bits // 8


def _auto_tile(vae: StreamingVAE, H: int, W: int, budget_mb: int) -> int | None:
    """No tiling while one latent frame's worth of video (4 frames) fits the budget; else a fitting tile."""
    budget = budget_mb * 2**20
    per_frame = _bytes_per_pixel(vae) * vae.temporal_factor
    if H * W * per_frame <= budget:
        return None
    s = vae.spatial_factor
    return max(8 * s, int(math.sqrt(budget / per_frame)) // s * s)


def _auto_chunk_latents(vae: StreamingVAE, tile_area: int, budget_mb: int) -> int:
    per_latent = _bytes_per_pixel(vae) * vae.temporal_factor * tile_area
    return max(1, budget_mb * 2**20 // per_latent)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts of tiles of length `tile` covering [0, size), neighbours sharing >= `overlap`."""
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / (tile - overlap)) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramp(n: int, ramp: int, lead: bool, trail: bool) -> Tensor:
    """1D blend weights of a tile: rise over `ramp` samples from an inner leading edge, fall to a trailing one.

    Weights stay > 0, so normalising by their sum is always defined, and they are continuous across tiles.
    """
    w = torch.ones(n)
    r = (torch.arange(min(ramp, n)) + 0.5) / ramp
    if lead and ramp > 0:
        w[: len(r)] = torch.minimum(w[: len(r)], r)
    if trail and ramp > 0:
        w[n - len(r) :] = torch.minimum(w[n - len(r) :], r.flip(0))
    return w


@dataclass(frozen=True)
class _Tiling:
    """Spatial tiles in latent units: starts along h and w, tile size and overlap (latent pixels)."""

    h: int
    w: int
    tile: int
    overlap: int
    hs: list[int]
    ws: list[int]

    @staticmethod
    def make(h: int, w: int, tile_px: int | None, overlap_px: int | None, s: int) -> _Tiling:
        if not tile_px:  # None or 0: one tile, the whole frame
            return _Tiling(h, w, max(h, w), 0, [0], [0])
        if tile_px % s or tile_px < 2 * s:
            raise ValueError(f"tile must be a multiple of {s} pixels and at least {2 * s}, got {tile_px}")
        overlap_px = max(s, tile_px // 4 // s * s) if overlap_px is None else overlap_px
        if overlap_px % s or not 0 <= overlap_px < tile_px:
            raise ValueError(f"overlap must be a multiple of {s} pixels below the tile size, got {overlap_px}")
        t, o = tile_px // s, overlap_px // s
        return _Tiling(h, w, t, o, _tile_starts(h, t, o), _tile_starts(w, t, o))

    def regions(self) -> list[tuple[int, int, int, int]]:
        """(h0, h1, w0, w1) of every tile, in latent units."""
        return [(h0, min(h0 + self.tile, self.h), w0, min(w0 + self.tile, self.w)) for h0 in self.hs for w0 in self.ws]

    def weight(self, region: tuple[int, int, int, int], scale: int) -> Tensor:
        """(h, w) blend weights of one tile at `scale` output pixels per latent pixel."""
        h0, h1, w0, w1 = region
        r = self.overlap * scale
        wh = _ramp((h1 - h0) * scale, r, h0 > 0, h1 < self.h)
        ww = _ramp((w1 - w0) * scale, r, w0 > 0, w1 < self.w)
        return wh[:, None] * ww[None, :]


def _blend_tiles(tiling: _Tiling, tiles: list[Tensor], scale: int) -> Tensor:
    """Blend the outputs of `tiling.regions()`, each (B, C, T, th, tw), into (B, C, T, h * scale, w * scale).

    With a single tile the output is returned as is (no blending arithmetic, so untiled stays exact).
    """
    regions = tiling.regions()
    assert len(tiles) == len(regions)
    if len(tiles) == 1:
        return tiles[0]
    B, C, T = tiles[0].shape[:3]
    out = tiles[0].new_zeros(B, C, T, tiling.h * scale, tiling.w * scale)
    norm = torch.zeros(tiling.h * scale, tiling.w * scale)
    for y, region in zip(tiles, regions):
        wgt = tiling.weight(region, scale)
        h0, h1, w0, w1 = (v * scale for v in region)
        out[:, :, :, h0:h1, w0:w1] += y * wgt.to(y)
        norm[h0:h1, w0:w1] += wgt
    return out / norm.to(out)


@torch.no_grad()
def encode_video(
    vae: StreamingVAE,
    video: Tensor,
    chunk_frames: int | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    budget_mb: int = 1024,
) -> Tensor:
    """Posterior means (B, C, 1 + k, H/8, W/8) of a video (B, 3, 1 + 4k, H, W) in [-1, 1], streamed.

    chunk_frames: frames per chunk after the first frame (a multiple of 4); None picks it from the budget.
    tile, overlap: spatial tile size and overlap in pixels (multiples of 8); tile None tiles only when one
    chunk of 4 frames would not fit the budget, 0 never tiles. Tiles are encoded separately and blended in
    latent space.
    """
    vae.check_video(video, vae.init_cache())
    B, _, T, H, W = video.shape
    s, f = vae.spatial_factor, vae.temporal_factor
    tile = _auto_tile(vae, H, W, budget_mb) if tile is None else tile
    tiling = _Tiling.make(H // s, W // s, tile, overlap, s)
    if chunk_frames is None:
        chunk_frames = f * _auto_chunk_latents(vae, (tiling.tile * s) ** 2, budget_mb)
    if chunk_frames < f or chunk_frames % f:
        raise ValueError(f"chunk_frames must be a positive multiple of {f}, got {chunk_frames}")
    video = video.to(_model_dtype(vae))
    caches = [vae.init_cache() for _ in tiling.regions()]
    outs: list[Tensor] = []
    start, stop = 0, 1 + chunk_frames
    while start < T:
        chunk = video[:, :, start:stop]  # (B, 3, t, H, W)
        tiles = []
        for i, (h0, h1, w0, w1) in enumerate(tiling.regions()):
            post, caches[i] = vae.encode(chunk[:, :, :, h0 * s : h1 * s, w0 * s : w1 * s], caches[i])
            tiles.append(post.mean)  # (B, C, t', th, tw)
        outs.append(_blend_tiles(tiling, tiles, scale=1))
        start, stop = stop, stop + chunk_frames
    return torch.cat(outs, dim=2)  # (B, C, 1 + k, h, w)


@torch.no_grad()
def decode_stream(
    vae: StreamingVAE,
    latents_iter: Iterable[Tensor],
    tile: int | None = None,
    overlap: int | None = None,
) -> Iterator[Tensor]:
    """Decode latent chunks as they come: yields frames (B, 3, t, H, W) in [-1, 1] for each chunk.

    The first chunk starts with the image latent (it gives 1 + 4 (n - 1) frames), later chunks of n latent
    frames give 4 n frames. Memory depends on the chunk size only, never on the length of the video.
    tile, overlap: as in `decode_video` (output pixels); the tiling is fixed by the first chunk's size.
    """
    tiling: _Tiling | None = None
    caches: list[VAECache] = []
    s = vae.spatial_factor
    for z in latents_iter:
        if tiling is None:
            vae.check_latents(z, vae.init_cache())
            tiling = _Tiling.make(z.shape[3], z.shape[4], tile, overlap, s)
            caches = [vae.init_cache() for _ in tiling.regions()]
        z = z.to(_model_dtype(vae))
        tiles = []
        for i, (h0, h1, w0, w1) in enumerate(tiling.regions()):
            x, caches[i] = vae.decode(z[:, :, :, h0:h1, w0:w1], caches[i])
            tiles.append(x)  # (B, 3, t, 8 th, 8 tw)
        yield _blend_tiles(tiling, tiles, scale=s).clamp_(-1.0, 1.0)


@torch.no_grad()
def decode_video(
    vae: StreamingVAE,
    latents: Tensor,
    chunk_latents: int | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    budget_mb: int = 1024,
) -> Tensor:
    """Latents (B, C, 1 + k, h, w) -> video (B, 3, 1 + 4k, 8 h, 8 w) in [-1, 1], streamed in time.

    chunk_latents: latent frames per chunk after the first; None picks it from the budget.
    tile, overlap: spatial tile size and overlap in output pixels (multiples of 8); tile None tiles only
    when one latent frame's worth of frames would not fit the budget, 0 never tiles. Seams are blended
    linearly.
    """
    vae.check_latents(latents, vae.init_cache())
    B, _, Tl, h, w = latents.shape
    s, f = vae.spatial_factor, vae.temporal_factor
    tile = _auto_tile(vae, h * s, w * s, budget_mb) if tile is None else tile
    if chunk_latents is None:
        area = (min(tile, h * s) * min(tile, w * s)) if tile else h * s * w * s
        chunk_latents = _auto_chunk_latents(vae, area, budget_mb)
    if chunk_latents < 1:
        raise ValueError(f"chunk_latents must be >= 1, got {chunk_latents}")
    bounds = [0, *range(1 + chunk_latents, Tl, chunk_latents), Tl] if Tl > 1 + chunk_latents else [0, Tl]
    chunks = (latents[:, :, a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    out = latents.new_empty(B, 3, 1 + f * (Tl - 1), h * s, w * s, dtype=_model_dtype(vae))
    t = 0
    for frames in decode_stream(vae, chunks, tile=tile, overlap=overlap):
        out[:, :, t : t + frames.shape[2]] = frames
        t += frames.shape[2]
    assert t == out.shape[2]
    return out
