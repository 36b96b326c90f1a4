"""Sampling across processes (issue 44 item 2): N processes split every chunk's tokens and make one process's video.

The shipped tiny checkpoint (chunks of 2 latent frames, 64x64 frames: 16 tokens each, so it splits over 2 processes)
with its own sampling settings: classifier-free guidance (the conditional and unconditional rows batched), a
guidance interval, the low-noise expert and stochastic steps. On 2 processes (gloo) the latents of a prompt timeline
with a short last chunk (run whole on every process) and of a continued clip without guidance equal one process's;
`torchrun --nproc_per_node 2 sample.py` writes one mp4, the one-process mp4 byte for byte; sizes and process counts
that do not split fail with one line before any work."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from videodit.generate import GenerateError, Pipeline, generate
from videodit.video_io import read_video, write_video

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "checkpoints" / "tiny"
PROMPTS = ["a red circle moving to the right", "a blue square moving up"]
NO_GUIDANCE = {"cfg_scale": 1.0, "cfg_scale_later": 1.0, "cfg_low_t": 0.0}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests(clip: str) -> dict[str, dict]:
    """Pipeline.request arguments. timeline: 2 s = 5 latent frames, chunks of 2, 2 and 1 (the last runs whole); the
    second prompt from chunk 2 on. clip: 1 s after a 9-frame clip (one chunk), no guidance (a batch of one)."""
    return {"timeline": dict(prompts=PROMPTS, at=[0.0, 0.5], seconds=2.0, seed=3),
            "clip": dict(prompts=PROMPTS[:1], seconds=1.0, video=clip, sample=NO_GUIDANCE, seed=4)}


def latents(pipe: Pipeline, kw: dict) -> torch.Tensor:
    return torch.cat(list(pipe.latent_chunks(pipe.request(**kw))), dim=2)


def _worker(rank: int, world: int, port: int, clip: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from videodit.generate import close_processes, init_processes

    device, group = init_processes("cpu")
    pipe = Pipeline.load(TINY, device=device, group=group)
    assert pipe.degree == world and all(type(n.layout).__name__ == "SequenceParallel" for n in pipe.nets())
    torch.save({name: latents(pipe, kw) for name, kw in requests(clip).items()}, f"{out}/{rank}.pt")
    close_processes(group)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    torch.set_num_threads(1)
    return Pipeline.load(TINY)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """9 frames of a bright square sliding over a dark background (64x64, 8 fps): one chunk of latents."""
    frames = np.full((9, 64, 64, 3), 30, dtype=np.uint8)
    for i in range(9):
        frames[i, 20:36, 4 + 4 * i : 20 + 4 * i] = (220, 60, 40)
    return str(write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=8))


def test_two_processes_sample_one_process_latents(pipe, clip, tmp_path):
    refs = {name: latents(pipe, kw) for name, kw in requests(clip).items()}
    mp.spawn(_worker, args=(2, free_port(), clip, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        for name, ref in refs.items():
            assert got[name].shape == ref.shape, name
            assert (got[name] - ref).abs().max() <= 1e-5, (rank, name, (got[name] - ref).abs().max())
    assert refs["timeline"].shape[2] == 5 and refs["timeline"].abs().max() > 0.1  # 3 chunks, not trivially zero


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "sample.py"), "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_sample_py_writes_the_one_process_mp4(pipe, tmp_path):
    """1.5 s: 4 latent frames, two chunks that both split. Rank 0 alone writes, and nothing else is left."""
    ref = tmp_path / "one" / "ref.mp4"
    ref.parent.mkdir()
    generate(pipe, pipe.request(PROMPTS[:1], seconds=1.5, seed=5), ref)
    out = tmp_path / "two" / "video.mp4"
    r = torchrun("--prompt", PROMPTS[0], "--seconds", "1.5", "--seed", "5", "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("generating 12 frames") == 1 and "split over 2 processes" in r.stdout, r.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["video.mp4"]
    assert out.read_bytes() == ref.read_bytes()
    assert np.array_equal(read_video(out), read_video(ref))


def test_token_grid_that_does_not_split_fails_before_any_work(pipe, tmp_path):
    with pytest.raises(GenerateError) as e:  # chunks of 2 token frames over 3 processes
        pipe.check_split(64, 64, 3)
    assert str(e.value) == ("sampling on 3 processes splits each chunk's frames over them, but this checkpoint's "
                            "chunks have 2 token frames (model.chunk_frames 2); launch 1 or 2 processes "
                            "(torchrun --nproc_per_node)")
    with pytest.raises(GenerateError) as e:  # 48x48: 3 x 3 tokens per frame
        pipe.check_split(48, 48, 2)
    assert str(e.value) == ("sampling on 2 processes splits each frame's tokens over them, but --size 48x48 gives "
                            "9 tokens per frame; --size 48x64 or 64x48 would")
    pipe.check_split(64, 48, 2)  # 4 x 3 tokens
    out = tmp_path / "video.mp4"
    r = torchrun("--prompt", PROMPTS[0], "--seconds", "1", "--size", "48", "--out", str(out))
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert lines == ["error: sampling on 2 processes splits each frame's tokens over them, but --size 48x48 gives 9 "
                     "tokens per frame; --size 48x64 or 64x48 would"], r.stderr
    assert not out.exists() and "generating" not in r.stdout
