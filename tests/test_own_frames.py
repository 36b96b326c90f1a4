"""Your own frames (issue 43): image to video, continuing a clip through the key/value cache, any W x H size."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_sample import make_checkpoint

from videodit.data.shapes import make_example, render_clip
from videodit.flow import sample, timestep_shift
from videodit.generate import GenerateError, Pipeline
from videodit.video_io import write_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def pipe(ckpt):
    return Pipeline.load(ckpt)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A rendered shapes clip, 2 s at 8 fps, 32x32, as an mp4."""
    scene, caption = make_example(1000, 0, "heldout")
    frames = render_clip(scene, fps=8, size=32, frames=16)
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, frames, fps=8)
    return path, caption


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def test_image_is_the_first_frame_as_the_vae_round_trip_makes_it(pipe, clip):
    image = render_clip(make_example(1000, 3, "heldout")[0], fps=8, size=32, frames=1)[0]  # (32, 32, 3) uint8
    req = pipe.request("a red circle moving up", seconds=2.0, image=image, seed=1)
    frames = np.concatenate(list(pipe.frames(req)))
    assert frames.shape == (16, 32, 32, 3)
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
        post, _ = pipe.vae.encode(x, pipe.vae.init_cache())
        round_trip = to_uint8(pipe.vae.decode(post.mean, pipe.vae.init_cache())[0])[0]
    assert np.abs(frames[0].astype(int) - round_trip.astype(int)).max() <= 1
    other = np.concatenate(list(pipe.frames(pipe.request("a red circle moving up", seconds=2.0, seed=1))))
    assert np.abs(other[0].astype(int) - round_trip.astype(int)).mean() > 2  # without the image it differs


def test_image_files_of_any_mode_and_size_are_fitted_and_said(pipe, tmp_path):
    rgba = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 4), dtype=np.uint8), "RGBA").save(rgba)
    req = pipe.request("a red circle", seconds=1.0, image=rgba)
    assert req.image.shape == (32, 32, 3) and req.image.dtype == np.uint8
    assert any("mode RGBA" in n for n in req.notes) and any("60x40 to 32x32" in n for n in req.notes)
    grey = tmp_path / "g.jpg"
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8), "L").save(grey)
    req = pipe.request("a red circle", seconds=1.0, image=grey)
    assert any("mode L" in n for n in req.notes) and np.abs(req.image.astype(int) - 128).max() <= 2


