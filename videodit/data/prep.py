"""Raw videos -> a clips manifest (JSONL): probe, cut at scene changes or a fixed length, filter, caption.

    videodit-data prep RAW_DIR --out clips.jsonl [--captions captions.csv] [--clip-seconds 4]

Each manifest line is one clip: `path` (relative to the manifest's folder when the video lies under it,
absolute otherwise), `start` and `end` in seconds, the source `fps`, `w`, `h`, `frames` (source frames),
`caption` and `source` (the path relative to RAW_DIR).

Scene changes: every frame is decoded once at 32x32 grey; a cut falls where the mean absolute difference of
consecutive thumbnails (in [0, 1]) exceeds `--scene-threshold`. Clips shorter than `--min-frames` at `--fps`
(the rate training samples at), smaller than `--min-size`, or static (mean thumbnail difference at `--fps`
below `--static-threshold`) are dropped. Captions come from `--captions` (CSV with a path/file/video column and
a caption/text column, or JSONL with the same keys; matched by path relative to RAW_DIR, file name or stem),
else from a sidecar `video.txt`, else are empty (and counted).

Resumable and crash-safe: for each video, its clip lines are appended in one write and fsynced, then a record
of the video (size, mtime, status, clip count) goes to `MANIFEST.files.jsonl`. On start the two files are
reconciled: a trailing partial line, lines of videos with no record, and lines of videos that changed or
disappeared are dropped (the files are rewritten through a temp file + rename); recorded videos are skipped.
An unreadable video is recorded as an error (retried only when the file changes) and never stops the run.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from videodit.video_io import (
    VIDEO_EXTENSIONS,
    DataError,
    VideoError,
    frame_indices,
    iter_frames,
    probe,
    temp_path_for,
)

THUMB = 32  # thumbnail side for scene and motion detection


@dataclass
class PrepReport:
    files: int = 0  # videos found under RAW_DIR
    done_before: int = 0  # skipped: recorded by an earlier run
    processed: int = 0  # handled by this run
    clips_written: int = 0  # by this run
    clips_total: int = 0  # in the manifest now
    filtered: Counter = field(default_factory=Counter)  # reason -> clips (or files) dropped by this run
    uncaptioned: int = 0  # clips written by this run with an empty caption
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, message), all runs

    def summary(self) -> str:
        lines = [
            f"prep: {self.files} videos ({self.done_before} done before, {self.processed} processed now); "
            f"{self.clips_written} clips written, {self.clips_total} in the manifest",
        ]
        if self.filtered:
            lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.filtered.items())))
        if self.uncaptioned:
            lines.append(f"  {self.uncaptioned} clips have no caption (no --captions entry and no sidecar .txt)")
        if self.errors:
            lines.append(f"  unreadable videos skipped ({len(self.errors)}):")
            lines += [f"    {src}: {msg}" for src, msg in self.errors]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# captions


def load_captions(path: str | Path) -> dict[str, str]:
    """A CSV or JSONL of (path, caption) -> lookup keyed by path, file name and stem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"captions file '{path}' not found")
    rows: list[dict] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n} is not valid JSON ({e})") from e
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    out: dict[str, str] = {}
    for n, row in enumerate(rows, 1):
        low = {str(k).strip().lower(): v for k, v in row.items()} if isinstance(row, dict) else {}
        key = next(
            (low[k] for k in ("path", "file", "filename", "video", "video_path", "name", "id") if k in low), None
        )
        text = next((low[k] for k in ("caption", "text", "prompt", "description") if k in low), None)
        if key is None or text is None:
            raise DataError(f"{path} row {n}: need a path column (path/file/video) and a caption column (caption/text)")
        key = str(key).replace("\\", "/")
        for k in (key, Path(key).name, Path(key).stem):
            out.setdefault(k, str(text).strip())
    return out


def _caption_for(video: Path, rel: str, table: dict[str, str]) -> str:
    for k in (rel, video.name, video.stem):
        if k in table:
            return table[k]
    side = video.with_suffix(".txt")
    if side.is_file():
        return side.read_text().strip()
    return ""


