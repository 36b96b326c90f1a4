"""The low-noise expert: a second DiT that takes the sampling steps below sample.expert_t, reading its own
keys/values of the finished chunks; attached to a checkpoint with `python -m videodit.expert`."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_sample import make_checkpoint

from videodit.checkpoint import CheckpointError, atomic_save_state, load_state, read_config, save_module, write_config
from videodit.config import Config
from videodit.dit import DiT
from videodit.expert import attach_expert
from videodit.flow import sample, timestep_shift
from videodit.generate import GenerateError, Pipeline
from videodit.repatch import repatch_state

ROOT = Path(__file__).resolve().parents[1]


def make_expert(folder: Path, cfg: Config, seed: int = 7, t_max: float = 0.8) -> Path:
    torch.manual_seed(seed)
    dit = DiT(cfg.model)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    save_module(dit, folder / "dit.safetensors")
    cfg.flow.t_max = t_max
    write_config(cfg, folder)
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = make_checkpoint(tmp_path_factory.mktemp("ckpt"))
    expert = make_expert(tmp_path_factory.mktemp("expert"), read_config(folder))
    attach_expert(folder, expert, 0.7)
    return folder


@pytest.fixture(scope="module")
def pipe(ckpt):
    return Pipeline.load(ckpt)


def without_expert(req):
    return dataclasses.replace(req, sample=dataclasses.replace(req.sample, expert_t=0.0))


def _reference(pipe, req):
    """Chunk by chunk, each step running the network its noise level picks (the expert below expert_t) over the
    whole clean past plus the noisy chunk: what the two KV caches must reproduce."""
    cfg = pipe.cfg
    _, T_lat = pipe.frame_count(req)
    emb, mask = pipe.encode_prompts(req)[0]
    nb, cf, s = emb.shape[0], cfg.model.chunk_frames, req.height // 8
    g = torch.Generator().manual_seed(req.seed)
    shift = timestep_shift((1 + (cfg.data.frames - 1) // 4) * (cfg.data.size // 16) ** 2, cfg.flow)
    chunks, used = [], []
    with torch.no_grad():
        for start in range(0, T_lat, cf):
            Tc = min(cf, T_lat - start)
            past = torch.cat([torch.zeros(1, 16, 0, s, s)] + chunks, 2)

            def velocity(x, t, past=past, Tc=Tc):
                net = pipe.dit_low if float(t.max()) < req.sample.expert_t else pipe.dit
                used.append(net is pipe.dit_low)
                full = torch.cat([past, x], 2).repeat(nb, 1, 1, 1, 1)
                tt = torch.cat([torch.zeros(nb, past.shape[2]), t.repeat(nb)[:, None].expand(nb, Tc)], 1)
                vc, vu = net(full, tt, emb, mask)[:, :, past.shape[2]:].chunk(2)
                return vu + req.sample.cfg_scale * (vc - vu)

            chunks.append(sample(velocity, torch.randn(1, 16, Tc, s, s, generator=g), req.sample.steps,
                                 shift=shift,
                                 generator=g))
    return torch.cat(chunks, 2), used


def _cached_equals_reference(pipe):
    """Three chunks, three steps (t = 1, 0.667, 0.333; no shift at this size) and expert_t 0.5: the last step of each
    chunk uses the expert, and the cached generation equals the reference. Returns (request, cached latents)."""
    req = pipe.request("a blue square", seconds=2.5, seed=1, negative_prompt="a red circle",
                       sample=dict(steps=3, cfg_scale=2.0, expert_t=0.5, window_chunks=100))
    cached = torch.cat(list(pipe.latent_chunks(req)), 2)
    reference, used = _reference(pipe, req)
    assert used == [False, False, True] * 3
    assert (cached - reference).abs().max() < 1e-5
    return req, cached


def test_expert_takes_the_low_noise_steps_with_its_own_cache(pipe):
    """Three chunks, three steps (t = 1, 0.667, 0.333; no shift at this size) and expert_t 0.5: the last step of
    each chunk uses the expert; the cached generation equals recomputing the whole past with whichever network
    each step uses."""
    assert pipe.cfg.sample.expert_t == 0.7 and pipe.dit_low is not None
    req, cached = _cached_equals_reference(pipe)
    plain = torch.cat(list(pipe.latent_chunks(without_expert(req))), 2)
    assert (plain - cached).abs().max() > 1e-3  # the expert changes the result


def test_an_expert_equal_to_the_base_changes_nothing(ckpt, pipe, tmp_path):
    """With the base weights as its expert, the video is the one the base alone makes (bit for bit)."""
    same = Pipeline(pipe.cfg, pipe.dit, pipe.vae, pipe.text_encoder, pipe.device, dit_low=pipe.dit)
    req = same.request("a green circle", seconds=3.0, seed=4, sample=dict(context_noise=0.1, churn=0.5))
    a = list(same.latent_chunks(req))
    b = list(same.latent_chunks(without_expert(req)))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_an_expert_with_finer_patches_keeps_its_own_shape(tmp_path):
    """An expert re-patched to 1x1x1 (four times the tokens of the 1x2x2 base) is attached with its config in
    dit_low.yaml and loads in that shape; the cached generation still equals recomputing the whole past with
    whichever network each step uses. Attaching a same-shape expert later removes the stale dit_low.yaml."""
    base = make_checkpoint(tmp_path / "base")
    cfg = read_config(base)
    state, fine_cfg = repatch_state(load_state(base / "dit.safetensors"), cfg, (1, 1, 1))
    fine_cfg.flow.t_max = 0.8
    atomic_save_state(state, tmp_path / "fine" / "dit.safetensors")
    write_config(fine_cfg, tmp_path / "fine")
    attach_expert(base, tmp_path / "fine", 0.7)
    assert (base / "dit_low.yaml").is_file() and read_config(base).model == cfg.model
    pipe = Pipeline.load(base)
    assert pipe.dit.cfg.patch == (1, 2, 2) and pipe.dit_low.cfg.patch == (1, 1, 1)
    _cached_equals_reference(pipe)
    attach_expert(base, make_expert(tmp_path / "same", read_config(base)), 0.7)
    assert not (base / "dit_low.yaml").exists() and Pipeline.load(base).dit_low.cfg.patch == (1, 2, 2)


def test_missing_expert_and_bad_expert_t_are_clear(ckpt, pipe, tmp_path):
    bare = make_checkpoint(tmp_path / "bare")
    with pytest.raises(GenerateError, match="dit_low.safetensors"):
        Pipeline.load(bare).request("x", seconds=1.0, sample=dict(expert_t=0.5))
    with pytest.raises(GenerateError, match="sample.expert_t must be in"):
        pipe.request("x", seconds=1.0, sample=dict(expert_t=1.5))
    cfg = read_config(bare)
    cfg.sample.expert_t = 0.5
    write_config(cfg, bare)
    with pytest.raises(CheckpointError, match="no dit_low.safetensors"):
        Pipeline.load(bare)


def run(module_or_script, *args):
    cmd = [sys.executable, *(["-m", module_or_script] if "." in module_or_script and "/" not in module_or_script
                             else [module_or_script]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_attach_cli_checks_before_writing(tmp_path):
    base = make_checkpoint(tmp_path / "base")
    before = (base / "config.yaml").read_text()
    other = read_config(base)
    other.model.text_dim = 32
    wrong = make_expert(tmp_path / "wrong", other)
    r = run("videodit.expert", "--checkpoint", str(base), "--expert", str(wrong), "--t", "0.5")
    assert r.returncode == 2 and "differs from the checkpoint's in text_dim" in r.stderr
    assert "Traceback" not in r.stderr
    low = make_expert(tmp_path / "low", read_config(base), t_max=0.4)
    r = run("videodit.expert", "--checkpoint", str(base), "--expert", str(low), "--t", "0.5")
    assert r.returncode == 2 and "t <= 0.4" in r.stderr
    assert not (base / "dit_low.safetensors").exists() and (base / "config.yaml").read_text() == before
    r = run("videodit.expert", "--checkpoint", str(base), "--expert", str(low), "--t", "0.4", "--bf16")
    assert r.returncode == 0, r.stderr
    assert read_config(base).sample.expert_t == 0.4 and (base / "dit_low.safetensors").is_file()
    stored, source = load_file(base / "dit_low.safetensors"), load_file(low / "dit.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in stored.values() if v.is_floating_point())
    assert all(torch.equal(stored[k], v.to(stored[k].dtype)) for k, v in source.items())
    assert (base / "dit_low.safetensors").stat().st_mode & 0o044  # readable by others, as the rest of the checkpoint
    out = tmp_path / "v.mp4"
    r = run(str(ROOT / "sample.py"), "--checkpoint", str(base), "--prompt", "a red circle", "--seconds", "1",
            "--steps", "2", "--out", str(out))
    assert r.returncode == 0 and "low-noise expert below t = 0.4" in r.stdout and out.stat().st_size > 0
    r = run(str(ROOT / "sample.py"), "--checkpoint", str(base), "--prompt", "a red circle", "--seconds", "1",
            "--expert-t", "2", "--out", str(out.with_name("w.mp4")))
    assert r.returncode == 2 and "--expert-t" in r.stderr and not out.with_name("w.mp4").exists()


def test_extract_writes_the_attached_expert_back_out_in_fp32(tmp_path):
    base = make_checkpoint(tmp_path / "base")
    r = run("videodit.expert", "--checkpoint", str(base), "--extract", str(tmp_path / "none"))
    assert r.returncode == 2 and "no low-noise expert" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "none").exists()
    r = run("videodit.expert", "--checkpoint", str(base), "--extract", str(tmp_path / "x"), "--t", "0.5")
    assert r.returncode == 2 and "--extract takes only --checkpoint" in r.stderr
    # a deeper expert, attached in bf16: its own config (dit_low.yaml) and its weights come back, in float32
    cfg = read_config(base)
    cfg.model.depth += 1
    deep = make_expert(tmp_path / "deep", cfg, t_max=0.6)
    attach_expert(base, deep, 0.6, bf16=True)
    r = run("videodit.expert", "--checkpoint", str(base), "--extract", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    got, stored = load_file(tmp_path / "out" / "dit.safetensors"), load_file(base / "dit_low.safetensors")
    assert got.keys() == stored.keys()
    assert all(v.dtype == torch.float32 and torch.equal(v, stored[k].float()) for k, v in got.items())
    assert read_config(tmp_path / "out").model == cfg.model
    # the extracted folder attaches again as the same expert, byte for byte
    before = (base / "dit_low.safetensors").read_bytes()
    attach_expert(base, tmp_path / "out", 0.6, bf16=True)
    assert (base / "dit_low.safetensors").read_bytes() == before