def test_continuation_from_the_cache_equals_the_clip_as_a_clean_prefix(pipe, clip):
    """With a window holding every chunk, continuing a clip through the key/value cache equals running the DiT over
    the clip's latents (clean) plus everything generated so far at every step."""
    path, caption = clip
    req = pipe.request(caption, seconds=1.5, video=path, seed=2, negative_prompt="a green square",
                       sample=dict(window_chunks=100, context_noise=0.0, cfg_scale=2.0, cfg_scale_later=3.0))
    assert req.video_frames == 13 and any("first 13 of 16 frames" in n for n in req.notes)
    cached = torch.cat(list(pipe.latent_chunks(req)), 2)
    assert cached.shape == (1, 16, 3, 4, 4)  # 12 new frames = 3 latent frames

    cfg, dit = pipe.cfg, pipe.dit
    prefix = torch.cat([z for z, _ in pipe.encode_clip(req)], 2)  # (1, 16, 4, 4, 4), normalised
    emb, mask = pipe.encode_prompts(req)[0]
    g = torch.Generator().manual_seed(req.seed)
    shift = timestep_shift(5 * (cfg.data.size // 16) ** 2, cfg.flow)
    chunks = [prefix]
    with torch.no_grad():
        for Tc in (2, 1):
            past = torch.cat(chunks, 2)

            def velocity(x, t, past=past, Tc=Tc):
                full = torch.cat([past, x], 2).repeat(2, 1, 1, 1, 1)
                tt = torch.cat([torch.zeros(2, past.shape[2]), t.repeat(2)[:, None].expand(2, Tc)], 1)
                vc, vu = dit(full, tt, emb, mask)[:, :, past.shape[2]:].chunk(2)
                return vu + 3.0 * (vc - vu)  # every generated chunk is a later one: cfg_scale_later

            chunks.append(sample(velocity, torch.randn(1, 16, Tc, 4, 4, generator=g), req.sample.steps, shift=shift,
                                 method=req.sample.sampler, churn=req.sample.churn, generator=g))
    reference = torch.cat(chunks[1:], 2) / cfg.flow.latent_scale + cfg.flow.latent_shift
    assert (cached - reference).abs().max() < 1e-5


def test_continuation_writes_the_clip_then_the_new_frames(pipe, clip):
    path, caption = clip
    new = np.concatenate(list(pipe.frames(pipe.request(caption, seconds=1.0, video=path, seed=3))))
    kept = np.concatenate(list(pipe.frames(pipe.request(caption, seconds=1.0, video=path, seed=3, keep_input=True))))
    assert new.shape == (8, 32, 32, 3) and kept.shape == (13 + 8, 32, 32, 3)
    assert np.array_equal(kept[13:], new)
    given = np.concatenate([f for _, f in pipe.encode_clip(pipe.request(caption, seconds=1.0, video=path))])
    assert np.array_equal(kept[:13], given)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.parametrize("size, wh", [("48x32", (48, 32)), ("32x64", (32, 64))])
def test_size_width_by_height_gives_that_mp4(ckpt, tmp_path, size, wh):
    import av

    out = tmp_path / "v.mp4"
    r = run_cli("--checkpoint", str(ckpt), "--prompt", "a red circle", "--seconds", "1.5", "--size", size,
                "--steps", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 12 and (frames[0].width, frames[0].height) == wh


def test_bad_own_frames_are_one_line_and_write_nothing(ckpt, clip, tmp_path):
    import av

    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"not an image")
    short = tmp_path / "short.mp4"
    write_video(short, np.zeros((3, 32, 32, 3), np.uint8), fps=8)
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    cases = [
        (["--image", str(tmp_path / "missing.png")], "not found"),
        (["--image", str(bad_png)], "not a readable image"),
        (["--video", str(tmp_path / "missing.mp4")], "not found"),
        (["--video", str(audio)], "video stream"),
        (["--video", str(short)], "at least 5"),
        (["--size", "40x32"], "nearest: 32x32, 48x32"),
        (["--size", "32x8"], "--size 32x8"),
        (["--image", str(bad_png), "--video", str(clip[0])], "not both"),
        (["--keep-input"], "needs --video"),
    ]
    for args, needle in cases:
        out = tmp_path / "v.mp4"
        r = run_cli("--checkpoint", str(ckpt), "--prompt", "a red circle", "--seconds", "1", "--out", str(out), *args)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists() and not list(tmp_path.glob(".v.mp4*"))


def test_api_errors_name_the_input(pipe, tmp_path):
    with pytest.raises(GenerateError, match="uint8"):
        pipe.request("a red circle", seconds=1.0, image=np.zeros((32, 32, 3), np.float32))


def test_cache_size_is_width_first():
    from videodit.data.cli import _size

    assert _size("96x64") == (64, 96) and _size("64") == (64, 64)


def test_a_model_trained_on_two_aspect_ratios_samples_each(ckpt, tmp_path):
    """Shards cached at 32x32 and at 48x32 (width first) train one DiT in shape buckets; its export samples both."""
    from videodit.config import load_config
    from videodit.data.cli import main as data_main
    from videodit.train.trainer import run

    for name, size in (("square", "32"), ("wide", "48x32")):
        assert data_main(["cache", "--shapes", "4", "--frames", "5", "--size", size, "--vae", str(ckpt),
                          "--out", str(tmp_path / name), "--shard-size", "4"]) == 0
    cfg = load_config(None, {"train.vae": str(ckpt), "train.out_dir": str(tmp_path / "run"), "train.steps": 2,
                             "train.wandb": "disabled", "train.warmup_steps": 1, "train.log_every": 1,
                             "train.ckpt_every": 2, "data.source": "shards",
                             "data.shards": f"{tmp_path / 'square'},{tmp_path / 'wide'}", "data.frames": 5,
                             "data.size": 32, "data.batch_size": 2, "model.hidden": 64, "model.depth": 2})
    export = run(cfg)
    pipe = Pipeline.load(export)
    for wh in ((32, 32), (48, 32)):
        frames = np.concatenate(list(pipe.frames(pipe.request("a red circle", seconds=1.0, size=wh, sample={
            "steps": 1}))))
        assert frames.shape == (8, wh[1], wh[0], 3)


def test_vae_in_bf16_gives_the_fp32_videos_to_bf16_precision(ckpt, pipe, clip, tmp_path):
    """--vae-dtype bfloat16: the VAE encodes the image / clip and decodes in bf16, the DiT still gets fp32 latents;
    every path gives the fp32 pipeline's frames to within a few levels."""
    fast = Pipeline.load(ckpt, vae_dtype=torch.bfloat16)
    assert next(fast.vae.parameters()).dtype == torch.bfloat16 and next(fast.dit.parameters()).dtype == torch.float32
    path, caption = clip
    image = render_clip(make_example(1000, 3, "heldout")[0], fps=8, size=32, frames=1)[0]
    for kw in (dict(), dict(image=image), dict(video=path, keep_input=True)):
        a, b = (np.concatenate(list(p.frames(p.request(caption, seconds=1.0, seed=2, **kw)))) for p in (pipe, fast))
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.mean() < 2.0, (kw.keys(), diff.mean(), diff.max())
    out = tmp_path / "v.mp4"
    r = run_cli("--checkpoint", str(ckpt), "--prompt", "a red circle", "--seconds", "1", "--steps", "1",
                "--vae-dtype", "bfloat16", "--image", str(write_png(tmp_path / "i.png", image)), "--out", str(out))
    assert r.returncode == 0 and out.stat().st_size > 0, r.stderr


def write_png(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path)
    return path
