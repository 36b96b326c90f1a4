"""Paired per-video differences between two evaluations of the same prompts and seeds.

    python benchmarks/results/cpu-2026-11-28-best-of/paired.py BASE.json:NEW.json [BASE.json:NEW.json ...] [--key K]

Each JSON is the report.json that `benchmarks/eval_sample.py --out DIR` writes (kept here as report_*.json).
Prints each pair's means and the mean difference ± its standard error, then all pairs pooled, overall and
split by the number of objects in the prompt. K: persistence (default), colour, shape, direction.
"""

import argparse
import json

import numpy as np


def load(path: str) -> list[dict]:
    return json.load(open(path))["per_video"]


def summary(x: np.ndarray) -> str:
    se = x.std(ddof=1) / len(x) ** 0.5 if len(x) > 1 else float("nan")
    return f"{x.mean():+.2f} +/- {se:.2f} (n={len(x)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", help="BASE.json:NEW.json")
    ap.add_argument("--key", default="persistence")
    args = ap.parse_args()
    diffs, objects = [], []
    for pair in args.pairs:
        base_path, new_path = pair.split(":")
        base, new = load(base_path), load(new_path)
        if [b["prompt"] for b in base] != [n["prompt"] for n in new]:
            raise SystemExit(f"{pair}: the two reports are not the same prompts in the same order")
        keep = [i for i, (b, n) in enumerate(zip(base, new)) if b[args.key] is not None and n[args.key] is not None]
        b = np.array([base[i][args.key] for i in keep]) * 100
        n = np.array([new[i][args.key] for i in keep]) * 100
        diffs.append(n - b)
        objects += [new[i]["objects"] for i in keep]
        print(f"{new_path}: {n.mean():.1f} vs {b.mean():.1f}: {summary(n - b)}")
    x, objects = np.concatenate(diffs), np.array(objects)
    print(f"all: {summary(x)}")
    for k in sorted(set(objects.tolist())):
        print(f"  {k} object(s): {summary(x[objects == k])}")


if __name__ == "__main__":
    main()
