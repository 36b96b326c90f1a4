import os

import numpy as np
import pytest

from videodit import video_io
from videodit.video_io import VideoError, VideoWriter, iter_frames, probe, read_video, to_uint8, write_video

HAVE_DECORD = video_io._have_decord()


def moving_frames(t=24, h=32, w=64):
    frames = np.full((t, h, w, 3), 20, np.uint8)
    for i in range(t):
        frames[i, 8:20, i : i + 12] = (230, 40, 40)
        frames[i, 22:30, 40 - i // 2 : 46 - i // 2] = (40, 90, 255)
    return frames


def test_write_read_round_trip(tmp_path):
    frames = moving_frames()
    path = write_video(tmp_path / "a.mp4", frames, fps=8)
    info = probe(path)
    assert (info["frames"], info["w"], info["h"], info["fps"], info["duration"]) == (24, 64, 32, 8.0, 3.0)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 3  # crf 12: close to lossless


@pytest.mark.skipif(not HAVE_DECORD, reason="decord not installed")
@pytest.mark.parametrize("kw", [{}, dict(start=1.0, end=2.5), dict(fps=4), dict(start=0.3, end=2.0, fps=24)])
def test_decord_and_pyav_read_the_same_frames(tmp_path, kw):
    path = write_video(tmp_path / "a.mp4", moving_frames(), fps=8)
    a = read_video(path, backend="decord", **kw)
    b = read_video(path, backend="pyav", **kw)
    assert a.shape == b.shape and len(a) > 0
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert probe(path, backend="decord") == probe(path, backend="pyav")


def test_auto_falls_back_to_pyav(tmp_path):
    # decord 0.6 cannot copy frames of some widths (48 here); "auto" must still read them
    frames = moving_frames(w=48)
    path = write_video(tmp_path / "w48.mp4", frames, fps=8)
    back = read_video(path)
    assert back.shape == frames.shape and np.abs(back.astype(int) - frames.astype(int)).mean() < 3
    assert np.concatenate(list(iter_frames(path, chunk=7))).shape == frames.shape


def test_frame_selection_by_time(tmp_path):
    frames = np.zeros((16, 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(16) * 15)[:, None, None]  # frame i has red level 15 i
    path = write_video(tmp_path / "ramp.mp4", frames, fps=8)
    for backend in ("pyav", "decord") if HAVE_DECORD else ("pyav",):
        clip = read_video(path, start=0.5, end=1.5, backend=backend)  # frames 4..11
        assert len(clip) == 8
        assert np.allclose(clip[:, 8, 8, 0], np.arange(4, 12) * 15, atol=4)
        half = read_video(path, fps=4, backend=backend)  # every other frame
        assert np.allclose(half[:, 8, 8, 0], np.arange(0, 16, 2) * 15, atol=4)


def test_iter_frames_matches_read(tmp_path):
    path = write_video(tmp_path / "a.mp4", moving_frames(), fps=8)
    chunks = list(iter_frames(path, chunk=10, backend="pyav"))
    assert [len(c) for c in chunks] == [10, 10, 4]
    assert np.array_equal(np.concatenate(chunks), read_video(path, backend="pyav"))
    small = np.concatenate(list(iter_frames(path, size=(16, 32))))
    assert small.shape == (24, 16, 32, 3)


def test_writer_appends_chunks_and_is_atomic(tmp_path):
    frames = moving_frames()
    path = tmp_path / "out" / "chunks.mp4"
    with VideoWriter(path, fps=8) as w:
        for s in range(0, len(frames), 5):
            w.write(frames[s : s + 5])
            assert not path.exists()  # nothing at the final name until closed
        w.write(frames[0])  # a single (H, W, 3) frame
    assert probe(path)["frames"] == 25
    chunked = read_video(path).astype(int)
    whole = read_video(write_video(tmp_path / "whole.mp4", frames, 8)).astype(int)
    # the same encoder settings: the same picture as one write (x264 is not always bit-identical between
    # runs, so a few levels of slack), every frame in its place (nearest to its own source frame)
    assert np.abs(chunked[:24] - whole).mean() < 0.5 and np.abs(chunked[:24] - whole).max() <= 24
    dist = np.abs(chunked[:, None] - frames[None].astype(int)).mean((2, 3, 4))  # (25, 24)
    assert dist[:24].argmin(1).tolist() == list(range(24)) and dist[24].argmin() == 0

    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "failed.mp4", fps=8) as w:
            w.write(frames)
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["out", "whole.mp4"]  # no failed.mp4, no temporary file


def test_writer_errors(tmp_path):
    with pytest.raises(VideoError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), 8)
    with pytest.raises(VideoError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32), 8)
    with pytest.raises(VideoError, match="no frames"):
        VideoWriter(tmp_path / "empty.mp4", fps=8).close()
    assert not list(tmp_path.iterdir())
    video = np.linspace(-1, 1, 3 * 2 * 4 * 4).reshape(3, 2, 4, 4)
    assert to_uint8(video).shape == (2, 4, 4, 3) and to_uint8(video).max() == 255


def test_unreadable_files_raise_video_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(3000))
    with pytest.raises(VideoError, match="bad.mp4"):
        probe(bad)
    with pytest.raises(VideoError):
        read_video(bad)
    with pytest.raises(VideoError, match="not found"):
        read_video(tmp_path / "missing.mp4")
