"""Background brightness of generated videos: per frame, the median grey level (objects cover a small share)."""
import json
import sys
from pathlib import Path

import numpy as np

from videodit.video_io import read_video

for d in sys.argv[1:]:
    vals = [float(np.median(read_video(p).mean(-1), axis=(1, 2)).mean()) for p in sorted(Path(d).glob("[0-9]*.mp4"))]
    print(json.dumps(dict(folder=d, videos=len(vals), background_median_grey=round(float(np.mean(vals)), 1),
                          share_light=round(float(np.mean([v > 100 for v in vals])), 3))))
