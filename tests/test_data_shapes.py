import json
import time

import numpy as np
import pytest

from videodit.data.cli import main as data_main
from videodit.data.shapes import (
    HELD_OUT,
    MOTIONS,
    NO_BOUNCE_SECONDS,
    ShapeSpec,
    _centres,
    caption,
    make_example,
    parse_objects,
    parse_prompt,
    render_clip,
    sample_spec,
)
from videodit.video_io import DataError, probe


def test_deterministic_for_a_seed():
    a = [make_example(7, i) for i in range(20)]
    b = [make_example(7, i) for i in reversed(range(20))][::-1]  # order does not matter
    assert a == b
    assert a != [make_example(8, i) for i in range(20)]
    spec = a[3][0]
    assert np.array_equal(render_clip(spec, 2, 8, 64), render_clip(spec, 2, 8, 64))
    assert ShapeSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_held_out_combinations_split():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3000):
        for o in sample_spec(rng, "train").objects:
            assert o.combo not in HELD_OUT
            seen.add(o.combo)
    assert len(seen) == 8 * 3 * 8 - len(HELD_OUT)  # every other combination does occur
    held = {o.combo for _ in range(300) for o in sample_spec(rng, "heldout").objects}
    assert held == set(HELD_OUT)


def test_captions_parse_back():
    for i in range(500):
        spec, text = make_example(1, i)
        queries = parse_objects(text)
        assert len(queries) == len(spec.objects), text
        for o, q in zip(spec.objects, queries):
            assert (q.colour, q.shape, q.direction) == (o.colour, o.shape, o.motion), text
            assert q.size in (None, o.size), text
    assert parse_prompt("a red circle moving to the left") == ("red", "circle", "left", None)
    assert parse_prompt("a small blue square bounces toward the top") == ("blue", "square", "up", "small")
    assert parse_prompt("A big Yellow ball heading toward the bottom right corner on a grey background") == (
        "yellow", "circle", "down-right", "large")  # fmt: skip
    assert parse_prompt("something else") == (None, None, None, None)


def test_captions_vary():
    rng = np.random.default_rng(0)
    spec = sample_spec(rng, num_objects=1)
    assert len({caption(spec, rng) for _ in range(50)}) > 10


def test_motion_bounces_and_starts_in_the_captioned_direction():
    rng = np.random.default_rng(3)
    times = np.arange(0, 30, 1 / 8)
    for _ in range(200):
        for o in sample_spec(rng).objects:
            cx, cy, r = _centres(o, times, 64, 64)
            assert cx.min() >= r - 1e-6 and cx.max() <= 64 - r + 1e-6  # always inside: it bounces
            assert cy.min() >= r - 1e-6 and cy.max() <= 64 - r + 1e-6
            first = times <= NO_BOUNCE_SECONDS
            ux, uy = MOTIONS[o.motion]
            for c, u in ((cx[first], ux), (cy[first], uy)):
                steps = np.diff(c)
                assert np.all(np.sign(np.round(steps, 9)) == np.sign(u))  # no bounce in the first second
            later = np.abs(np.diff(cx)), np.abs(np.diff(cy))
            assert later[0].max() <= abs(ux) * o.speed * 64 / 8 + 1e-6  # bounces keep |v| per axis
            assert later[1].max() <= abs(uy) * o.speed * 64 / 8 + 1e-6


def test_render_shapes_and_speed():
    spec, _ = make_example(0, 5)
    v = render_clip(spec, seconds=2, fps=8, size=(48, 64))
    assert v.shape == (16, 48, 64, 3) and v.dtype == np.uint8
    t0 = time.perf_counter()
    long = render_clip(spec, seconds=60, fps=8, size=64)
    assert long.shape == (480, 64, 64, 3)
    assert time.perf_counter() - t0 < 2.0  # a minute of video is cheap (~0.05 s here)


def test_shapes_cli_writes_clips_and_manifest(tmp_path, capsys):
    out = tmp_path / "shapes"
    args = ["shapes", "--out", str(out), "--num", "3", "--frames", "9", "--size", "32", "--seed", "2"]
    assert data_main(args) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for i, r in enumerate(rows):
        spec, text = make_example(2, i)
        assert r["caption"] == text and ShapeSpec.from_dict(r) == spec
        assert (r["start"], r["end"], r["fps"], r["w"], r["h"], r["frames"]) == (0.0, 9 / 8, 8.0, 32, 32, 9)
        assert probe(out / r["path"])["frames"] == 9
    before = (out / "manifest.jsonl").read_bytes()
    assert data_main(args) == 0  # re-running is a no-op
    assert (out / "manifest.jsonl").read_bytes() == before
    assert data_main(["shapes", "--out", str(out), "--num", "3", "--frames", "13"]) == 1  # other settings
    assert "other --out" in capsys.readouterr().err
    assert data_main(["shapes", "--out", str(tmp_path / "h"), "--num", "4", "--split", "heldout", "--frames", "5",
                      "--size", "32"]) == 0  # fmt: skip
    held = [json.loads(line) for line in (tmp_path / "h" / "manifest.jsonl").read_text().splitlines()]
    assert all((o["colour"], o["shape"], o["motion"]) in HELD_OUT for r in held for o in r["objects"])


@pytest.mark.parametrize("bad", [["--num", "0"], ["--size", "15"]])
def test_shapes_cli_rejects_bad_arguments(tmp_path, bad, capsys):
    assert data_main(["shapes", "--out", str(tmp_path / "x"), *bad]) == 1
    assert "error" in capsys.readouterr().err


def test_styles_change_only_their_own_aspect():
    """render_clip styles for adapter experiments: light repaints the background only, slow and mild move the objects
    at SLOW_SPEED / MILD_SPEED times their speed along the same paths (frame k of slow = time 0.4 k / fps of plain)."""
    from videodit.data.shapes import (
        BACKGROUNDS,
        LIGHT_BACKGROUND,
        MILD_SPEED,
        SLOW_SPEED,
        STYLES,
        make_example,
        render_clip,
    )

    spec, _ = make_example(0, 3)
    plain = render_clip(spec, fps=10, size=32, frames=11)
    light = render_clip(spec, fps=10, size=32, frames=11, style="light")
    bg = (plain == np.array(BACKGROUNDS[spec.background], np.uint8)).all(-1)
    assert (light[bg] == np.array(LIGHT_BACKGROUND, np.uint8)).all() and (light[~bg] == plain[~bg]).all()
    slow = render_clip(spec, fps=10, size=32, frames=11, style="slow")
    assert SLOW_SPEED == 0.4 and np.array_equal(slow[5], plain[2]) and np.array_equal(slow[10], plain[4])
    assert not np.array_equal(slow[5], plain[5])
    with pytest.raises(DataError, match="style must be one of"):
        render_clip(spec, fps=10, size=32, frames=2, style="sepia")
    mild = render_clip(spec, fps=10, size=32, frames=21, style="mild")  # frame k of mild = time 0.55 k / fps of plain
    plain12 = render_clip(spec, fps=10, size=32, frames=12)
    assert MILD_SPEED == 0.55 and np.array_equal(mild[20], plain12[11]) and not np.array_equal(mild[20], plain12[10])
    assert STYLES == ("plain", "light", "slow", "mild")
