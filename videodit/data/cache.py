"""Clips manifest -> shards of VAE latents and T5 embeddings, for fast DiT training.

    videodit-data cache clips.jsonl --vae CKPT [--text-encoder CKPT_OR_T5_DIR] --out shards/ [--shard-size 256]
    videodit-data cache --shapes 16000 --frames 33 --vae CKPT --out shards/   # procedural clips, rendered here
    torchrun --nproc-per-node 8 -m videodit.data cache clips.jsonl --vae CKPT --out shards/

`--shapes N` renders clips 0..N-1 of the procedural dataset (`--seed`, train split) in the workers instead of
decoding mp4 files: the same clips `videodit-data shapes` writes, without the h264 round trip, and no video
library needed (a GPU machine encodes thousands of clips a second this way).

The work is planned up front and deterministically from the manifest and the arguments: every clip is cut
into windows of `--frames` frames at `--fps` (the longest of the given frame counts that fits the clip),
windows are grouped by shape in manifest order and cut into shards of `--shard-size`. Shard k belongs to
rank k mod world_size, so ranks never coordinate. Each shard is a safetensors file written to a temporary
name and renamed into place:

    latents    (N, C, 1 + (T-1)/4, H/8, W/8)   VAE posterior means (not normalised; the trainer scales them),
                                               computed in --vae-dtype, stored in --dtype
    text_emb   (N, L, D)                       T5 embeddings, zero past each caption, L = the shard's longest
    text_mask  (N, L) bool

with the captions and source clips in its metadata and in `index.json`, which also records what made the shards:
the VAE (`vae`, its path, and `vae_config`, its config section: architecture and per-channel latent statistics,
which training adopts or checks against `train.vae`) and the text encoder (`text_encoder`: `--text-encoder`, else
the `--vae` checkpoint's own; a converted VAE has none, so pass one). A finished shard is never redone, so
an interrupted run, run again, produces the same files as an uninterrupted one. `index.json` appears when the
last shard is done (written by whichever rank finishes last; rerunning any rank also writes it).

A clip that cannot be read (a missing file, a damaged video, no frames where the manifest says) is left out of
its shard and recorded in the shard's metadata (`--on-error skip`, the default), so a shard holds only good
clips, its latents and text embeddings stay paired, and a rerun gives the same files. With `index.json` comes
`skipped.jsonl`: one line per skipped clip (manifest row, path, reason, error, the windows lost). A shard all
of whose clips failed is a file with no tensors, left out of the index. `--on-error stop` stops at the first
bad clip instead. If no clip at all could be read, no index is written and the run fails.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from videodit.config import to_dict
from videodit.data.datasets import _hw, load_window, to_tensor
from videodit.data.prep import read_manifest
from videodit.video_io import DataError, VideoError, share, temp_path_for

INDEX_VERSION = 1
ON_ERROR = ("skip", "stop")


class ClipError(DataError):
    """Clips that could not be read: the first one under `--on-error stop`, or every one of them."""

    exit_code = 2


@dataclass
class ShardPlan:
    name: str  # file name
    frames: int
    samples: list[tuple[int, float]]  # (manifest row, window start in seconds)


def plan_shards(
    rows: list[dict], frames: list[int], size: tuple[int, int], fps: float, shard_size: int
) -> tuple[list[ShardPlan], int]:
    """-> (shards in a fixed global order, number of clips too short for any frame count)."""
    buckets: dict[int, list[tuple[int, float]]] = {}
    skipped = 0
    for j, r in enumerate(rows):
        available = math.floor((float(r["end"]) - float(r["start"])) * fps + 1e-6)
        fits = [f for f in frames if f <= available]
        if not fits:
            skipped += 1
            continue
        f = max(fits)
        for k in range(available // f):
            buckets.setdefault(f, []).append((j, float(r["start"]) + k * f / fps))
    plans = []
    for f in sorted(buckets):
        samples = buckets[f]
        for k, s in enumerate(range(0, len(samples), shard_size)):
            name = f"shard-{f}x{size[0]}x{size[1]}-{k:05d}.safetensors"
            plans.append(ShardPlan(name, f, samples[s : s + shard_size]))
    return plans, skipped


class _Windows(Dataset):
    def __init__(self, rows: list[dict], plan: ShardPlan, size: tuple[int, int], fps: float):
        self.rows, self.plan, self.size, self.fps = rows, plan, size, fps

    def __len__(self) -> int:
        return len(self.plan.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, tuple[str, str] | None]:
        """-> (video (3, T, H, W), None), or (None, (reason, message)) for a clip that cannot be read."""
        j, start = self.plan.samples[i]
        row = self.rows[j]
        if "shapes" in row:  # a procedural clip: rendered, not decoded
            from videodit.data.shapes import make_example, render_clip

            seed, split, index, *rest = row["shapes"]  # p_two, style: rows written before them lack them
            spec, _ = make_example(seed, index, split, *rest[:1])
            style = rest[1] if len(rest) > 1 else "plain"
            clip = render_clip(spec, fps=self.fps, size=self.size, frames=self.plan.frames, style=style)
            return to_tensor(clip), None
        try:
            return load_window(row, start, self.plan.frames, self.size, self.fps), None
        except (DataError, OSError) as e:  # the user's data, not our code: the caller skips or stops
            return None, (_reason(row, e), " ".join(str(e).split()))


def _reason(row: dict, e: Exception) -> str:
    if not os.path.isfile(row["path"]):
        return "missing"
    return "unreadable" if isinstance(e, (VideoError, OSError)) else "no frames"


def _unbatched(batch: list) -> list:  # DataLoader collate_fn: the loop sorts good clips from bad ones itself
    return batch


def shapes_rows(num: int, seed: int, frames: int, fps: float, split: str = "train", p_two: float | None = None,
                style: str = "plain") -> list[dict]:
    """Manifest rows of the procedural clips 0..num-1, `frames` long, rendered by _Windows on demand; p_two: the
    share of two-object clips (None: the dataset's default, P_TWO); style: shapes.STYLES."""
    from videodit.data.shapes import P_TWO, STYLES, make_example

    if style not in STYLES:
        raise DataError(f"--style must be one of {', '.join(STYLES)}, got '{style}'")

    p_two = P_TWO if p_two is None else p_two

    if num < 1:
        raise DataError(f"--shapes must be >= 1, got {num}")
    rows = []
    for i in range(num):
        _, text = make_example(seed, i, split, p_two)
        rows.append(dict(path=f"shapes:{split}:{seed}:{i}", start=0.0, end=frames / fps, caption=text,
                         shapes=[seed, split, i, p_two] + ([style] if style != "plain" else [])))  # fmt: skip
    return rows


def load_text_encoder_any(path: str | Path, max_length: int | None = None):
    """A videodit checkpoint folder (config.yaml + text_encoder/) or a transformers T5 folder."""
    from videodit.checkpoint import load_text_encoder, read_config
    from videodit.config import TextConfig
    from videodit.text_encoder import TextEncoder

    p = Path(path)
    if (p / "config.yaml").is_file():
        cfg = read_config(p)
        if max_length:
            cfg.text.max_length = max_length
        return load_text_encoder(p, cfg)
    if (p / "config.json").is_file():
        return TextEncoder.from_pretrained(p, max_length or TextConfig().max_length)
    raise DataError(
        f"--text-encoder '{p}' is neither a videodit checkpoint (config.yaml) nor a T5 folder (config.json)"
    )


def _encode_text(text_encoder, captions: list[str], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    embs, masks = [], []
    for s in range(0, len(captions), batch):
        e, m = text_encoder(captions[s : s + batch])  # (b, l, D), (b, l)
        embs.append(e.float().cpu())
        masks.append(m.cpu())
    n = max(e.shape[1] for e in embs)
    emb = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, n - e.shape[1])) for e in embs])  # (N, L, D)
    mask = torch.cat([torch.nn.functional.pad(m, (0, n - m.shape[1])) for m in masks])  # (N, L)
    return emb, mask.bool()


