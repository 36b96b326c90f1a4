"""The trainer under faults (issue 41): a reused run folder, a damaged newest checkpoint, a full disk while
writing a checkpoint or an export, a data.frames the cached shards do not hold. Each fault ends in one clear
line (exit code 2 from train.py) and leaves every earlier complete file as it was."""

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_train import assert_same_run, make_trainer, overrides

from videodit.checkpoint import save_module, write_config
from videodit.config import Config, load_config
from videodit.train import TrainError
from videodit.train import trainer as trainer_mod
from videodit.train.trainer import run as train_run
from videodit.vae import VideoVAE

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train as train_cli  # noqa: E402


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory) -> Path:
    """The tiny random VAE checkpoint of tests/test_train.py."""
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    save_module(VideoVAE(Config().vae), folder / "vae.safetensors")
    write_config(Config(), folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def args6(vae, out: Path, **extra) -> list[str]:
    return overrides(vae, out, steps=6, **{"train.ckpt_every": 2, "train.keep_checkpoints": 3, **extra})


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = train_cli.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


# ---- 1. a run folder belongs to one run
def test_a_reused_run_folder_is_refused_overwritten_or_resumed_by_its_own_config(vae_ckpt, tmp_path, capsys):
    d = tmp_path / "run"
    old = args6(vae_ckpt, d, **{"train.keep_checkpoints": 2})
    assert cli(old, capsys)[0] == 0
    before = snapshot(d)
    assert {"checkpoints/step_0000006/COMPLETE", "export/dit.safetensors", "config.yaml"} <= before.keys()

    # a fresh run into it (another ckpt_every, as in the issue): refused before any work, nothing touched
    new = overrides(vae_ckpt, d, steps=4, **{"train.ckpt_every": 2})
    code, err = cli(new, capsys)
    assert code == 2 and err == [f"error: {d} holds another run (checkpoints, export, config.yaml, loss.png); pass "
                                 "--resume auto to continue it, --overwrite to start over, or choose another "
                                 "--train.out_dir"], err  # fmt: skip
    assert snapshot(d) == before

    # --overwrite: the old run's checkpoints and export are gone, this run's are all there
    code, err = cli([*new, "--overwrite"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]
    assert json.loads((d / "checkpoints" / "step_0000004" / "trainer.json").read_text())["step"] == 4
    assert load_config(d / "export" / "config.yaml").train.steps == 4
    after = snapshot(d)

    # --resume auto with another architecture: one line naming the key, nothing touched
    code, err = cli([*new, "--model.depth=3", "--resume", "auto"], capsys)
    assert code == 2 and len(err) == 1 and "belongs to another run" in err[0] and "model.depth: 2 -> 3" in err[0], err
    assert "--overwrite to start over" in err[0]
    assert snapshot(d) == after

    # a longer train.steps continues the run
    tr = make_trainer(overrides(vae_ckpt, d, steps=6, **{"train.ckpt_every": 2}), resume="auto")
    assert tr.start_step == 4
    tr.fit()
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["step_0000004", "step_0000006"]


def test_resume_auto_with_another_config_and_overwrite_starts_over(vae_ckpt, tmp_path):
    d = tmp_path / "run"
    make_trainer(args6(vae_ckpt, d, **{"train.steps": 4})).fit()
    with pytest.raises(TrainError, match=r"belongs to another run .*train\.lr: 0\.001 -> 0\.002"):
        make_trainer(args6(vae_ckpt, d, **{"train.lr": 2e-3}), resume="auto")
    tr = make_trainer(args6(vae_ckpt, d, **{"train.lr": 2e-3}), resume="auto", overwrite=True)
    assert tr.start_step == 0 and not (d / "checkpoints").exists()


# ---- 2. a damaged newest checkpoint
@pytest.fixture(scope="module")
def uninterrupted(vae_ckpt, tmp_path_factory):
    tr = make_trainer(args6(vae_ckpt, tmp_path_factory.mktemp("whole")))
    tr.fit()
    return tr


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "model.safetensors": truncate,
    "ema.safetensors": truncate,
    "optimizer.safetensors": lambda p: p.write_bytes(b"\0" * 64),
    "trainer.json": lambda p: p.write_text('{"step": 4, "losses": [[0, 0.5'),
    "config.yaml": lambda p: p.write_bytes(b"\xff\xfe not yaml"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_resume_auto_skips_a_damaged_newest_checkpoint(vae_ckpt, tmp_path, capsys, uninterrupted, name):
    d = tmp_path / "run"
    make_trainer(args6(vae_ckpt, d)).fit(stop_after=4)
    DAMAGE[name](d / "checkpoints" / "step_0000004" / name)
    previous = snapshot(d / "checkpoints" / "step_0000002")
    resumed = make_trainer(args6(vae_ckpt, d), resume="auto")
    err = capsys.readouterr().err.strip().splitlines()
    assert resumed.start_step == 2 and resumed.resume_from.name == "step_0000002"
    assert len(err) == 1 and err[0].startswith(f"warning: skipped checkpoint {d / 'checkpoints' / 'step_0000004'}:")
    assert f"{d / 'checkpoints' / 'step_0000004' / name} is damaged" in err[0], err
    assert snapshot(d / "checkpoints" / "step_0000002") == previous
    resumed.fit()
    assert_same_run(uninterrupted, resumed, 6)


def test_no_loadable_checkpoint_and_an_explicit_damaged_one_are_clear_errors(vae_ckpt, tmp_path):
    d = tmp_path / "run"
    make_trainer(args6(vae_ckpt, d)).fit(stop_after=4)
    for step in (2, 4):
        truncate(d / "checkpoints" / f"step_000000{step}" / "model.safetensors")
    with pytest.raises(TrainError, match=r"^--resume auto: none of the 2 checkpoints under .* loads"):
        make_trainer(args6(vae_ckpt, d), resume="auto")
    bad = d / "checkpoints" / "step_0000004"
    with pytest.raises(TrainError, match=rf"^--resume {bad}: {bad / 'model.safetensors'} is damaged"):
        make_trainer(args6(vae_ckpt, d), resume=str(bad))


# ---- 3. a full disk
def failing_after(n_ok: int, err: int):
    """A writer that writes `n_ok` files, then fails as a full disk does (leaving a partial file behind)."""
    calls = []
    real = trainer_mod.atomic_save_state

    def fake(state, path):
        calls.append(path)
        if len(calls) > n_ok:
            Path(path).write_bytes(b"partial")
            raise OSError(err, os.strerror(err), str(path))
        real(state, path)

    return fake


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "no space left on device"),
                                        (errno.EDQUOT, "disk quota exceeded")])  # fmt: skip
