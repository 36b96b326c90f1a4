"""The causal video VAE: shapes, causality, chunked equals whole, tiling, input errors, and that it learns."""

import copy

import pytest
import torch

from videodit.config import VAE_PRESETS, ConfigError, VAEConfig
from videodit.vae import (
    VideoVAE,
    _blend_tiles,
    _Tiling,
    decode_stream,
    decode_video,
    encode_video,
)
from videodit.vae_loss import PatchDiscriminator, discriminator_loss, vae_loss


def tiny_vae() -> VideoVAE:
    # random init, nudged so that no path is trivially zero (TimeUp starts as plain repetition)
    vae = VideoVAE(VAEConfig())
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return vae.eval()


@pytest.fixture(scope="module")
def vae() -> VideoVAE:
    torch.manual_seed(0)
    return tiny_vae()


def video(B=1, T=21, H=16, W=16) -> torch.Tensor:
    return torch.rand(B, 3, T, H, W) * 2 - 1


def stream_encode(vae: VideoVAE, x: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    cache, out, t = vae.init_cache(), [], 0
    for n in chunks:
        post, cache = vae.encode(x[:, :, t : t + n], cache)
        out.append(post.mean)
        t += n
    assert t == x.shape[2]
    return torch.cat(out, dim=2)


def stream_decode(vae: VideoVAE, z: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    cache, out, t = vae.init_cache(), [], 0
    for n in chunks:
        x, cache = vae.decode(z[:, :, t : t + n], cache)
        out.append(x)
        t += n
    assert t == z.shape[2]
    return torch.cat(out, dim=2)


@torch.no_grad()
def test_shapes_and_an_image_is_a_one_frame_video(vae):
    x = video(B=2, T=9, H=24, W=16)
    post, _ = vae.encode(x, vae.init_cache())
    assert post.mean.shape == post.logvar.shape == (2, 16, 3, 3, 2)
    y, _ = vae.decode(post.mean, vae.init_cache())
    assert y.shape == x.shape
    recon, mean, logvar = vae(x)
    assert recon.shape == x.shape and mean.shape == (2, 16, 3, 3, 2)
    image, _ = vae.encode(x[:, :, :1], vae.init_cache())  # the first frame alone
    assert image.mean.shape == (2, 16, 1, 3, 2)
    torch.testing.assert_close(image.mean, post.mean[:, :, :1], rtol=0, atol=1e-5)
    frame, _ = vae.decode(post.mean[:, :, :1], vae.init_cache())
    torch.testing.assert_close(frame, y[:, :, :1], rtol=0, atol=1e-5)


@torch.no_grad()
def test_encode_is_causal(vae):
    x = video(T=13)
    z = vae.encode(x, vae.init_cache())[0].mean
    x2 = x.clone()
    x2[:, :, 5:] = torch.rand_like(x2[:, :, 5:])  # frames 0..4 are latents 0 (frame 0) and 1 (frames 1-4)
    z2 = vae.encode(x2, vae.init_cache())[0].mean
    assert torch.equal(z[:, :, :2], z2[:, :, :2])
    assert (z[:, :, 2:] - z2[:, :, 2:]).abs().amax() > 1e-3
    x3 = x.clone()
    x3[:, :, 1:] = 0  # the first frame is encoded on its own
    assert torch.equal(vae.encode(x3, vae.init_cache())[0].mean[:, :, 0], z[:, :, 0])


@torch.no_grad()
def test_decode_is_causal(vae):
    z = torch.randn(1, 16, 5, 2, 2)
    y = vae.decode(z, vae.init_cache())[0]
    z2 = z.clone()
    z2[:, :, 2:] += torch.randn_like(z2[:, :, 2:])  # latents 0, 1 give frames 0..4
    y2 = vae.decode(z2, vae.init_cache())[0]
    assert torch.equal(y[:, :, :5], y2[:, :, :5])
    assert (y[:, :, 5:] - y2[:, :, 5:]).abs().amax() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[1, 4, 8, 8], [1, 12, 8], [5, 16], [1, 4, 4, 4, 4, 4], [21]])
def test_chunked_encode_equals_whole(vae, chunks):
    x = video(B=2, T=21)  # 1 + 4 * 5 frames -> 6 latent frames
    whole = vae.encode(x, vae.init_cache())[0].mean
    assert (stream_encode(vae, x, chunks) - whole).abs().amax() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1, 1, 1], [1, 2, 4], [3, 3, 1], [1, 6], [7]])
