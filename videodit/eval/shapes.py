"""Detector-based evaluation of generated shapes videos, from pixels alone (no learned model, fully deterministic).

Detection, per frame:
  * every pixel takes the nearest palette colour if it lies within `COLOUR_TOL` (RGB distance) of it; the
    backgrounds are far from every palette colour, so they stay unlabelled;
  * for each colour, the largest 8-connected component of at least `min_area` pixels is that colour's object;
  * shape: the component is compared (IoU) with an ideal circle, square and upright triangle of the same area
    placed at its centroid; the best match wins (robust to the blurred chroma edges of yuv420p video);
  * size: the half-extent of that ideal shape, against the midpoint between the small and large sizes.

For each object a prompt names (`shapes.parse_objects`), the *tracked object* in a frame is the component of
the prompted colour, or, where that colour is absent, the largest object of a colour the prompt does not name
(so shape and direction are judged even when the colour is wrong, and each metric measures one attribute).

Metrics, per object, averaged over the objects of a prompt, then over videos (accuracies in %):
  colour       1 if the prompted colour is found in at least half of the frames.
  shape        1 if the majority shape of the tracked object is the prompted one.
  size         as shape, for prompts that state a size.
  direction    the *initial* direction: the displacement of the tracked centroid over the first
               NO_BOUNCE_SECONDS (one second; the generator guarantees no bounce in it), classified into the
               eight 45-degree sectors, must equal the prompt's direction. Captions give the initial direction.
  axis         motion along the prompt's axis, the part of the caption that bouncing preserves: the axis class
               (horizontal, vertical or diagonal) of (median |vx|, median |vy|) over the frame-to-frame steps
               must match the prompt's (left/right: horizontal, up/down: vertical, the four diagonals:
               diagonal). Bounces flip signs, not magnitudes, so a correct minute-long video scores 1 over any
               window; medians ignore the one step that straddles each bounce.
  persistence  fraction of frames where the prompted object (colour and shape) is found.
  drift        per-window values of colour (fraction of frames), shape (fraction of tracked frames),
               persistence and axis over the last 15% of the video minus the first 15% (windows of at least
               one second, so that a bounce is outvoted by the median), in points.
               Negative = the video forgets its prompt.
  seam ratio   mean absolute frame difference across chunk boundaries (frame pairs (b-1, b) for
               b = seam_offset + k * chunk_frames) over the mean difference of the pairs inside chunks,
               (+0.1 grey level on both sides so that a still video scores 1). 1 = seamless; above 1 = jumps.
  dynamic      % of videos whose tracked object moves: median step speed of at least a quarter of the slowest
               speed the generator uses.
A video counts as static in direction and axis when its tracked object moves slower than that threshold.

Controls (`--controls`): the ground-truth renders through the same mp4 round trip (must score >= 99% on
colour, shape and direction), the same videos with shuffled captions (chance: about 1/8 for colour and
direction, 1/3 for shape) and a still copy of each first frame (direction, axis and dynamic about 0).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from videodit.data.shapes import (
    COLOURS,
    NO_BOUNCE_SECONDS,
    SHAPES,
    SIZES,
    SPEED_RANGE,
    Query,
    make_example,
    parse_objects,
    render_clip,
)
from videodit.video_io import VIDEO_EXTENSIONS, DataError, VideoError, probe, read_video, to_uint8, write_video

COLOUR_TOL = 90.0  # RGB distance within which a pixel belongs to a palette colour (closest pair: ~100 apart)
WINDOW = 0.15  # fraction of the video in each drift window (at least one second)
_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (K, 3)
_COLOUR_NAMES = list(COLOURS)
_DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")  # by angle
_AXIS = {"left": "horizontal", "right": "horizontal", "up": "vertical", "down": "vertical"}


def axis_of(direction: str) -> str:
    return _AXIS.get(direction, "diagonal")


# ----------------------------------------------------------------------------------------------------
# detection


def label_colours(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> int8 (T, H, W): index of the nearest palette colour within COLOUR_TOL, else -1."""
    out = np.empty(frames.shape[:3], np.int8)
    for s in range(0, len(frames), 64):
        x = torch.from_numpy(frames[s : s + 64]).float()  # (t, H, W, 3)
        d = torch.cdist(x.reshape(-1, 3), _PALETTE).reshape(*x.shape[:3], -1)  # (t, H, W, K)
        dist, idx = d.min(-1)
        out[s : s + 64] = torch.where(dist < COLOUR_TOL, idx, -1).numpy()
    return out