def _atomic_json(path: Path, obj) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _shard_info(path: Path) -> dict | None:
    """A finished shard's metadata: clips, captions, skipped ([row, start, reason, message] per window left out),
    plus num (latent rows), latent_shape and text_len; None for a missing or damaged file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads(f.metadata()["videodit"])
            keys = set(f.keys())
            info.setdefault("skipped", [])  # shards written before clips could be skipped
            info["num"] = f.get_slice("latents").get_shape()[0] if "latents" in keys else 0
            if info["num"]:
                if not {"text_emb", "text_mask"} <= keys:
                    return None
                info["latent_shape"] = f.get_slice("latents").get_shape()[1:]
                info["text_len"] = f.get_slice("text_emb").get_shape()[1]
            return info
    except Exception:  # a damaged file: redo it
        return None


def _shard_ok(path: Path, plan: ShardPlan) -> bool:
    info = _shard_info(path)
    return (
        info is not None
        and info["num"] == len(info["clips"]) == len(info["captions"])
        and len(info["clips"]) + len(info["skipped"]) == len(plan.samples)
    )


def skipped_clips(out: Path, rows: list[dict], plans: list[ShardPlan]) -> list[dict]:
    """One dict per manifest row with windows left out of the finished shards (row, path, reason, error, starts)."""
    bad: dict[int, dict] = {}
    for p in plans:
        info = _shard_info(out / p.name) if (out / p.name).is_file() else None
        for j, start, reason, message in info["skipped"] if info else []:
            entry = bad.setdefault(j, dict(row=j, path=rows[j]["path"], reason=reason, error=message, starts=[]))
            entry["starts"].append(start)
    return [bad[j] for j in sorted(bad)]


def _encode_shard(rows, plan, hw, fps, model, text, store, device, batch_size, workers, on_error, bar
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One shard's tensors and metadata: the good clips of `plan`, in order; bad ones skipped or ClipError."""
    from videodit.vae import encode_video

    loader = DataLoader(_Windows(rows, plan, hw, fps), batch_size=batch_size, num_workers=workers,
                        collate_fn=_unbatched)  # fmt: skip
    latents, good, skipped = [], [], []
    for batch in loader:  # [(video (3, T, H, W) or None, error or None)] * b
        videos = []
        for (video, error), (j, start) in zip(batch, plan.samples[len(good) + len(skipped) :]):
            if error is None:
                videos.append(video)
                good.append((j, start))
                continue
            if on_error == "stop":
                raise ClipError(f"manifest row {j}: {error[1]} (--on-error skip leaves such clips out)")
            skipped.append((j, start, *error))
        if videos:
            with torch.no_grad():
                x = torch.stack(videos).to(device, next(model.parameters()).dtype)  # the VAE's compute dtype
                latents.append(encode_video(model, x).to(store).cpu())  # (b, C, t, h, w)
        bar.update(len(batch))
    captions = [rows[j].get("caption", "") for j, _ in good]
    tensors = {}
    if good:  # else a file with no tensors: the shard is done, and holds nothing
        emb, mask = _encode_text(text, captions, batch_size)
        tensors = dict(latents=torch.cat(latents).contiguous(), text_emb=emb.to(store), text_mask=mask)
    # one metadata key: safetensors does not keep the order of several, and shards must be reproducible
    info = dict(captions=captions, clips=good) | (dict(skipped=skipped) if skipped else {})
    return tensors, {"videodit": json.dumps(info)}


