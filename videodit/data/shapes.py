"""A procedural dataset of captioned moving shapes: ground truth for prompt-following on a CPU.

Each clip shows one or two flat shapes (circle, square, triangle; eight colours; small or large) on a plain
dark background. Every object starts moving in one of eight directions at a constant speed and bounces off
the walls (a perfect reflection of the velocity component normal to the wall). The caption names each
object and its *initial* direction; the generator places objects so that they move that way for at least
the first `NO_BOUNCE_SECONDS` without touching a wall, so the caption is literally true at the start of the
clip. After a bounce the sign of a velocity component flips but its magnitude does not: a horizontal mover
stays horizontal, a vertical one vertical and a diagonal one diagonal. The evaluator
(`videodit.eval.shapes`) measures exactly these two things: the initial direction and the axis of motion.

Everything is a pure function of a seed: clip `i` of split `s` uses `numpy.random.default_rng([seed, s, i])`,
so any clip can be regenerated alone (on the fly for training, in any order, in parallel).

A fixed list `HELD_OUT` of (colour, shape, motion) combinations never appears in the training split, and the
held-out split contains only them: a test of compositional generalisation (the model has seen red shapes,
triangles and upward motion, but never a red triangle moving up).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from videodit.video_io import DataError, temp_path_for, write_video

# Palette, well separated in RGB (closest pair: yellow/orange, 100 levels apart); backgrounds are dark or grey
# and at least 120 levels from every palette colour, so a pixel's nearest palette colour is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 255),
    "yellow": (250, 230, 30),
    "magenta": (225, 50, 225),
    "cyan": (40, 220, 230),
    "orange": (255, 130, 0),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "dark grey": (40, 40, 42),
    "navy": (14, 18, 56),
    "dark brown": (48, 30, 18),
}
# rendering styles: "plain" is the dataset's look; the others are looks the shipped model never saw, for
# fine-tuning experiments (a LoRA): "light" paints every background light grey (captions keep their words; the
# shipped VAE, which never saw a light frame, decodes it as magenta and loses the objects), "slow" moves every object
# at SLOW_SPEED times its speed and "mild" at MILD_SPEED times (motion styles: the frames are ones the VAE knows)
STYLES = ("plain", "light", "slow", "mild")
LIGHT_BACKGROUND = (160, 160, 165)  # >= 140 RGB levels from every palette colour, as bright as none of BACKGROUNDS
SLOW_SPEED = 0.4  # 0.08-0.14 shorter sides per second: below every speed the dataset draws (SPEED_RANGE)
MILD_SPEED = 0.55  # 0.11-0.19 shorter sides per second: also below every speed the dataset draws, by less
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.09, "large": 0.16}  # half-extent as a fraction of the shorter side
# unit direction in image coordinates (x right, y down)
MOTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
}
SPEED_RANGE = (0.2, 0.35)  # centre speed in shorter-sides per second
NO_BOUNCE_SECONDS = 1.0  # every object moves in its captioned direction, wall-free, for at least this long
SPLITS = {"train": 0, "heldout": 1}

HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "up"),
    ("green", "square", "left"),
    ("blue", "circle", "down-right"),
    ("yellow", "square", "up-left"),
    ("magenta", "circle", "right"),
    ("cyan", "triangle", "down"),
    ("orange", "circle", "up-right"),
    ("white", "triangle", "down-left"),
)
_HELD_OUT_SET = frozenset(HELD_OUT)


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str  # "small" | "large"
    motion: str  # a key of MOTIONS: the initial direction
    x: float  # initial centre as a fraction of the free range: 0 touches the left wall, 1 the right one
    y: float  # the same vertically: 0 touches the top, 1 the bottom
    speed: float  # shorter-sides per second

    @property
    def combo(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.motion)


@dataclass(frozen=True)
class ShapeSpec:
    objects: tuple[ShapeObject, ...]  # drawn with objects[0] on top
    background: str

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> ShapeSpec:
        return cls(objects=tuple(ShapeObject(**o) for o in d["objects"]), background=d["background"])


# ----------------------------------------------------------------------------------------------------
# sampling


def _free(size: str) -> float:
    return 1.0 - 2.0 * SIZES[size]  # room for the centre, in shorter-sides (for a square frame)


def _sample_object(rng: np.random.Generator, combo: tuple[str, str, str]) -> ShapeObject:
    colour, shape, motion = combo
    size = ("small", "large")[int(rng.integers(2))]
    speed = float(rng.uniform(*SPEED_RANGE))
    ux, uy = MOTIONS[motion]
    free = _free(size)
    pos = []
    for u in (ux, uy):
        # keep the first NO_BOUNCE_SECONDS of travel inside the frame (plus a small margin)
        need = min(0.98, abs(u) * speed * NO_BOUNCE_SECONDS / free + 0.02)
        lo, hi = (need, 1.0) if u < 0 else (0.0, 1.0 - need) if u > 0 else (0.0, 1.0)
        pos.append(float(rng.uniform(lo, hi)))
    return ShapeObject(colour, shape, size, motion, pos[0], pos[1], speed)


def _centres(obj: ShapeObject, times: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre tracks (pixels) of a bouncing object at `times` seconds -> (cx (T,), cy (T,), half-extent r)."""
    s = min(h, w)
    r = SIZES[obj.size] * s
    ux, uy = MOTIONS[obj.motion]
    out = []
    for frac, u, extent in ((obj.x, ux, w), (obj.y, uy, h)):
        span = extent - 2 * r  # the centre moves within [r, extent - r]
        unfolded = frac * span + u * obj.speed * s * times
        m = np.mod(unfolded, 2 * span)
        out.append(r + np.where(m <= span, m, 2 * span - m))  # reflect off both walls
    return out[0], out[1], r


