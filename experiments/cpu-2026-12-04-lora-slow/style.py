"""Style presence in generated videos: each video's median background colour (objects cover a small share) and
whether it is the teal style's hue (green well above red) or the light style's brightness."""
import json
import sys
from pathlib import Path

import numpy as np

from videodit.video_io import read_video

for d in sys.argv[1:]:
    med = [np.median(read_video(p).reshape(-1, 3), axis=0) for p in sorted(Path(d).glob("[0-9]*.mp4"))]
    med = np.array(med, dtype=float)
    print(json.dumps(dict(folder=d, videos=len(med), median_rgb=[round(float(v), 1) for v in med.mean(0)],
                          share_teal=round(float(np.mean((med[:, 1] - med[:, 0]) > 25)), 3),
                          share_light=round(float(np.mean(med.mean(1) > 100)), 3))))
