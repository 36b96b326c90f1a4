"""Paired per-video persistence differences against the settings shipped before (same prompts, same seeds).

    python benchmarks/results/cpu-2026-11-28-churn/paired.py EVAL_DIR:SET [EVAL_DIR:SET ...]

EVAL_DIR is an `eval_sample.py --out` folder (its report.json) and SET its --seed (1000, 2000 or 3000).
"""

import json
import sys

import numpy as np

BEFORE = "benchmarks/results/cpu-2026-11-27-guidance-interval/report_gi_context_cn05_s{}.json"


def load(path: str, key: str = "persistence") -> np.ndarray:
    return np.array([v[key] for v in json.load(open(path))["per_video"]])


def main(args: list[str]) -> None:
    diffs = []
    for arg in args:
        folder, seed = arg.split(":")
        base, new = load(BEFORE.format(seed)), load(f"{folder}/report.json")
        x = (new - base) * 100
        diffs.append(x)
        print(f"{folder} set {seed}: {new.mean() * 100:.1f} vs {base.mean() * 100:.1f}: {x.mean():+.2f} +/- "
              f"{x.std(ddof=1) / len(x) ** 0.5:.2f}")
    x = np.concatenate(diffs)
    print(f"all: {x.mean():+.2f} +/- {x.std(ddof=1) / len(x) ** 0.5:.2f} n={len(x)}")


if __name__ == "__main__":
    main(sys.argv[1:])
