"""The trainer: exact resume, export, NaN safety, clear errors, DeepSpeed ZeRO-2/3 with 2 processes == 1 process,
and a short end-to-end run whose export sample.py loads."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

from videodit.checkpoint import CheckpointError  # noqa: E402
from videodit.config import ConfigError, load_config  # noqa: E402
from videodit.dit import DiT  # noqa: E402
from videodit.train import TrainError  # noqa: E402
from videodit.train.batches import BatchPlan, global_batch_indices  # noqa: E402
from videodit.train.distributed import Dist, close_dist, init_dist  # noqa: E402
from videodit.train.trainer import EMA, Trainer  # noqa: E402
from videodit.train.trainer import run as train_run  # noqa: E402
from videodit.video_io import DataError  # noqa: E402


def overrides(vae_ckpt: Path, out: Path, steps: int = 6, **extra) -> list[str]:
    args = {
        "train.task": "dit", "train.vae": str(vae_ckpt), "train.out_dir": str(out), "train.steps": steps,
        "train.wandb": "disabled", "train.lr": 1e-3, "train.warmup_steps": 2, "train.log_every": 100,
        "train.ckpt_every": 3, "train.ema_decay": 0.0, "data.source": "shapes", "data.num_clips": 12,
        "data.frames": 9, "data.size": 32, "data.batch_size": 4, "model.hidden": 64, "model.depth": 2,
        **extra,
    }
    return [f"--{k}={v}" for k, v in args.items()]


def make_trainer(args: list[str], resume: str = "", overwrite: bool = False) -> Trainer:
    cfg = load_config(None, args)
    return Trainer(cfg, resume, Dist(), overwrite=overwrite)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.module.state_dict().items()}


def assert_same_run(a: Trainer, b: Trainer, steps: int) -> None:
    """Same losses at every step and the same final weights, within 1e-6."""
    la, lb = dict(a.losses), dict(b.losses)
    assert la.keys() == lb.keys() == set(range(steps))
    assert max(abs(la[k] - lb[k]) for k in la) <= 1e-6
    wa, wb = weights(a), weights(b)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


def test_resume_equals_uninterrupted(vae_ckpt, tmp_path):
    whole = make_trainer(overrides(vae_ckpt, tmp_path / "a"))
    whole.fit()
    part = make_trainer(overrides(vae_ckpt, tmp_path / "b"))
    part.fit(stop_after=3)
    resumed = make_trainer(overrides(vae_ckpt, tmp_path / "b"), resume="auto")
    assert resumed.start_step == 3
    resumed.fit()
    assert_same_run(whole, resumed, 6)
    assert (tmp_path / "a" / "loss.png").stat().st_size > 0


def test_worker_prefetch_equals_loading_in_the_trainer(vae_ckpt, tmp_path):
    """data.num_workers: batches rendered in DataLoader workers are the same batches, so training is too."""
    plain = make_trainer(overrides(vae_ckpt, tmp_path / "a", steps=4))
    plain.fit()
    workers = make_trainer(overrides(vae_ckpt, tmp_path / "b", steps=4, **{"data.num_workers": 2}))
    workers.fit()
    assert_same_run(plain, workers, 4)


def test_activation_checkpointing_and_sample_videos(vae_ckpt, tmp_path):
    plain = make_trainer(overrides(vae_ckpt, tmp_path / "a", steps=2))
    plain.fit()
    ckpt = make_trainer(overrides(vae_ckpt, tmp_path / "b", steps=2, **{"train.activation_checkpointing": True,
                                                                         "train.sample_every": 2}))
    assert any("checkpoint" in type(m).__name__.lower() for m in ckpt.module.modules())
    ckpt.fit()
    assert max(abs(a - b) for (_, a), (_, b) in zip(plain.losses, ckpt.losses)) < 1e-5
    wa, wb = weights(plain), weights(ckpt)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5  # same names, same values
    assert (tmp_path / "b" / "samples" / "step_0000002.mp4").stat().st_size > 0


def test_export_reproduces_the_trained_model(vae_ckpt, tmp_path):
    tr = make_trainer(overrides(vae_ckpt, tmp_path, steps=3))
    tr.fit()
    folder = tr.export()
    cfg = load_config(folder / "config.yaml")
    assert cfg.flow.latent_scale > 0  # the latent statistics travel with the checkpoint
    dit = DiT(cfg.model)
    dit.load_state_dict(load_file(folder / "dit.safetensors"))
    x, t = torch.randn(2, 16, 3, 4, 4), torch.rand(2, 3)
    text, mask = torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(dit(x, t, text, mask), tr.module.dit(x, t, text, mask))
    assert (folder / "vae.safetensors").is_file() and (folder / "text_encoder" / "config.json").is_file()


def test_init_from_an_export_without_the_first_chunk_embedding_or_text_refiner(vae_ckpt, tmp_path):
    tr = make_trainer(overrides(vae_ckpt, tmp_path / "old", steps=1))
    tr.fit()
    folder = tr.export()
    new = make_trainer(overrides(vae_ckpt, tmp_path / "new", steps=1, **{"train.init": str(folder),
                                                                          "model.first_chunk_embed": True,
                                                                          "model.text_refiner": 1}))
    assert new.module.dit.first_chunk.abs().max() == 0
    assert len(new.module.dit.text_refiner) == 1
    x, t = torch.randn(2, 16, 3, 4, 4), torch.rand(2, 3)
    text, mask = torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.bool)
    old = DiT(load_config(folder / "config.yaml").model)
    old.load_state_dict(load_file(folder / "dit.safetensors"))
    with torch.no_grad():
        assert torch.equal(new.module.dit(x, t, text, mask), old(x, t, text, mask))


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_loss(vae_ckpt, tmp_path, policy):
    tr = make_trainer(overrides(vae_ckpt, tmp_path, steps=6, **{"train.nan_policy": policy}))
    real = tr.task.inputs

    def poisoned(batch, step, sl):
        out = real(batch, step, sl)
        if step == 4:
            out["x0"] = out["x0"] * float("nan")
        return out

    tr.task.inputs = poisoned
    if policy == "stop":
        with pytest.raises(TrainError, match="step 4.*step_0000003"):
            tr.fit()
        assert not (tmp_path / "checkpoints" / "step_0000006").exists()
        again = make_trainer(overrides(vae_ckpt, tmp_path, steps=6), resume="auto")  # the last good one loads
        assert again.start_step == 3
        assert all(torch.isfinite(v).all() for v in weights(again).values())
    else:
        tr.fit()
        assert tr.skipped == 1 and 4 not in dict(tr.losses)
        assert all(torch.isfinite(v).all() for v in weights(tr).values())


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--data.batch_size=3", "--train.grad_accum=2"], "divisible"),
        (["--data.source=manifest", "--data.manifest=/nonexistent.jsonl"], "not found"),
        (["--data.source=shards", "--data.shards=/nonexistent"], "not found"),
        (["--data.source=shards", f"--data.shards={Path(__file__).parent}"], "finish `videodit-data cache`"),
        (["--train.vae=/nonexistent"], "not found"),
        (["--model.dpth=3"], "model.dpth"),
        (["--model.text_dim=32"], "text_dim"),
    ],
)
def test_bad_setups_fail_before_any_work(vae_ckpt, tmp_path, extra, needle):
    with pytest.raises((TrainError, ConfigError, CheckpointError, DataError), match=re.escape(needle)):
        train_run(load_config(None, overrides(vae_ckpt, tmp_path) + extra))
    assert not (tmp_path / "checkpoints").exists()


def test_cli_error_is_one_line_and_exit_2(vae_ckpt, tmp_path):
    r = run([sys.executable, str(ROOT / "train.py"), *overrides(vae_ckpt, tmp_path), "--train.lr=0"])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: train.lr must be > 0, got 0"], r.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, **kw)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_processes_equal_one(vae_ckpt, tmp_path, stage):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the [train] extra")
    ref = make_trainer(overrides(vae_ckpt, tmp_path / "one", steps=3))
    ref.fit()
    args = overrides(vae_ckpt, tmp_path / "ds", steps=3, **{"train.zero_stage": stage})
    port = str(29500 + (os.getpid() + stage) % 2000)
    r = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
             str(ROOT / "train.py"), *args])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    exported = load_file(tmp_path / "ds" / "export" / "dit.safetensors")  # EMA decay 0: the weights
    mine = ref.module.dit.state_dict()
    assert max((exported[k] - mine[k]).abs().max().item() for k in mine) <= 1e-6


def test_close_dist_ends_the_groups_and_a_new_run_can_start(monkeypatch):
    """train.py's end: the process groups, DeepSpeed's view of them included, are gone before interpreter exit
    (left to it, gloo can abort a finished run); closing twice is harmless and the process can start again."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the [train] extra")
    from deepspeed import comm

    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)  # init_dist sets them for its one-member group; restored after
    for _ in range(2):
        assert init_dist(True).world == 1 and torch.distributed.is_initialized() and comm.is_initialized()
        close_dist()
        assert not torch.distributed.is_initialized() and not comm.is_initialized()
    close_dist()


