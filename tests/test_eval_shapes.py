import json

import numpy as np
import pytest

from videodit.data.shapes import BACKGROUNDS, COLOURS, generate, make_example, render_clip
from videodit.eval.shapes import controls, evaluate_video, evaluate_videos, largest_component, seam_ratio
from videodit.eval.shapes import main as eval_main


@pytest.fixture(scope="module")
def control_scores():
    # 20 clips of 2 s at 8 fps, through the mp4 round trip
    return controls(num=20, seconds=2, fps=8, size=64, seed=3)


def test_ground_truth_scores_at_least_99(control_scores):
    gt = control_scores["ground truth"]
    for key in ("colour", "shape", "direction", "axis", "size"):
        assert gt[key] >= 99.0, (key, gt)
    assert gt["persistence"] >= 95.0 and gt["dynamic"] == 100.0
    assert abs(gt["seam_ratio"] - 1.0) < 0.1


def test_shuffled_captions_score_about_chance(control_scores):
    sh = control_scores["shuffled captions"]
    assert sh["colour"] < 40 and sh["direction"] < 40 and sh["shape"] < 70 and sh["persistence"] < 40


def test_still_first_frame_does_not_move(control_scores):
    st = control_scores["still first frame"]
    assert st["direction"] == 0 and st["axis"] == 0 and st["dynamic"] == 0
    assert st["colour"] >= 99 and st["seam_ratio"] == pytest.approx(1.0)


def test_long_video_is_consistent_and_bounces():
    # 30 s: many bounces; the axis of motion is kept, so no drift on the ground truth
    results = [evaluate_video(render_clip(make_example(5, i)[0], 30, 8, 64), make_example(5, i)[1]) for i in range(3)]
    for r in results:
        assert r["colour"] == r["shape"] == r["direction"] == r["axis"] == 1.0, r
        assert all(abs(d) < 0.05 for d in r["drift"].values()), r["drift"]


def test_drift_and_seams_are_measured():
    spec, text = make_example(0, 0)
    video = render_clip(spec, 6, 8, 64)
    fading = video.copy()
    fading[-10:] = np.array(BACKGROUNDS[spec.background], np.uint8)  # the object vanishes at the end
    r = evaluate_video(fading, text)
    assert r["drift"]["persistence"] < -0.8 and r["drift"]["colour"] < -0.8
    jumpy = video.copy()
    for b in range(8, len(video), 8):  # a brightness jump at every chunk boundary
        jumpy[b:] = np.clip(jumpy[b:].astype(int) + (20 if (b // 8) % 2 else -20), 0, 255).astype(np.uint8)
    assert seam_ratio(jumpy, chunk_frames=8) > 3 * seam_ratio(video, chunk_frames=8)
    assert seam_ratio(video, chunk_frames=8, seam_offset=5) == pytest.approx(seam_ratio(video, 8), abs=0.3)


def test_largest_component():
    m = np.zeros((2, 10, 10), bool)
    m[0, 0:2, 0:2] = True  # 4 pixels
    m[0, 5:8, 5:8] = True  # 9 pixels
    m[1, 3, 3] = m[1, 4, 4] = True  # diagonal neighbours: one component (8-connected)
    out = largest_component(m)
    assert out[0].sum() == 9 and out[0, 6, 6] and not out[0, 0, 0]
    assert out[1].sum() == 2


def test_wrong_attributes_are_caught():
    spec, _ = make_example(0, 4)
    o = spec.objects[0]
    video = render_clip(spec, 2, 8, 64)
    other_colour = next(c for c in COLOURS if c not in {x.colour for x in spec.objects})
    other_shape = next(s for s in ("circle", "square", "triangle") if s != o.shape)
    r = evaluate_video(video, f"a {other_colour} {o.shape} moving {o.motion}")
    assert r["colour"] == 0 and r["shape"] == 1  # shape still judged on the object that is there
    r = evaluate_video(video, f"a {o.colour} {other_shape} moving {o.motion}")
    assert r["colour"] == 1 and r["shape"] == 0 and r["persistence"] == 0


def test_eval_cli_on_a_manifest(tmp_path, capsys):
    generate(tmp_path / "d", num=4, seconds=None, fps=8, size=64, seed=1, frames=17, progress=False)
    out = tmp_path / "scores.json"
    assert eval_main(["shapes", "--prompts", str(tmp_path / "d" / "manifest.jsonl"), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "colour acc %" in table and "videos" in table
    res = json.loads(out.read_text())
    assert res["columns"]["videos"]["colour"] == 100.0 and len(res["results"]["per_video"]) == 4
    videos = sorted(str(p) for p in (tmp_path / "d").glob("*.mp4"))
    prompts = [make_example(1, i)[1] for i in range(4)]
    assert evaluate_videos(videos, prompts)["aggregate"]["direction"] == 100.0


def test_eval_cli_errors(tmp_path, capsys):
    assert eval_main(["shapes"]) == 1
    assert "nothing to evaluate" in capsys.readouterr().err
    assert eval_main(["shapes", str(tmp_path / "missing.mp4"), "--prompts", "a red circle moving up"]) == 1
    assert "not found" in capsys.readouterr().err
    assert eval_main(["shapes", str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), "--prompts", "x"]) == 1
    assert "one prompt per video" in capsys.readouterr().err
