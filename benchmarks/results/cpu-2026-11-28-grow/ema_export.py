"""A checkpoint's EMA weights as a loadable DiT folder (dit.safetensors + config.yaml), to probe mid-run.

    PYTHONPATH=. python benchmarks/results/cpu-2026-11-28-grow/ema_export.py runs/dit_d6/checkpoints/step_0002000 OUT
"""

import sys
from pathlib import Path

from videodit.checkpoint import atomic_save_state, load_state, read_config, write_config

src, out = Path(sys.argv[1]), Path(sys.argv[2])
ema = load_state(src / "ema.safetensors")
atomic_save_state({k.removeprefix("dit."): v for k, v in ema.items()}, out / "dit.safetensors")
write_config(read_config(src), out)
print(f"{src} EMA -> {out}")
