"""Training logs: wandb (offline unless asked) and the loss curve as a PNG."""

from __future__ import annotations

import math
import os
from pathlib import Path

from videodit.config import Config, to_dict
from videodit.train.distributed import Dist


class WandbLogger:
    def __init__(self, cfg: Config, dist: Dist):
        self.run = None
        mode = cfg.train.wandb
        if mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            print("wandb is not installed; logging to the console only (pip install -e '.[train]')")
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=cfg.train.wandb_project, mode=mode, dir=str(Path(cfg.train.out_dir)),
                              config=to_dict(cfg))

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def video(self, path: Path, caption: str, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({"sample": wandb.Video(str(path), caption=caption, format="mp4")}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def save_loss_curve(losses: list[tuple[int, float]], path: Path) -> None:
    """A small PNG of the loss (log scale) drawn with PIL, so no plotting dependency is needed."""
    from PIL import Image, ImageDraw

    if len(losses) < 2:
        return
    W, H, pad = 640, 360, 40
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    steps = [s for s, _ in losses]
    vals = [math.log10(max(v, 1e-12)) for _, v in losses]
    k = max(len(vals) // 200, 1)  # light smoothing for readability
    smooth = [sum(vals[max(0, i - k) : i + 1]) / len(vals[max(0, i - k) : i + 1]) for i in range(len(vals))]
    lo, hi = min(smooth), max(smooth)
    hi = hi if hi > lo else lo + 1

    def xy(s: float, v: float) -> tuple[float, float]:
        x = pad + (s - steps[0]) / max(steps[-1] - steps[0], 1) * (W - 2 * pad)
        return x, H - pad - (v - lo) / (hi - lo) * (H - 2 * pad)

    draw.rectangle([pad, pad, W - pad, H - pad], outline="black")
    draw.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(30, 90, 200), width=2)
    draw.text((pad, 10), f"loss (log10) {10**hi:.3g} .. {10**lo:.3g}", fill="black")
    draw.text((pad, H - pad + 8), f"step {steps[0]}", fill="black")
    draw.text((W - pad - 80, H - pad + 8), f"step {steps[-1]}", fill="black")
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
