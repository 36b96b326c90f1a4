"""Sequence parallelism (videodit/sequence_parallel.py): activations, all-to-all bytes and step time measured on CPU
with gloo, and a written model of the all-to-all time against the block's compute on GPUs.

    nice python benchmarks/sequence_parallel.py [--degrees 1,2,4] [--frames 8] [--latent 32] [--repeats 3]

Measured, for one clip of a small DiT (default: hidden 256, depth 4, 4 heads; 8 latent frames of 32x32, so 8 token
frames of 256 tokens) trained one step (forward + backward, fp32) on N = 1, 2, 4 processes, one thread each:
- activations per process: the bytes of the tensors autograd saves for the backward (counted with
  torch.autograd.graph.saved_tensors_hooks, unique storages, parameters excluded). They are what a training step
  holds at the end of its forward, where activation memory peaks; goal at N processes <= 1.2/N of one process's.
- bytes through the all-to-alls per process and step, counted by wrapping torch.distributed.all_to_all_single
  (and all_gather / all_reduce, the output gather and its backward), against the formula: 4 exchanges per block
  (2 forward, 2 backward) of the process's B T S D / N values.
- step time, the median of --repeats steps (wall clock, the slowest process), and the CPU time of a step per
  process (time.process_time, the busiest process: the work each process does, less sensitive to a loaded box).
Written model (no GPU needed): per block of the `xl` DiT, the all-to-all bytes against the attention and MLP FLOPs for
clips of 49 and 241 frames at 480x832 on 8 GPUs, at NVLink and InfiniBand bandwidth and an assumed achieved bf16
throughput; also the DeepSpeed-Ulysses head swap's bytes. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videodit.config import DIT_PRESETS, DiTConfig
from videodit.dit import DiT

# ---- hardware for the written model (per GPU, per direction); sources in docs/sequence-parallel.md
NVLINK = 450e9  # H100 SXM: NVLink 4, 18 links, 900 GB/s bidirectional (NVIDIA H100 datasheet)
INFINIBAND = 50e9  # 400 Gb/s NDR per GPU (DGX H100: one ConnectX-7 per GPU for the compute fabric)
ACHIEVED_BF16 = 400e12  # assumed achieved bf16 FLOP/s on an H100 (~40% of its 989 TFLOP/s dense peak)
TEXT_TOKENS = 226  # configs/xl.yaml text.max_length


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_dit(args) -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(hidden=args.hidden, depth=args.depth, heads=args.heads, text_dim=64, in_channels=16,
                    patch=(1, 2, 2), chunk_frames=2, first_chunk_embed=True)  # fmt: skip
    dit = DiT(cfg)
    with torch.no_grad():  # zero-initialised gates would make every block the identity
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return dit


def counting(fn, name: str, counts: dict):
    """`fn` (a torch.distributed collective) that adds its input tensor's bytes to counts[name]."""

    def wrapped(*a, **k):
        x = a[1] if name in ("all_to_all_single", "all_gather") else a[0]
        counts[name] = counts.get(name, 0) + x.numel() * x.element_size()
        return fn(*a, **k)

    return wrapped


