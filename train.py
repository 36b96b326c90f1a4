"""Train the DiT (rectified flow) or the VAE, on one CPU process or across GPUs/nodes with DeepSpeed ZeRO.

    python train.py --config configs/tiny.yaml                      # one process (CPU or one GPU)
    deepspeed --num_gpus 8 train.py --config configs/base.yaml --train.zero_stage 2
    torchrun --nproc_per_node 2 train.py --config configs/tiny.yaml --train.zero_stage 2   # CPU: gloo
    deepspeed --num_gpus 8 train.py --config configs/xl.yaml --train.sequence_parallel 4   # a clip over 4 GPUs

Any --section.key VALUE overrides the config (docs/configuration.md). The work is done by videodit.train.
"""

from __future__ import annotations

import argparse
import sys

from videodit.cli import ArgumentParser


def parse_args(argv: list[str] | None):
    p = ArgumentParser(description=__doc__.split("\n")[0],
                       epilog="Any --section.key VALUE overrides the config (e.g. --model.depth 4).")
    p.add_argument("--config", help="YAML overrides of the defaults (configs/*.yaml)")
    p.add_argument("--resume", default="", help="'auto' (the newest checkpoint of this run that loads) or a folder")
    p.add_argument("--wandb", choices=["online", "offline", "disabled"], help="shorthand for --train.wandb")
    p.add_argument("--export-only", action="store_true", help="export the latest checkpoint's EMA and exit")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a --train.out_dir that holds another run (removes its checkpoints and export)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    from videodit.checkpoint import CheckpointError
    from videodit.config import ConfigError, load_config
    from videodit.train import TrainError
    from videodit.train.trainer import run
    from videodit.video_io import DataError

    try:
        cfg = load_config(args.config, rest)
        if args.wandb:
            cfg.train.wandb = args.wandb
        run(cfg, args.resume, args.export_only, overwrite=args.overwrite)
        return 0
    except (ConfigError, TrainError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    code = main()
    if code == 0:
        from videodit.train.distributed import close_dist

        close_dist()
    sys.exit(code)
