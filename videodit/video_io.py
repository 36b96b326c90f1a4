"""Reading and writing video files: decord first (fast random access), PyAV as the fallback; writing with PyAV.

Frames are always uint8 numpy arrays `(T, H, W, 3)` in RGB order. Times are in seconds; a frame `i` of a
video at `fps` is the one shown during `[i / fps, (i + 1) / fps)`, so resampling to another frame rate picks,
for each output time, the source frame on screen at that moment. Both backends select frames by that same
index rule, so they return the same frames (up to the colour conversion of each library).

`VideoWriter` appends frames incrementally (the sampler streams a minute of video chunk by chunk) into a
temporary file in the destination folder and renames it into place only when it is closed successfully, so
an error or a crash never leaves a partial mp4 behind.
"""

from __future__ import annotations

import glob
import math
import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


class DataError(RuntimeError):
    """A problem with the user's data or arguments; the CLIs print the message and exit non-zero."""


class VideoError(DataError):
    """A video that cannot be opened, decoded or written."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def temp_path_for(path: str | Path) -> str:
    """A new empty temporary file next to `path` (same folder, so a rename into place is atomic), with the
    permissions a normal file would get (mkstemp's are 0600). Its name carries this process's id, so temporary
    files of `path` left by a killed process (one no longer running) are removed here first."""
    path = Path(path)
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = old.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            old.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    share(tmp)
    return tmp


def share(path: str | Path, folder: bool = False) -> None:
    """Give `path` the mode an ordinary file (0666) or folder (0777) gets under the umask: mkstemp, mkdtemp and
    safetensors make 0600 / 0700, but what the project writes is meant to be read by the group and others."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)


def _have_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------
# probing


def _probe_decord(path: str) -> dict:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    frames = len(vr)
    fps = float(vr.get_avg_fps())
    if frames < 1 or not fps > 0:
        raise VideoError(f"'{path}': no decodable video frames")
    h, w = vr[0].shape[:2]
    return dict(fps=fps, frames=frames, w=int(w), h=int(h), duration=frames / fps)


def _probe_av(path: str) -> dict:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoError(f"'{path}' has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise VideoError(f"'{path}': the video stream has no frame rate")
        fps = float(rate)
        frames = stream.frames
        if not frames:  # some containers (webm, avi) do not store a count: count packets that carry a frame
            frames = sum(1 for p in container.demux(stream) if p.size > 0)
        w, h = stream.codec_context.width, stream.codec_context.height
    if frames < 1 or not w or not h:
        raise VideoError(f"'{path}': no decodable video frames")
    return dict(fps=fps, frames=int(frames), w=int(w), h=int(h), duration=frames / fps)


def probe(path: str | Path, backend: str = "auto") -> dict:
    """-> dict(fps, frames, w, h, duration). Raises VideoError when neither backend can read the file."""
    return _with_backends(str(path), backend, _probe_decord, _probe_av)


def _with_backends(path: str, backend: str, with_decord, with_av):
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got '{backend}'")
    if not os.path.isfile(path):
        raise VideoError(f"video file '{path}' not found")
    if backend == "decord" and not _have_decord():
        raise VideoError("backend 'decord' asked for, but decord is not installed (pip install decord)")
    errors = []
    if backend in ("auto", "decord") and _have_decord():
        try:
            return with_decord(path)
        except VideoError as e:
            errors.append(str(e))
        except Exception as e:  # decord raises bare RuntimeError / DECORDError for damaged files
            errors.append(f"decord: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
        if backend == "decord":
            raise VideoError(f"cannot read '{path}' with decord: {errors[-1]}")
    try:
        return with_av(path)
    except VideoError:
        raise
    except Exception as e:  # av.error.FFmpegError and friends
        errors.append(f"pyav: {e}")
    raise VideoError(f"cannot read '{path}' (corrupt or unsupported?): " + "; ".join(errors))


# ----------------------------------------------------------------------------------------------------
# reading


def frame_indices(
    num_frames: int, src_fps: float, start: float | None = None, end: float | None = None, fps: float | None = None
) -> np.ndarray:
    """Source frame indices for the span [start, end) seconds, resampled to `fps` (None keeps every frame)."""
    eps = 1e-6
    duration = num_frames / src_fps
    start = 0.0 if start is None else max(0.0, float(start))
    end = duration if end is None else min(duration, float(end))
    if end <= start:
        return np.zeros(0, dtype=np.int64)
    if fps is None:
        first, stop = math.ceil(start * src_fps - eps), math.ceil(end * src_fps - eps)
        idx = np.arange(first, stop, dtype=np.int64)
    else:
        n = math.ceil((end - start) * fps - eps)
        times = start + np.arange(n) / fps
        idx = np.floor(times * src_fps + eps).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def _read_decord(path: str, start, end, fps) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    idx = frame_indices(len(vr), float(vr.get_avg_fps()), start, end, fps)
    if len(idx) == 0:
        h, w = vr[0].shape[:2]
        return np.zeros((0, h, w, 3), np.uint8)
    uniq, inverse = np.unique(idx, return_inverse=True)
    frames = vr.get_batch(uniq.tolist()).asnumpy()
    return np.ascontiguousarray(frames[inverse])


def _decode_av(path: str, first: int, last: int, size: tuple[int, int] | None = None) -> Iterator:
    """Yield (index, rgb uint8 (H, W, 3)) for source frames first..last, seeking near `first` when it helps."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate)
        tb = stream.time_base
        t0 = stream.start_time or 0
        seeked = False
        if first > 0 and tb:
            container.seek(t0 + int(first / rate / tb), stream=stream, backward=True, any_frame=False)
            seeked = True
        counter = -1
        for frame in container.decode(stream):
            counter += 1
            if frame.pts is not None and tb:
                i = round(float((frame.pts - t0) * tb) * rate)
            else:
                i = counter
            if seeked and counter == 0 and i > first:  # the seek overshot: decode from the beginning instead
                yield from _decode_av_from_start(path, first, last, size)
                return
            if i < first:
                continue
            if i > last:
                break
            if size is None:
                yield i, frame.to_ndarray(format="rgb24")
            else:
                yield i, frame.reformat(width=size[1], height=size[0], format="rgb24").to_ndarray()


def _decode_av_from_start(path: str, first: int, last: int, size) -> Iterator:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i > last:
                break
            if i >= first:
                f = frame if size is None else frame.reformat(width=size[1], height=size[0])
                yield i, f.to_ndarray(format="rgb24")


def _read_av(path: str, start, end, fps) -> np.ndarray:
    info = _probe_av(path)
    idx = frame_indices(info["frames"], info["fps"], start, end, fps)
    if len(idx) == 0:
        return np.zeros((0, info["h"], info["w"], 3), np.uint8)
    wanted = set(idx.tolist())
    got: dict[int, np.ndarray] = {}
    for i, arr in _decode_av(path, int(idx.min()), int(idx.max())):
        if i in wanted:
            got[i] = arr
    # a stream may hold fewer frames than its header says: repeat the last frame that exists
    missing = [i for i in wanted if i not in got]
    if missing:
        if not got:
            raise VideoError(f"'{path}': could not decode frames {min(missing)}..{max(missing)}")
        have = sorted(got)
        for i in missing:
            earlier = [k for k in have if k <= i]
            got[i] = got[earlier[-1] if earlier else have[0]]
    return np.stack([got[i] for i in idx.tolist()])


def read_video(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    fps: float | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Frames of [start, end) seconds (whole video by default), resampled to `fps` -> uint8 (T, H, W, 3)."""
    return _with_backends(
        str(path), backend, lambda p: _read_decord(p, start, end, fps), lambda p: _read_av(p, start, end, fps)
    )


def iter_frames(
    path: str | Path, size: tuple[int, int] | None = None, chunk: int = 64, backend: str = "auto"
) -> Iterator[np.ndarray]:
    """Every frame of a video in chunks of uint8 (t, H, W, 3), resized to `size` = (H, W) if given.

    Memory stays flat however long the video is (used by `prep` to detect scene changes).
    """
    path = str(path)
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got '{backend}'")
    if backend != "pyav" and _have_decord():
        import decord

        yielded = False
        try:
            kw = dict(width=size[1], height=size[0]) if size else {}
            vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **kw)
            for s in range(0, len(vr), chunk):
                batch = vr.get_batch(list(range(s, min(len(vr), s + chunk)))).asnumpy()
                yielded = True
                yield batch
            return
        except Exception as e:  # decord fails on some files (and some frame widths) that PyAV reads
            if yielded:
                raise VideoError(f"decord failed part-way through '{path}': {e}") from e
            if backend == "decord":
                raise VideoError(f"cannot read '{path}' with decord: {e}") from e
    try:
        buf = []
        for _, arr in _decode_av(path, 0, 2**62, size):
            buf.append(arr)
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"cannot decode '{path}' (corrupt or unsupported?): {e}") from e


def resize_crop(video, size):
    """torch (3, T, H, W) in [-1, 1] -> (3, T, h, w) for `size` = h = w or (h, w): scale (antialiased) until the
    frame covers (h, w), then centre-crop; the one fitting rule for training clips and sampling inputs alike."""
    import torch.nn.functional as F

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    _, _, H, W = video.shape
    if (H, W) != (h, w):
        scale = max(h / H, w / W)
        nh, nw = max(h, round(H * scale)), max(w, round(W * scale))
        frames = video.permute(1, 0, 2, 3)  # (T, 3, H, W): frames as a batch of images
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - h) // 2, (nw - w) // 2
        video = frames[:, :, top : top + h, left : left + w].permute(1, 0, 2, 3)
    return video.clamp(-1, 1).contiguous()


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 frames (T, H, W, 3) -> (T, height, width, 3) by resize_crop (unchanged when already that size)."""
    import torch

    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1  # (3, T, H, W), a copy
    y = resize_crop(x, (height, width))
    return ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()


def resampled_frames(path: str | Path, fps: float, width: int, height: int, chunk: int = 32) -> Iterator[np.ndarray]:
    """Every frame of a video resampled to `fps` (nearest frame in time) and fitted to (height, width), in uint8
    chunks (t, height, width, 3); memory stays flat however long the video is."""
    native = probe(path)["fps"]
    k = 0  # the next output frame, at time k / fps
    j = 0  # the next input frame, at time j / native
    buf: list[np.ndarray] = []
    for batch in iter_frames(path, chunk=chunk):
        for arr in batch:
            while round(k * native / fps) == j:
                buf.append(arr)
                k += 1
            j += 1
        if len(buf) >= chunk:
            yield fit_frames(np.stack(buf), width, height)
            buf = []
    if buf:
        yield fit_frames(np.stack(buf), width, height)


# ----------------------------------------------------------------------------------------------------
# writing


def to_uint8(video) -> np.ndarray:
    """A float video in [-1, 1], (3, T, H, W) or (T, H, W, 3), numpy or torch -> uint8 (T, H, W, 3)."""
    if hasattr(video, "detach"):
        video = video.detach().float().cpu().numpy()
    video = np.asarray(video)
    if video.ndim == 4 and video.shape[0] == 3 and video.shape[-1] != 3:
        video = video.transpose(1, 2, 3, 0)  # (3, T, H, W) -> (T, H, W, 3)
    if video.dtype == np.uint8:
        return video
    return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


class VideoWriter:
    """Append RGB frames to an H.264 (yuv420p) file; the file appears at `path` only on a successful close.

        with VideoWriter("out.mp4", fps=8) as w:
            for chunk in chunks:          # uint8 (t, H, W, 3) or (H, W, 3)
                w.write(chunk)

    An exception inside the `with` block (or `abort()`) deletes the temporary file and leaves `path` as it was.
    `crf` 0..51: lower is closer to the input (12 keeps the procedural shapes within a few levels).
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 12, codec: str = "libx264", preset: str = "medium"):
        self.path = Path(path)
        fmt = _CONTAINERS.get(self.path.suffix.lower())
        if fmt is None:
            raise VideoError(f"cannot write '{self.path}': use one of {', '.join(_CONTAINERS)} as the extension")
        if not fps > 0:
            raise VideoError(f"fps must be positive, got {fps}")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.crf, self.codec, self.preset, self.format = crf, codec, preset, fmt
        self.frames_written = 0
        self._container = None
        self._stream = None
        self._tmp: str | None = None
        self._closed = False

    def _open(self, h: int, w: int) -> None:
        import av

        if h % 2 or w % 2:
            raise VideoError(f"H.264 yuv420p needs even frame sizes, got {w}x{h}: crop or resize first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path_for(self.path)
        self._container = av.open(self._tmp, mode="w", format=self.format)
        self._stream = self._container.add_stream(self.codec, rate=self.fps)
        self._stream.width, self._stream.height = w, h
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.crf), "preset": self.preset}

    def write(self, frames) -> None:
        """Append one frame (H, W, 3) or several (t, H, W, 3); uint8 RGB (numpy or torch)."""
        import av

        if self._closed:
            raise VideoError(f"VideoWriter for '{self.path}' is already closed")
        if hasattr(frames, "detach"):
            frames = frames.detach().cpu().numpy()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise VideoError(
                f"VideoWriter.write takes uint8 RGB frames (t, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
                " (convert float videos with videodit.video_io.to_uint8)"
            )
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
        elif (frames.shape[1], frames.shape[2]) != (self._stream.height, self._stream.width):
            raise VideoError(
                f"frame size changed from {self._stream.width}x{self._stream.height} to "
                f"{frames.shape[2]}x{frames.shape[1]} while writing '{self.path}'"
            )
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = 1 / self.fps
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file into place; returns the final path."""
        if self._closed:
            return self.path
        if self._container is None:
            self._closed = True
            raise VideoError(f"no frames were written to '{self.path}'")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Discard everything written so far; `path` is left untouched."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; a failing flush does not matter
                pass
            self._container = None
        if self._tmp and os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | Path, frames, fps: float, crf: int = 12) -> Path:
    """Write uint8 frames (T, H, W, 3) to `path` atomically."""
    with VideoWriter(path, fps=fps, crf=crf) as w:
        w.write(frames)
    return Path(path)
