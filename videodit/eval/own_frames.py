"""Image to video, video continuation and other aspect ratios, measured on held-out shapes prompts.

    python -m videodit.eval.own_frames [--checkpoint checkpoints/tiny] [--num 20] [--seconds 30] --out DIR

For each held-out example (seed --seed) the ground truth is rendered at the checkpoint's size and fps, then:
- continuation: its first --given seconds are written to an mp4 and continued for --seconds with `--video`
  (the given clip kept in front); scored on the new part beside text-only generation of the same prompt and seed:
  colour, shape, persistence with the shapes evaluator; "direction kept": each object's direction over the new
  part's first half second equals its direction over the given clip's last (the ground truth's own rate is the
  control: objects bounce), and "direction as truth": it equals the ground truth's over those frames; and the
  join: the object's centroid step and the mean frame difference from the last given frame to the first new one,
  each over the given clip's own mean (a ratio; 1 = as smooth as the clip).
- image to video: the ground truth's first frame as `--image`; PSNR of the output mp4's first frame against the
  image beside the VAE's own round trip of it written through the same mp4 encoder, and the prompt-following
  figures.
- aspect ratios: text-only generation at WxH for each --sizes entry (e.g. 96x64 64x96) beside the square size.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from videodit.data.shapes import make_example, render_clip
from videodit.eval.shapes import _DIRECTIONS, aggregate, evaluate_video, format_table, track_objects
from videodit.generate import Pipeline, generate
from videodit.video_io import read_video, write_video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def direction(tr: dict, lo: int, hi: int) -> str | None:
    """The 8-way direction of a tracked object's displacement over frames [lo, hi), if it moved."""
    idx = [i for i in range(lo, hi) if tr["present"][i]]
    if len(idx) < 2:
        return None
    dx, dy = tr["cx"][idx[-1]] - tr["cx"][idx[0]], tr["cy"][idx[-1]] - tr["cy"][idx[0]]
    if math.hypot(dx, dy) < 0.5:
        return None
    return _DIRECTIONS[round(math.atan2(-dy, dx) / (math.pi / 4)) % 8]