# ----------------------------------------------------------------------------------------------------
# cutting


def thumbnails(path: Path) -> np.ndarray:
    """Every frame as a 32x32 grey image -> uint8 (N, 32, 32) (32 MiB per hour of 30 fps video)."""

    def grey(backend: str) -> list[np.ndarray]:
        frames = iter_frames(path, (THUMB, THUMB), backend=backend)
        return [np.round(c.astype(np.float32).mean(-1)).astype(np.uint8) for c in frames]

    try:
        chunks = grey("auto")
    except VideoError:  # decord can fail part-way through a file that PyAV decodes
        chunks = grey("pyav")
    if not chunks:
        raise VideoError(f"'{path}': no frames could be decoded")
    return np.concatenate(chunks)


def frame_diffs(thumbs: np.ndarray) -> np.ndarray:
    """Mean absolute difference of consecutive thumbnails in [0, 1] -> (N-1,); [i] is between i and i+1."""
    out = np.zeros(max(0, len(thumbs) - 1), np.float32)
    for s in range(0, len(out), 4096):
        a = thumbs[s : s + 4097].astype(np.int16)
        out[s : s + len(a) - 1] = np.abs(np.diff(a, axis=0)).mean((1, 2)) / 255.0
    return out


def scene_cuts(thumbs: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Frame ranges [a, b) between scene changes (a cut where consecutive thumbnails differ > threshold)."""
    n = len(thumbs)
    if threshold <= 0 or n < 2:
        return [(0, n)]
    diff = frame_diffs(thumbs)
    cuts = (np.flatnonzero(diff > threshold) + 1).tolist()
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def split_scene(a: int, b: int, src_fps: float, clip_seconds: float | None) -> list[tuple[int, int]]:
    if not clip_seconds:
        return [(a, b)]
    step = max(1, round(clip_seconds * src_fps))
    return [(s, min(b, s + step)) for s in range(a, b, step)]


def _relpath(video: Path, manifest_dir: Path) -> str:
    try:
        return video.resolve().relative_to(manifest_dir.resolve()).as_posix()
    except ValueError:
        return str(video.resolve())


def clips_for_video(
    video: Path,
    rel: str,
    manifest_dir: Path,
    captions: dict[str, str],
    clip_seconds: float | None,
    scene_threshold: float,
    min_frames: int,
    min_size: int,
    fps: float,
    static_threshold: float,
    dropped: Counter,
) -> list[dict]:
    """Manifest rows for one video; raises VideoError when it cannot be read."""
    info = probe(video)
    if min(info["w"], info["h"]) < min_size:
        dropped["videos too small"] += 1
        return []
    thumbs = thumbnails(video)
    src_fps = info["fps"]
    n = len(thumbs)  # frames actually decoded (headers can overstate)
    rows = []
    caption = _caption_for(video, rel, captions)
    for a, b in scene_cuts(thumbs, scene_threshold):
        for s, e in split_scene(a, b, src_fps, clip_seconds):
            start, end = s / src_fps, e / src_fps
            idx = frame_indices(n, src_fps, start, end, fps)
            if len(idx) < min_frames:
                dropped["clips too short"] += 1
                continue
            if frame_diffs(thumbs[idx]).mean() < static_threshold:
                dropped["clips static"] += 1
                continue
            rows.append(
                dict(
                    path=_relpath(video, manifest_dir),
                    start=round(start, 6),
                    end=round(end, 6),
                    fps=src_fps,
                    w=info["w"],
                    h=info["h"],
                    frames=e - s,
                    caption=caption,
                    source=rel,
                )
            )
    return rows


# ----------------------------------------------------------------------------------------------------
# crash-safe manifest


def _complete_lines(path: Path) -> tuple[list[dict], bool]:
    """JSON objects of the newline-terminated lines of `path` -> (rows, whether anything was dropped)."""
    if not path.exists():
        return [], False
    text = path.read_text()
    rows, dirty = [], False
    lines = text.split("\n")
    if lines[-1] != "":
        dirty = True  # a partial last line from an interrupted write
    for line in lines[:-1]:
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            dirty = True
    return rows, dirty


def _rewrite(path: Path, rows: list[dict]) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _append(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # as the umask allows, like temp_path_for
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _stat_key(video: Path) -> dict:
    st = video.stat()
    return dict(bytes=st.st_size, mtime_ns=st.st_mtime_ns)


def find_videos(raw_dir: Path) -> list[Path]:
    return sorted(p for p in raw_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def prep(
    raw_dir: str | Path,
    out: str | Path,
    captions: str | Path | None = None,
    clip_seconds: float | None = None,
    scene_threshold: float = 0.12,
    min_frames: int = 17,
    min_size: int = 64,
    fps: float = 8,
    static_threshold: float = 0.001,
    progress: bool = True,
) -> PrepReport:
    from tqdm import tqdm

    raw_dir, out = Path(raw_dir), Path(out)
    if not raw_dir.is_dir():
        raise DataError(f"raw video folder '{raw_dir}' not found")
    if out.suffix != ".jsonl":
        raise DataError(f"--out should name a .jsonl manifest file, got '{out}'")
    if min_frames < 1 or fps <= 0 or (clip_seconds is not None and clip_seconds <= 0):
        raise DataError("--min-frames, --fps and --clip-seconds must be positive")
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name[: -len(".jsonl")] + ".files.jsonl")
    table = load_captions(captions) if captions else {}
    videos = find_videos(raw_dir)
    rels = {v: v.relative_to(raw_dir).as_posix() for v in videos}
    current = {rels[v]: _stat_key(v) for v in videos}

    # reconcile what an earlier (possibly interrupted) run left behind
    records, dirty_state = _complete_lines(state_path)
    rows, dirty_rows = _complete_lines(out)
    done = {}
    for r in records:
        src = r.get("source")
        if src in current and {k: r.get(k) for k in ("bytes", "mtime_ns")} == current[src]:
            done[src] = r
    per_source = Counter(r.get("source") for r in rows)
    done = {s: r for s, r in done.items() if per_source.get(s, 0) == r.get("clips")}
    kept_rows = [r for r in rows if r.get("source") in done]
    if dirty_state or dirty_rows or len(kept_rows) != len(rows) or len(done) != len(records):
        _rewrite(out, kept_rows)
        _rewrite(state_path, list(done.values()))
    elif not out.exists():
        _rewrite(out, [])

    report = PrepReport(files=len(videos), done_before=sum(1 for v in videos if rels[v] in done))
    report.clips_total = len(kept_rows)
    todo = [v for v in videos if rels[v] not in done]
    bar = tqdm(todo, desc="prep", unit="video", disable=not progress)
    errors = 0
    for video in bar:
        rel = rels[video]
        record = dict(source=rel, **current[rel])
        try:
            new = clips_for_video(
                video,
                rel,
                out.parent,
                table,
                clip_seconds,
                scene_threshold,
                min_frames,
                min_size,
                fps,
                static_threshold,
                report.filtered,
            )
        except VideoError as e:
            record.update(status="error", clips=0, error=str(e))
            new = []
        else:
            record.update(status="ok" if new else "filtered", clips=len(new))
        _append(out, new)  # clip lines first, then the record that marks the video done
        _append(state_path, [record])
        report.processed += 1
        report.clips_written += len(new)
        report.clips_total += len(new)
        report.uncaptioned += sum(1 for r in new if not r["caption"])
        errors += record["status"] == "error"
        bar.set_postfix(clips=report.clips_total, errors=errors)
    final, _ = _complete_lines(state_path)
    report.errors = [(r["source"], r.get("error", "")) for r in final if r.get("status") == "error"]
    return report


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a clips manifest with `path` made absolute; a trailing partial line is ignored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest '{path}' not found")
    rows, _ = _complete_lines(path)
    for r in rows:
        for key in ("path", "start", "end"):
            if key not in r:
                raise DataError(f"manifest '{path}' has a row without '{key}': {str(r)[:120]}")
        p = Path(r["path"])
        r["path"] = str(p if p.is_absolute() else path.parent / p)
    return rows
