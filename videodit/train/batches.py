"""The batch plan: which clips every step reads, derived from (seed, step) alone, so a run gives the same batches
on 1 or N processes and after a resume."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import torch

from videodit.config import Config
from videodit.train import TrainError
from videodit.video_io import DataError


def build_dataset(cfg: Config):
    from videodit.data import datasets

    d = cfg.data
    if d.source == "shapes":
        return datasets.ShapesDataset(num=d.num_clips, frames=d.frames, size=d.size, fps=d.fps, seed=d.seed,
                                      p_two=None if d.p_two < 0 else d.p_two)
    if d.source == "manifest":
        if not d.manifest or not Path(d.manifest).is_file():
            raise TrainError(f"data.manifest '{d.manifest}' not found; make one with `videodit-data prep`")
        return datasets.ClipDataset(d.manifest, frames=d.frames, size=d.size, fps=d.fps)
    missing = [p for p in datasets.shard_folders(d.shards) if not p.is_dir()] if d.shards else [""]
    if missing:
        raise TrainError(f"data.shards '{missing[0]}' not found; make shards with `videodit-data cache`")
    ds = datasets.ShardDataset(d.shards)
    held = sorted(shard_frames(d.shards))
    if d.frames not in held:  # the export records data.frames as the clip length trained on
        raise TrainError(f"data.frames is {d.frames} but the shards in '{d.shards}' hold clips of "
                         f"{', '.join(map(str, held))} frames; pass --data.frames {held[-1]} (or cache shards with "
                         f"--frames {d.frames})")
    return ds


def shard_frames(shards: str) -> set[int]:
    """The video frames per clip (`videodit-data cache --frames`) of the shards in `shards`' index.json files."""
    from videodit.data.datasets import shard_folders

    held = set()
    for folder in shard_folders(shards):
        for shard in json.loads((folder / "index.json").read_text())["shards"]:
            t = shard["latent_shape"][1]
            held.add(int(shard.get("frames", 1 + 4 * (t - 1))))  # an index without it: the causal VAE's 4x in time
    return held


def global_batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """The dataset indices of the global batch at `step`: epochs are seeded permutations, walked in order."""
    per_epoch = max(n // batch, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    perm = (perm * math.ceil(batch / n)) if n < batch else perm
    return perm[pos * batch : (pos + 1) * batch]


class BatchPlan:
    """The dataset indices of each step's global batch. One clip shape: `global_batch_indices`. Several (a
    shards folder cached with several --frames, i.e. buckets): every batch is drawn from one bucket, by
    `BucketBatchSampler` with the global batch size and epochs seeded by (seed, epoch), so a step's batch is
    still a function of the step alone (resume gives the same batches)."""

    def __init__(self, dataset, batch: int, seed: int):
        from videodit.data.datasets import BucketBatchSampler

        self.n, self.batch, self.seed = len(dataset), batch, seed
        shapes = [tuple(s) for s in getattr(dataset, "shapes", [])]
        self.sampler = None
        if len(set(shapes)) > 1:
            try:
                self.sampler = BucketBatchSampler(shapes, batch, seed=seed)
            except DataError as e:
                raise TrainError(f"{e}: lower data.batch_size or cache more clips of each length") from None
            self.per_epoch = len(self.sampler)
        self._epoch, self._batches = -1, []

    def __call__(self, step: int) -> list[int]:
        if self.sampler is None:
            return global_batch_indices(self.n, self.batch, step, self.seed)
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._batches = epoch, self.sampler.global_batches()
        return self._batches[pos]


class StepBatches(torch.utils.data.Sampler):
    """The global batches of steps [start, end) in order: a DataLoader with workers prefetches them, and the
    batch of a step is the same as without workers (BatchPlan)."""

    def __init__(self, plan: BatchPlan, start: int, end: int):
        self.plan, self.start, self.end = plan, start, end

    def __iter__(self):
        for step in range(self.start, self.end):
            yield self.plan(step)

    def __len__(self) -> int:
        return max(self.end - self.start, 0)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 31 + stream) % (2**63))


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGINT to the trainer: a scheduler that signals the whole process group
    (timeout, SLURM, Ctrl-C) must not kill them before the trainer has saved its checkpoint."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
