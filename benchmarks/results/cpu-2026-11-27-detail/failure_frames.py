"""Why a frame fails persistence: the prompted colour missing, or found with the wrong shape.

    python benchmarks/results/cpu-2026-11-27-detail/failure_frames.py EVAL_DIR

EVAL_DIR is an `eval_sample.py --out` folder (NNN.mp4 + report.json). Prints, per (size, shape, objects in the
prompt), the share of object-frames that pass, miss the colour, or carry the wrong shape, and the videos where
more than 10% of an object's frames have the wrong shape (with what the evaluator read instead).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from videodit.data import evaluate as E  # noqa: E402
from videodit.data.shapes import SHAPES  # noqa: E402
from videodit.data.video_io import read_video  # noqa: E402

folder = Path(sys.argv[1])
report = json.loads((folder / "report.json").read_text())
total = np.zeros(4, int)  # frames, ok, colour missing, wrong shape
groups: dict[tuple, np.ndarray] = {}
for i, v in enumerate(report["per_video"]):
    frames = E.to_uint8(read_video(folder / f"{i:03d}.mp4"))
    tracks = E.track_objects(frames, v["prompt"])
    for q, tr in tracks:
        shape_ok, found = tr["shape"] == SHAPES.index(q.shape), tr["found"]
        row = np.array([len(frames), (found & shape_ok).sum(), (~found).sum(), (found & ~shape_ok).sum()])
        total += row
        key = (q.size or "-", q.shape, len(tracks))
        groups[key] = groups.get(key, 0) + row
        if row[3] > 0.1 * row[0]:
            read = np.bincount(tr["shape"][found & ~shape_ok], minlength=3)
            print(f"video {i:3d} {q.colour} {q.size or ''} {q.shape}: wrong shape in {row[3]} frames, read as "
                  f"{dict(zip(SHAPES, read.tolist()))}; colour missing in {row[2]}")
print(f"\nobject-frames {total[0]}: ok {total[1] / total[0]:.1%}, colour missing {total[2] / total[0]:.1%}, "
      f"wrong shape {total[3] / total[0]:.1%}")
print("size  shape     objects  frames   ok  missing  wrong")
for (size, shape, n), r in sorted(groups.items()):
    print(f"{size:5s} {shape:9s} {n:7d} {r[0]:7d} {r[1] / r[0]:4.0%} {r[2] / r[0]:8.0%} {r[3] / r[0]:6.0%}")