def _overlap_early(objs: list[ShapeObject]) -> bool:
    times = np.linspace(0.0, NO_BOUNCE_SECONDS + 0.5, 13)
    (ax, ay, ar), (bx, by, br) = (_centres(o, times, 100, 100) for o in objs)
    return bool(np.any(np.hypot(ax - bx, ay - by) < (ar + br) * 1.5))


P_TWO = 0.3  # share of two-object clips in the procedural dataset


def sample_spec(
    rng: np.random.Generator, split: str = "train", num_objects: int | None = None, p_two: float = P_TWO
) -> ShapeSpec:
    """A random clip description. `split="train"` never yields a HELD_OUT combination; "heldout" only those."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    n = num_objects if num_objects is not None else (2 if rng.random() < p_two else 1)
    if n not in (1, 2):
        raise DataError(f"a shapes clip holds one or two objects, got {n}")
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    for _ in range(100):
        combos: list[tuple[str, str, str]] = []
        while len(combos) < n:
            if split == "heldout":
                c = HELD_OUT[int(rng.integers(len(HELD_OUT)))]
            else:
                c = (
                    list(COLOURS)[int(rng.integers(len(COLOURS)))],
                    SHAPES[int(rng.integers(len(SHAPES)))],
                    list(MOTIONS)[int(rng.integers(len(MOTIONS)))],
                )
                if c in _HELD_OUT_SET:
                    continue
            if all(c[0] != o[0] for o in combos):  # distinct colours keep objects tellable apart
                combos.append(c)
        objs = [_sample_object(rng, c) for c in combos]
        if n == 1 or not _overlap_early(objs):
            return ShapeSpec(objects=tuple(objs), background=background)
    raise AssertionError("could not place two non-overlapping objects in 100 tries")


def make_example(seed: int, index: int, split: str = "train", p_two: float = P_TWO) -> tuple[ShapeSpec, str]:
    """Clip `index` of a dataset: its spec and caption, a pure function of (seed, split, index, p_two)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    if not 0.0 <= p_two <= 1.0:
        raise DataError(f"the share of two-object clips (--p-two) must be in [0, 1], got {p_two:g}")
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    spec = sample_spec(rng, split, p_two=p_two)
    return spec, caption(spec, rng)


# ----------------------------------------------------------------------------------------------------
# rendering


