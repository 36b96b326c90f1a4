"""Process groups, DeepSpeed set-up and its safe checkpoint loading: everything that knows about ranks."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from videodit.config import Config
from videodit.train import TrainError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sequence_parallel: int = 1  # consecutive ranks that share each sample (train.sequence_parallel)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def data_rank(self) -> int:
        """The rank's place among the data-parallel groups: which share of the global batch it takes."""
        return self.rank // self.sequence_parallel

    @property
    def data_world(self) -> int:
        return self.world // self.sequence_parallel


def init_dist(use_deepspeed: bool) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or use_deepspeed:
        if not use_deepspeed:
            raise TrainError(f"{world} processes need DeepSpeed: add --train.zero_stage 1, 2 or 3")
        deepspeed = import_deepspeed()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if world > 1 or "MASTER_ADDR" in os.environ:
            deepspeed.init_distributed(dist_backend=backend)
        else:  # a single process without a launcher: a one-member group on this machine
            os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            deepspeed.init_distributed(dist_backend=backend)
    rank = int(os.environ.get("RANK", "0"))
    return Dist(rank=rank, world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def close_dist() -> None:
    """The end of a process that trained well: every process group destroyed, through DeepSpeed, which set them up
    (init_dist) and keeps references to them. Left to interpreter exit, gloo's worker threads outlive Python's
    teardown, and a finished process can die of SIGABRT ("terminate called without an active exception",
    pytorch/pytorch#190489): a failed exit code for a run that wrote its export. No barrier: the export ended with
    one on every rank. Only after success: a rank that failed may leave others inside a collective."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from deepspeed import comm

        comm.destroy_process_group()


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise TrainError("train.zero_stage > 0 needs DeepSpeed: pip install -e '.[train]'") from e
    return deepspeed


def check_sequence_parallel_degree(cfg: Config, world: int) -> None:
    """TrainError, before any work, unless train.sequence_parallel divides the `world` processes."""
    n = cfg.train.sequence_parallel
    if world % n:
        fits = [str(d) for d in range(1, world + 1) if world % d == 0]
        raise TrainError(f"train.sequence_parallel {n} must divide the number of processes ({world}): launch a "
                         f"multiple of {n} processes, or use {'one of ' * (len(fits) > 1)}{', '.join(fits)}")


def check_sequence_parallel_split(cfg: Config, shapes: list[tuple[int, int, int]], latent: bool) -> None:
    """TrainError, before any work, unless train.sequence_parallel N splits the token frames T' and the tokens
    per frame S of every clip shape evenly; it says which sizes would. `shapes`: the dataset's (T, H, W), latent
    (cached shards) or video (clips encoded on the fly: 1 + 4k frames make 1 + k latent frames, 8x smaller)."""
    n, (pt, ph, pw) = cfg.train.sequence_parallel, cfg.model.patch
    for shape in sorted(set(shapes)):
        t, h, w = shape if latent else (1 + (shape[0] - 1) // 4, shape[1] // 8, shape[2] // 8)
        T, S = t // pt, (h // ph) * (w // pw)
        if T % n:  # video frames 1 + 4 (t - 1) for t latent frames, t a multiple of n * pt
            near = sorted(sorted((k * n * pt for k in range(1, t // (n * pt) + 3)), key=lambda x: abs(x - t))[:2])
            frames = " or ".join(str(1 + 4 * (x - 1)) for x in near)
            tokens = " or ".join(str(x // pt) for x in near)
            what = (f"the shards' clips of {1 + 4 * (t - 1)} frames give {T} token frames; cache clips of {frames} "
                    "frames" if latent else f"data.frames {shape[0]} gives {T} token frames; data.frames {frames}")
            raise TrainError(f"train.sequence_parallel {n} splits each clip's frames over {n} processes, but {what} "
                             f"would ({tokens} token frames)")
        if S % n:
            what = ("the shards' " if latent else "") + f"{8 * w}x{8 * h} frames give {S} tokens each"
            # square sizes p (pixels) whose p/8 divides by the patch and whose token count by n
            sizes = [p for p in range(8, 16 * h + 8, 8) if p // 8 % ph == 0 and p // 8 % pw == 0
                     and (p // 8 // ph) * (p // 8 // pw) % n == 0] if h == w else []  # fmt: skip
            if sizes:
                near = sorted(sorted(sizes, key=lambda p: abs(p - 8 * h))[:2])
                counts = " or ".join(str((p // 8 // ph) * (p // 8 // pw)) for p in near)
                size = " or ".join(map(str, near))
                what += f"; {'cache clips of size' if latent else 'data.size'} {size} would ({counts} tokens)"
            raise TrainError(f"train.sequence_parallel {n} splits each frame's tokens over {n} processes, but {what}")


def all_reduce_max(x: float, dist: Dist) -> float:
    if dist.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device_of(dist))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def all_mean(x: float, dist: Dist) -> float:
    if dist.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device_of(dist))
    torch.distributed.all_reduce(t)
    return float(t.item()) / dist.world


def device_of(dist: Dist) -> torch.device:
    return torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def full_params(module: nn.Module, zero_stage: int):
    """Full (gathered) parameters of `module` for reading, also under ZeRO-3."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def deepspeed_config(cfg: Config, dist: Dist, micro: int, precision: str) -> dict:
    t = cfg.train
    ds: dict = {}
    if t.deepspeed:
        p = Path(t.deepspeed)
        if not p.is_file():
            raise TrainError(f"train.deepspeed '{p}' not found (see configs/deepspeed/)")
        ds = json.loads(p.read_text())
    ours = {
        # DeepSpeed sees every rank as data parallel: a sample counts once per rank of its sequence-parallel group
        "train_batch_size": cfg.data.batch_size * t.sequence_parallel,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
    }
    for key, value in ours.items():
        if key in ds and ds[key] not in (value, "auto"):
            raise TrainError(f"{t.deepspeed} sets {key}={ds[key]} but our config gives {value}; "
                             "set it once, in the videodit config, and remove it from the JSON")
        ds[key] = value
    zero = ds.setdefault("zero_optimization", {})
    if "stage" in zero and zero["stage"] != t.zero_stage:
        raise TrainError(f"{t.deepspeed} has ZeRO stage {zero['stage']} but train.zero_stage is {t.zero_stage}")
    zero["stage"] = t.zero_stage
    if t.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def install_safe_deepspeed_load() -> None:
    """DeepSpeed unpickles its own checkpoint files; make it do so with weights_only=True."""
    from deepspeed.runtime.checkpoint_engine import torch_checkpoint_engine as tce

    def load(self, path: str, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=True)

    tce.TorchCheckpointEngine.load = load
    safe = []
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.zero.config import ZeroStageEnum

        safe.append(ZeroStageEnum)
    with contextlib.suppress(ImportError):
        from deepspeed.utils.tensor_fragment import fragment_address

        safe.append(fragment_address)
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.fp16.loss_scaler import LossScaler

        safe.append(LossScaler)
    import argparse as _argparse
    import collections

    safe += [_argparse.Namespace, collections.OrderedDict, set]
    torch.serialization.add_safe_globals(safe)
