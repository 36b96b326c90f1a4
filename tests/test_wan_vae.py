"""Wan 2.1's VAE (videodit/vae_wan.py) and its converter (videodit/convert.py) against diffusers' AutoencoderKLWan:
a random one with the real block structure at a tiny width, converted from its diffusers folder and from Wan's
original .pth layout, must give diffusers' latents and frames, whole and streamed; causality; converter errors;
the per-channel latent statistics reaching the DiT; bf16."""

import copy
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

from videodit.checkpoint import load_vae, read_config
from videodit.config import VAE_PRESETS, Config, ConfigError, VAEConfig, from_dict
from videodit.convert import convert_wan_vae
from videodit.convert import main as convert_main
from videodit.vae import decode_video, denormalize_latents, encode_video, normalize_latents
from videodit.vae_wan import WanVAE, build_vae

ATOL = 1e-4
TINY = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny"  # its text encoder, for the cache
SIZES = [(1, 16, 24), (5, 24, 16), (9, 16, 24)]  # (T, H, W): 1 + 4k frames, non-square


def original_layout(state: dict[str, torch.Tensor], nres: int) -> dict[str, torch.Tensor]:
    """diffusers' key names -> Wan-Video/Wan2.1's (wan/modules/vae.py): written from that file's module tree, apart
    from the converter's table."""
    res = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}
    out = {}
    for k, v in state.items():
        k = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", k)
        k = re.sub(r"^quant_conv\.", "conv1.", k)
        k = re.sub(r"^post_quant_conv\.", "conv2.", k)
        k = re.sub(r"\.norm_out\.", ".head.0.", k)
        k = re.sub(r"\.conv_out\.", ".head.2.", k)
        k = re.sub(r"\.mid_block\.resnets\.0\.", ".middle.0.", k)
        k = re.sub(r"\.mid_block\.attentions\.0\.", ".middle.1.", k)
        k = re.sub(r"\.mid_block\.resnets\.1\.", ".middle.2.", k)
        k = k.replace("encoder.down_blocks.", "encoder.downsamples.")
        # each decoder stage: nres + 1 residual blocks, then its up-sampler, in one flat list
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda m: f"decoder.upsamples.{int(m[1]) * (nres + 2) + int(m[2])}.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.upsamples.{int(m[1]) * (nres + 2) + nres + 1}.", k)
        for a, b in res.items():
            if re.search(rf"\.(downsamples|upsamples|middle)\.\d+\.{re.escape(a)}(\.|$)", k):
                k = re.sub(rf"\.{re.escape(a)}(\.|$)", rf".{b}\1", k)
        out[k] = v.clone()
    return out