def _max3x3(lab: torch.Tensor) -> torch.Tensor:
    """Max over each pixel's 3x3 neighbourhood of (T, H, W), separably (much faster than max_pool2d on CPU)."""
    r = lab.clone()
    r[:, :, 1:] = torch.maximum(r[:, :, 1:], lab[:, :, :-1])
    r[:, :, :-1] = torch.maximum(r[:, :, :-1], lab[:, :, 1:])
    c = r.clone()
    c[:, 1:] = torch.maximum(c[:, 1:], r[:, :-1])
    c[:, :-1] = torch.maximum(c[:, :-1], r[:, 1:])
    return c


def largest_component(mask: np.ndarray) -> np.ndarray:
    """bool (T, H, W) -> bool (T, H, W): the largest 8-connected component of each frame.

    Labels spread by 3x3 max filtering until they stop changing (each component ends labelled with its largest
    pixel index; ties in size go to the component holding the larger index): pure torch, vectorised over frames.
    """
    t, h, w = mask.shape
    m = torch.from_numpy(mask)
    lab = torch.arange(1, h * w + 1, dtype=torch.int32).view(1, h, w) * m  # (T, H, W)
    active = torch.arange(t)[m.flatten(1).any(1)]  # frames still changing
    while len(active):
        new = _max3x3(lab[active]) * m[active]
        changed = (new != lab[active]).flatten(1).any(1)
        lab[active] = new
        active = active[changed]
    flat = lab.view(t, h * w).long()  # (T, H*W)
    counts = torch.zeros(t, h * w + 1).scatter_add_(1, flat, torch.ones(t, h * w))
    counts[:, 0] = 0
    best = counts.flip(1).argmax(1)  # the largest count, ties to the larger label
    best = h * w - best
    return ((flat == best[:, None]) & (best[:, None] > 0)).view(t, h, w).numpy()


def _shape_stats(comp: np.ndarray, min_area: int) -> dict[str, np.ndarray]:
    """Per-frame area, centroid, shape class and size class of one component per frame (T, H, W)."""
    t, h, w = comp.shape
    m = torch.from_numpy(comp).float()
    area = m.sum((1, 2))  # (T,)
    a = area.clamp(min=1)
    gy = torch.arange(h, dtype=torch.float32).view(1, h, 1) + 0.5
    gx = torch.arange(w, dtype=torch.float32).view(1, 1, w) + 0.5
    cx = (m * gx).sum((1, 2)) / a
    cy = (m * gy).sum((1, 2)) / a
    dx = gx - cx.view(t, 1, 1)  # (T, 1, W)
    dy = gy - cy.view(t, 1, 1)  # (T, H, 1)
    a3 = a.view(t, 1, 1)
    r_circle = (a3 / math.pi).sqrt()
    r_square = a3.sqrt() / 2
    r_tri = (a3 / 2).sqrt()  # area of the upright triangle with half-extent r is 2 r^2
    dyt = dy + r_tri / 3  # the triangle's centroid sits r/3 below the centre of its box
    templates = (
        dx * dx + dy * dy <= r_circle * r_circle,
        (dx.abs() <= r_square) & (dy.abs() <= r_square),
        (dyt >= -r_tri) & (dyt <= r_tri) & (dx.abs() <= (dyt + r_tri) / 2),
    )
    mb = torch.from_numpy(comp)
    ious = torch.stack([(tm & mb).sum((1, 2)) / (tm | mb).sum((1, 2)).clamp(min=1) for tm in templates], 1)
    shape = ious.argmax(1)  # (T,) index into SHAPES
    half = torch.stack([r_circle, r_square, r_tri], 1).view(t, 3).gather(1, shape[:, None])[:, 0]
    size_mid = (SIZES["small"] + SIZES["large"]) / 2 * min(h, w)
    return dict(
        found=(area >= min_area).numpy(),
        area=area.numpy(),
        cx=cx.numpy(),
        cy=cy.numpy(),
        shape=shape.numpy(),
        large=(half > size_mid).numpy(),
    )


