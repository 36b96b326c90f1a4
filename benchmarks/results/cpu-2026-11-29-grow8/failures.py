"""Where persistence is lost: per object (shape, stated size) and object count, the share of frames where the
prompted object is not found in its colour or has the wrong shape; for two-object prompts also how often a failed
frame has the two objects within 16 px, and how long the runs of failed frames are.

    PYTHONPATH=. python benchmarks/results/cpu-2026-11-29-grow8/failures.py REPORT.json VIDEO_DIR
(VIDEO_DIR holds the 000.mp4 ... of `benchmarks/eval_sample.py --out`, in the report's order.)"""

import json
import sys

import numpy as np

from videodit.data.evaluate import SHAPES, track_objects
from videodit.data.video_io import read_video


def main(report: str, folder: str) -> None:
    per_video = json.load(open(report))["per_video"]
    table: dict[tuple, list[int]] = {}  # key -> [frames, not found, wrong shape, failed near the other, near]
    runs: list[int] = []
    for i, v in enumerate(per_video):
        frames = read_video(f"{folder}/{i:03d}.mp4")  # as benchmarks/eval_sample.py read them for the report
        tracks = track_objects(frames, v["prompt"])
        near = np.zeros(len(frames), bool)
        if len(tracks) == 2:
            (_, a), (_, b) = tracks
            near = np.hypot(a["cx"] - b["cx"], a["cy"] - b["cy"]) < 16
        for q, tr in tracks:
            ok = tr["found"] & (tr["shape"] == SHAPES.index(q.shape))
            row = table.setdefault((len(tracks), q.shape, q.size or "-"), [0, 0, 0, 0, 0])
            row[0] += len(ok)
            row[1] += int((~tr["found"]).sum())
            row[2] += int((tr["found"] & ~ok).sum())
            row[3] += int((~ok & near).sum())
            row[4] += int(near.sum())
            if len(tracks) == 2:
                n = 0
                for bad in ~ok:
                    if bad:
                        n += 1
                    elif n:
                        runs.append(n)
                        n = 0
                if n:
                    runs.append(n)
    print("objects shape size    frames  failed  not-found  wrong-shape  failed-near/failed")
    for key in sorted(table):
        f, nf, ws, fn, _ = table[key]
        print(f"{key[0]:7d} {key[1]:8s} {key[2]:6s} {f:6d}  {(nf + ws) / f:6.3f}  {nf / f:9.3f}  {ws / f:11.3f}"
              f"  {fn / max(1, nf + ws):18.2f}")
    r = np.array(runs)
    if len(r):
        short, long = r[r <= 2].sum() / r.sum(), r[r >= 8].sum() / r.sum()
        print(f"two-object failed runs: {len(r)}, median length {np.median(r):.0f} frames, "
              f"{short:.2f} of failed frames in runs of 1-2, {long:.2f} in runs >= 8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