def render_clip(
    spec: ShapeSpec,
    seconds: float | None = None,
    fps: float = 8,
    size: int | tuple[int, int] = 64,
    frames: int | None = None,
    style: str = "plain",
) -> np.ndarray:
    """Render a clip -> uint8 (T, H, W, 3); T = `frames` if given, else round(seconds * fps). `style`: one of STYLES.

    Hard-edged shapes (no anti-aliasing) from vectorised masks: a minute at 64x64 and 8 fps takes ~0.1 s.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if frames is None:
        if seconds is None:
            raise DataError("render_clip needs `seconds` or `frames`")
        frames = int(round(seconds * fps))
    if frames < 1 or h < 8 or w < 8:
        raise DataError(f"render_clip needs at least one frame of 8x8 pixels, got {frames} frames of {w}x{h}")
    times = np.arange(frames) / fps * {"slow": SLOW_SPEED, "mild": MILD_SPEED}.get(style, 1.0)
    out = np.empty((frames, h, w, 3), np.uint8)
    if style not in STYLES:
        raise DataError(f"style must be one of {', '.join(STYLES)}, got '{style}'")
    out[:] = np.array(LIGHT_BACKGROUND if style == "light" else BACKGROUNDS[spec.background], np.uint8)
    ys = np.arange(h, dtype=np.float32) + 0.5
    xs = np.arange(w, dtype=np.float32) + 0.5
    for obj in reversed(spec.objects):  # objects[0] ends on top
        cx, cy, r = _centres(obj, times, h, w)
        colour = np.array(COLOURS[obj.colour], np.uint8)
        for s in range(0, frames, 256):  # bounded temporaries for long or large clips
            dx = xs[None, None, :] - cx[s : s + 256, None, None].astype(np.float32)  # (t, 1, W)
            dy = ys[None, :, None] - cy[s : s + 256, None, None].astype(np.float32)  # (t, H, 1)
            if obj.shape == "circle":
                mask = dx * dx + dy * dy <= r * r
            elif obj.shape == "square":
                mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
            else:  # isosceles triangle, apex up: half-width grows from 0 at the top to r at the base
                mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
            out[s : s + 256][mask] = colour
    return out


# ----------------------------------------------------------------------------------------------------
# captions

_SHAPE_WORDS = {
    "circle": ("circle", "circle", "disc", "ball"),
    "square": ("square", "square", "box", "block"),
    "triangle": ("triangle",),
}
_WHERE = {"left": "the left", "right": "the right", "up": "the top", "down": "the bottom"}
_WARD = {"left": "leftward", "right": "rightward", "up": "upward", "down": "downward"}
_SINGLE = (
    "moving {adv}",
    "moves {adv}",
    "heading {adv}",
    "moving {ward}",
    "drifting toward {where}",
    "bounces toward {where}",
    "moving to {where}",
    "travelling {ward}",
    "slides {adv}",
)
_DIAGONAL = (
    "moving {v} and to the {h}",
    "heading toward the {vw} {h}",
    "bounces toward the {vw} {h} corner",
    "moving diagonally {v} and {h}",
    "drifting {v} and to the {h}",
    "travelling {v}-{h}",
)
# the object and its motion always come first, so a text encoder that truncates long captions keeps them
_SENTENCES = (
    "{obj} {motion}",
    "{obj} {motion}",
    "{obj} {motion} on a {bg} background",
    "{obj} {motion}, bouncing off the walls",
)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _motion_phrase(motion: str, rng: np.random.Generator) -> str:
    if "-" in motion:
        v, h = motion.split("-")
        return _pick(rng, _DIAGONAL).format(v=v, h=h, vw=_WHERE[v][4:])
    return _pick(rng, _SINGLE).format(adv=motion, ward=_WARD[motion], where=_WHERE[motion])


def caption(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """A templated caption naming every object, its colour, shape, (sometimes) size and initial direction.

    Two-object captions skip the background and the bouncing remark to stay short.
    """
    parts = []
    for i, o in enumerate(spec.objects):
        size = f"{o.size} " if rng.random() < 0.5 else ""
        article = "one" if i == 0 and rng.random() < 0.2 else "an" if (size or o.colour)[0] in "aeiou" else "a"
        obj = f"{article} {size}{o.colour} {_pick(rng, _SHAPE_WORDS[o.shape])}"
        parts.append((obj, _motion_phrase(o.motion, rng)))
    if len(parts) == 2:
        return " ".join(parts[0]) + _pick(rng, (" and ", ", and ", " while ")) + " ".join(parts[1])
    obj, motion = parts[0]
    return _pick(rng, _SENTENCES).format(obj=obj, motion=motion, bg=spec.background)


# ----------------------------------------------------------------------------------------------------
# parsing prompts (for the evaluator)


class Query(NamedTuple):
    colour: str | None
    shape: str | None
    direction: str | None  # a key of MOTIONS
    size: str | None


_SHAPE_LOOKUP = {w: s for s, words in _SHAPE_WORDS.items() for w in words} | {
    "circles": "circle",
    "balls": "circle",
    "disk": "circle",
    "squares": "square",
    "cube": "square",
    "triangles": "triangle",
}
_DIR_WORDS = {
    "up": ("up", "upward", "upwards", "top", "rises", "rising", "rise", "north", "upper"),
    "down": ("down", "downward", "downwards", "bottom", "falls", "falling", "fall", "south", "lower"),
    "left": ("left", "leftward", "leftwards", "west"),
    "right": ("right", "rightward", "rightwards", "east"),
}
_DIR_LOOKUP = {w: d for d, words in _DIR_WORDS.items() for w in words}
_SIZE_LOOKUP = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large", "huge": "large"}


def vocabulary() -> list[str]:
    """Every word of the caption language (all template words, colours, backgrounds, sizes, shape and direction
    words, the parser's synonyms and the commas), sorted: the vocabulary of the tiny word-level T5."""
    phrases = [*_SINGLE, *_DIAGONAL, *_SENTENCES, *_WHERE.values(), *_WARD.values(), "one an a and while ,"]
    phrases += [*COLOURS, *BACKGROUNDS, *MOTIONS, *SIZES, *_SIZE_LOOKUP, *_SHAPE_LOOKUP, *_DIR_LOOKUP]
    words = {w for p in phrases for w in split_words(re.sub(r"\{\w+\}", " ", p))}
    return sorted(words)


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, the unit of the word-level tokenizer ("up-left" -> up - left)."""
    return re.findall(r"[a-z0-9]+|[^a-z0-9\s]", text.lower())


def _direction(words: list[str]) -> str | None:
    found = {_DIR_LOOKUP[w] for w in words if w in _DIR_LOOKUP}
    v = [d for d in ("up", "down") if d in found]
    h = [d for d in ("left", "right") if d in found]
    if len(v) > 1 or len(h) > 1:
        return None
    if v and h:
        return f"{v[0]}-{h[0]}"
    return (v or h or [None])[0]


def parse_objects(prompt: str) -> list[Query]:
    """Every object a prompt describes, in order; fields it does not state are None.

    Clauses start at each palette colour word; words before a colour ("small", "big") size the object that
    colour begins. Background names are not palette colours, so "on a grey background" is ignored.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    starts = [i for i, w in enumerate(words) if w in COLOURS]
    if not starts:
        return [Query(None, _first(words, _SHAPE_LOOKUP), _direction(words), _first(words, _SIZE_LOOKUP))]
    out = []
    for k, s in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(words)
        clause = words[s:end]
        out.append(
            Query(
                colour=words[s],
                shape=_first(clause, _SHAPE_LOOKUP),
                direction=_direction(clause),
                size=_first(words[max(0, s - 2) : s], _SIZE_LOOKUP),
            )
        )
    return out


def _first(words: list[str], lookup: dict[str, str]) -> str | None:
    for w in words:
        if w in lookup:
            return lookup[w]
    return None


def parse_prompt(prompt: str) -> Query:
    """The first (main) object of a prompt -> Query(colour, shape, direction, size); unknown fields None."""
    return parse_objects(prompt)[0]


# ----------------------------------------------------------------------------------------------------
# writing a dataset to disk


def generate(
    out: str | Path,
    num: int,
    seconds: float | None,
    fps: float,
    size: int,
    seed: int,
    split: str = "train",
    frames: int | None = None,
    progress: bool = True,
) -> Path:
    """Write `num` clips as mp4 plus `manifest.jsonl`; resumable (finished mp4 files are kept). -> manifest path.

    Clip length: `frames` if given, else round(seconds * fps). Training windows are 1 + 4k frames (17 by
    default), so a clip must hold at least that many: 2 s at 8 fps is 16 frames, one short of 17.
    """
    from tqdm import tqdm

    if frames is None:
        if seconds is None:
            raise DataError("give --seconds or --frames")
        frames = int(round(seconds * fps))
    if num < 1 or frames < 1 or fps <= 0:
        raise DataError("--num, --seconds (or --frames) and --fps must be positive")
    if size < 16 or size % 2:
        raise DataError(f"--size must be an even number of pixels >= 16, got {size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(frames=frames, fps=fps, size=size, seed=seed, split=split)
    settings_path = out / "shapes.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old != settings:
            raise DataError(f"'{out}' already holds clips made with {old}; use another --out for {settings}")
    else:
        _atomic_write(settings_path, json.dumps(settings) + "\n")
    lines = []
    for i in tqdm(range(num), desc=f"shapes {split}", unit="clip", disable=not progress):
        spec, text = make_example(seed, i, split)
        name = f"{split}_{i:06d}.mp4"
        if not (out / name).exists():
            write_video(out / name, render_clip(spec, fps=fps, size=size, frames=frames), fps)
        lines.append(
            json.dumps(
                dict(
                    path=name,
                    start=0.0,
                    end=frames / fps,
                    fps=fps,
                    w=size,
                    h=size,
                    frames=frames,
                    caption=text,
                    split=split,
                    seed=seed,
                    index=i,
                    **spec.to_dict(),
                )
            )
        )
    manifest = out / "manifest.jsonl"
    _atomic_write(manifest, "\n".join(lines) + "\n")
    return manifest


def _atomic_write(path: Path, text: str) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