def detect(frames: np.ndarray, chunk: int = 64) -> dict[int, dict[str, np.ndarray]]:
    """Per palette colour index present in the video: per-frame stats of its largest component.

    Works through the video `chunk` frames at a time, so memory stays bounded for long videos.
    """
    t, h, w, _ = frames.shape
    min_area = max(4, int(0.004 * min(h, w) ** 2))
    parts: dict[int, list] = {}
    for s in range(0, t, chunk):
        labels = label_colours(frames[s : s + chunk])
        for k in range(len(_COLOUR_NAMES)):
            mask = labels == k
            if (mask.sum((1, 2)) >= min_area).any():
                parts.setdefault(k, []).append((s, _shape_stats(largest_component(mask), min_area)))
    out = {}
    for k, chunks in parts.items():
        stats = {key: np.zeros(t, dtype=v.dtype) for key, v in chunks[0][1].items()}
        for s, st in chunks:
            for key, v in st.items():
                stats[key][s : s + len(v)] = v
        out[k] = stats
    return out


def _track(det: dict, query: Query, excluded: set[int], t: int) -> dict[str, np.ndarray]:
    """The tracked object of `query` in every frame (see the module docstring)."""
    own = _COLOUR_NAMES.index(query.colour) if query.colour in COLOURS else None
    colour_id = np.full(t, -1)
    found = np.zeros(t, bool)
    if own is not None and own in det:
        found = det[own]["found"].copy()
        colour_id[found] = own
    others = [k for k in det if k != own and k not in excluded]
    if others:
        areas = np.stack([np.where(det[k]["found"], det[k]["area"], -1.0) for k in others])  # (K', T)
        best = np.array(others)[areas.argmax(0)]
        fill = (colour_id < 0) & (areas.max(0) >= 0)
        colour_id[fill] = best[fill]
    tr = dict(found=found, present=colour_id >= 0, colour_id=colour_id)
    for key in ("cx", "cy", "shape", "large"):
        arr = np.zeros(t, dtype=det[next(iter(det))][key].dtype) if det else np.zeros(t)
        for k in set(colour_id[colour_id >= 0].tolist()):
            sel = colour_id == k
            arr[sel] = det[k][key][sel]
        tr[key] = arr
    return tr


def track_objects(frames: np.ndarray, prompt: str) -> list[tuple[Query, dict[str, np.ndarray]]]:
    """Each object the prompt names, with its tracked object in every frame of uint8 (T, H, W, 3) `frames`:
    per frame `found` (its colour is there), `present` (something is tracked), `colour_id`, `cx`, `cy`,
    `shape` (an index into SHAPES) and `large` (see the module docstring)."""
    queries = parse_objects(prompt)
    det = detect(frames)
    named = {_COLOUR_NAMES.index(q.colour) for q in queries if q.colour in COLOURS}
    own = [{_COLOUR_NAMES.index(q.colour)} if q.colour else set() for q in queries]
    return [(q, _track(det, q, named - mine, len(frames))) for q, mine in zip(queries, own)]


# ----------------------------------------------------------------------------------------------------
# metrics


def _steps(tr: dict, lo: int, hi: int) -> np.ndarray:
    """Centroid steps (n, 2) between consecutive frames in [lo, hi) that track the same object."""
    idx = np.arange(lo, hi - 1)
    ok = tr["present"][idx] & tr["present"][idx + 1] & (tr["colour_id"][idx] == tr["colour_id"][idx + 1])
    idx = idx[ok]
    return np.stack([tr["cx"][idx + 1] - tr["cx"][idx], tr["cy"][idx + 1] - tr["cy"][idx]], 1)


def _axis_class(steps: np.ndarray, min_step: float) -> str | None:
    if len(steps) == 0:
        return None
    mx, my = np.median(np.abs(steps), 0)
    if math.hypot(mx, my) < min_step:
        return None  # static
    ang = math.degrees(math.atan2(my, mx))
    return "horizontal" if ang < 22.5 else "vertical" if ang > 67.5 else "diagonal"


