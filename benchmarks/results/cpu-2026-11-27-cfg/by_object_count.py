"""Split per-video scores by the number of objects in the prompt.

    python by_object_count.py [REPORT.json ...]   (default: the shipped setting's report_shipped_s*.json here)

A report is the JSON that `benchmarks/eval_sample.py --out DIR` writes (DIR/report.json).
"""

import collections
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("colour", "shape", "direction", "axis", "persistence")


def mean_pct(rows: list[dict], key: str) -> str:
    v = [r[key] for r in rows if r.get(key) is not None]
    return f"{100 * sum(v) / len(v):.1f}" if v else "-"


paths = sys.argv[1:] or [HERE / f"report_shipped_s{s}.json" for s in (1000, 2000)]
rows = [r for p in paths for r in json.loads(Path(p).read_text())["per_video"]]
by_count = collections.defaultdict(list)
for r in rows:
    by_count[r["objects"]].append(r)
for n, group in sorted(by_count.items()):
    print(f"{n} object(s): {len(group)} prompts  " + "  ".join(f"{k} {mean_pct(group, k)}" for k in KEYS))