@pytest.fixture(scope="module")
def folders(wan_ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    wan_ref.save_pretrained(root / "diffusers")
    torch.save(original_layout(wan_ref.state_dict(), 2), root / "Wan2.1_VAE.pth")
    convert_wan_vae(root / "diffusers", root / "from_diffusers")
    convert_wan_vae(root / "Wan2.1_VAE.pth", root / "from_pth")
    return root


@pytest.fixture(scope="module", params=["from_diffusers", "from_pth"])
def ours(folders, request) -> WanVAE:
    return load_vae(folders / request.param)


def stream(step, x: torch.Tensor, chunks: list[int], cache) -> torch.Tensor:
    out, t = [], 0
    for n in chunks:
        y, cache = step(x[:, :, t : t + n], cache)
        out.append(y)
        t += n
    assert t == x.shape[2]
    return torch.cat(out, dim=2)


@torch.no_grad()
@pytest.mark.parametrize("T,H,W", SIZES)
def test_encode_and_decode_equal_diffusers_whole_and_streamed(wan_ref, ours, T, H, W):
    torch.manual_seed(T)
    x = torch.rand(2, 3, T, H, W) * 2 - 1
    want = wan_ref.encode(x).latent_dist
    post, _ = ours.encode(x, ours.init_cache())
    assert post.mean.shape == want.mean.shape == (2, 16, 1 + (T - 1) // 4, H // 8, W // 8)
    assert torch.allclose(post.mean, want.mean, atol=ATOL) and torch.allclose(post.logvar, want.logvar, atol=ATOL)
    # chunk by chunk, as Wan does (1, then 4 at a time) and in uneven chunks; and the streaming helper
    for chunks in ([1] + [4] * ((T - 1) // 4), [T], [5, 4][: 1 + (T > 5)] if T > 1 else [1]):
        mean = stream(lambda c, k: (lambda p, k2: (p.mean, k2))(*ours.encode(c, k)), x, chunks, ours.init_cache())
        assert torch.allclose(mean, want.mean, atol=ATOL), chunks
    assert torch.allclose(encode_video(ours, x, chunk_frames=4, tile=0), want.mean, atol=ATOL)

    z = want.mean
    frames = wan_ref.decode(z).sample  # clamped to [-1, 1], as ours
    assert 0.5 < (frames.abs() < 1).float().mean()  # not all saturated: the comparison sees values
    got, _ = ours.decode(z, ours.init_cache())
    assert got.shape == frames.shape == (2, 3, T, H, W) and torch.allclose(got, frames, atol=ATOL)
    Tl = z.shape[2]
    for chunks in ([1] * Tl, [Tl], [2, 1][: Tl] if Tl == 3 else [Tl]):
        assert torch.allclose(stream(ours.decode, z, chunks, ours.init_cache()), frames, atol=ATOL), chunks
    assert torch.allclose(decode_video(ours, z, chunk_latents=1, tile=0), frames, atol=ATOL)


@torch.no_grad()
def test_causal_latents_and_frames_depend_on_the_past_only(folders):
    vae = load_vae(folders / "from_diffusers")
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    z, _ = vae.encode(x, vae.init_cache())
    for t in (1, 5):  # frames from t on changed: the latents of frames < t (1 + (t - 1) / 4 of them) stay
        x2 = x.clone()
        x2[:, :, t:] = torch.rand_like(x2[:, :, t:]) * 2 - 1
        z2, _ = vae.encode(x2, vae.init_cache())
        n = 1 + (t - 1) // 4
        assert torch.allclose(z2.mean[:, :, :n], z.mean[:, :, :n], atol=1e-6)
        assert not torch.allclose(z2.mean[:, :, n:], z.mean[:, :, n:], atol=1e-3)
    frames, _ = vae.decode(z.mean, vae.init_cache())
    for j in (1, 2):  # latent frames from j on changed: frames 0 .. 4 (j - 1) stay
        zz = z.mean.clone()
        zz[:, :, j:] = torch.randn_like(zz[:, :, j:])
        f2, _ = vae.decode(zz, vae.init_cache())
        n = 1 + 4 * (j - 1)
        assert torch.allclose(f2[:, :, :n], frames[:, :, :n], atol=1e-6)
        assert not torch.allclose(f2[:, :, n:], frames[:, :, n:], atol=1e-3)


def test_converted_config_is_wan21_with_diffusers_statistics(wan_ref, folders):
    for name in ("from_diffusers", "from_pth"):
        cfg = read_config(folders / name)
        v = cfg.vae
        assert (v.arch, v.base_channels, v.channel_mults, v.num_res_blocks, v.temporal_down, v.latent_channels) == (
            "wan21", 8, (1, 2, 4, 4), 2, (False, True, True), 16)
        assert v.latent_mean == pytest.approx(wan_ref.config.latents_mean) and v.latent_std == pytest.approx(
            wan_ref.config.latents_std)
        assert cfg.model.in_channels == 16
    # the preset is the released configuration, with diffusers' statistics
    released = from_dict({"vae": {"preset": "wan21"}}).vae
    default = AutoencoderKLWan.load_config(folders / "diffusers")  # the defaults diffusers writes
    assert (released.base_channels, released.num_res_blocks) == (96, 2)
    assert released.latent_mean == pytest.approx(default["latents_mean"])
    assert released.latent_std == pytest.approx(default["latents_std"])


@torch.no_grad()
def test_latent_statistics_reach_the_dit(wan_ref, folders):
    """Normalised latents are diffusers' Wan pipeline's (z - mean) / std; training encodes clips to them and
    estimates no scalar on top; generation maps them back before decoding."""
    from videodit.data.datasets import ShapesDataset, collate
    from videodit.train.tasks import DiTTask

    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = wan_ref.encode(x).latent_dist.mean
    mean = torch.tensor(wan_ref.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(wan_ref.config.latents_std).view(1, 16, 1, 1, 1)
    cfg = read_config(folders / "from_diffusers").vae
    assert torch.allclose(normalize_latents(z, cfg), (z - mean) / std, atol=1e-6)
    assert torch.allclose(denormalize_latents(normalize_latents(z, cfg), cfg), z, atol=1e-5)
    assert normalize_latents(z, VAEConfig()) is z  # this project's VAEs: no per-channel step

    run = Config()
    run.train.vae = str(folders / "from_diffusers")
    run.data.frames, run.data.size = 5, 16
    task = DiTTask(run, torch.device("cpu"))
    assert task.cfg.vae.arch == "wan21" and task.cfg.vae.latent_mean == cfg.latent_mean
    ds = ShapesDataset(num=2, frames=5, size=16, fps=8, seed=0)
    task.estimate_latent_stats(ds)
    assert (run.flow.latent_scale, run.flow.latent_shift) == (1.0, 0.0)
    batch = collate([ds[0]])
    want = (wan_ref.encode(batch["video"]).latent_dist.mean - mean) / std
    assert torch.allclose(task.latents(batch), want, atol=ATOL)


def test_videodit_data_cache_loads_a_converted_folder(wan_ref, folders):
    from videodit.data.cache import cache
    from videodit.data.datasets import ShapesDataset, ShardDataset

    out = folders / "shards"
    cache(None, folders / "from_pth", out, text_encoder=TINY, frames=[5], size=16, fps=8,
          shard_size=4, batch_size=2, progress=False, shapes=2, seed=0)
    ds = ShardDataset(out)
    clip = ShapesDataset(num=2, frames=5, size=16, fps=8, seed=0)[1]
    with torch.no_grad():
        want = wan_ref.encode(clip["video"][None]).latent_dist.mean[0]
    assert len(ds) == 2 and torch.allclose(ds[1]["latents"], want, atol=ATOL)  # raw latents, as the shards keep


@pytest.mark.parametrize("damage,needle", [
    ("missing", "missing 1 key(s): decoder.upsamples.13.residual.2.weight"),
    ("unexpected", "unexpected 1 key(s): encoder.extra.weight"),
    ("garbage", "cannot read"),
    ("other_model", "is not a Wan 2.1 VAE"),
    ("shape", "has shape"),
])
def test_converter_errors_are_one_line_and_write_nothing(wan_ref, tmp_path, capsys, damage, needle):
    state = original_layout(wan_ref.state_dict(), 2)
    src = tmp_path / "Wan2.1_VAE.pth"
    if damage == "missing":
        del state["decoder.upsamples.13.residual.2.weight"]
    elif damage == "unexpected":
        state["encoder.extra.weight"] = torch.zeros(3)
    elif damage == "other_model":
        state = build_vae(VAEConfig()).state_dict()  # this project's VAE
    elif damage == "shape":
        state["encoder.head.2.weight"] = torch.zeros(5, 5)
    if damage == "garbage":
        src.write_bytes(b"\x00garbage, not a weights file" * 10)
    else:
        torch.save(state, src)
    out = tmp_path / "out"
    assert convert_main(["wan-vae", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["Wan2.1_VAE.pth"]  # no temp left


def test_converter_refuses_other_diffusers_models_and_a_full_out(wan_ref, folders, tmp_path, capsys):
    cfg_path = folders / "diffusers" / "config.json"
    other = tmp_path / "wan22"
    other.mkdir()
    (other / "config.json").write_text(cfg_path.read_text().replace('"is_residual": false', '"is_residual": true'))
    assert convert_main(["wan-vae", str(other), str(tmp_path / "o")]) == 2
    assert "is_residual" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert convert_main(["wan-vae", str(folders / "diffusers"), str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err and (tmp_path / "full" / "x").read_text() == "keep"
    assert convert_main(["wan-vae", str(folders / "diffusers"), str(tmp_path / "new")]) == 0
    assert "converted" in capsys.readouterr().out and (tmp_path / "new" / "vae.safetensors").is_file()


def test_config_checks():
    with pytest.raises(ConfigError, match="vae.arch"):
        from_dict({"vae": {"arch": "sd"}})
    with pytest.raises(ConfigError, match="one entry per latent channel"):
        from_dict({"vae": {"latent_mean": [0.0], "latent_std": [1.0]}})
    with pytest.raises(ConfigError, match="pixel_mean"):
        from_dict({"vae": {"preset": "wan21", "pixel_mean": [0.1, 0.0, 0.0]}})
    assert isinstance(build_vae(VAEConfig(**{**VAE_PRESETS["wan21"], "base_channels": 4})), WanVAE)


@torch.no_grad()
def test_bf16_runs_close_to_fp32_as_diffusers_bf16_does(wan_ref, folders):
    vae = load_vae(folders / "from_diffusers")
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z32, _ = vae.encode(x, vae.init_cache())
    f32, _ = vae.decode(z32.mean, vae.init_cache())
    vae = vae.to(torch.bfloat16)
    z16, _ = vae.encode(x.bfloat16(), vae.init_cache())
    f16, _ = vae.decode(z32.mean.bfloat16(), vae.init_cache())
    assert z16.mean.dtype == f16.dtype == torch.bfloat16
    assert (z16.mean.float() - z32.mean).abs().max() < 0.05 * z32.mean.abs().max()
    theirs = copy.deepcopy(wan_ref).to(torch.bfloat16).decode(z32.mean.bfloat16()).sample
    ours_err, their_err = (f16.float() - f32).abs().mean(), (theirs.float() - f32).abs().mean()
    assert ours_err < 0.02 and ours_err < 1.5 * their_err, (ours_err, their_err)


def test_forward_for_fine_tuning_is_the_stateless_encode_then_decode_of_a_sample(folders):
    from videodit.vae_loss import vae_loss

    vae = load_vae(folders / "from_diffusers").train()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    torch.manual_seed(1)
    recon, mean, logvar = vae(x)
    with torch.no_grad():
        post, _ = vae.encode(x, vae.init_cache())
        torch.manual_seed(1)
        frames, _ = vae.decode(post.sample(), vae.init_cache())
    assert torch.allclose(mean, post.mean, atol=1e-5) and torch.allclose(logvar, post.logvar, atol=1e-5)
    assert torch.allclose(recon.clamp(-1, 1), frames, atol=1e-5)
    loss, _ = vae_loss(vae, x, read_config(folders / "from_diffusers").vae, step=0)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())


@torch.no_grad()
def test_spatial_tiling_runs_through_the_streaming_helpers(ours):
    x = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    z = encode_video(ours, x, tile=24, overlap=8)
    assert z.shape == (1, 16, 2, 4, 6) and torch.isfinite(z).all()
    frames = decode_video(ours, z, tile=24, overlap=8)
    assert frames.shape == x.shape and frames.abs().max() <= 1
    # one tile covering the frame is no tiling at all
    assert torch.equal(decode_video(ours, z, tile=48), decode_video(ours, z, tile=0))


@torch.no_grad()
def test_upsampling_kernels_compute_the_same_frames(folders):
    """Wan's nearest-exact x2 then 3x3 conv ("interp") and the one transposed conv ("transposed") are one function."""
    vae = load_vae(folders / "from_diffusers")
    z = torch.randn(1, 16, 3, 2, 3)
    a, _ = vae.set_kernels("interp").decode(z, vae.init_cache())
    b, _ = vae.set_kernels("transposed").decode(z, vae.init_cache())
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_add_in_place_equals_conv_then_add_and_keeps_autograd(dtype):
    from videodit.vae import _conv, _conv_add

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(6, 5, 3, padding=(0, 1, 1)).to(dtype)
    cl = torch.channels_last_3d
    x = torch.randn(1, 6, 6, 8, 10).to(dtype).contiguous(memory_format=cl)
    acc = torch.randn(1, 5, 4, 8, 10).to(dtype).contiguous(memory_format=cl)
    want = acc.float() + torch.nn.functional.conv3d(x.float(), conv.weight.float(), conv.bias.float(),
                                                    padding=(0, 1, 1))
    with torch.no_grad():
        got = _conv_add(acc.clone(), x, conv)
    tol = 1e-5 if dtype == torch.float32 else 0.05
    assert got.dtype == dtype and (got.float() - want).abs().max() < tol
    # with autograd: a new tensor, the same value, and the gradient of conv-then-add
    a = acc.clone().requires_grad_()
    y = _conv_add(a, x, conv)
    y.float().square().sum().backward()
    assert (y.detach().float() - want).abs().max() < tol
    g = conv.weight.grad.clone()
    conv.weight.grad = None
    (acc + _conv(x, conv)).float().square().sum().backward()
    assert (g.float() - conv.weight.grad.float()).abs().max() <= 1e-3 * conv.weight.grad.float().abs().max() + tol
