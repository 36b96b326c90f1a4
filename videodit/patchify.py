"""Spacetime patches (Sora technical report 2024; ViViT tubelets, Arnab et al. 2021).

Latents (B, C, T, H, W) become tokens (B, T', S, D_in) with T' = T / pt, S = (H / ph) (W / pw) and
D_in = C pt ph pw, and back exactly. Keeping time as its own token axis is what lets the DiT factorize
attention into space (over S) and time (over T').
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor


def check_divisible(T: int, H: int, W: int, patch: tuple[int, int, int]) -> None:
    pt, ph, pw = patch
    if T % pt or H % ph or W % pw:
        raise ValueError(
            f"latent size (T={T}, H={H}, W={W}) is not divisible by the patch (pt={pt}, ph={ph}, pw={pw}); "
            f"choose a video length and size whose latents divide the patch (e.g. pixel size a multiple of "
            f"{8 * ph})"
        )


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(B, C, T, H, W) -> (B, T', S, C pt ph pw)."""
    B, C, T, H, W = x.shape
    check_divisible(T, H, W, patch)
    pt, ph, pw = patch
    return rearrange(x, "b c (t pt) (h ph) (w pw) -> b t (h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)


def unpatchify(tokens: Tensor, patch: tuple[int, int, int], H: int, W: int) -> Tensor:
    """(B, T', S, C pt ph pw) -> (B, C, T' pt, H, W), where H and W are the latent (not token) sizes."""
    pt, ph, pw = patch
    return rearrange(
        tokens, "b t (h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", h=H // ph, w=W // pw, pt=pt, ph=ph, pw=pw
    )
