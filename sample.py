"""Generate a video from text, chunk by chunk, into an mp4.

    python sample.py --prompt "a red circle moving to the right" --seconds 60
    python sample.py --prompt "a blue square moving up" --at 0 --prompt "a blue square moving down" --at 5 \
        --seconds 10 --preview sheet.png --sample.churn 0.5
    python sample.py --image first.png --prompt "a red circle moving up" --seconds 20 --size 96x64
    python sample.py --video clip.mp4 --prompt "a red circle moving up" --seconds 30 --keep-input
    python sample.py --prompt "a red circle moving up" --lora runs/light/export:0.8   # a LoRA adapter, scaled
    torchrun --nproc_per_node 4 sample.py --prompt "..." --seconds 60   # every chunk split over 4 GPUs; rank 0 writes

With no --checkpoint it uses the tiny model shipped in checkpoints/tiny (trained on the procedural shapes).
Any sampling key of the config (docs/configuration.md, section `sample`) is set with --sample.KEY VALUE.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

from videodit.cli import ArgumentParser, Interrupted, parse_size, stop_on_signals

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "tiny"
FLAGS = {"steps": "--steps", "cfg_scale": "--cfg"}  # sampling keys that have an everyday flag


def parse_args(argv: list[str] | None):
    p = ArgumentParser(description="videodit: text to video, chunk by chunk, in constant memory",
                       epilog="Any other sampling key: --sample.KEY VALUE (docs/configuration.md, section sample). "
                              "An omitted value is the checkpoint's.")
    p.add_argument("--prompt", action="append", required=True, help="text prompt; repeat with --at for a timeline")
    p.add_argument("--at", action="append", type=float, help="start time (s) of each --prompt (the first is 0)")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (default: the empty prompt)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the video (default 10)")
    p.add_argument("--size", type=parse_size, help="frame size in pixels: N (square) or WxH, width first (96x64)")
    p.add_argument("--fps", type=int, help="frames per second (the checkpoint's)")
    p.add_argument("--steps", type=int, help="sampling steps per chunk (= --sample.steps)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (= --sample.cfg_scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="folder with config.yaml + safetensors")
    p.add_argument("--out", default="outputs/sample.mp4", help="the mp4 to write")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available; under torchrun: each "
                   "process the GPU of its local rank)")
    p.add_argument("--preview", help="also save a PNG contact sheet of 16 frames here")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--image", help="a PNG/JPEG to start from: the video's first frame (resized and cropped to fit)")
    p.add_argument("--video", help="a clip to continue for --seconds more (any container prep reads)")
    p.add_argument("--keep-input", action="store_true", help="with --video: write the clip, then the continuation")
    p.add_argument("--vae-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the VAE's compute dtype: bfloat16 decodes faster on GPUs and on CPUs with AMX")
    p.add_argument("--lora", action="append", default=[],
                   help="a LoRA adapter folder (a LoRA run's export), optionally PATH:SCALE (default 1); repeatable")
    args, rest = p.parse_known_args(argv)
    return args, rest


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    stop_on_signals()
    import torch

    from videodit.checkpoint import CheckpointError
    from videodit.config import ConfigError, sample_overrides
    from videodit.generate import GenerateError, Pipeline, check_outputs, close_processes, generate, init_processes

    out = Path(args.out)
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"  # one line, no source location
    first = os.environ.get("RANK", "0") == "0"  # under torchrun the first process speaks for all
    say = print if first else lambda *a, **k: None
    if not first:
        warnings.simplefilter("ignore")
    group = None
    try:
        overrides = sample_overrides(rest, "sample.py")
        overrides |= {k: v for k, v in (("steps", args.steps), ("cfg_scale", args.cfg)) if v is not None}
        if args.threads is not None:
            if args.threads < 1:
                raise GenerateError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        device, group = init_processes(args.device)
        check_outputs(out, args.preview, group)
        t0 = time.time()
        from videodit.lora import parse_lora

        loras = [parse_lora(x) for x in args.lora]
        pipe = Pipeline.load(args.checkpoint, device=device, loras=loras, group=group,
                             vae_dtype=getattr(torch, args.vae_dtype))
        for path, scale in loras:
            say(f"LoRA {path} x {scale:g} merged into the DiT")
        req = pipe.request(args.prompt, at=args.at, seconds=args.seconds, size=args.size, fps=args.fps,
                           seed=args.seed, negative_prompt=args.negative_prompt, sample=overrides,
                           image=args.image, video=args.video, keep_input=args.keep_input,
                           label=lambda k: FLAGS.get(k, f"--sample.{k}"))
        for note in req.notes:
            say(f"note: {note}")
        s = req.sample
        later = "" if s.cfg_scale_later in (None, s.cfg_scale) else f" (later chunks {s.cfg_scale_later:g})"
        new = round(req.seconds * req.fps)
        start = ("from the image, " if req.image is not None else
                 f"after the clip's {req.video_frames} frames, " if req.video else "")
        say(f"generating {new} frames ({start}{req.seconds:g} s at {req.fps} fps, {req.width}x{req.height}) "
              f"with {s.steps} {s.sampler} steps, cfg {s.cfg_scale:g}{later}"
              + (f", {s.cfg_scale_low:g} below t = {s.cfg_low_t:g}" if s.cfg_low_t > 0 else "")
              + (f", low-noise expert below t = {s.expert_t:g}" if s.expert_t > 0 else "")
              + (f", churn {s.churn:g}" if s.churn > 0 else "")
              + f", seed {req.seed}" + (f", every chunk split over {pipe.degree} processes" if group else ""))
        generate(pipe, req, out, preview=args.preview, progress=True)
        say(f"wrote {out} in {time.time() - t0:.1f} s" + (f"; preview {args.preview}" if args.preview else ""))
        return 0
    except (GenerateError, CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        say(f"error: {e}", file=sys.stderr)  # the same on every process
        return 2
    except OSError as e:  # a full disk or quota while writing: the temporary file is gone, any older output kept
        print(f"error: {e.strerror or e} while writing '{out}'; it was not written (an older file there is "
              f"unchanged)", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt):
        say(f"interrupted: '{out}' was not written", file=sys.stderr)
        return 130
    finally:
        close_processes(group)


if __name__ == "__main__":
    sys.exit(main())
