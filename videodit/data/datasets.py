"""Training datasets and the bucketing sampler.

    ShardDataset(shards_dir)                      cached VAE latents + T5 embeddings (the fast path)
    ClipDataset(manifest, frames, size, fps)      clips decoded on the fly from a `prep` manifest
    ShapesDataset(num, frames, size, fps, seed)   the procedural shapes, rendered on the fly (no files)

Items are dicts: ShardDataset -> latents (C, T, h, w) float32, text_emb (L, D) float32 (cut to the
caption's own length), text_mask (L,) bool, caption str; the two others -> video (3, T, H, W) float32 in
[-1, 1], caption str. Every dataset has `shapes`: one (T, H, W) per item, known without loading it, which
`BucketBatchSampler` uses so that each batch holds one shape. `collate` pads the text to the batch's longest.

A clip longer than `frames` gives several consecutive, non-overlapping windows of `frames` frames, so no
decoded footage is wasted; a clip shorter than `frames` is left out.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from videodit.data.prep import read_manifest
from videodit.data.shapes import P_TWO, make_example, render_clip
from videodit.video_io import DataError, read_video, resize_crop


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def clip_windows(rows: list[dict], frames: int, fps: float) -> list[tuple[int, float]]:
    """(row index, start seconds) of every window of `frames` frames at `fps` that fits in each clip."""
    out = []
    for j, r in enumerate(rows):
        available = math.floor((float(r["end"]) - float(r["start"])) * fps + 1e-6)
        for k in range(available // frames):
            out.append((j, float(r["start"]) + k * frames / fps))
    return out


def load_window(row: dict, start: float, frames: int, size: int | Sequence[int], fps: float) -> torch.Tensor:
    """One training window of a manifest clip -> float32 (3, frames, h, w) in [-1, 1]."""
    x = read_video(row["path"], start=start, end=start + frames / fps, fps=fps)
    if len(x) < frames:  # the container held fewer frames than its header promised: repeat the last
        if len(x) == 0:
            raise DataError(f"'{row['path']}' has no frames at {start:.2f}s")
        x = np.concatenate([x, np.repeat(x[-1:], frames - len(x), 0)])
    return resize_crop(to_tensor(x[:frames]), size)


class ClipDataset(Dataset):
    """Windows of `frames` frames at `fps` from the clips of a manifest, decoded on the fly."""

    def __init__(self, manifest: str | Path, frames: int, size: int | Sequence[int], fps: float):
        self.rows = read_manifest(manifest)
        self.frames, self.size, self.fps = frames, _hw(size), fps
        self.windows = clip_windows(self.rows, frames, fps)
        if not self.windows:
            raise DataError(
                f"no clip in '{manifest}' holds {frames} frames at {fps} fps; use shorter --frames or longer clips"
            )
        self.shapes = [(frames, *self.size)] * len(self.windows)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        j, start = self.windows[i]
        row = self.rows[j]
        video = load_window(row, start, self.frames, self.size, self.fps)  # (3, T, H, W)
        return dict(video=video, caption=row.get("caption", ""))


class ShapesDataset(Dataset):
    """`num` procedural clips rendered on the fly; item i is a pure function of (seed, split, i, p_two)."""

    def __init__(self, num: int, frames: int, size: int, fps: float, seed: int = 0, split: str = "train",
                 p_two: float | None = None):
        if num < 1:
            raise DataError(f"ShapesDataset needs num >= 1, got {num}")
        if p_two is not None and not 0 <= p_two <= 1:
            raise DataError(f"ShapesDataset: the two-object share p_two must be in [0, 1], got {p_two}")
        self.num, self.frames, self.size, self.fps, self.seed, self.split = num, frames, size, fps, seed, split
        self.p_two = P_TWO if p_two is None else p_two
        make_example(seed, 0, split)  # fail early on a bad split
        self.shapes = [(frames, size, size)] * num

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num:
            raise IndexError(i)
        spec, text = make_example(self.seed, i, self.split, self.p_two)
        frames = render_clip(spec, fps=self.fps, size=self.size, frames=self.frames)
        return dict(video=to_tensor(frames), caption=text)


def shard_folders(shards: str | Path) -> list[Path]:
    """The folders of a `data.shards` value: one folder, or several joined by commas."""
    return [Path(d.strip()) for d in str(shards).split(",") if d.strip()] or [Path(shards)]


def shard_sources(shards: str | Path) -> list[dict]:
    """What made each folder of a `data.shards` value, from its index.json: dict(folder, vae, vae_config,
    text_encoder); the last three are None in an index written before `videodit-data cache` recorded them."""
    out = []
    for folder in shard_folders(shards):
        index = json.loads((folder / "index.json").read_text())
        out.append(dict(folder=folder, **{k: index.get(k) for k in ("vae", "vae_config", "text_encoder")}))
    return out


class ShardDataset(Dataset):
    """Items of the safetensors shards written by `videodit-data cache` (see videodit/data/cache.py).

    `shards_dir` is one folder, or several joined by commas ("a,b"): e.g. short clips that teach the opening
    of a video mixed with long ones that teach its continuation. Each clip length is its own bucket."""

    def __init__(self, shards_dir: str | Path, max_open: int = 8):
        self.files: list[Path] = []  # per shard
        self.items: list[tuple[int, int]] = []  # (shard, row)
        self.shapes: list[tuple[int, int, int]] = []
        self.captions: list[str] = []
        for folder in shard_folders(shards_dir):
            index = folder / "index.json"
            if not index.is_file():
                raise DataError(
                    f"'{index}' not found: finish `videodit-data cache` (every rank) before training on '{folder}'"
                )
            for shard in json.loads(index.read_text())["shards"]:
                if not (folder / shard["file"]).is_file():
                    raise DataError(f"shard '{shard['file']}' listed in {index} is missing; rerun the cache command")
                _, t, h, w = shard["latent_shape"]
                for r in range(shard["num"]):
                    self.items.append((len(self.files), r))
                    self.shapes.append((t, h, w))
                self.captions += shard["captions"]
                self.files.append(folder / shard["file"])
        self.max_open = max_open
        self._open: OrderedDict[int, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def _handle(self, s: int):
        from safetensors import safe_open

        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        f = safe_open(str(self.files[s]), framework="pt")
        self._open[s] = f
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return f

    def __getitem__(self, i: int) -> dict:
        s, r = self.items[i]
        f = self._handle(s)
        latents = f.get_slice("latents")[r : r + 1][0].float()  # (C, T, h, w)
        mask = f.get_slice("text_mask")[r : r + 1][0].bool()  # (L,)
        n = max(1, int(mask.sum()))  # T5 pads on the right: the caption's tokens come first
        emb = f.get_slice("text_emb")[r : r + 1, :n][0].float()  # (n, D)
        return dict(latents=latents, text_emb=emb, text_mask=mask[:n].clone(), caption=self.captions[i])

    def __getstate__(self) -> dict:  # DataLoader workers open their own handles
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state


class BucketBatchSampler(Sampler):
    """Batches of indices that share one shape; each rank of a data-parallel job gets its own batches.

    Per epoch (call `set_epoch`): indices are shuffled within each shape bucket by a generator seeded with
    (seed, epoch), cut into batches of `batch_size` (the per-rank batch), the batches are shuffled, trimmed to
    a multiple of `world_size` (every rank takes the same number of steps) and dealt round-robin: rank r gets
    batches r, r + W, ... All ranks compute the same global list, so their batches are disjoint and the
    split is deterministic for (seed, epoch).
    """

    def __init__(
        self,
        shapes,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        shapes = list(getattr(shapes, "shapes", shapes))
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.buckets: dict[tuple, list[int]] = {}
        for i, s in enumerate(shapes):
            self.buckets.setdefault(tuple(s), []).append(i)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        if not self.global_batches():
            raise DataError(
                f"no batch can be formed: {len(shapes)} items in buckets of sizes "
                f"{sorted(len(b) for b in self.buckets.values())} for batch_size {batch_size} x {world_size} ranks"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches = []
        for key in sorted(self.buckets):
            idx = self.buckets[key]
            if self.shuffle:
                idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            for s in range(0, len(idx), self.batch_size):
                b = idx[s : s + self.batch_size]
                if len(b) == self.batch_size or not self.drop_last:
                    batches.append(b)
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
        return batches[: len(batches) // self.world_size * self.world_size]

    def __iter__(self):
        yield from self.global_batches()[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.global_batches()) // self.world_size


def collate(items: list[dict]) -> dict:
    """Stack tensors; pad `text_emb` (L, D) with zeros and `text_mask` (L,) with False to the longest L."""
    out: dict = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if key in ("text_emb", "text_mask"):
            n = max(v.shape[0] for v in vals)
            vals = [torch.cat([v, v.new_zeros(n - v.shape[0], *v.shape[1:])]) for v in vals]
        if isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise DataError(f"a batch mixes shapes {sorted(shapes)} for '{key}': use BucketBatchSampler")
            out[key] = torch.stack(vals)
        else:
            out[key] = vals
    return out
