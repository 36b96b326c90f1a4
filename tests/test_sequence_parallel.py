"""Sequence parallelism (videodit/sequence_parallel.py): N processes on one clip compute what one process does.

The DiT on 2 and 4 processes (sequence parallel 2 and 4): forward output, loss, every gradient and a chunk sampled
with a key/value cache equal one process's. Training with ZeRO-2 and ZeRO-3 on 4 processes (sequence parallel 2 x
data parallel 2) gives one process's weights after 2 steps and, resumed, after 3. A degree that does not divide the
processes, or clips that do not split evenly, fail with one clear line before any work."""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videodit.config import DiTConfig
from videodit.dit import DiT
from videodit.flow import flow_loss

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_dit() -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(hidden=32, depth=2, heads=2, text_dim=16, in_channels=4, patch=(1, 2, 2), chunk_frames=2,
                    first_chunk_embed=True, text_refiner=1)
    dit = DiT(cfg)
    with torch.no_grad():  # zero-initialised gates and output would hide most of the network from the test
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dit


def clip_inputs(batch: int = 2, frames: int = 8) -> dict:
    """Latents (B, 4, 8, 8, 8): 8 token frames, 16 tokens per frame; a clean first chunk, per-chunk t."""
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(batch, 4, frames, 8, 8, generator=g), torch.randn(batch, 4, frames, 8, 8, generator=g)
    t = torch.rand(batch, frames // 2, generator=g).repeat_interleave(2, dim=1)
    t[:, :2] = 0.0
    text = torch.randn(batch, 5, 16, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return dict(x0=x0, noise=noise, t=t, text=text, mask=mask)


def run_dit(dit: DiT, inp: dict, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Velocity, loss, a chunk's velocity with a key/value cache of the clip, and the loss's gradients."""
    dit.zero_grad()
    x0, noise, t = inp["x0"][rows], inp["noise"][rows], inp["t"][rows]
    text, mask = inp["text"][rows], inp["mask"][rows]
    xt = (1 - t[:, None, :, None, None]) * x0 + t[:, None, :, None, None] * noise
    v = dit(xt, t, text, mask)
    loss = flow_loss(lambda a, b: dit(a, b, text, mask), x0, t, noise)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in dit.named_parameters()}
    with torch.no_grad():  # the clip's keys and values as the cache of a 4-frame chunk that follows it
        _, kv = dit.forward_chunk(x0, torch.zeros_like(t), text, mask, context=[])
        chunk, _ = dit.forward_chunk(xt[:, :, :4], t[:, :4], text, mask, context=[kv])
    return v.detach(), loss.detach(), chunk, grads


def _worker(rank: int, world: int, degree: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from videodit.sequence_parallel import apply_sequence_parallel, new_groups

    sp, _ = new_groups(degree)
    inp = clip_inputs(batch=2 * world // degree)
    rows = slice(rank // degree * 2, rank // degree * 2 + 2)  # each data-parallel group its own 2 samples
    ref = run_dit(tiny_dit(), inp, rows)
    v, loss, chunk, grads = run_dit(apply_sequence_parallel(tiny_dit(), sp), inp, rows)
    for g in grads.values():  # each process holds its share of the group's summed (N x) loss: the mean is the gradient
        dist.all_reduce(g, group=sp)
        g /= degree
    diffs = dict(velocity=(v - ref[0]).abs().max(), loss=(loss - ref[1]).abs(),
                 cached_chunk=(chunk - ref[2]).abs().max(), grad=max((grads[k] - ref[3][k]).abs().max() for k in grads))
    diffs["grad_scale"] = max(g.abs().max() for g in ref[3].values())
    torch.save({k: float(x) for k, x in diffs.items()}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("world, degree", [(2, 2), (4, 4)])
def test_forward_loss_gradients_and_cache_equal_one_process(tmp_path, world, degree):
    mp.spawn(_worker, args=(world, degree, free_port(), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        d = torch.load(tmp_path / f"{rank}.pt")
        assert d["grad_scale"] > 1e-3  # the gradients are not trivially zero
        assert d["velocity"] <= 1e-5 and d["loss"] <= 1e-5 and d["cached_chunk"] <= 1e-5 and d["grad"] <= 1e-5, d


# ---- training: train.sequence_parallel with DeepSpeed on 4 processes equals one process

from test_train import make_trainer, overrides, run  # noqa: E402

from videodit.config import load_config  # noqa: E402
from videodit.train import TrainError  # noqa: E402


def sp_args(vae_ckpt: Path, out: Path, steps: int, **extra) -> list[str]:
    """test_train's tiny run on clips of 13 frames: 4 latent frames x 16 tokens (2 chunks), splits over 2 and 4."""
    return overrides(vae_ckpt, out, steps=steps, **{"data.frames": 13, "train.ckpt_every": 100, **extra})


def max_diff(path: Path, state: dict, prefix: str = "") -> float:
    from safetensors.torch import load_file

    got = load_file(path)
    return max((got[prefix + k] - v).abs().max().item() for k, v in state.items())


def test_zero_2_and_3_with_sequence_parallel_2_x_data_parallel_2_equal_one_process(vae_ckpt, tmp_path):
    """4 processes, ZeRO-2 and ZeRO-3: two steps, then a resume to the third; EMA decay 0, so the checkpoints' EMA
    and the export hold the weights. ZeRO-3 resumes with another layout (sequence parallel 4) and activation
    checkpointing: the math is the same. One launch runs the four trainings (`main` below), as one DeepSpeed
    launch per training would take most of the time in starting processes."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the [train] extra")
    refs = {}
    for steps in (2, 3):
        (tmp_path / f"one{steps}").mkdir()
        refs[steps] = make_trainer(sp_args(vae_ckpt, tmp_path / f"one{steps}", steps=steps))
        refs[steps].fit()
    r = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port",
             str(free_port()), __file__, str(tmp_path), *sp_args(vae_ckpt, tmp_path, steps=3)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for stage in (2, 3):
        out = tmp_path / f"zero{stage}"
        assert "sequence parallel 2" in (out / "log.txt").read_text()
        two = out / "checkpoints" / "step_0000002" / "ema.safetensors"
        assert max_diff(two, refs[2].module.dit.state_dict(), "dit.") <= 1e-5
        assert max_diff(out / "export" / "dit.safetensors", refs[3].module.dit.state_dict()) <= 1e-5


def main(out: Path, args: list[str]) -> None:
    """On each of 4 processes (torch.distributed.run): for ZeRO-2 and ZeRO-3, train.py for 2 steps with sequence
    parallel 2, then resumed to step 3 (ZeRO-3: with sequence parallel 4 and activation checkpointing)."""
    import contextlib
    import io

    sys.path.insert(0, str(ROOT))
    import train

    for stage in (2, 3):
        folder = out / f"zero{stage}"
        base = [*args, f"--train.zero_stage={stage}", f"--train.out_dir={folder}"]
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            assert train.main([*base, "--train.steps=2", "--train.sequence_parallel=2"]) == 0
        later = ["--train.sequence_parallel=4", "--train.activation_checkpointing=true"] if stage == 3 else []
        assert train.main([*base, "--train.steps=3", "--resume=auto", "--train.sequence_parallel=2", *later]) == 0
        if int(os.environ["RANK"]) == 0:
            (folder / "log.txt").write_text(log.getvalue())
    from videodit.train.distributed import close_dist

    close_dist()


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"data.frames": 9}, "data.frames 9 gives 3 token frames; data.frames 5 or 13 would (2 or 4 token frames)"),
        ({"data.frames": 13, "data.size": 48}, "48x48 frames give 9 tokens each; data.size 32 or 64 would"),
        ({"data.frames": 13, "train.sequence_parallel": 3}, "train.sequence_parallel 3 must divide the number of "
                                                            "processes (2): launch a multiple of 3 processes, or use "
                                                            "one of 1, 2"),
    ],
)
def test_uneven_split_or_bad_degree_fails_before_any_work(vae_ckpt, tmp_path, extra, needle):
    """On 2 processes (a stand-in world: the checks come before anything distributed), sequence parallel 2."""
    from videodit.train.distributed import Dist
    from videodit.train.trainer import Trainer

    cfg = load_config(None, overrides(vae_ckpt, tmp_path, **{"train.sequence_parallel": 2, **extra}))
    with pytest.raises(TrainError) as e:
        Trainer(cfg, "", Dist(rank=0, world=2))
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_cli_degree_error_is_one_line_and_exit_2(vae_ckpt, tmp_path):
    r = run([sys.executable, str(ROOT / "train.py"), *sp_args(vae_ckpt, tmp_path, 2), "--train.sequence_parallel=2"])
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["error: train.sequence_parallel 2 must divide the number of processes "
                                             "(1): launch a multiple of 2 processes, or use 1"], r.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
