"""Chunk-by-chunk generation: determinism, cache equivalence, exact frame counts, clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videodit.checkpoint import save_module, save_text_encoder, write_config
from videodit.config import Config
from videodit.dit import DiT
from videodit.flow import sample, timestep_shift
from videodit.generate import GenerateError, Pipeline
from videodit.text_encoder import TextEncoder
from videodit.vae import VideoVAE

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.hidden, cfg.model.depth = 64, 2
    cfg.data.size, cfg.data.frames = 32, 17
    cfg.flow.latent_scale = 1.0
    cfg.sample.steps = 2
    dit = DiT(cfg.model)
    with torch.no_grad():  # leave adaLN-Zero so the velocity is not trivially zero
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    save_module(dit, folder / "dit.safetensors")
    save_module(VideoVAE(cfg.vae), folder / "vae.safetensors")
    save_text_encoder(TextEncoder.from_config(cfg.text), folder)
    write_config(cfg, folder)
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


TOP = {"at", "seconds", "size", "fps", "seed", "negative_prompt"}


def R(pipe, prompts, **kw):
    """pipe.request with the sampling keys given flat, as the tests write them."""
    return pipe.request(prompts, **{k: v for k, v in kw.items() if k in TOP},
                        sample={k: v for k, v in kw.items() if k not in TOP})


@pytest.fixture(scope="module")
def pipe(ckpt):
    return Pipeline.load(ckpt)


def test_same_seed_same_video_and_exact_frame_count(pipe):
    req = R(pipe, prompts=["a red circle moving to the left"], at=[0.0], seconds=2.5, seed=3)
    a = list(pipe.frames(req))
    b = list(pipe.frames(req))
    assert all((x == y).all() for x, y in zip(a, b))
    total = sum(len(x) for x in a)
    assert total == 20 and a[0].shape[1:] == (32, 32, 3)
    c = list(pipe.frames(R(pipe, prompts=["a red circle moving to the left"], at=[0.0], seconds=2.5, seed=4)))
    assert any((x != y).any() for x, y in zip(a, c))


def test_stochastic_sampling_is_seeded(pipe):
    """sample.churn: fresh noise at every step, drawn from the seed: the same seed gives the same latents, and
    they differ from the deterministic sampler's."""
    def run(churn, seed=3):
        req = R(pipe, prompts=["a red circle moving to the left"], at=[0.0], seconds=2.0, seed=seed, churn=churn)
        return torch.cat(list(pipe.latent_chunks(req)), 2)

    a = run(0.7)
    assert torch.equal(a, run(0.7))
    assert (a - run(0.0)).abs().max() > 1e-3 and (a - run(0.7, seed=4)).abs().max() > 1e-3


