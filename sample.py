"""Generate a video from text, chunk by chunk, into an mp4.

    python sample.py --prompt "a red circle moving to the right" --seconds 60
    python sample.py --prompt "a blue square moving up" --prompt "a blue square moving down" --at 0 --at 5 \
        --seconds 10 --preview sheet.png

With no --checkpoint it uses the tiny model shipped in checkpoints/tiny (trained on the procedural shapes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "tiny"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="videodit: text to video, chunk by chunk, in constant memory")
    p.add_argument("--prompt", action="append", required=True, help="text prompt; repeat with --at to change it")
    p.add_argument("--at", action="append", type=float, help="start time (s) of each --prompt (first is 0)")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (default: the empty prompt)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=int, default=0, help="default: the checkpoint's")
    p.add_argument("--size", type=int, default=0, help="square frame size in pixels; default: the checkpoint's")
    p.add_argument("--steps", type=int, default=0, help="sampling steps per chunk; default: the checkpoint's")
    p.add_argument("--cfg", type=float, default=-1.0, help="classifier-free guidance scale; default: checkpoint's")
    p.add_argument("--cfg-later", type=float, default=-1.0,
                   help="guidance scale for the chunks after the first; default: checkpoint's (else --cfg)")
    p.add_argument("--cfg-low-t", type=float, default=-1.0,
                   help="steps at noise level t below this use --cfg-low instead (0 = off); default: checkpoint's")
    p.add_argument("--cfg-low", type=float, default=-1.0,
                   help="guidance scale of the steps below --cfg-low-t; default: the checkpoint's")
    p.add_argument("--expert-t", type=float, default=-1.0,
                   help="steps at noise level t below this use the checkpoint's low-noise expert (0 = off); "
                        "default: the checkpoint's")
    p.add_argument("--sampler", choices=["euler", "heun"], default="")
    p.add_argument("--churn", type=float, default=-1.0,
                   help="stochastic sampling, 0..1: fresh noise per step as this fraction of the exact "
                        "posterior's std (0 = deterministic, 1 = ancestral); default: the checkpoint's")
    p.add_argument("--best-of", type=int, default=0,
                   help="sample each chunk this many times and keep the one the model finds most like the prompt "
                        "(time grows about as much; 1 = off); default: the checkpoint's")
    p.add_argument("--window", type=int, default=-1, help="recent chunks kept in the KV cache besides the anchor")
    p.add_argument("--anchor", choices=["on", "off"], default="",
                   help="keep the first chunk in the KV cache for the whole video; default: the checkpoint's")
    p.add_argument("--context-noise", type=float, default=-1.0,
                   help="noise level (t) of finished chunks in the KV cache; default: the checkpoint's")
    p.add_argument("--history-guidance", type=float, default=-1.0,
                   help="push each chunk toward what its past predicts (0 = off); default: the checkpoint's")
    p.add_argument("--first-frame-first", choices=["on", "off"], default="",
                   help="sample the first frame, then the opening motion from it; default: the checkpoint's")
    p.add_argument("--warm-start", type=float, default=-1.0,
                   help="start each later chunk at this noise level from the last frame before it (0 = off); "
                        "default: the checkpoint's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="folder with config.yaml + safetensors")
    p.add_argument("--out", default="outputs/sample.mp4")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--preview", default="", help="also save a PNG contact sheet of 16 frames here")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_output(path: Path) -> None:
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"--out must end in .mp4, got '{path}'")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder '{parent}': {e.strerror}") from e
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write '{path}': choose a writable --out")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from videodit.checkpoint import CheckpointError
    from videodit.config import ConfigError
    from videodit.generate import GenerateError, Pipeline, Request, generate

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        at = args.at if args.at else [0.0] * len(args.prompt)
        if len(args.prompt) == 1 and not args.at:
            at = [0.0]
        req = Request(prompts=args.prompt, at=at, seconds=args.seconds, negative_prompt=args.negative_prompt,
                      fps=args.fps, size=args.size, steps=args.steps, cfg_scale=args.cfg,
                      cfg_scale_later=args.cfg_later, cfg_low_t=args.cfg_low_t, cfg_scale_low=args.cfg_low,
                      expert_t=args.expert_t, sampler=args.sampler, churn=args.churn, best_of=args.best_of,
                      window_chunks=args.window, anchor={"on": True, "off": False}.get(args.anchor),
                      context_noise=args.context_noise, history_guidance=args.history_guidance,
                      first_frame_first={"on": True, "off": False}.get(args.first_frame_first),
                      warm_start=args.warm_start, seed=args.seed)
        check_output(out)
        if not Path(args.checkpoint).is_dir():
            shipped = Path(args.checkpoint) == DEFAULT_CHECKPOINT
            raise CheckpointError(
                f"checkpoint '{args.checkpoint}' not found. "
                + ("No trained model ships in checkpoints/tiny yet: train the tiny one with the commands in "
                   "README ('Train the tiny model yourself') and pass --checkpoint runs/dit_tiny/export"
                   if shipped else "Pass --checkpoint DIR, a folder with config.yaml and the safetensors files")
            )
        t0 = time.time()
        pipe = Pipeline.load(args.checkpoint, device=args.device)
        req = pipe.resolve(req)
        n, _ = pipe.frame_count(req)
        print(f"generating {n} frames ({req.seconds:g} s at {req.fps} fps, {req.size}x{req.size}) "
              f"with {req.steps} {req.sampler} steps, cfg {req.cfg_scale:g}"
              + (f" (later chunks {req.cfg_scale_later:g})" if req.cfg_scale_later != req.cfg_scale else "")
              + (f", {req.cfg_scale_low:g} below t = {req.cfg_low_t:g}" if req.cfg_low_t > 0 else "")
              + (f", low-noise expert below t = {req.expert_t:g}" if req.expert_t > 0 else "")
              + (f", churn {req.churn:g}" if req.churn > 0 else "")
              + (f", best of {req.best_of} per chunk" if req.best_of > 1 else "")
              + f", seed {req.seed}")
        generate(pipe, req, out, preview=args.preview or None, progress=True)
        print(f"wrote {out} in {time.time() - t0:.1f} s" + (f"; preview {args.preview}" if args.preview else ""))
        return 0
    except (GenerateError, CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
