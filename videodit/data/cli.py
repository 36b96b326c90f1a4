"""`videodit-data`: make training data.

    videodit-data shapes --out data/shapes --num 1000 [--frames 17 | --seconds S] --fps 8 --size 64 --seed 0
    videodit-data prep RAW_DIR --out clips.jsonl [--captions captions.csv] [--clip-seconds 4]
    videodit-data cache clips.jsonl --vae CKPT [--text-encoder PATH] --out shards/ [--rank R --world-size W]
                        [--on-error skip|stop]   (skip: bad clips are left out, listed in shards/skipped.jsonl)
    videodit-data cache --shapes 4000 --frames 33 --vae CKPT --out shards/   (procedural clips, no mp4 files)
    videodit-data text-encoder OUT [--tokenizer words]   (a tiny random T5 for the shapes captions, saved offline)

`python -m videodit.data ...` is the same command.
"""

from __future__ import annotations

import argparse
import sys

from videodit.cli import parse_size
from videodit.video_io import DataError


def _size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '96x64' (width first) -> (64, 96) as the (height, width) the cache takes."""
    w, h = parse_size(text)
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videodit-data", description="Make training data for videodit.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shapes", help="render the procedural moving-shapes dataset to mp4 + manifest.jsonl")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, default=1000, help="number of clips")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, help="clip length in seconds (frames = seconds x fps)")
    length.add_argument("--frames", type=int, help="clip length in frames (default 17 = 1 + 4k, one training window)")
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("train", "heldout"), default="train",
                   help="heldout = only the held-out (colour, shape, motion) combinations")  # fmt: skip

    p = sub.add_parser("prep", help="raw videos -> clips manifest (scene cuts, filters, captions); resumable")
    p.add_argument("raw_dir", help="folder of raw videos (searched recursively)")
    p.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    p.add_argument("--captions", help="CSV or JSONL of (path, caption); else sidecar .txt files")
    p.add_argument("--clip-seconds", type=float, help="cut scenes into clips of this length (default: whole scenes)")
    p.add_argument("--scene-threshold", type=float, default=0.12,
                   help="cut where consecutive 32x32 grey thumbnails differ by more (0..1; 0 disables)")  # fmt: skip
    p.add_argument("--min-frames", type=int, default=17, help="drop clips with fewer frames at --fps")
    p.add_argument("--fps", type=float, default=8, help="frame rate training samples at (for --min-frames)")
    p.add_argument("--min-size", type=int, default=64, help="drop videos whose shorter side is smaller")
    p.add_argument("--static-threshold", type=float, default=0.001,
                   help="drop clips whose mean thumbnail difference at --fps is below this (0..1)")  # fmt: skip

    p = sub.add_parser("cache", help="clips manifest -> safetensors shards of VAE latents + T5 embeddings")
    p.add_argument("manifest", nargs="?", help="clips manifest (.jsonl) from `prep` or `shapes`")
    p.add_argument("--shapes", type=int, default=0,
                   help="instead of a manifest: render this many procedural shapes clips (train split)")
    p.add_argument("--seed", type=int, default=0, help="procedural dataset seed (with --shapes)")
    p.add_argument("--style", default="plain",
                   help="with --shapes: the rendering style (plain; light: a light-grey background; slow / mild: "
                        "objects at 0.4x / 0.55x speed: looks the shipped model never saw, for LoRA experiments)")
    p.add_argument("--p-two", type=float, default=None,
                   help="share of two-object clips (with --shapes; default: the dataset's 0.3)")
    p.add_argument("--vae", required=True, help="checkpoint folder holding config.yaml + vae.safetensors")
    p.add_argument("--text-encoder", help="checkpoint folder or T5 / mT5 / umT5 folder (default: the --vae "
                                          "checkpoint's; a converted VAE has none); train with the same one")
    p.add_argument("--out", required=True, help="shards folder")
    p.add_argument("--frames", type=int, nargs="+", default=[17], help="frames per sample (1 + 4k); several = buckets")
    p.add_argument("--size", type=_size, default=64, help="frame size: N (square) or WxH, width first (96x64)")
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    p.add_argument("--batch-size", type=int, default=4, help="samples per VAE / text-encoder call")
    p.add_argument("--rank", type=int, help="this process's rank (default: $RANK from torchrun, else 0)")
    p.add_argument("--world-size", type=int, help="number of processes (default: $WORLD_SIZE, else 1)")
    p.add_argument("--device", help="default: cuda:$LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="stored dtype")
    p.add_argument("--vae-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the VAE's compute dtype: bfloat16 is faster on GPUs and on CPUs with AMX (5x for Wan 2.1's "
                        "VAE on 2 AMX cores), latents within about 1%% of float32's (docs/benchmarks.md)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding clips")
    p.add_argument("--max-length", type=int, help="text tokens kept (default: the encoder's config)")
    p.add_argument("--max-shards", type=int, help="stop after this many shards (the rest on a later run)")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="a missing or unreadable clip: skip it (listed in OUT/skipped.jsonl) or stop the run")

    p = sub.add_parser("text-encoder", help="save the tiny built-in T5 (seeded) as a T5 folder OUT/text_encoder, "
                                            "for --text.pretrained in training and --text-encoder in cache")
    p.add_argument("out", help="folder to create; the encoder lands in OUT/text_encoder")
    p.add_argument("--tokenizer", choices=["byte", "words"], default="words",
                   help="words: the shapes caption language (82 words, <unk> for others); byte: ByT5's, any text")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    return parser


def save_tiny_text_encoder(args: argparse.Namespace) -> None:
    from pathlib import Path

    from videodit.checkpoint import save_text_encoder
    from videodit.config import TextConfig
    from videodit.data.shapes import vocabulary
    from videodit.text_encoder import TextEncoder

    if args.d_model % args.heads:
        raise DataError(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    cfg = TextConfig(tiny_d_model=args.d_model, tiny_layers=args.layers, tiny_heads=args.heads, tiny_d_ff=args.d_ff,
                     tiny_tokenizer=args.tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_text_encoder(TextEncoder.tiny(cfg, seed=args.seed, words=vocabulary()), out)
    print(f"wrote {out / 'text_encoder'} ({args.tokenizer} tokenizer, d_model {args.d_model}); "
          f"use --text.pretrained {out / 'text_encoder'}")


def run(args: argparse.Namespace) -> None:
    if args.command == "text-encoder":
        save_tiny_text_encoder(args)
    elif args.command == "shapes":
        from videodit.data.shapes import generate

        frames = args.frames if args.frames or args.seconds else 17
        path = generate(args.out, args.num, args.seconds, args.fps, args.size, args.seed, args.split, frames)
        print(f"wrote {args.num} {args.split} clips and {path}")
    elif args.command == "prep":
        from videodit.data.prep import prep

        report = prep(
            args.raw_dir, args.out, captions=args.captions, clip_seconds=args.clip_seconds,
            scene_threshold=args.scene_threshold, min_frames=args.min_frames, min_size=args.min_size,
            fps=args.fps, static_threshold=args.static_threshold,
        )  # fmt: skip
        print(report.summary())
    else:
        from videodit.data.cache import cache

        s = cache(
            args.manifest, args.vae, args.out, text_encoder=args.text_encoder, frames=args.frames, size=args.size,
            fps=args.fps, shard_size=args.shard_size, batch_size=args.batch_size, rank=args.rank,
            world_size=args.world_size, device=args.device, dtype=args.dtype, vae_dtype=args.vae_dtype,
            workers=args.workers, max_length=args.max_length, max_shards=args.max_shards, shapes=args.shapes,
            seed=args.seed, p_two=args.p_two, on_error=args.on_error, style=args.style,
        )  # fmt: skip
        bad = sum(s["bad"].values())
        where = f"listed in {args.out}/skipped.jsonl" if s["index"] else "listed in skipped.jsonl with index.json"
        print(
            f"cache: {s['planned']} shards planned, {s['mine']} for this rank: {s['encoded']} encoded now, "
            f"{s['skipped']} already done; {s['too_short']} clips too short for --frames; {bad} clips skipped"
            + (f" ({', '.join(f'{n} {r}' for r, n in s['bad'].items())}), {where}" if bad else "")
        )
        print("index.json written" if s["index"] else "index.json not written yet: other shards are still missing")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (DataError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"videodit-data {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)  # 2: clips that could not be read (cache.ClipError)
    except OSError as e:  # a full disk, a quota, an I/O error while writing: what is complete stays
        where = f" ({e.filename})" if e.filename else ""
        print(f"videodit-data {args.command}: error: {e.strerror or e}{where}; files already complete are kept: "
              f"fix that and rerun the same command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"videodit-data {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
