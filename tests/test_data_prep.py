import json
import os

import numpy as np
import pytest

from videodit.data import prep as prep_mod
from videodit.data.cli import main as data_main
from videodit.data.prep import prep, read_manifest
from videodit.video_io import write_video


def moving(t, size=64, bg=20, colour=(230, 40, 40), speed=3):
    frames = np.full((t, size, size, 3), bg, np.uint8)
    for i in range(t):
        x = (i * speed) % (size - 16)
        frames[i, 20:36, x : x + 16] = colour
    return frames


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    d = root / "raw"
    (d / "sub").mkdir(parents=True)
    write_video(d / "good.mp4", moving(32), 8)
    (d / "good.txt").write_text("a red square moving right\n")
    write_video(d / "cut.mp4", np.concatenate([moving(24), moving(24, bg=200, colour=(40, 90, 255))]), 8)
    write_video(d / "short.mp4", moving(8), 8)  # 1 s: shorter than 17 frames at 8 fps
    write_video(d / "tiny.mp4", moving(32, size=32), 8)  # smaller than --min-size 64
    write_video(d / "static.mp4", np.repeat(moving(1), 32, 0), 8)
    write_video(d / "sub" / "nested.mp4", moving(40, speed=2), 8)
    (d / "corrupt.mp4").write_bytes(os.urandom(4000))
    (root / "captions.csv").write_text('path,caption\nsub/nested.mp4,"a nested clip, from the csv"\n')
    return root


def run(root, name, **kw):
    return prep(root / "raw", root / name, captions=root / "captions.csv", progress=False, **kw)


def test_prep_reports_and_skips_bad_files(raw):
    report = run(raw, "a.jsonl")
    assert [src for src, _ in report.errors] == ["corrupt.mp4"]
    assert report.filtered == {"clips too short": 1, "videos too small": 1, "clips static": 1}
    rows = read_manifest(raw / "a.jsonl")
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert sorted(by_source) == ["cut.mp4", "good.mp4", "sub/nested.mp4"]
    assert [(r["start"], r["end"]) for r in by_source["cut.mp4"]] == [(0.0, 3.0), (3.0, 6.0)]  # scene cut at 3 s
    assert by_source["good.mp4"][0]["caption"] == "a red square moving right"
    assert by_source["sub/nested.mp4"][0]["caption"] == "a nested clip, from the csv"
    assert by_source["cut.mp4"][0]["caption"] == "" and report.uncaptioned == 2
    g = by_source["good.mp4"][0]
    assert (g["fps"], g["w"], g["h"], g["frames"]) == (8.0, 64, 64, 32)
    assert os.path.isfile(g["path"])
    assert "unreadable videos skipped (1)" in report.summary()


def test_prep_is_idempotent(raw):
    run(raw, "b.jsonl")
    before = (raw / "b.jsonl").read_bytes()
    again = run(raw, "b.jsonl")
    assert again.processed == 0 and again.done_before == 7 and again.clips_total == 4
    assert len(again.errors) == 1  # still reported, not retried while the file is unchanged
    assert (raw / "b.jsonl").read_bytes() == before


def test_fixed_length_clips(raw):
    run(raw, "c.jsonl", clip_seconds=2.5, scene_threshold=0)
    spans = [(r["source"], r["start"], r["end"]) for r in read_manifest(raw / "c.jsonl")]
    assert ("cut.mp4", 0.0, 2.5) in spans and ("cut.mp4", 2.5, 5.0) in spans
    assert not any(s == "cut.mp4" and a == 5.0 for s, a, _ in spans)  # 1 s remainder: too short


def test_interrupted_prep_resumes_to_the_same_manifest(raw, monkeypatch):
    run(raw, "full.jsonl")
    real = prep_mod._append
    calls = {"n": 0}

    def crashing_append(path, rows):
        calls["n"] += 1
        if calls["n"] == 5:  # the third video's clip lines: write half of them, then die
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            with open(path, "ab") as f:
                f.write(data[: len(data) // 2])
            raise KeyboardInterrupt
        real(path, rows)

    monkeypatch.setattr(prep_mod, "_append", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        run(raw, "resumed.jsonl")
    monkeypatch.setattr(prep_mod, "_append", real)
    assert not (raw / "resumed.jsonl").read_text().endswith("\n")  # a half line on disk
    report = run(raw, "resumed.jsonl")
    assert report.done_before == 2 and report.processed == 5
    assert (raw / "resumed.jsonl").read_bytes() == (raw / "full.jsonl").read_bytes()


def test_prep_cli(raw, capsys):
    assert data_main(["prep", str(raw / "raw"), "--out", str(raw / "cli.jsonl"), "--captions",
                      str(raw / "captions.csv")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "4 in the manifest" in out and "corrupt.mp4" in out
    assert data_main(["prep", str(raw / "nope"), "--out", str(raw / "x.jsonl")]) == 1
    assert "not found" in capsys.readouterr().err
    (raw / "bad.csv").write_text("file_name,words\nx,y\n")
    assert data_main(["prep", str(raw / "raw"), "--out", str(raw / "y.jsonl"), "--captions",
                      str(raw / "bad.csv")]) == 1  # fmt: skip
    assert "caption column" in capsys.readouterr().err
