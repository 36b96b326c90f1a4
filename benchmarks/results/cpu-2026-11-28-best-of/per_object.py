"""Persistence of each object of the prompts in evaluation folders (`eval_sample.py --out DIR`).

    python benchmarks/results/cpu-2026-11-28-best-of/per_object.py DIR [DIR ...]

Per folder: mean persistence of the first and of the second named object, then one line per video (the prompt,
and per object: its size, colour, shape, the share of frames where it is found with its shape, and the share of
frames where its colour is missing). Uses the evaluator's own tracker (`track_objects`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from videodit.data.evaluate import track_objects
from videodit.data.shapes import SHAPES
from videodit.data.video_io import read_video


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        per_video = json.loads((folder / "report.json").read_text())["per_video"]
        videos = sorted(folder.glob("[0-9]*.mp4"))
        by_index: dict[int, list[float]] = {}
        rows = []
        for path, v in zip(videos, per_video):
            cells = []
            for i, (q, tr) in enumerate(track_objects(read_video(path), v["prompt"])):
                ok = tr["found"] & (tr["shape"] == SHAPES.index(q.shape))
                by_index.setdefault(i, []).append(float(ok.mean()))
                absent = 100 * float((~tr["found"]).mean())
                cells.append(f"{q.size or '-'} {q.colour} {q.shape} {100 * ok.mean():.0f} (absent {absent:.0f})")
            rows.append(f"{v['prompt'][:70]:70s} | " + " | ".join(cells))
        means = ", ".join(f"object {i + 1}: {100 * np.mean(r):.1f}" for i, r in sorted(by_index.items()))
        print(f"{folder}: {means}")
        print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