def test_twenty_steps_end_to_end_then_sample(vae_ckpt, tmp_path):
    r = run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny.yaml"),
             *overrides(vae_ckpt, tmp_path / "run", steps=20, **{"train.ckpt_every": 10})])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step=20" in r.stdout
    out = tmp_path / "v.mp4"
    r = run([sys.executable, str(ROOT / "sample.py"), "--checkpoint", str(tmp_path / "run" / "export"),
             "--prompt", "a red circle moving to the right", "--seconds", "2", "--steps", "2", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size > 0


def test_ema_warms_up_and_forgets_the_initialisation():
    """A fixed 0.999 decay kept 13% of the random init after 2000 steps (a VAE exported 7 dB worse than its
    weights); with the warm-up the average follows the weights early and reaches the set decay later."""
    w = torch.zeros(3)
    ema = EMA({"w": w}, decay=0.999)
    for step in range(2000):
        ema.update({"w": torch.ones(3)}, step)
    assert float(ema.shadow["w"][0]) > 0.99
    ema2 = EMA({"w": torch.zeros(1)}, decay=0.999)
    ema2.update({"w": torch.ones(1)}, 100000)  # late: the set decay
    assert abs(float(ema2.shadow["w"][0]) - 0.001) < 1e-6


def test_decoder_finetune_keeps_the_latent_space(tmp_path):
    """train.init + vae.freeze_encoder: the encoder (so a DiT's latents) is bit-identical, the decoder learns."""
    base = {"train.task": "vae", "train.wandb": "disabled", "train.steps": 2, "train.ckpt_every": 100,
            "train.log_every": 100, "train.warmup_steps": 1, "data.source": "shapes", "data.num_clips": 8,
            "data.frames": 5, "data.size": 16, "data.batch_size": 2, "vae.base_channels": 8}
    first = make_trainer([f"--{k}={v}" for k, v in {**base, "train.out_dir": tmp_path / "a"}.items()])
    first.fit()
    init = first.export()
    second = make_trainer([f"--{k}={v}" for k, v in {**base, "train.out_dir": tmp_path / "b", "train.init": init,
                                                     "vae.freeze_encoder": True, "train.lr": 1e-2}.items()])
    before = weights(second)
    second.fit()
    after = weights(second)
    enc = [k for k in before if ".encoder." in k]
    dec = [k for k in before if ".decoder." in k]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    with pytest.raises(Exception, match="freeze_encoder"):
        load_config(None, ["--train.task=vae", "--vae.freeze_encoder=true"])


def test_sigterm_to_the_process_group_saves_a_checkpoint(vae_ckpt, tmp_path):
    """A scheduler's SIGTERM reaches every process of the job (timeout, SLURM, Ctrl-C): the DataLoader workers
    must leave it to the trainer, which checkpoints and exports; `--export-only` then has something to export."""
    import signal

    out = tmp_path / "run"
    args = overrides(vae_ckpt, out, steps=100000, **{"data.num_workers": 2, "train.log_every": 1,
                                                       "train.ckpt_every": 100000})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        for line in p.stdout:
            if line.startswith("step=2 "):
                break
        os.killpg(p.pid, signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, stderr[-3000:]
    assert "received SIGTERM" in stdout
    assert list((out / "checkpoints").glob("step_*/COMPLETE"))
    assert (out / "export" / "dit.safetensors").stat().st_size > 0


def test_export_only_without_a_checkpoint_is_an_error(vae_ckpt, tmp_path):
    with pytest.raises(TrainError, match="no checkpoint"):
        train_run(load_config(None, overrides(vae_ckpt, tmp_path / "empty")), export_only=True)
    assert not (tmp_path / "empty" / "export").exists()


class _Bucketed:
    """A dataset's shape list as a shards folder cached with several --frames has it (no data needed)."""

    def __init__(self, shapes):
        self.shapes = shapes

    def __len__(self):
        return len(self.shapes)


def test_batches_of_a_bucketed_dataset_hold_one_clip_length_and_depend_on_the_step_only():
    ds = _Bucketed([(3, 8, 8)] * 40 + [(9, 8, 8)] * 25)
    plan = BatchPlan(ds, batch=8, seed=1)
    assert plan.per_epoch == 5 + 3  # full batches per bucket; the remainders wait for the next epoch
    steps = [plan(s) for s in range(3 * plan.per_epoch)]
    assert all(len(b) == 8 and len({ds.shapes[i] for i in b}) == 1 for b in steps)
    first_epoch = [i for b in steps[: plan.per_epoch] for i in b]
    assert len(set(first_epoch)) == len(first_epoch)  # no clip twice in an epoch
    assert {ds.shapes[b[0]][0] for b in steps[: plan.per_epoch]} == {3, 9}  # both lengths every epoch
    assert steps[plan.per_epoch :] != steps[: plan.per_epoch]  # each epoch reshuffles
    fresh = BatchPlan(ds, batch=8, seed=1)
    assert [fresh(s) for s in (17, 2, 9)] == [steps[17], steps[2], steps[9]]  # resume: any step, same batch
    one = _Bucketed([(3, 8, 8)] * 40)
    assert BatchPlan(one, 8, 1)(4) == global_batch_indices(40, 8, 4, 1)  # one length: unchanged
    with pytest.raises(TrainError, match="batch_size"):
        BatchPlan(_Bucketed([(3, 8, 8)] * 5 + [(9, 8, 8)] * 5), batch=8, seed=0)


def test_anchor_gap_trains_on_the_first_chunk_then_a_later_run(vae_ckpt, tmp_path):
    """flow.anchor_gap_prob: long clips are cut to the anchor + window + new chunk, as sampling lays out its cache."""
    args = overrides(vae_ckpt, tmp_path / "gap", steps=3, **{
        "data.frames": 33, "model.chunk_frames": 1, "sample.window_chunks": 2, "flow.anchor_gap_prob": 1.0})
    trainer = make_trainer(args)
    batch = next(trainer.batches(0, 1))
    whole = trainer.task.latents(batch)  # (B, C, 9, h, w)
    inputs = trainer.task.inputs(batch, 0, slice(0, 4))
    x0, t = inputs["x0"], inputs["t"]
    assert whole.shape[2] == 9 and x0.shape[2] == 1 + 3  # the first chunk, then window_chunks + 1 chunks
    assert (t[:, :2] == 0).all()  # the anchor and the chunk after the gap are clean context (no loss), as in sampling
    assert (t[:, 2:] > 0).any()
    assert torch.equal(x0[:, :, :1], whole[:, :, :1])
    for b in range(4):  # the run is a contiguous stretch of the same clip, after a gap of at least one chunk
        starts = [s for s in range(2, 7) if torch.equal(x0[b, :, 1:], whole[b, :, s : s + 3])]
        assert len(starts) == 1
    trainer.fit()
    assert len(trainer.losses) == 3 and all(torch.isfinite(torch.tensor(v)) for v in dict(trainer.losses).values())
