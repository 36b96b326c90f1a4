"""Split the shipped setting's per-video scores (report_shipped_s*.json) by the number of objects in the prompt."""

import collections
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("colour", "shape", "direction", "axis", "persistence")


def mean_pct(rows: list[dict], key: str) -> str:
    v = [r[key] for r in rows if r.get(key) is not None]
    return f"{100 * sum(v) / len(v):.1f}" if v else "-"


rows = [r for s in (1000, 2000) for r in json.loads((HERE / f"report_shipped_s{s}.json").read_text())["per_video"]]
by_count = collections.defaultdict(list)
for r in rows:
    by_count[r["objects"]].append(r)
for n, group in sorted(by_count.items()):
    print(f"{n} object(s): {len(group)} prompts  " + "  ".join(f"{k} {mean_pct(group, k)}" for k in KEYS))