def join_scores(frames: np.ndarray, prompt: str, n_given: int, truth: np.ndarray, window: int = 4) -> dict:
    """Across the junction of a video (the given clip's n_given frames, then the new part): each object's direction
    over the `window` frames after it against the truth's over the same frames (objects bounce, so the truth is the
    reference) and against its own over the `window` frames before; and the join ratios."""
    kept, truthful, pos_ratio = [], [], []
    for (_, tr), (_, tt) in zip(track_objects(frames, prompt), track_objects(truth[: len(frames)], prompt)):
        before, after = direction(tr, n_given - window, n_given), direction(tr, n_given, n_given + window)
        if before is not None:
            kept.append(float(after == before))
        true_after = direction(tt, n_given, n_given + window)
        if true_after is not None:
            truthful.append(float(after == true_after))
        steps = [math.hypot(tr["cx"][i + 1] - tr["cx"][i], tr["cy"][i + 1] - tr["cy"][i])
                 for i in range(n_given - 1) if tr["present"][i] and tr["present"][i + 1]]
        j = n_given - 1
        if steps and tr["present"][j] and tr["present"][j + 1]:
            jump = math.hypot(tr["cx"][j + 1] - tr["cx"][j], tr["cy"][j + 1] - tr["cy"][j])
            pos_ratio.append((jump + 0.5) / (float(np.mean(steps)) + 0.5))
    x = frames.astype(np.float32)
    diffs = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))  # (T - 1,)
    colour_ratio = float((diffs[n_given - 1] + 0.1) / (diffs[: n_given - 1].mean() + 0.1))
    return dict(direction_kept=float(np.mean(kept)) if kept else None,
                direction_as_truth=float(np.mean(truthful)) if truthful else None,
                join_position=float(np.mean(pos_ratio)) if pos_ratio else None, join_frames=colour_ratio)


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def make(pipe: Pipeline, path: Path, reuse: bool, prompt: str, **kw) -> None:
    """Generate `prompt` into `path` (kept as it is with reuse, when it exists)."""
    if not (reuse and path.is_file()):
        generate(pipe, pipe.request(prompt, **kw), path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m videodit.eval.own_frames", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/tiny")
    ap.add_argument("--num", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds generated after the image / the clip")
    ap.add_argument("--given", type=float, default=2.0, help="seconds of ground truth given to continue from")
    ap.add_argument("--sizes", nargs="*", default=["96x64", "64x96"], help="WxH sizes for text-only generation")
    ap.add_argument("--size-seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1000, help="held-out split seed and sampling seed base")
    ap.add_argument("--out", required=True, help="folder for the mp4s and report.json")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="score the mp4s already in --out instead of making them")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm import tqdm

    pipe = Pipeline.load(args.checkpoint)
    cfg = pipe.cfg
    fps, size = cfg.data.fps, cfg.data.size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_given = round(args.given * fps)
    rows = []
    t0 = time.time()
    for i in tqdm(range(args.num), desc="own frames", unit="prompt"):
        spec, caption = make_example(args.seed, i, "heldout")
        truth = render_clip(spec, fps=fps, size=size, frames=n_given + round(fps * args.seconds))
        seed = args.seed + i
        row = dict(prompt=caption)
        # continuation (the given clip in front) and text only, the same prompt and seed
        clip = out / f"{i:03d}_given.mp4"
        write_video(clip, truth[:n_given], fps=fps)
        cont = out / f"{i:03d}_cont.mp4"
        req = pipe.request(caption, seconds=args.seconds, seed=seed, video=clip, keep_input=True)
        make(pipe, cont, args.reuse, caption, seconds=args.seconds, seed=seed, video=clip, keep_input=True)
        frames = read_video(cont)
        used = req.video_frames
        new = frames[used:]
        row["continuation"] = evaluate_video(new, caption, fps=fps)
        row["continuation"].update(join_scores(frames, caption, used, truth))
        row["truth_direction_kept"] = join_scores(truth, caption, used, truth)["direction_kept"]
        text = out / f"{i:03d}_text.mp4"
        make(pipe, text, args.reuse, caption, seconds=args.seconds, seed=seed)
        row["text"] = evaluate_video(read_video(text), caption, fps=fps)
        # image to video: the truth's first frame
        image = truth[0]
        i2v = out / f"{i:03d}_image.mp4"
        make(pipe, i2v, args.reuse, caption, seconds=args.seconds, seed=seed, image=image)
        frames = read_video(i2v)
        with torch.no_grad():
            z = pipe._denormalise(pipe.encode_image(image))
            rt = pipe.vae.decode(z.to(next(pipe.vae.parameters()).dtype), pipe.vae.init_cache())[0]
        rt = ((rt[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()[0]
        row["image"] = evaluate_video(frames, caption, fps=fps)
        write_video(out / f"{i:03d}_vae.mp4", rt[None], fps=fps)  # the round trip through the same mp4 writer
        row["image"].update(psnr_first=psnr(frames[0], image), psnr_vae=psnr(read_video(out / f"{i:03d}_vae.mp4")[0],
                                                                              image))
        # other sizes, text only (short)
        for wh in args.sizes + [f"{size}x{size}"]:
            w, h = (int(v) for v in wh.split("x"))
            path = out / f"{i:03d}_{wh}.mp4"
            make(pipe, path, args.reuse, caption, seconds=args.size_seconds, seed=seed, size=(w, h))
            row[wh] = evaluate_video(read_video(path), caption, fps=fps)
        rows.append(row)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))

    columns = {}
    for key in ["text", "continuation", "image"] + args.sizes + [f"{size}x{size}"]:
        columns[key] = aggregate([r[key] for r in rows])
    report = dict(
        checkpoint=args.checkpoint, num=args.num, seconds=args.seconds, given=args.given, seed=args.seed,
        minutes=round((time.time() - t0) / 60, 1), columns=columns,
        continuation=dict(
            direction_kept=100 * mean(r["continuation"]["direction_kept"] for r in rows),
            direction_as_truth=100 * mean(r["continuation"]["direction_as_truth"] for r in rows),
            truth_direction_kept=100 * mean(r["truth_direction_kept"] for r in rows),
            join_position=mean(r["continuation"]["join_position"] for r in rows),
            join_frames=mean(r["continuation"]["join_frames"] for r in rows)),
        image=dict(psnr_first=mean(r["image"]["psnr_first"] for r in rows),
                   psnr_vae=mean(r["image"]["psnr_vae"] for r in rows)),
    )
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(format_table(columns))
    print("continuation:", json.dumps(report["continuation"]), "\nimage:", json.dumps(report["image"]))
    print(json.dumps(dict(continuation=report["continuation"], image=report["image"],
                          persistence={k: round(v["persistence"], 1) for k, v in columns.items()})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