def _no_cache_reference(pipe, req, keep):
    """Chunk-by-chunk sampling that runs the DiT over the kept clean past chunks (`keep(list) -> list`, laid out
    contiguously) plus the noisy chunk at every step: what the KV cache must reproduce."""
    cfg, dit = pipe.cfg, pipe.dit
    _, T_lat = pipe.frame_count(req)
    emb, mask = pipe.encode_prompts(req)[0]
    nb = emb.shape[0]
    g = torch.Generator().manual_seed(req.seed)
    lat_train = 1 + (cfg.data.frames - 1) // 4
    shift = timestep_shift(lat_train * (cfg.data.size // 16) ** 2, cfg.flow)
    chunks = []
    cf = cfg.model.chunk_frames
    with torch.no_grad():
        for start in range(0, T_lat, cf):
            Tc = min(cf, T_lat - start)
            past = torch.cat([torch.zeros(1, 16, 0, req.height // 8, req.width // 8)] + keep(chunks), 2)

            def velocity(x, t, past=past, Tc=Tc):
                full = torch.cat([past, x], 2).repeat(nb, 1, 1, 1, 1)
                tt = torch.cat([torch.zeros(nb, past.shape[2]), t.repeat(nb)[:, None].expand(nb, Tc)], 1)
                v = dit(full, tt, emb, mask)[:, :, past.shape[2]:]
                if nb == 1:
                    return v
                vc, vu = v.chunk(2)
                return vu + req.sample.cfg_scale * (vc - vu)

            chunks.append(sample(velocity, torch.randn(1, 16, Tc, req.height // 8, req.width // 8, generator=g),
                                 req.sample.steps, shift=shift, method=req.sample.sampler, churn=req.sample.churn,
                                 generator=g))
    return torch.cat(chunks, 2)


@pytest.mark.parametrize("cfg_scale, churn", [(1.0, 0.0), (2.0, 0.0), (2.0, 0.5)])
def test_chunked_with_cache_equals_recomputing_the_whole_past(pipe, cfg_scale, churn):
    """With a window that holds every chunk, cached generation equals running the DiT over the whole clean past
    plus the noisy chunk at every step (stochastic sampling included: the same draws from the seed)."""
    req = R(pipe, prompts=["a blue square"], at=[0.0], seconds=3.0, seed=1, cfg_scale=cfg_scale,
                  window_chunks=100, negative_prompt="a red circle", churn=churn)
    cached = torch.cat(list(pipe.latent_chunks(req)), dim=2)
    reference = _no_cache_reference(pipe, req, keep=lambda chunks: chunks)
    assert cached.shape == reference.shape
    assert (cached - reference).abs().max() < 1e-5


@pytest.mark.parametrize("anchor", [True, False])
def test_rolling_window_with_and_without_anchor(pipe, anchor):
    """A window of one chunk: chunks whose past still fits the cache (anchor + last chunk, or the last chunk
    alone) equal generation with an unbounded cache; after that the dropped chunks change the result."""
    def run(window, anchor):
        req = R(pipe, prompts=["a green circle"], at=[0.0], seconds=4.0, seed=2, window_chunks=window, anchor=anchor)
        return list(pipe.latent_chunks(req))  # 4 chunks of 2 latent frames

    full, windowed = run(100, True), run(1, anchor)
    exact = 3 if anchor else 2  # chunk 2 still sees everything with the anchor: chunks 0 and 1
    for i, (a, b) in enumerate(zip(full, windowed)):
        if i < exact:
            assert (a - b).abs().max() < 1e-5
        else:
            assert (a - b).abs().max() > 1e-3


def test_cfg_scale_later_guides_the_chunks_after_the_first(pipe):
    """sample.cfg_scale_later: the first chunk keeps cfg_scale, the later ones use the later scale; with one Euler
    step the second chunk (same past for every scale) moves linearly in it; unset, it is cfg_scale."""
    def run(later):
        req = R(pipe, prompts=["a green circle"], at=[0.0], seconds=2.0, seed=3, steps=1, cfg_scale=2.0,
                      cfg_scale_later=later)
        return list(pipe.latent_chunks(req))

    default, same, z1, z2, z3 = run(None), run(2.0), run(1.0), run(2.0), run(3.0)
    assert all(torch.equal(a, b) for a, b in zip(default, same))
    assert torch.equal(z1[0], z3[0])  # the first chunk ignores the later scale
    step = z2[1] - z1[1]
    assert step.abs().max() > 1e-3
    torch.testing.assert_close(z3[1] - z1[1], 2 * step, atol=1e-5, rtol=1e-4)
    with pytest.raises(GenerateError, match="sample.cfg_scale_later must be >= 0"):
        R(pipe, prompts=["a green circle"], at=[0.0], seconds=2.0, cfg_scale_later=float("nan"))


def test_guidance_interval_uses_the_low_scale_only_below_cfg_low_t(pipe):
    """sample.cfg_low_t / cfg_scale_low: steps at t < cfg_low_t use the low scale. With two Euler steps (t = 1,
    then t_mid < 1) and cfg_low_t = 0.999, only the last step of each chunk changes: the first chunk moves
    linearly in the low scale; a low scale equal to the usual one, or cfg_low_t = 0, is plain guidance."""
    def run(low_t, low, cfg=2.0):
        req = R(pipe, prompts=["a green circle"], at=[0.0], seconds=2.0, seed=3, steps=2, cfg_scale=cfg,
                      cfg_low_t=low_t, cfg_scale_low=low)
        return list(pipe.latent_chunks(req))

    plain = run(0.0, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, run(0.0, 5.0)))  # off: the low scale is ignored
    assert all(torch.equal(a, b) for a, b in zip(plain, run(0.999, 2.0)))  # the same scale below t
    z1, z2, z3 = run(0.999, 1.0), run(0.999, 2.0), run(0.999, 3.0)
    step = z2[0] - z1[0]
    assert step.abs().max() > 1e-3
    torch.testing.assert_close(z3[0] - z1[0], 2 * step, atol=1e-5, rtol=1e-4)
    # unguided above t, guided below: the negative prompt is still encoded
    assert (run(0.999, 3.0, cfg=1.0)[0] - run(0.0, 1.0, cfg=1.0)[0]).abs().max() > 1e-3
    for bad in (dict(cfg_low_t=1.5), dict(cfg_low_t=float("nan")), dict(cfg_low_t=0.5, cfg_scale_low=float("nan"))):
        with pytest.raises(GenerateError, match=r"sample\.cfg_(low_t|scale_low) must be"):
            R(pipe, prompts=["a green circle"], at=[0.0], seconds=2.0, **bad)


def test_first_frame_first_resamples_the_opening_motion_from_the_kept_first_frame(pipe):
    """sample.first_frame_first: the first chunk is sampled as usual, its first latent frame kept, and its other
    frames sampled again from fresh noise with that frame clean (t = 0). Checked against the DiT run directly."""
    cfg, dit = pipe.cfg, pipe.dit
    base = dict(prompts=["a red circle moving up"], at=[0.0], seconds=0.5, seed=5, cfg_scale=2.0)
    off = torch.cat(list(pipe.latent_chunks(R(pipe, **base))), 2)
    on = torch.cat(list(pipe.latent_chunks(R(pipe, **base, first_frame_first=True))), 2)
    assert on.shape == off.shape == (1, 16, 2, 4, 4)  # one chunk of 2 latent frames
    assert torch.equal(on[:, :, :1], off[:, :, :1]) and (on[:, :, 1:] - off[:, :, 1:]).abs().max() > 1e-3

    req = R(pipe, **base)
    emb, mask = pipe.encode_prompts(req)[0]
    shift = timestep_shift(5 * (cfg.data.size // 16) ** 2, cfg.flow)
    g = torch.Generator().manual_seed(req.seed)

    def guided(x, tt):
        vc, vu = dit(x.repeat(2, 1, 1, 1, 1), tt.repeat(2, 1), emb, mask).chunk(2)
        return vu + req.sample.cfg_scale * (vc - vu)

    with torch.no_grad():
        z = sample(lambda x, t: guided(x, t[:, None].expand(1, 2)), torch.randn(1, 16, 2, 4, 4, generator=g),
                   req.sample.steps, shift=shift)
        first = z[:, :, :1]
        rest = sample(lambda x, t: guided(torch.cat([first, x], 2), torch.stack([t * 0, t], 1))[:, :, 1:],
                      torch.randn(1, 16, 1, 4, 4, generator=g), req.sample.steps, shift=shift)
    expected = torch.cat([first, rest], 2) / cfg.flow.latent_scale + cfg.flow.latent_shift
    assert (on - expected).abs().max() < 1e-5


def test_prompt_changes_along_the_timeline(pipe):
    one = R(pipe, prompts=["a red circle"], at=[0.0], seconds=3.0, seed=0)
    two = R(pipe, prompts=["a red circle", "a green triangle"], at=[0.0, 1.5], seconds=3.0, seed=0)
    a, b = list(pipe.latent_chunks(one)), list(pipe.latent_chunks(two))
    assert torch.equal(a[0], b[0])  # before the change: identical
    assert not torch.equal(a[-1], b[-1])


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(seconds=0), "--seconds"),
        (dict(churn=1.5), "sample.churn"),
        (dict(churn=float("nan")), "sample.churn"),
        (dict(steps=0), "sample.steps"),
        (dict(cfg_scale=-2.0), "sample.cfg_scale"),
        (dict(window_chunks=-2), "sample.window_chunks"),
        (dict(sampler="dpm"), "sample.sampler"),
        (dict(seed=-1), "--seed"),
        (dict(seed=2**64), "--seed"),
        (dict(at=[0.0, 5.0], prompts=["a", "b"], seconds=2.0), "after the end"),
        (dict(at=[0.0, float("inf")], prompts=["a", "b"]), "--at"),
        (dict(nonsense=1), "unknown config key 'sample.nonsense'"),
        (dict(seconds=10**6), "--seconds"),
        (dict(prompts=[" "]), "non-empty"),
        (dict(size=40), "--size"),
        (dict(fps=30), "--fps"),
        (dict(prompts=["a", "b"], at=[0.0, 0.0]), "--at"),
    ],
)
def test_bad_requests_are_clear(pipe, kw, needle):
    base = dict(prompts=["a red circle"], at=[0.0] * len(kw.get("prompts", [1])), seconds=1.0)
    with pytest.raises(GenerateError, match=needle):
        R(pipe, **{**base, **kw})


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_cli_writes_exact_mp4_and_preview(ckpt, tmp_path):
    import av

    out, sheet = tmp_path / "v.mp4", tmp_path / "sheet.png"
    r = run_cli("--checkpoint", str(ckpt), "--prompt", "a red circle moving to the right", "--seconds", "2",
                "--out", str(out), "--preview", str(sheet), "--steps", "2", "--sample.cfg_low_t", "0.5",
                "--sample.cfg_scale_low", "2", "--sample.churn", "0.5")
    assert r.returncode == 0, r.stderr
    assert "2 euler steps" in r.stdout and "2 below t = 0.5" in r.stdout and "churn 0.5" in r.stdout
    with av.open(str(out)) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 16 and frames[0].width == 32 and frames[0].height == 32
    assert sheet.stat().st_size > 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--seconds", "-1"], "--seconds"),
        (["--prompt", ""], "non-empty"),
        (["--size", "24"], "--size"),
        (["--out", "/proc/nope/v.mp4"], "cannot"),
        (["--out", "video.avi"], ".mp4"),
        (["--sample.cfg_low_t", "2"], "--sample.cfg_low_t"),
        (["--sample.churn", "2"], "--sample.churn"),
        (["--sample.churn", "-0.5"], "--sample.churn"),
        (["--sample.window_chunks", "-2"], "--sample.window_chunks"),
        (["--sample.nonsense", "1"], "sample.nonsense"),
        (["--sample.churn"], "needs a value"),
        (["--model.depth", "3"], "--model.depth"),
        (["--best-of", "2"], "--best-of"),
        (["--cfg", "-2"], "--cfg must be >= 0"),
        (["--cfg", "nan"], "--cfg must be >= 0"),
        (["--steps", "0"], "--steps must be between"),
        (["--fps", "0"], "--fps"),
        (["--seconds", "nan"], "--seconds"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**64)], "--seed"),
        (["--threads", "-1"], "--threads"),
        (["--threads", "two"], "--threads"),
        (["--device", "cuda"], "--device cuda"),
        (["--device", "banana"], "--device"),
        (["--out", "."], "is a folder"),
        (["--preview", "sheet.jpg"], "--preview must end in .png"),
        (["--prompt", "a", "--at", "0", "--prompt", "b", "--at", "3"], "after the end"),
    ],
)
def test_cli_bad_input_exits_cleanly_without_partial_file(ckpt, tmp_path, args, needle):
    out = tmp_path / "v.mp4"
    base = ["--checkpoint", str(ckpt), "--seconds", "1", "--out", str(out)]
    if "--prompt" not in args:
        base += ["--prompt", "a red circle"]
    if args[:2] == ["--out", "."]:
        out = tmp_path
    r = run_cli(*base, *args, cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob("*.jpg"))