def test_full_disk_while_writing_a_checkpoint(vae_ckpt, tmp_path, monkeypatch, capsys, err, words):
    d = tmp_path / "run"
    args = overrides(vae_ckpt, d, steps=4, **{"train.ckpt_every": 2})
    make_trainer(args).fit(stop_after=2)
    previous = snapshot(d / "checkpoints")
    monkeypatch.setattr(trainer_mod, "atomic_save_state", failing_after(1, err))  # model written, then full
    code, lines = cli([*args, "--resume", "auto"], capsys)
    ckpts = d / "checkpoints"
    assert code == 2 and lines == [f"error: {words} while writing checkpoint step_0000004 ({ckpts}); the previous "
                                   "checkpoint step_0000002 is intact; free space and rerun with --resume auto"], lines
    assert snapshot(ckpts) == previous and os.listdir(ckpts) == ["step_0000002"]  # no temp folder left
    monkeypatch.undo()
    assert make_trainer(args, resume="auto").start_step == 2


def test_full_disk_while_writing_the_export(vae_ckpt, tmp_path, monkeypatch, capsys):
    from videodit.train import tasks

    d = tmp_path / "run"
    args = overrides(vae_ckpt, d, steps=2, **{"train.ckpt_every": 2})
    assert cli(args, capsys)[0] == 0
    previous = snapshot(d / "export")

    def full(text_encoder, folder):  # dit.safetensors and vae.safetensors are written by then
        assert (Path(folder) / "dit.safetensors").is_file()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tasks, "save_text_encoder", full)
    code, lines = cli([*args, "--export-only"], capsys)
    assert code == 2 and lines == [f"error: no space left on device while writing the export {d / 'export'}; the "
                                   "previous export is intact; free space and rerun with --export-only"], lines
    assert snapshot(d / "export") == previous
    assert sorted(p.name for p in d.iterdir()) == ["checkpoints", "config.yaml", "export", "loss.png"]


@pytest.fixture
def small_fs(tmpfs):
    """A 6 MiB disk: room for one checkpoint of the tiny test run (4.1 MB), not for a second beside it."""
    return tmpfs("6m")


def test_a_real_full_filesystem_keeps_the_previous_checkpoint(vae_ckpt, tmp_path, small_fs, capsys):
    d = small_fs / "run"
    args = overrides(vae_ckpt, d, steps=4, **{"train.ckpt_every": 2})
    code, lines = cli(args, capsys)
    ckpts = d / "checkpoints"
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: no space left on device while writing checkpoint step_0000004") and (
        "the previous checkpoint step_0000002 is intact" in lines[0]), lines
    assert os.listdir(ckpts) == ["step_0000002"]
    shutil.copytree(d, tmp_path / "moved")  # the checkpoint left behind is whole: it resumes elsewhere
    moved = overrides(vae_ckpt, tmp_path / "moved", steps=4, **{"train.ckpt_every": 2})
    assert make_trainer(moved, resume="auto").start_step == 2


# ---- 7. data.frames the shards do not hold
def test_data_frames_the_shards_do_not_hold_fails_before_the_model_is_built(vae_ckpt, tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard_00000.safetensors").write_bytes(b"")  # never opened: the check comes first
    index = dict(version=1, num=2, shards=[dict(file="shard_00000.safetensors", num=2, frames=9,
                                                latent_shape=[16, 3, 4, 4], text_len=8, captions=["a", "b"])])
    (shards / "index.json").write_text(json.dumps(index))

    def no_model(*a, **k):
        raise AssertionError("the task was built")

    monkeypatch.setattr(trainer_mod, "DiTTask", no_model)
    cfg = load_config(None, overrides(vae_ckpt, tmp_path / "run", **{"data.source": "shards", "data.shards": shards,
                                                                     "data.frames": 17}))
    with pytest.raises(TrainError) as e:
        train_run(cfg)
    assert str(e.value) == (f"data.frames is 17 but the shards in '{shards}' hold clips of 9 frames; pass "
                            "--data.frames 9 (or cache shards with --frames 17)")
    assert not (tmp_path / "run").exists()