def _initial_direction(tr: dict, k: int, min_step: float) -> str | None:
    frames = np.flatnonzero(tr["present"][: k + 1])
    if len(frames) < 2:
        return None
    first = frames[0]
    same = frames[tr["colour_id"][frames] == tr["colour_id"][first]]
    last = same[-1]
    if last - first < max(1, k // 2):
        return None
    dx = tr["cx"][last] - tr["cx"][first]
    dy = tr["cy"][last] - tr["cy"][first]
    if math.hypot(dx, dy) < min_step * (last - first):
        return None
    sector = round(math.atan2(-dy, dx) / (math.pi / 4)) % 8
    return _DIRECTIONS[sector]


def _window(tr: dict, q: Query, lo: int, hi: int, min_step: float) -> dict[str, float | None]:
    present = tr["present"][lo:hi]
    shape_ok = tr["shape"][lo:hi] == (SHAPES.index(q.shape) if q.shape else -1)
    axis = _axis_class(_steps(tr, lo, hi), min_step)
    return dict(
        colour=float(tr["found"][lo:hi].mean()) if q.colour else None,
        shape=float(shape_ok[present].mean()) if q.shape and present.any() else (0.0 if q.shape else None),
        persistence=float((tr["found"][lo:hi] & shape_ok).mean()) if q.colour and q.shape else None,
        axis=float(axis == axis_of(q.direction)) if q.direction else None,
    )


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def seam_ratio(frames: np.ndarray, chunk_frames: int, seam_offset: int | None = None) -> float | None:
    """Mean |frame difference| across chunk boundaries over that inside chunks (see module docstring)."""
    offset = chunk_frames if seam_offset is None else seam_offset
    t = len(frames)
    if t < 3 or chunk_frames < 1 or offset >= t:
        return None
    x = torch.from_numpy(frames)
    d = torch.stack([(x[i + 1].float() - x[i].float()).abs().mean() for i in range(t - 1)]).numpy()  # (T-1,)
    boundary = np.zeros(t - 1, bool)
    boundary[np.arange(offset, t, chunk_frames) - 1] = True  # pair (b-1, b) is index b-1
    if boundary.all():
        return None
    return float((d[boundary].mean() + 0.1) / (d[~boundary].mean() + 0.1))


def evaluate_video(
    frames: np.ndarray, prompt: str, fps: float = 8, chunk_frames: int = 8, seam_offset: int | None = None
) -> dict:
    """Scores of one video (uint8 (T, H, W, 3)) against its prompt; values in [0, 1] (drift in [-1, 1])."""
    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise DataError(f"a video to evaluate needs at least 2 RGB frames (T, H, W, 3), got {frames.shape}")
    t, h, w, _ = frames.shape
    tracks = track_objects(frames, prompt)
    min_step = 0.25 * SPEED_RANGE[0] * min(h, w) / fps  # pixels per frame
    k = min(t - 1, max(1, round(fps * NO_BOUNCE_SECONDS)))
    n_win = min(t, max(2, math.ceil(WINDOW * t), round(fps)))  # at least one second
    per_obj = []
    moving = False
    for q, tr in tracks:
        present = tr["present"]
        shape_votes = np.bincount(tr["shape"][present], minlength=3) if present.any() else np.zeros(3)
        size_votes = np.bincount(tr["large"][present].astype(int), minlength=2) if present.any() else None
        steps = _steps(tr, 0, t)
        speed = float(np.median(np.hypot(steps[:, 0], steps[:, 1]))) if len(steps) else 0.0
        moving |= speed >= min_step
        measured = _initial_direction(tr, k, min_step)
        whole = _window(tr, q, 0, t, min_step)
        first = _window(tr, q, 0, n_win, min_step)
        last = _window(tr, q, t - n_win, t, min_step)
        per_obj.append(
            dict(
                colour=float(tr["found"].mean() >= 0.5) if q.colour else None,
                shape=float(shape_votes.argmax() == SHAPES.index(q.shape) and shape_votes.max() > 0)
                if q.shape
                else None,
                size=float(("small", "large")[int(size_votes.argmax())] == q.size)
                if q.size and size_votes is not None
                else (0.0 if q.size else None),
                direction=float(measured == q.direction) if q.direction else None,
                axis=whole["axis"],
                persistence=whole["persistence"],
                first=first,
                last=last,
                measured_direction=measured,
            )
        )
    out = dict(prompt=prompt, frames=t, objects=len(tracks))
    for key in ("colour", "shape", "size", "direction", "axis", "persistence"):
        out[key] = _mean(o[key] for o in per_obj)
    out["first"] = {m: _mean(o["first"][m] for o in per_obj) for m in per_obj[0]["first"]}
    out["last"] = {m: _mean(o["last"][m] for o in per_obj) for m in per_obj[0]["last"]}
    out["drift"] = {
        m: (out["last"][m] - out["first"][m]) if out["first"][m] is not None else None for m in out["first"]
    }
    out["measured_direction"] = [o["measured_direction"] for o in per_obj]
    out["seam_ratio"] = seam_ratio(frames, chunk_frames, seam_offset)
    out["dynamic"] = bool(moving)
    return out


def aggregate(per_video: list[dict]) -> dict:
    """Mean over videos: accuracies and dynamic degree in %, drift in points, seam ratio as a ratio."""

    def pct(values):
        m = _mean(values)
        return None if m is None else 100.0 * m

    agg = {
        key: pct(v[key] for v in per_video) for key in ("colour", "shape", "direction", "axis", "size", "persistence")
    }
    for m in ("colour", "shape", "persistence", "axis"):
        agg[f"drift_{m}"] = pct(v["drift"][m] for v in per_video)
    agg["seam_ratio"] = _mean(v["seam_ratio"] for v in per_video)
    agg["dynamic"] = pct(float(v["dynamic"]) for v in per_video)
    agg["videos"] = len(per_video)
    return agg


def evaluate_videos(
    videos_or_paths,
    prompts: list[str],
    chunk_frames: int = 8,
    seam_offset: int | None = None,
    fps: float | None = None,
) -> dict:
    """Evaluate videos (uint8 (T, H, W, 3) arrays or video files) against prompts.

    -> {"per_video": [...], "aggregate": {...}}. `fps` defaults to each file's own rate (8 for arrays).
    """
    videos = list(videos_or_paths)
    prompts = list(prompts)
    if len(videos) != len(prompts):
        raise DataError(f"{len(videos)} videos but {len(prompts)} prompts: give one prompt per video")
    if not videos:
        raise DataError("no videos to evaluate")
    per_video = []
    for v, p in zip(videos, prompts):
        if isinstance(v, (str, Path)):
            rate = fps or probe(v)["fps"]
            res = evaluate_video(read_video(v), p, rate, chunk_frames, seam_offset)
            res["path"] = str(v)
        else:
            res = evaluate_video(to_uint8(v), p, fps or 8, chunk_frames, seam_offset)
        per_video.append(res)
    return dict(per_video=per_video, aggregate=aggregate(per_video))


# ----------------------------------------------------------------------------------------------------
# controls


def controls(
    num: int = 50,
    seconds: float = 10,
    fps: float = 8,
    size: int = 64,
    seed: int = 0,
    split: str = "train",
    chunk_frames: int = 8,
    seam_offset: int | None = None,
    via_codec: bool = True,
) -> dict[str, dict]:
    """Aggregates for the ground truth, shuffled captions and still first frames of `num` fresh clips."""
    rng = np.random.default_rng(seed + 1)
    examples = [make_example(seed, i, split) for i in range(num)]
    captions = [c for _, c in examples]
    frames = int(round(seconds * fps))
    videos = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec, _ in examples:
            v = render_clip(spec, fps=fps, size=size, frames=frames)
            if via_codec:  # judge what a generated mp4 would look like, compression included
                write_video(Path(tmp) / "clip.mp4", v, fps)
                v = read_video(Path(tmp) / "clip.mp4")
            videos.append(v)
    perm = rng.permutation(num)
    shuffled = [captions[j] for j in np.roll(perm, 1)[np.argsort(perm)]] if num > 1 else captions
    still = [np.repeat(v[:1], len(v), 0) for v in videos]
    kw = dict(chunk_frames=chunk_frames, seam_offset=seam_offset, fps=fps)
    return {
        "ground truth": evaluate_videos(videos, captions, **kw)["aggregate"],
        "shuffled captions": evaluate_videos(videos, shuffled, **kw)["aggregate"],
        "still first frame": evaluate_videos(still, captions, **kw)["aggregate"],
    }


_ROWS = (
    ("colour", "colour acc %"),
    ("shape", "shape acc %"),
    ("direction", "direction acc % (initial)"),
    ("axis", "axis acc % (bounce-invariant)"),
    ("size", "size acc % (prompts with a size)"),
    ("persistence", "persistence %"),
    ("drift_colour", "drift colour (pts)"),
    ("drift_shape", "drift shape (pts)"),
    ("drift_persistence", "drift persistence (pts)"),
    ("drift_axis", "drift axis (pts)"),
    ("seam_ratio", "seam ratio"),
    ("dynamic", "dynamic degree %"),
    ("videos", "videos"),
)


def format_table(columns: dict[str, dict]) -> str:
    names = list(columns)
    label_w = max(len(label) for _, label in _ROWS)
    widths = [max(10, len(n)) for n in names]
    lines = [" " * label_w + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))]
    for key, label in _ROWS:
        cells = []
        for n, w in zip(names, widths):
            v = columns[n].get(key)
            if v is None:
                s = "-"
            elif key == "videos":
                s = str(int(v))
            elif key == "seam_ratio":
                s = f"{v:.3f}"
            else:
                s = f"{v:.1f}"
            cells.append(s.rjust(w))
        lines.append(label.ljust(label_w) + "  " + "  ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# command line


def _read_prompt_file(path: Path) -> tuple[list[str], list[str]]:
    """-> (prompts, video paths or []) from a .txt (one prompt a line) or a .jsonl manifest."""
    if path.suffix == ".jsonl":
        prompts, paths = [], []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts.append(row.get("caption", row.get("prompt")))
            except (json.JSONDecodeError, AttributeError) as e:
                raise DataError(f"{path}:{n} is not a JSON object ({e})") from e
            if prompts[-1] is None:
                raise DataError(f"{path}:{n} has no 'caption' or 'prompt' field")
            if "path" in row:
                p = Path(row["path"])
                paths.append(str(p if p.is_absolute() else path.parent / p))
        return prompts, paths if len(paths) == len(prompts) else []
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()], []


