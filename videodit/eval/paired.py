"""Paired per-video differences between two evaluations of the same prompts and seeds.

    python -m videodit.eval.paired BASE.json NEW.json [BASE2.json NEW2.json ...] [--key persistence]

Each file is the report.json that `python -m videodit.eval.sample --out DIR` writes (or DIR itself). The same
prompt sampled with the same seed under two settings is one pair; the per-video difference NEW - BASE (in points)
removes the prompt-to-prompt spread that dominates unpaired means. Prints each pair's means and the mean
difference +/- its standard error (sample standard deviation / sqrt(n)), then all pairs pooled, overall and split
by the number of objects in the prompt. Last line: one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def load(path: str | Path) -> list[dict]:
    """The per-video scores of an evaluation: a report.json, or the --out folder that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    return json.loads(path.read_text())["per_video"]


def mean_se(x: np.ndarray) -> dict:
    """Mean, standard error of the mean (sample standard deviation / sqrt(n); None for one value) and n."""
    se = float(x.std(ddof=1) / len(x) ** 0.5) if len(x) > 1 else None
    return dict(mean=float(x.mean()), se=se, n=len(x))


def paired(base: list[dict], new: list[dict], key: str = "persistence") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base scores, new scores, objects per prompt) in points for the videos where both have `key`."""
    if [b["prompt"] for b in base] != [n["prompt"] for n in new]:
        raise ValueError("the two reports are not the same prompts in the same order")
    keep = [i for i, (b, n) in enumerate(zip(base, new)) if b.get(key) is not None and n.get(key) is not None]
    b = np.array([base[i][key] for i in keep], dtype=float) * 100
    n = np.array([new[i][key] for i in keep], dtype=float) * 100
    return b, n, np.array([new[i]["objects"] for i in keep])


def compare(pairs: list[tuple[list[dict], list[dict]]], key: str = "persistence") -> dict:
    """Per pair and pooled: the means of both and the paired difference (mean, se, n); pooled also by objects."""
    rows, diffs, objects = [], [], []
    for base, new in pairs:
        b, n, obj = paired(base, new, key)
        rows.append(dict(base=float(b.mean()), new=float(n.mean())) | mean_se(n - b))
        diffs.append(n - b)
        objects.append(obj)
    x, obj = np.concatenate(diffs), np.concatenate(objects)
    by_objects = {int(k): mean_se(x[obj == k]) for k in sorted(set(obj.tolist()))}
    return dict(key=key, pairs=rows, all=mean_se(x), by_objects=by_objects)


def _fmt(s: dict) -> str:
    se = math.nan if s["se"] is None else s["se"]
    return f"{s['mean']:+.2f} +/- {se:.2f} (n={s['n']})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m videodit.eval.paired", description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", help="BASE NEW [BASE NEW ...]: report.json files or --out folders")
    ap.add_argument("--key", default="persistence", help="persistence (default), colour, shape, direction, axis")
    args = ap.parse_args(argv)
    if len(args.reports) % 2:
        ap.error(f"reports come in BASE NEW pairs; got {len(args.reports)} paths")
    names = list(zip(args.reports[::2], args.reports[1::2]))
    try:
        result = compare([(load(b), load(n)) for b, n in names], args.key)
    except (OSError, KeyError, ValueError) as e:
        ap.exit(1, f"{ap.prog}: error: {e}\n")
    for (_, new_path), row in zip(names, result["pairs"]):
        print(f"{new_path}: {row['new']:.1f} vs {row['base']:.1f}: {_fmt(row)}")
    print(f"all: {_fmt(result['all'])}")
    for k, s in result["by_objects"].items():
        print(f"  {k} object(s): {_fmt(s)}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