def test_chunked_decode_equals_whole(vae, chunks):
    z = torch.randn(2, 16, 7, 2, 2)  # 7 latent frames -> 25 frames
    whole = vae.decode(z, vae.init_cache())[0]
    assert whole.shape[2] == 25
    assert (stream_decode(vae, z, chunks) - whole).abs().amax() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("upsample", ["interp", "transposed"])
def test_kernel_choices_compute_the_same_function(vae, upsample):
    x, z = video(B=2, T=13), torch.randn(2, 16, 5, 2, 2)
    ref_mean, ref_frames = vae.encode(x, vae.init_cache())[0].mean, vae.decode(z, vae.init_cache())[0]
    fast = copy.deepcopy(vae).set_kernels(upsample=upsample)
    assert (fast.encode(x, fast.init_cache())[0].mean - ref_mean).abs().amax() <= 1e-5
    assert (fast.decode(z, fast.init_cache())[0] - ref_frames).abs().amax() <= 1e-5
    assert (stream_decode(fast, z, [1, 2, 2]) - ref_frames).abs().amax() <= 1e-5  # chunked equals whole too
    assert (stream_encode(fast, x, [1, 4, 8]) - ref_mean).abs().amax() <= 1e-5


def test_unknown_kernel_choice_is_a_clear_error(vae):
    with pytest.raises(ValueError, match="upsample kernel must be 'auto' or one of"):
        copy.deepcopy(vae).set_kernels(upsample="bilinear")


@torch.no_grad()
def test_streaming_helpers_equal_whole(vae):
    x = video(T=17)
    z = vae.encode(x, vae.init_cache())[0].mean
    assert (encode_video(vae, x, chunk_frames=4) - z).abs().amax() <= 1e-5
    assert (encode_video(vae, x, chunk_frames=8, budget_mb=1) - z).abs().amax() <= 1e-5
    y = vae.decode(z, vae.init_cache())[0].clamp(-1, 1)
    assert (decode_video(vae, z, chunk_latents=1) - y).abs().amax() <= 1e-5
    assert (decode_video(vae, z) - y).abs().amax() <= 1e-5
    chunks = [z[:, :, :1], z[:, :, 1:3], z[:, :, 3:]]
    frames = list(decode_stream(vae, iter(chunks)))
    assert [f.shape[2] for f in frames] == [1, 8, 8]
    assert (torch.cat(frames, dim=2) - y).abs().amax() <= 1e-5


@torch.no_grad()
def test_cache_is_small_and_does_not_grow(vae):
    z = torch.randn(1, 16, 1 + 2 * 12, 2, 2)
    cache, sizes = vae.init_cache(), []
    _, cache = vae.decode(z[:, :, :1], cache)
    for i in range(1, z.shape[2], 2):
        _, cache = vae.decode(z[:, :, i : i + 2], cache)
        sizes.append(sum(t.numel() for t in cache.frames.values()))
    assert len(set(sizes)) == 1  # flat in the length of the video
    assert max(t.shape[2] for t in cache.frames.values()) <= 2  # a causal conv needs at most 2 past frames
    assert cache.seen == z.shape[2] and cache.role == "decode"


@torch.no_grad()
def test_tiled_decode_equals_untiled_away_from_seams(vae):
    # 32x32 latents (256 px) in 3x3 tiles of 128 px; the decoder sees ~10 latents (~80 px) each side
    z = torch.randn(1, 16, 1, 32, 32)
    whole = decode_video(vae, z, tile=0)
    tiled = decode_video(vae, z, tile=128, overlap=32)
    assert tiled.shape == whole.shape == (1, 3, 1, 256, 256)
    # beyond the receptive field from every inner tile edge, one tile alone covers the pixel: exact
    assert (tiled - whole)[..., :40, :40].abs().amax() <= 1e-5
    assert (tiled - whole)[..., 216:, 216:].abs().amax() <= 1e-5
    assert (tiled - whole)[..., :40, 216:].abs().amax() <= 1e-5
    # tiles stream in time with their own caches: chunked tiled == whole tiled
    z = torch.randn(1, 16, 3, 12, 12)
    whole = decode_video(vae, z, tile=64, chunk_latents=3)
    chunked = decode_video(vae, z, tile=64, chunk_latents=1)
    assert (whole - chunked).abs().amax() <= 1e-5
    x = video(T=5, H=96, W=96)
    assert encode_video(vae, x, tile=64).shape == (1, 16, 2, 12, 12)
    assert (encode_video(vae, x, tile=64, chunk_frames=4) - encode_video(vae, x, tile=64)).abs().amax() <= 1e-5