def _worker(rank: int, world: int, port: int, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    counts: dict[str, int] = {}
    for name in ("all_to_all_single", "all_gather", "all_reduce"):
        setattr(dist, name, counting(getattr(dist, name), name, counts))
    from videodit.sequence_parallel import apply_sequence_parallel

    dit = bench_dit(args)
    if world > 1:
        apply_sequence_parallel(dit, dist.group.WORLD)
    g = torch.Generator().manual_seed(1)
    T, L = args.frames, args.latent
    x = torch.randn(1, 16, T, L, L, generator=g)
    target = torch.randn(1, 16, T, L, L, generator=g)
    t = torch.rand(1, T, generator=g)
    text, mask = torch.randn(1, 16, 64, generator=g), torch.ones(1, 16, dtype=torch.bool)
    params = {p.untyped_storage().data_ptr() for p in dit.parameters()}

    def step(saved: dict | None = None) -> None:
        dit.zero_grad(set_to_none=True)

        def pack(tensor):
            ptr = tensor.untyped_storage().data_ptr()
            if ptr not in params:
                saved[ptr] = tensor.untyped_storage().nbytes()
            return tensor

        if saved is None:
            loss = (dit(x, t, text, mask) - target).square().mean()
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                loss = (dit(x, t, text, mask) - target).square().mean()
        loss.backward()

    saved: dict[int, int] = {}
    step(saved)  # also the warm-up
    counts.clear()
    step()
    moved = dict(counts)
    times, cpu = [], []
    for _ in range(args.repeats):
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    both = [None] * world
    dist.all_gather_object(both, (statistics.median(times), statistics.median(cpu)))
    if rank == 0:
        result = dict(activations=sum(saved.values()), moved=moved, step_s=max(b[0] for b in both),
                      cpu_s=max(b[1] for b in both))  # fmt: skip
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def measure(degree: int, args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        mp.spawn(_worker, args=(degree, free_port(), args, str(out)), nprocs=degree, join=True)
        return json.loads(out.read_text())


def formula_bytes(degree: int, args) -> dict:
    """Per process and step: 4 exchanges per block of B T S D / N fp32 values (the all-to-alls' inputs), the output
    gather's input (B T S patch_dim / N) and its backward's all-reduce (B T S patch_dim)."""
    tokens = args.frames * (args.latent // 2) ** 2  # B = 1, patch (1, 2, 2)
    if degree == 1:
        return dict(all_to_all_single=0, all_gather=0, all_reduce=0)
    return dict(all_to_all_single=4 * args.depth * tokens * args.hidden * 4 // degree,
                all_gather=tokens * 64 * 4 // degree, all_reduce=tokens * 64 * 4)  # fmt: skip


# ---- the written model for GPUs


def block_flops(tokens_per_frame: int, frames: int, batch: int, D: int, mlp_ratio: float) -> dict[str, float]:
    """Forward FLOPs of one block for `batch` clips of `frames` token frames x `tokens_per_frame` (2 per multiply-add;
    the temporal attention dense over all frames, as SDPA or the dense kernel computes it with a block-causal mask)."""
    n = batch * frames * tokens_per_frame
    return dict(
        spatial=n * (8 * D * D + 4 * tokens_per_frame * D),  # qkv + out projections, QK^T and AV within a frame
        temporal=n * (8 * D * D + 4 * frames * D),  # the same across the frames of a position
        cross=n * (4 * D * D + 4 * TEXT_TOKENS * D) + batch * 4 * TEXT_TOKENS * D * D,  # q, out; text k, v
        mlp=n * 4 * mlp_ratio * D * D,
    )


def gpu_model(frames: int, width: int, height: int, gpus: int, batch: int = 1) -> dict:
    """One block of the xl DiT on `gpus` GPUs for `batch` clips of `frames` video frames at width x height."""
    p = {**DiTConfig().__dict__, **DIT_PRESETS["xl"]}
    D, (pt, ph, pw) = p["hidden"], p["patch"]
    T = (1 + (frames - 1) // 4) // pt
    S = (height // 8 // ph) * (width // 8 // pw)
    flops = block_flops(S, T, batch, D, p["mlp_ratio"])
    compute_s = sum(flops.values()) / gpus / ACHIEVED_BF16
    per_gpu = batch * T * S * D * 2 / gpus  # bf16 bytes of the process's tokens
    sent = 2 * per_gpu * (gpus - 1) / gpus  # axis swap: 2 exchanges per block, (N - 1) / N of each leaves
    ulysses = 2 * sent  # head swap: q, k, v to head shards and the output back, 4 exchanges of the same size
    out = dict(frames=frames, token_frames=T, tokens_per_frame=S, tokens=batch * T * S, gpus=gpus,
               splits_evenly=T % gpus == 0 and S % gpus == 0,
               gflop_per_block={k: round(v / 1e9, 1) for k, v in flops.items()},
               compute_ms=round(compute_s * 1e3, 3), alltoall_mb_sent_per_gpu=round(sent / 1e6, 2),
               ulysses_mb_sent_per_gpu=round(ulysses / 1e6, 2))  # fmt: skip
    for link, bw in (("nvlink", NVLINK), ("infiniband", INFINIBAND)):
        comm = sent / bw
        out[f"{link}_comm_ms"] = round(comm * 1e3, 3)
        # forward (sampling): 2 exchanges per forward; training without / with activation checkpointing: 3 or 4
        # forwards' FLOPs for 4 or 6 exchanges; nothing overlaps the exchanges (they sit between kernels)
        for mode, f, x in (("sample", 1, 1), ("train", 3, 2), ("train_ckpt", 4, 3)):
            out[f"{link}_{mode}_efficiency"] = round(f * compute_s / (f * compute_s + x * comm), 3)
        out[f"{link}_ulysses_sample_efficiency"] = round(compute_s / (compute_s + ulysses / bw), 3)
    out["bandwidth_for_90pct_sample_gbs"] = round(sent / (compute_s / 9) / 1e9, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--degrees", default="1,2,4")
    ap.add_argument("--frames", type=int, default=8, help="latent frames (= token frames)")
    ap.add_argument("--latent", type=int, default=32, help="latent height = width (tokens per frame: (latent/2)^2)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t_start = time.time()
    load = os.getloadavg()
    degrees = [int(d) for d in args.degrees.split(",")]
    rows = {d: measure(d, args) for d in degrees}
    base = rows[degrees[0]]["activations"] if degrees[0] == 1 else None
    tokens = args.frames * (args.latent // 2) ** 2
    print(f"DiT hidden {args.hidden}, depth {args.depth}, {args.heads} heads; one clip of {args.frames} token frames x "
          f"{(args.latent // 2) ** 2} tokens ({tokens}); fp32, forward + backward, 1 thread per process, gloo")
    print(f"{'N':>2} {'activations MB':>15} {'x SP 1':>7} {'goal 1.2/N':>10} {'all-to-all MB':>14} {'formula':>8} "
          f"{'gather+reduce MB':>17} {'formula':>8} {'step s':>7} {'CPU s/proc':>10}")
    result: dict = dict(dit=dict(hidden=args.hidden, depth=args.depth, heads=args.heads, token_frames=args.frames,
                                 tokens_per_frame=(args.latent // 2) ** 2))  # fmt: skip
    for d, r in rows.items():
        f = formula_bytes(d, args)
        moved = r["moved"]
        a2a, other = moved.get("all_to_all_single", 0), moved.get("all_gather", 0) + moved.get("all_reduce", 0)
        a2a_f, other_f = f["all_to_all_single"], f["all_gather"] + f["all_reduce"]
        ratio = r["activations"] / base if base else float("nan")
        print(f"{d:2d} {r['activations'] / 1e6:15.1f} {ratio:7.3f} {1.2 / d:10.3f} {a2a / 1e6:14.2f} "
              f"{a2a_f / 1e6:8.2f} {other / 1e6:17.3f} {other_f / 1e6:8.3f} {r['step_s']:7.2f} {r['cpu_s']:10.2f}")
        result[f"sp{d}"] = dict(activations_mb=round(r["activations"] / 1e6, 2), activations_vs_sp1=round(ratio, 4),
                                alltoall_mb=round(a2a / 1e6, 3), alltoall_formula_mb=round(a2a_f / 1e6, 3),
                                gather_reduce_mb=round(other / 1e6, 3),
                                gather_reduce_formula_mb=round(other_f / 1e6, 3),
                                step_s=round(r["step_s"], 3), cpu_s_per_process=round(r["cpu_s"], 3))  # fmt: skip
    print("\nwritten model, one xl block (hidden 1152, 16 heads) on 8 GPUs, 480x832, bf16, achieved "
          f"{ACHIEVED_BF16 / 1e12:.0f} TFLOP/s; NVLink {NVLINK / 1e9:.0f} GB/s and InfiniBand {INFINIBAND / 1e9:.0f} "
          "GB/s per GPU and direction; efficiency = compute / (compute + all-to-all), nothing overlapped")
    print(f"{'frames':>6} {'T x S':>10} {'GFLOP':>7} {'comp ms':>8} {'MB/GPU':>7} {'NVL ms':>7} {'IB ms':>7} "
          f"{'NVL smp':>8} {'NVL trn':>8} {'IB smp':>7} {'IB trn':>7} {'IB ckpt':>8} {'Ulysses NVL/IB':>15} "
          f"{'90% GB/s':>9}")
    model = []
    for frames in (49, 241):
        m = gpu_model(frames, 832, 480, 8)
        model.append(m)
        gflop = sum(m["gflop_per_block"].values())
        print(f"{frames:6d} {m['token_frames']:>4}x{m['tokens_per_frame']:<5} {gflop:7.0f} "
              f"{m['compute_ms']:8.3f} {m['alltoall_mb_sent_per_gpu']:7.2f} {m['nvlink_comm_ms']:7.3f} "
              f"{m['infiniband_comm_ms']:7.3f} {m['nvlink_sample_efficiency']:8.3f} "
              f"{m['nvlink_train_efficiency']:8.3f} "
              f"{m['infiniband_sample_efficiency']:7.3f} {m['infiniband_train_efficiency']:7.3f} "
              f"{m['infiniband_train_ckpt_efficiency']:8.3f} "
              f"{m['nvlink_ulysses_sample_efficiency']:7.3f}/{m['infiniband_ulysses_sample_efficiency']:.3f} "
              f"{m['bandwidth_for_90pct_sample_gbs']:9.1f}")
    chunk = gpu_model(5, 832, 480, 2, batch=2)  # sampling: a chunk of 2 latent frames, CFG batch 2, on 2 GPUs
    print(f"sampling chunk (2 token frames, CFG batch 2) on 2 GPUs: compute {chunk['compute_ms']:.3f} ms, "
          f"{chunk['alltoall_mb_sent_per_gpu']:.2f} MB/GPU, efficiency NVLink {chunk['nvlink_sample_efficiency']:.3f}, "
          f"InfiniBand {chunk['infiniband_sample_efficiency']:.3f}")
    result["gpu_model"] = dict(achieved_tflops=ACHIEVED_BF16 / 1e12, nvlink_gbs=NVLINK / 1e9,
                               infiniband_gbs=INFINIBAND / 1e9, clips=model, sampling_chunk_2gpus=chunk)  # fmt: skip
    result["load_avg_before"] = [round(x, 2) for x in load]
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.time() - t_start, 1)
    print(f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after "
          f"{' '.join(f'{x:.2f}' for x in result['load_avg_after'])}; {result['wall_s']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