def dist_env(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """--rank/--world-size, else torchrun's RANK/WORLD_SIZE, else a single process."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world < 1 or not 0 <= rank < world:
        raise DataError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world}")
    return rank, world


def cache(
    manifest: str | Path | None,
    vae: str | Path,
    out: str | Path,
    text_encoder: str | Path | None = None,
    frames: list[int] | tuple[int, ...] = (17,),
    size: int | tuple[int, int] = 64,
    fps: float = 8,
    shard_size: int = 256,
    batch_size: int = 4,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
    vae_dtype: str = "float32",
    workers: int = 0,
    max_length: int | None = None,
    max_shards: int | None = None,
    progress: bool = True,
    shapes: int = 0,
    seed: int = 0,
    p_two: float | None = None,
    on_error: str = "skip",
    style: str = "plain",
) -> dict:
    """Encode this rank's shards (of `manifest`'s clips, or of `shapes` procedural clips with `seed`).
    on_error: "skip" leaves unreadable clips out (listed in skipped.jsonl), "stop" raises ClipError at the first.
    -> summary dict (shards planned / done now / skipped because already done, clips too short, bad clips by
    reason in the finished shards, index written)."""
    from tqdm import tqdm

    from videodit.checkpoint import CheckpointError, load_vae, write_safetensors

    frames = sorted(set(int(f) for f in frames))
    if any(f < 1 or (f - 1) % 4 for f in frames):
        raise DataError(f"--frames must be 1 + 4k (e.g. 17 or 33), got {frames}")
    hw = _hw(size)
    if hw[0] % 8 or hw[1] % 8:
        raise DataError(f"--size must be a multiple of 8, got {hw[1]}x{hw[0]} (width x height)")
    if shard_size < 1 or batch_size < 1:
        raise DataError("--shard-size and --batch-size must be >= 1")
    store = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if store is None:
        raise DataError(f"--dtype must be float32, bfloat16 or float16, got '{dtype}'")
    compute = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(vae_dtype)
    if compute is None:
        raise DataError(f"--vae-dtype must be float32 or bfloat16, got '{vae_dtype}'")
    if on_error not in ON_ERROR:
        raise DataError(f"--on-error must be skip or stop, got '{on_error}'")
    rank, world = dist_env(rank, world_size)
    if not (Path(vae) / "vae.safetensors").is_file():
        raise DataError(f"--vae '{vae}': checkpoint not found (a folder with config.yaml and vae.safetensors)")
    vae_cfg = _vae_config(vae)
    if text_encoder is None and not (Path(vae) / "text_encoder").is_dir() and not vae_cfg.text.pretrained:
        raise DataError(
            f"--vae '{vae}' holds no text encoder (a converted VAE has none): pass --text-encoder DIR, a T5, mT5 or "
            "umT5 folder (Wan 2.1's is umT5-XXL) or a videodit checkpoint; `videodit-data text-encoder DIR --tokenizer "
            "byte` makes a tiny random one in DIR/text_encoder. Train with the same one (--text.pretrained DIR)"
        )
    text_path = text_encoder or vae
    if not Path(text_path).is_dir():
        raise DataError(f"--text-encoder '{text_path}' not found")
    out = Path(out)
    if bool(shapes) == (manifest is not None):
        raise DataError("give either a clips manifest or --shapes N (procedural clips), not both or neither")
    if shapes:
        rows = shapes_rows(shapes, seed, max(frames), fps, p_two=p_two, style=style)
        # the default share and style keep the old name, so caches written before --p-two existed still resume
        source = (f"shapes:train:{seed}:{shapes}" + ("" if p_two is None else f":p_two={p_two:g}")
                  + ("" if style == "plain" else f":style={style}"))
    else:
        rows = read_manifest(manifest)
        source = str(Path(manifest).resolve())
    plans, too_short = plan_shards(rows, frames, hw, fps, shard_size)
    if not plans:
        raise DataError(
            f"no clip in '{manifest}' holds {min(frames)} frames at {fps} fps: pass smaller --frames, or make longer "
            "clips (e.g. `videodit-data shapes --frames 17`)"
        )
    settings = dict(
        version=INDEX_VERSION, manifest=source, vae=str(Path(vae).resolve()),
        text_encoder=str(Path(text_path).resolve()), frames=frames, size=list(hw), fps=fps,
        shard_size=shard_size, dtype=dtype, max_length=max_length,
    ) | ({} if vae_dtype == "float32" else dict(vae_dtype=vae_dtype))  # fmt: skip  (caches before it: no key)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise DataError(f"'{out}' holds shards made with other settings {diff}; use another --out")
    else:
        _atomic_json(settings_path, settings)

    mine = [p for k, p in enumerate(plans) if k % world == rank]
    for p in mine:  # temp files left by a killed run of this rank
        for stale in out.glob(f".{p.name}.*.tmp"):
            stale.unlink()
    todo = [p for p in mine if not _shard_ok(out / p.name, p)]
    if max_shards is not None:
        todo = todo[:max_shards]
    summary = dict(planned=len(plans), mine=len(mine), skipped=len(mine) - len(todo), encoded=0, too_short=too_short)
    if todo:
        if device is None:
            local = int(os.environ.get("LOCAL_RANK", 0))
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        try:
            model = load_vae(vae).to(device, compute)
            text = load_text_encoder_any(text_path, max_length).to(device)
        except CheckpointError as e:
            raise DataError(str(e)) from e
        bar = tqdm(total=sum(len(p.samples) for p in todo), desc=f"cache rank {rank}", unit="clip",
                   disable=not progress)  # fmt: skip
        try:
            for p in todo:
                tensors, meta = _encode_shard(rows, p, hw, fps, model, text, store, device, batch_size, workers,
                                              on_error, bar)  # fmt: skip
                tmp = temp_path_for(out / p.name)
                try:
                    write_safetensors(tensors, tmp, metadata=meta)
                    share(tmp)  # safetensors makes its own file, 0600, not temp_path_for's
                    os.replace(tmp, out / p.name)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                summary["encoded"] += 1
        finally:
            bar.close()  # before an error message, not after it
    bad = skipped_clips(out, rows, plans)
    summary["bad"] = {r: sum(b["reason"] == r for b in bad) for r in sorted({b["reason"] for b in bad})}
    made_by = dict(vae=settings["vae"], vae_config=to_dict(vae_cfg.vae), text_encoder=settings["text_encoder"])
    summary["index"] = write_index(out, rows, plans, bad, made_by)
    return summary


def _vae_config(vae: str | Path):
    """The config of the --vae checkpoint folder (whose `vae` section says how its latents are normalised)."""
    from videodit.checkpoint import CheckpointError, read_config

    try:
        return read_config(vae)
    except CheckpointError as e:
        raise DataError(f"--vae: {e}") from e


def write_index(out: Path, rows: list[dict], plans: list[ShardPlan], bad: list[dict], made_by: dict) -> bool:
    """Write index.json (the shards holding clips) and skipped.jsonl (`bad`, from skipped_clips) if every planned
    shard exists; -> whether it was written. Raises ClipError, writing no index, if no clip could be read.
    `made_by`: the VAE (path, and its `vae` config section: architecture and latent statistics, which training
    checks against its own) and the text encoder that made the shards, recorded in the index."""
    if not all((out / p.name).is_file() for p in plans):
        return False
    shards = []
    for p in plans:
        info = _shard_info(out / p.name)
        if info is None:
            raise DataError(f"shard '{out / p.name}' is damaged: delete it and rerun the cache command")
        if not info["num"]:  # every clip of this shard failed
            continue
        shards.append(
            dict(file=p.name, num=info["num"], frames=p.frames, latent_shape=list(info["latent_shape"]),
                 text_len=info["text_len"], captions=info["captions"],
                 clips=[dict(path=rows[j]["path"], start=s) for j, s in info["clips"]])
        )  # fmt: skip
    _write_jsonl(out / "skipped.jsonl", bad)
    if not shards:
        counts = ", ".join(f"{sum(b['reason'] == r for b in bad)} {r}" for r in sorted({b["reason"] for b in bad}))
        raise ClipError(f"no clip could be read ({counts}; first: {bad[0]['error']}); see {out / 'skipped.jsonl'}")
    _atomic_json(out / "index.json", dict(version=INDEX_VERSION, num=sum(s["num"] for s in shards), **made_by,
                                          shards=shards))
    return True