def test_seams_are_blended_linearly():
    # every tile returns a constant (its index): blending must ramp between neighbours, never jump
    tiling = _Tiling.make(h=4, w=20, tile_px=64, overlap_px=16, s=8)  # tiles of 8 latents, overlap 2
    assert len(tiling.regions()) == 3 and tiling.ws == [0, 6, 12]
    tiles = [torch.full((1, 1, 1, (h1 - h0) * 8, (w1 - w0) * 8), float(i))
             for i, (h0, h1, w0, w1) in enumerate(tiling.regions())]
    out = _blend_tiles(tiling, tiles, scale=8)
    row = out[0, 0, 0, 0]  # (160,)
    steps = row[1:] - row[:-1]
    assert steps.min() >= 0 and steps.max() <= 1 / 16 + 1e-6  # ramps over the 16-pixel overlap
    assert row[:48].eq(0).all() and row[-48:].eq(2).all()  # one tile alone: its own values
    assert torch.equal(out, out[:, :, :, :1].expand_as(out))  # only one row of tiles


@torch.no_grad()
def test_pixel_mean_codes_the_difference_to_the_data_mean(vae):
    # a VAE told the data mean sees dark data as a VAE without it sees zero-mean data
    m = (-0.7, -0.75, -0.8)
    shifted = VideoVAE(VAEConfig(pixel_mean=m)).eval()
    shifted.load_state_dict(vae.state_dict())
    x = video(T=5) * 0.2
    offset = torch.tensor(m).view(1, 3, 1, 1, 1)
    z = vae.encode(x, vae.init_cache())[0].mean
    torch.testing.assert_close(shifted.encode(x + offset, shifted.init_cache())[0].mean, z, rtol=0, atol=1e-5)
    y = vae.decode(z, vae.init_cache())[0]
    torch.testing.assert_close(shifted.decode(z, shifted.init_cache())[0], y + offset, rtol=0, atol=1e-5)


@torch.no_grad()
def test_bad_inputs_raise_clear_errors(vae):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(video(T=4), vae.init_cache())
    with pytest.raises(ValueError, match="RGB"):
        vae.encode(torch.zeros(1, 4, 5, 16, 16), vae.init_cache())
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(video(T=5, H=20), vae.init_cache())
    with pytest.raises(ValueError, match="unsqueeze"):
        vae.encode(torch.zeros(1, 3, 16, 16), vae.init_cache())
    _, cache = vae.encode(video(T=1), vae.init_cache())
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(video(T=3), cache)
    with pytest.raises(ValueError, match="init_cache"):
        vae.decode(torch.zeros(1, 16, 1, 2, 2), cache)
    with pytest.raises(ValueError, match="latents"):
        vae.decode(torch.zeros(1, 8, 2, 2, 2), vae.init_cache())
    with pytest.raises(ValueError, match="multiple of 4"):
        encode_video(vae, video(T=9), chunk_frames=6)
    with pytest.raises(ValueError, match="tile"):
        decode_video(vae, torch.zeros(1, 16, 1, 8, 8), tile=36)
    with pytest.raises(ConfigError, match="temporal_down"):
        VideoVAE(VAEConfig(temporal_down=(True, True)))


def test_presets():
    tiny = sum(p.numel() for p in VideoVAE(VAEConfig(**VAE_PRESETS["tiny"])).parameters())
    assert 1e6 < tiny < 3e6
    assert set(VAE_PRESETS) >= {"tiny", "small", "full"}