def test_cli_preview_into_a_new_folder(ckpt, tmp_path):
    sheet = tmp_path / "new" / "deeper" / "sheet.png"
    r = run_cli("--checkpoint", str(ckpt), "--prompt", "a red circle", "--seconds", "1", "--steps", "1",
                "--out", str(tmp_path / "v.mp4"), "--preview", str(sheet))
    assert r.returncode == 0, r.stderr
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_interrupted_cli_leaves_no_temp_file_and_a_later_run_removes_stale_ones(ckpt, tmp_path, sig):
    """A signal mid-video removes the hidden temporary mp4 and exits 130; a temporary file left by a process that was
    killed outright (SIGKILL, a stale one) is removed by the next run that writes the same output."""
    import os
    import signal
    import time

    out = tmp_path / "v.mp4"
    stale = tmp_path / f".v.mp4.{2**22 + 12345}.abcd.tmp"  # a pid no process has: written by a dead run
    stale.write_bytes(b"half a video")
    p = subprocess.Popen([sys.executable, str(ROOT / "sample.py"), "--checkpoint", str(ckpt), "--prompt",
                          "a red circle", "--seconds", "600", "--steps", "1", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not [f for f in tmp_path.glob(".v.mp4.*.tmp") if f != stale] and time.time() < deadline:
        time.sleep(0.1)
    assert not stale.exists()  # the stale file went when this run created its own
    time.sleep(0.5)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".*")), os.listdir(tmp_path)


