"""Screen: the same sampled mp4s scored raw and after a per-pixel temporal median over k frames (k odd).

    python screen.py RUN_DIR [k ...]     (RUN_DIR from eval_sample.py --out, with report.json)
"""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from eval_sample import seam_args  # noqa: E402

from videodit.checkpoint import read_config  # noqa: E402
from videodit.data.evaluate import evaluate_videos, format_table  # noqa: E402
from videodit.data.video_io import read_video  # noqa: E402


def median_k(v: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return v
    r = k // 2
    pad = np.concatenate([v[:1].repeat(r, 0), v, v[-1:].repeat(r, 0)])
    win = np.stack([pad[i : i + len(v)] for i in range(k)])
    return np.median(win, 0).round().astype(np.uint8)


run = Path(sys.argv[1])
ks = [int(a) for a in sys.argv[2:]] or [1, 3, 5]
paths = sorted(run.glob("[0-9][0-9][0-9].mp4"))
prompts = [v["prompt"] for v in json.loads((run / "report.json").read_text())["per_video"]]  # in path order
seam = seam_args(read_config(ROOT / "checkpoints" / "tiny"))
videos = [read_video(p) for p in paths]
table, per = {}, {}
for k in ks:
    res = evaluate_videos([median_k(v, k) for v in videos], prompts, **seam)
    table[f"median {k}"] = res["aggregate"]
    per[k] = [v["persistence"] for v in res["per_video"]]
print(format_table(table))
base = np.array(per[ks[0]])
for k in ks[1:]:
    d = np.array(per[k]) - base
    print(f"median {k} vs {ks[0]}: persistence {100 * d.mean():+.2f} +/- {100 * d.std(ddof=1) / np.sqrt(len(d)):.2f}")
print(json.dumps({f"persistence_k{k}": round(100 * float(np.mean(per[k])), 2) for k in ks}))
