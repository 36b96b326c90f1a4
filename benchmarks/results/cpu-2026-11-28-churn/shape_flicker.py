"""Where the object-frames that fail persistence go, from an evaluation folder (`eval_sample.py --out DIR`).

    python benchmarks/results/cpu-2026-11-28-churn/shape_flicker.py DIR [DIR ...]

Per folder: the share of object-frames where the prompted object is absent (colour not found) or found with the
wrong shape, the lengths of the runs of failing frames (1 = a single-frame flicker), and the confusion of
prompted vs detected shape by stated size. Uses the evaluator's own tracker (`track_objects`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from videodit.data.evaluate import track_objects
from videodit.data.shapes import SHAPES
from videodit.data.video_io import read_video


def runs_of(mask: np.ndarray) -> list[int]:
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        per_video = json.loads((folder / "report.json").read_text())["per_video"]
        videos = sorted(p for p in folder.glob("[0-9]*.mp4"))
        total = absent = wrong = 0
        runs: list[int] = []
        confusion: Counter = Counter()
        for path, v in zip(videos, per_video):
            for q, tr in track_objects(read_video(path), v["prompt"]):
                ok = tr["found"] & (tr["shape"] == SHAPES.index(q.shape))
                total += len(ok)
                absent += int((~tr["found"]).sum())
                wrong += int((tr["found"] & ~ok).sum())
                runs += runs_of(~ok)
                for s in range(len(SHAPES)):
                    confusion[(q.shape, q.size or "-", SHAPES[s])] += int((tr["found"] & (tr["shape"] == s)).sum())
        hist = np.histogram(runs, [1, 2, 3, 5, 9, 17, 33, 10**6])[0]
        print(f"{folder}: {len(videos)} videos, {total} object-frames: absent {100 * absent / total:.1f}%, "
              f"wrong shape {100 * wrong / total:.1f}%; failing runs {len(runs)} (lengths 1 / 2 / 3-4 / 5-8 / "
              f"9-16 / 17-32 / 33+: {' / '.join(map(str, hist))})")
        for shape in SHAPES:
            for size in ("small", "large", "-"):
                row = [confusion[(shape, size, s)] for s in SHAPES]
                if sum(row):
                    print(f"  {shape:8s} {size:5s} detected as " + ", ".join(
                        f"{s} {100 * n / sum(row):.0f}%" for s, n in zip(SHAPES, row)))


if __name__ == "__main__":
    main(sys.argv[1:])
