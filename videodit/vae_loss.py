"""Training objective of the video VAE: L1 + SSIM + KL, and an optional 3D patch-GAN (hinge).

Reconstruction follows the latent-diffusion autoencoders (Rombach et al. 2022) and their video heirs
(MAGVIT-v2, CogVideoX, Wan): a pixel L1, a structural term (1 - SSIM, Wang et al. 2004, per frame), a
weak KL to N(0, I) and, after a warm-up, an adversarial hinge loss from a small 3D PatchGAN (Isola et al.
2017) that sharpens textures. Images and videos share one path: an image is a one-frame video.

Usage in a training loop (one backward, one optimizer step for the VAE and the discriminator):

    loss, logs = vae_loss(vae, video, cfg.vae, step, discriminator)
    loss.backward()   # the discriminator's parameters get gradients from its own hinge term only

so the discriminator's parameters go into the optimizer next to the VAE's (or into a second optimizer
stepped at the same time). Without a discriminator, or with cfg.gan_weight == 0, it is plain VAE training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from videodit.config import VAEConfig
from videodit.flow import detail_weights
from videodit.vae import VideoVAE


class PatchDiscriminator(nn.Module):
    """A small 3D PatchGAN: (B, 3, T, H, W) in [-1, 1] -> logits (B, 1, T, H / 2^layers, W / 2^layers).

    Strided only in space, so it takes one-frame videos (images) as well; each logit judges a space-time
    patch, which punishes blur and flicker locally.
    """

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [
            nn.Conv3d(3, channels, (3, 4, 4), stride=(1, 2, 2), padding=1),
            nn.LeakyReLU(0.2),
        ]
        c = channels
        for i in range(1, layers):
            c_next = channels * min(2**i, 8)
            seq += [
                nn.Conv3d(c, c_next, (3, 4, 4), stride=(1, 2, 2), padding=1, bias=False),
                nn.GroupNorm(min(32, c_next // 4), c_next),
                nn.LeakyReLU(0.2),
            ]
            c = c_next
        seq.append(nn.Conv3d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, 1, T, H', W')


def gan_active(cfg: VAEConfig, step: int) -> bool:
    """Whether the adversarial terms (generator and discriminator) are on at this step."""
    return cfg.gan_weight > 0 and step >= cfg.gan_start_step


def discriminator_loss(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Hinge loss of the discriminator; `fake` should be detached from the VAE's graph."""
    return F.relu(1.0 - discriminator(real)).mean() + F.relu(1.0 + discriminator(fake)).mean()


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    r = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two videos (B, 3, T, H, W) in [-1, 1], computed per frame and channel (valid windows)."""
    # fp32: the variances are small differences of squares that bf16 would cancel away
    a = (a.float().flatten(0, 2).unsqueeze(1) + 1) / 2  # (B 3 T, 1, H, W) in [0, 1]
    b = (b.float().flatten(0, 2).unsqueeze(1) + 1) / 2
    window = min(window, a.shape[-1], a.shape[-2])
    g = _gaussian_window(window, sigma, a.device)
    gh, gw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)
    blur = lambda x: F.conv2d(F.conv2d(x, gh), gw)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def vae_loss(
    vae: VideoVAE,
    video: Tensor,
    cfg: VAEConfig,
    step: int,
    discriminator: nn.Module | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of one batch and scalars for logging.

    video: (B, 3, T, H, W) with T = 1 + 4k, or images (B, 3, H, W); values in [-1, 1].
    loss = L1 + cfg.ssim_weight (1 - SSIM) + cfg.kl_weight KL  (L1 detail-weighted when cfg.detail_weight > 0)
           [+ cfg.gan_weight (-D(recon)) + hinge loss of D on (video, recon.detach()) once gan_active]
    The KL is summed over latent elements and divided by the number of pixel values, so with a mean L1
    its weight means what it means in the latent-diffusion autoencoders (sum / sum, 1e-6).
    """
    if video.ndim == 4:
        video = video.unsqueeze(2)  # an image is a one-frame video
    recon, mean, logvar = vae(video)  # (B, 3, T, H, W), (B, C, T', h, w) twice
    err = (recon - video).abs()
    if cfg.detail_weight > 0:
        err = err * detail_weights(video, cfg.detail_weight)
    l1 = err.mean()
    s = ssim(recon, video)
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum() / video.numel()
    loss = l1 + cfg.ssim_weight * (1.0 - s) + cfg.kl_weight * kl
    logs = {"l1": l1.item(), "ssim": s.item(), "kl": kl.item()}
    if discriminator is not None and gan_active(cfg, step):
        # the generator term must not train the discriminator: call it with detached parameters
        frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
        g_loss = -functional_call(discriminator, frozen, (recon,)).mean()
        d_loss = discriminator_loss(discriminator, video, recon.detach())
        loss = loss + cfg.gan_weight * g_loss + d_loss
        logs.update(gan_g=g_loss.item(), gan_d=d_loss.item())
    with torch.no_grad():
        mse = F.mse_loss(recon.float().clamp(-1, 1), video.float())
        logs["psnr"] = (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).item()  # peak-to-peak range is 2
    logs["loss"] = loss.item()
    return loss, logs