def test_cli_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "config.yaml").write_text("model: {hidden: 64, depth: 2}\n")
    (bad / "dit.safetensors").write_bytes(b"not a safetensors file")
    r = run_cli("--checkpoint", str(bad), "--prompt", "x", "--out", str(tmp_path / "v.mp4"))
    assert r.returncode == 2 and "safetensors" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--checkpoint", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path / "v.mp4"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_shipped_model_two_steps_with_the_default_checkpoint(tmp_path):
    """The committed tiny model (checkpoints/tiny, the default of sample.py) loads and writes an mp4."""
    import av

    assert (ROOT / "checkpoints" / "tiny" / "dit.safetensors").is_file(), "the shipped model is missing"
    out = tmp_path / "shipped.mp4"
    r = run_cli("--prompt", "a red circle moving to the right", "--seconds", "3", "--steps", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 24 and frames[0].width == 64 and frames[0].height == 64


def test_prompt_added_between_chunks_equals_the_timeline_given_up_front(pipe):
    """Pipeline.extend while frames() runs (the app's mid-run prompt change): a prompt added after the first chunk
    at that chunk's end gives the same video as asking for the two-prompt timeline from the start; it is checked
    as request() checks a timeline."""
    first, second = "a red circle moving to the left", "a blue square moving up"
    req = R(pipe, prompts=[first], seconds=3.0, seed=2, cfg_scale=2.0)
    stream = pipe.frames(req)
    got = [next(stream)]  # the first chunk: frames 0..4
    pipe.extend(req, second, at=len(got[0]) / req.fps)
    got += list(stream)
    whole = list(pipe.frames(R(pipe, prompts=[first, second], at=[0.0, 5 / 8], seconds=3.0, seed=2, cfg_scale=2.0)))
    assert req.prompts == [first, second] and req.at == [0.0, 0.625]
    assert all((a == b).all() for a, b in zip(got, whole)) and len(got) == len(whole)
    alone = list(pipe.frames(R(pipe, prompts=[first], seconds=3.0, seed=2, cfg_scale=2.0)))
    assert (got[0] == alone[0]).all() and any((a != b).any() for a, b in zip(got[1:], alone[1:]))
    for prompt, at, needle in [(" ", 1.0, "non-empty"), (second, 0.5, "increasing"), (second, 3.0, "below --seconds")]:
        with pytest.raises(GenerateError, match=needle):
            pipe.extend(req, prompt, at=at)
    assert len(req.prompts) == len(req.at) == 2
