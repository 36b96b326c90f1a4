"""Sampling under faults (issue 41): damaged weights, prompts the text encoder cannot read, pickled weights, a full
disk, file modes. Each fails with one clear line and leaves no partial output."""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_sample import make_checkpoint

from videodit.checkpoint import CheckpointError, save_text_encoder, write_config
from videodit.config import Config, TextConfig
from videodit.data.shapes import vocabulary
from videodit.generate import GenerateError, Pipeline, UnknownWordsWarning
from videodit.text_encoder import TextEncoder

ROOT = Path(__file__).resolve().parents[1]


def sample_cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def words_ckpt(tmp_path_factory):
    """The test checkpoint with a word-level tiny T5 (the shipped kind: 82 caption words, <unk> for the rest)."""
    folder = make_checkpoint(tmp_path_factory.mktemp("words"))
    cfg = Config()
    cfg.model.hidden, cfg.model.depth = 64, 2
    cfg.data.size, cfg.data.frames = 32, 17
    cfg.flow.latent_scale, cfg.sample.steps, cfg.text.tiny_tokenizer = 1.0, 2, "words"
    save_text_encoder(TextEncoder.tiny(cfg.text, words=vocabulary()), folder)
    write_config(cfg, folder)
    return folder


def test_non_finite_weights_are_refused_naming_the_file(ckpt, tmp_path):
    bad = tmp_path / "ckpt"
    shutil.copytree(ckpt, bad)
    state = load_file(bad / "dit.safetensors")
    key = next(iter(state))
    state[key][0] = float("nan")
    save_file(state, bad / "dit.safetensors")
    with pytest.raises(CheckpointError, match="dit.safetensors' holds non-finite values"):
        Pipeline.load(bad)
    r = sample_cli("--checkpoint", str(bad), "--prompt", "a red circle", "--seconds", "1", "--out",
                   str(tmp_path / "v.mp4"))
    assert r.returncode == 2 and "non-finite" in r.stderr and "dit.safetensors" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "v.mp4").exists()


def test_first_chunk_that_diverges_stops_before_writing(ckpt, tmp_path, monkeypatch):
    from videodit.generate import generate

    pipe = Pipeline.load(ckpt)
    real = pipe.dit.forward_chunk
    monkeypatch.setattr(pipe.dit, "forward_chunk", lambda *a, **k: (real(*a, **k)[0] * float("inf"), real(*a, **k)[1]))
    out = tmp_path / "v.mp4"
    with pytest.raises(GenerateError, match="first chunk's latents are not finite"):
        generate(pipe, pipe.request("a red circle", seconds=2.0), out)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_unknown_words_warn_by_default_and_refuse_when_asked(words_ckpt, tmp_path):
    pipe = Pipeline.load(words_ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.request("a red circle moving right", seconds=1.0)  # every word known: silent
        pipe.request("a dog running on a beach", seconds=1.0, negative_prompt="un cercle")
    msgs = [str(w.message) for w in caught if issubclass(w.category, UnknownWordsWarning)]
    assert len(msgs) == 1 and all(f"'{w}'" in msgs[0] for w in ("dog", "running", "beach", "un", "cercle"))
    assert "knows 82 words" in msgs[0] and " circle " in msgs[0]
    with pytest.raises(GenerateError, match="does not know 'dog'.*unknown_words warn"):
        pipe.request("a dog", seconds=1.0, sample={"unknown_words": "refuse"})
    out = tmp_path / "v.mp4"
    r = sample_cli("--checkpoint", str(words_ckpt), "--prompt", "a dog", "--seconds", "1", "--steps", "1",
                   "--out", str(out))
    assert r.returncode == 0 and r.stderr.startswith("warning: this checkpoint's text encoder does not know 'dog'")
    assert out.exists()
    out.unlink()
    r = sample_cli("--checkpoint", str(words_ckpt), "--prompt", "a dog", "--seconds", "1", "--out", str(out),
                   "--sample.unknown_words", "refuse")
    assert r.returncode == 2 and "--sample.unknown_words warn" in r.stderr and not out.exists()
    assert len(r.stderr.strip().splitlines()) == 1


def test_pickled_text_encoder_weights_are_refused(ckpt, tmp_path):
    bad = tmp_path / "ckpt"
    shutil.copytree(ckpt, bad)
    te = bad / "text_encoder"
    torch.save(load_file(te / "model.safetensors"), te / "pytorch_model.bin")  # the pickled layout of old folders
    (te / "model.safetensors").unlink()
    assert (te / "pytorch_model.bin").is_file()
    with pytest.raises(FileNotFoundError, match="only pickled pytorch_model.bin.*never unpickles"):
        TextEncoder.from_pretrained(te, 128)
    r = sample_cli("--checkpoint", str(bad), "--prompt", "a red circle", "--seconds", "1", "--out",
                   str(tmp_path / "v.mp4"))
    assert r.returncode == 2 and "safe_serialization=True" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_exported_text_encoder_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_text_encoder(TextEncoder.tiny(TextConfig()), tmp_path)
    finally:
        os.umask(old)
    te = tmp_path / "text_encoder"
    assert te.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in te.iterdir())


def test_full_disk_keeps_the_older_mp4_and_says_what_ran_out(ckpt, small_disk):
    out = small_disk / "v.mp4"
    old = np.random.default_rng(0).bytes(16 * 1024)
    out.write_bytes(old)
    r = sample_cli("--checkpoint", str(ckpt), "--prompt", "a red circle", "--seconds", "600", "--steps", "1",
                   "--out", str(out))
    assert r.returncode == 1 and "No space left on device while writing" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: No space left")
    assert out.read_bytes() == old and sorted(p.name for p in small_disk.iterdir()) == ["v.mp4"]
