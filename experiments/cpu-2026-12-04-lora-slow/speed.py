"""Motion style presence: each generated video's median object speed (pixels per frame, from the shapes evaluator's
tracks of the prompted objects), averaged per folder; the slow style renders at 0.4x the dataset's speeds."""
import json
import sys
from pathlib import Path

import numpy as np

from videodit.eval.shapes import track_objects
from videodit.video_io import read_video

for d in sys.argv[1:]:
    report = json.loads((Path(d) / "report.json").read_text())
    prompts = [v["prompt"] for v in report["per_video"]]
    speeds = []
    for path, prompt in zip(sorted(Path(d).glob("[0-9]*.mp4")), prompts):
        for _, tr in track_objects(read_video(path), prompt):
            ok = tr["present"][:-1] & tr["present"][1:] & (tr["colour_id"][:-1] == tr["colour_id"][1:])
            step = np.hypot(np.diff(tr["cx"]), np.diff(tr["cy"]))[ok]
            if len(step):
                speeds.append(float(np.median(step)))
    print(json.dumps(dict(folder=d, objects=len(speeds), median_speed_px_per_frame=round(float(np.mean(speeds)), 3))))
