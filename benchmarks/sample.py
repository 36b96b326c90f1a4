"""Wall time and peak memory of `sample.py` for 10 s and 60 s of video with a checkpoint (default: the shipped
tiny model), each in a fresh process so that its peak RSS is its own.

    python benchmarks/sample.py [--checkpoint checkpoints/tiny] [--steps N]

Goal on a 2-core CPU: 60 s of video in at most 120 s of wall time, and peak RSS for 60 s at most 1.3x that
for 10 s (memory flat in length). Last line: one JSON object (`wall_s_60s`, `rss_ratio_60s_vs_10s`, ...).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(seconds: float, args, out_dir: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one sample.py process."""
    cmd = [sys.executable, str(ROOT / "sample.py"), "--checkpoint", args.checkpoint, "--prompt", args.prompt,
           "--seconds", str(seconds), "--out", str(out_dir / f"bench_{seconds:g}s.mp4")]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, _, usage = os_wait4(proc)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sample.py failed for {seconds} s:\n{proc.stderr.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def os_wait4(proc: subprocess.Popen):
    import os

    pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return pid, status, usage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "tiny"))
    ap.add_argument("--prompt", default="a red circle moving to the right")
    ap.add_argument("--steps", type=int, default=0, help="default: the checkpoint's")
    args = ap.parse_args()
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for s in (10, 60):
            res[s] = run(s, args, Path(d))
            print(f"{s:3d} s of video: wall {res[s][0]:7.1f} s, peak RSS {res[s][1]:7.1f} MiB", flush=True)
    out = dict(wall_s_10s=round(res[10][0], 2), wall_s_60s=round(res[60][0], 2),
               rss_mib_10s=round(res[10][1], 1), rss_mib_60s=round(res[60][1], 1),
               rss_ratio_60s_vs_10s=round(res[60][1] / res[10][1], 3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