def moving_squares(B: int, T: int, S: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    out = torch.empty(B, 3, T, S, S)
    r = S // 6
    for b in range(B):
        bg, fg = torch.rand(2, 3, 1, 1, generator=g) * 2 - 1
        x0, y0 = torch.randint(r, S - r - T, (2,), generator=g).tolist()
        for t in range(T):
            inside = ((xx - x0 - t).abs() < r) & ((yy - y0 - t // 2).abs() < r)
            out[b, :, t] = torch.where(inside, fg, bg)
    return out


def test_training_steps_reduce_reconstruction_error_5x():
    torch.manual_seed(0)
    cfg = VAEConfig()
    vae = VideoVAE(cfg)
    x = moving_squares(B=2, T=5, S=16)

    def errors() -> tuple[float, float]:
        with torch.no_grad():
            recon = vae.decode(vae.encode(x, vae.init_cache())[0].mean, vae.init_cache())[0]
        return (recon - x).abs().mean().item(), (recon - x).pow(2).mean().item()

    l1_0, mse_0 = errors()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    for step in range(120):
        loss, logs = vae_loss(vae, x, cfg, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        warmup.step()
    l1, mse = errors()
    assert set(logs) >= {"l1", "ssim", "kl", "psnr", "loss"}
    assert l1_0 / l1 >= 5 and mse_0 / mse >= 5, (l1_0, l1, mse_0, mse)


def test_training_forward_is_stateless_and_checkpointable():
    # train.py may wrap every block of a ModuleList in activation checkpointing, which re-runs its forward
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    torch.manual_seed(0)
    vae, x = tiny_vae().train(), video(B=2, T=5)

    def grads(model: VideoVAE) -> list[torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)  # the same posterior sample
        recon, mean, logvar = model(x)
        (recon.square().mean() + mean.square().mean()).backward()
        return [p.grad.clone() for p in model.parameters()]

    with torch.no_grad():
        torch.testing.assert_close(vae(x)[1], vae.encode(x, vae.init_cache())[0].mean, rtol=0, atol=1e-5)
    plain = grads(vae)
    for part in (vae.encoder, vae.decoder):
        for i, block in enumerate(part.blocks):
            part.blocks[i] = checkpoint_wrapper(block)
    for a, b in zip(plain, grads(vae)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_loss_takes_images_and_gan_terms_train_only_their_side():
    torch.manual_seed(0)
    cfg = VAEConfig(gan_weight=0.5, gan_start_step=10)
    vae, disc = VideoVAE(cfg), PatchDiscriminator(channels=8, layers=2)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    loss, logs = vae_loss(vae, images, cfg, step=0, discriminator=disc)
    assert loss.ndim == 0 and "gan_g" not in logs  # before gan_start_step: no adversarial terms
    x = video(B=2, T=5)
    torch.manual_seed(1)
    loss, logs = vae_loss(vae, x, cfg, step=10, discriminator=disc)
    assert {"gan_g", "gan_d"} <= set(logs)
    loss.backward()
    # the discriminator's gradient is that of its own hinge loss alone (the generator term is frozen for it)
    got = [p.grad.clone() for p in disc.parameters()]
    disc.zero_grad()
    torch.manual_seed(1)
    recon = vae(x)[0].detach()
    discriminator_loss(disc, x, recon).backward()
    for g, p in zip(got, disc.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())


def test_detail_weight_counts_the_pixels_that_stand_out_more():
    """vae.detail_weight: the L1 term is weighted per pixel by flow.detail_weights of the clip (mean 1 per
    frame), so an error on a small object costs more than the same error on the background."""
    from videodit.flow import detail_weights

    torch.manual_seed(0)
    x = torch.full((1, 3, 5, 16, 16), -0.8)
    x[:, :, :, 4:7, 4:7] = 0.9  # a small bright square on a dark background

    class Fixed(torch.nn.Module):  # a "VAE" whose reconstruction we choose
        def __init__(self, recon):
            super().__init__()
            self.recon = recon

        def forward(self, v):
            return self.recon, torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)

    on_object, on_background = x.clone(), x.clone()
    on_object[:, :, :, 5, 5] -= 0.5
    on_background[:, :, :, 12, 12] -= 0.5
    plain, weighted = VAEConfig(ssim_weight=0.0), VAEConfig(ssim_weight=0.0, detail_weight=4.0)
    lp = [vae_loss(Fixed(r), x, plain, 0)[1]["l1"] for r in (on_object, on_background)]
    lw = [vae_loss(Fixed(r), x, weighted, 0)[1]["l1"] for r in (on_object, on_background)]
    assert lp[0] == pytest.approx(lp[1]) and lw[0] > 3 * lw[1]
    expected = ((on_object - x).abs() * detail_weights(x, 4.0)).mean()
    assert lw[0] == pytest.approx(float(expected), rel=1e-5)