def _expand(videos: list[str]) -> list[str]:
    out = []
    for v in videos:
        p = Path(v)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS)
        else:
            out.append(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videodit-eval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)
    p = sub.add_parser("shapes", help="score videos of the procedural shapes dataset against their prompts")
    p.add_argument("videos", nargs="*", help="video files or folders of videos")
    p.add_argument("--prompts", nargs="+", help="prompt strings, a .txt file (one a line) or a manifest .jsonl")
    p.add_argument("--chunk-frames", type=int, default=8, help="frames per generated chunk (seam ratio)")
    p.add_argument("--seam-offset", type=int, help="frame index of the first chunk boundary (default: chunk)")
    p.add_argument("--fps", type=float, help="frame rate of the videos (default: read from each file)")
    p.add_argument("--controls", action="store_true", help="also score ground truth, shuffled and still controls")
    p.add_argument("--num", type=int, default=50, help="clips per control")
    p.add_argument("--seconds", type=float, help="control clip length (default: the videos' or 10)")
    p.add_argument("--size", type=int, help="control frame size (default: the videos' or 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write per-video and aggregate results to this JSON file")
    return parser


def run(args: argparse.Namespace) -> dict[str, dict]:
    videos = _expand(args.videos)
    prompts: list[str] = []
    if args.prompts:
        if len(args.prompts) == 1 and Path(args.prompts[0]).is_file():
            prompts, paths = _read_prompt_file(Path(args.prompts[0]))
            if not videos:
                videos = paths
        else:
            prompts = list(args.prompts)
    elif videos:  # sidecar prompt files: clip.mp4 -> clip.txt
        for v in videos:
            side = Path(v).with_suffix(".txt")
            if not side.is_file():
                raise DataError(f"no prompt for '{v}': pass --prompts, or put the prompt in '{side}'")
            prompts.append(side.read_text().strip())
    if not videos and not args.controls:
        raise DataError("nothing to evaluate: give videos (or a manifest via --prompts), or --controls")
    columns: dict[str, dict] = {}
    results = None
    if videos:
        results = evaluate_videos(videos, prompts, args.chunk_frames, args.seam_offset, args.fps)
        columns["videos"] = results["aggregate"]
    if args.controls:
        seconds, size, fps = args.seconds, args.size, args.fps
        if videos:
            info = probe(videos[0])
            seconds = seconds or info["duration"]
            size = size or min(info["w"], info["h"])
            fps = fps or info["fps"]
        columns.update(
            controls(
                args.num, seconds or 10, fps or 8, size or 64, args.seed, "train", args.chunk_frames, args.seam_offset
            )
        )
    print(format_table(columns))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(columns=columns, results=results), indent=1))
    return columns


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (DataError, VideoError, FileNotFoundError) as e:
        print(f"videodit-eval: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("videodit-eval: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
