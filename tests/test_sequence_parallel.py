"""Sequence parallelism (videodit/sequence_parallel.py): N processes on one clip compute what one process does.

The DiT on 2 and 4 processes (sequence parallel 2 and 4, and 2 x data parallel 2): forward output, loss and every
gradient equal one process's, also with a key/value cache."""

import os
import socket
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

    sp, dp = new_groups(degree)
    inp = clip_inputs(batch=2 * world // degree)
    dp_rank, dp_world = rank // degree, world // degree
    rows = slice(dp_rank * 2, dp_rank * 2 + 2)  # each data-parallel group its own 2 samples
    ref = run_dit(tiny_dit(), inp, rows)
    v, loss, chunk, grads = run_dit(apply_sequence_parallel(tiny_dit(), sp), inp, rows)
    for g in grads.values():  # each process holds its frames' and positions' share: the group's sum is the gradient
        dist.all_reduce(g, group=sp)
    diffs = dict(velocity=(v - ref[0]).abs().max(), loss=(loss - ref[1]).abs(),
                 cached_chunk=(chunk - ref[2]).abs().max(), grad=max((grads[k] - ref[3][k]).abs().max() for k in grads))
    diffs["grad_scale"] = max(g.abs().max() for g in ref[3].values())
    diffs["dp_world"] = torch.tensor(float(dp_world))
    torch.save({k: float(x) for k, x in diffs.items()}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("world, degree", [(2, 2), (4, 4), (4, 2)])
def test_forward_loss_gradients_and_cache_equal_one_process(tmp_path, world, degree):
    mp.spawn(_worker, args=(world, degree, free_port(), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        d = torch.load(tmp_path / f"{rank}.pt")
        assert d["grad_scale"] > 1e-3  # the gradients are not trivially zero
        assert d["velocity"] <= 1e-5 and d["loss"] <= 1e-5 and d["cached_chunk"] <= 1e-5 and d["grad"] <= 1e-5, d
