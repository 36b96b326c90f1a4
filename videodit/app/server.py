"""videodit-app: type a prompt and watch the video while it is made (a Gradio page).

Generation goes chunk by chunk in constant memory (videodit.generate), so the page can do what a spinner-then-clip
demo cannot: show each chunk as soon as it is decoded, change the prompt of the chunks still to come, and stop
after the chunk in progress keeping a valid mp4 of what was made. Every value goes through Pipeline.request, the
check sample.py uses, and its message is the page's error; the page also shows the `python sample.py ...` line that
makes the same video. One generation runs at a time per process; other visitors wait in the queue.

    videodit-app                                  # http://127.0.0.1:7860 with the checkpoints in ./checkpoints
    videodit-app --checkpoint path/to/ckpt --port 8000
"""

from __future__ import annotations

import math
import queue
import shlex
import shutil
import sys
import tempfile
import threading
import time
import warnings
from argparse import ArgumentTypeError
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr
import numpy as np

from videodit.checkpoint import CheckpointError
from videodit.cli import ArgumentParser, parse_size
from videodit.config import ConfigError
from videodit.generate import GenerateError, Pipeline, Request, pick_device
from videodit.video_io import VideoWriter

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
FLAGS = {"steps": "--steps", "cfg_scale": "--cfg"}  # sample.py's names: messages match the command line shown
# While a run goes the player gets the frames made since its last update, once it has had the time to play that
# update: each frame once, in order, like a stream (replaying the whole video so far at every chunk would, on a
# device slower than real time, never reach the new frames). When generation outruns playback an update holds the
# newest PREVIEW_SECONDS only, so memory stays flat.
PREVIEW_SECONDS = 4.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class Run:
    """A generation in progress. The stop and prompt buttons reach it through the visitor's session; only the
    maker thread (App.make) touches `req`, between two chunks, so a changed prompt starts exactly where it says."""

    pipe: Pipeline
    req: Request
    checkpoint: Path
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_prompt: str | None = None  # asked for mid-run; becomes the prompt from the next chunk on
    made: int = 0  # frames of the new part made so far: the first frame of the next chunk


def label(key: str) -> str:
    """A sampling key as sample.py's flag."""
    return FLAGS.get(key, f"--sample.{key}")


def start_time(frame: int, fps: int) -> float:
    """The time (s) at which `frame` starts, as a float Pipeline.chunks reads back as that frame (at * fps <= frame):
    a prompt added there steers the chunk starting at `frame`, and sample.py --at with it does the same."""
    t = frame / fps
    while t * fps > frame:
        t = math.nextafter(t, 0.0)
    return t


def number(x: float) -> str:
    """Shortest text that reads back as exactly x ('0', '2.625')."""
    return f"{x:g}" if float(f"{x:g}") == x else repr(x)


def command(run: Run, seconds: float) -> str:
    """The sample.py line that makes the same video (of `seconds`, the prompts that started before it ends)."""
    req = run.req
    timeline = [(p, a) for p, a in zip(req.prompts, req.at) if a < seconds]
    args = ["python", "sample.py"]
    for p, a in timeline:
        args += ["--prompt", p] + (["--at", number(a)] if len(timeline) > 1 else [])
    if req.negative_prompt:
        args += ["--negative-prompt", req.negative_prompt]
    args += ["--seconds", number(seconds), "--size", f"{req.width}x{req.height}", "--seed", str(req.seed),
             "--steps", str(req.sample.steps), "--cfg", number(req.sample.cfg_scale)]
    args += [] if run.checkpoint.resolve() == CHECKPOINTS / "tiny" else ["--checkpoint", str(run.checkpoint)]
    args += ["--image", "YOUR_IMAGE.png"] if req.image is not None else []
    args += ["--video", "YOUR_CLIP.mp4"] + (["--keep-input"] if req.keep_input else []) if req.video else []
    return shlex.join(args + ["--out", "outputs/app.mp4"])


class App:
    """The page's functions, testable without a browser (tests/test_app.py drives them through gradio_client)."""

    def __init__(self, checkpoints: list[Path], device: str | None = None):
        self.checkpoints = {p.name if p.parent == CHECKPOINTS else str(p): p for p in checkpoints}
        self.device = pick_device(device)
        self.pipes: dict[str, Pipeline] = {}
        self.runs: dict[str, Run] = {}  # by session
        self.workdir = Path(tempfile.mkdtemp(prefix="videodit-app-"))

    def pipeline(self, name: str) -> Pipeline:
        """The checkpoint's pipeline; one is kept in memory (loading another frees it)."""
        if name not in self.checkpoints:
            raise GenerateError(f"unknown checkpoint '{name}'; choose one of {', '.join(self.checkpoints)}")
        if name not in self.pipes:
            self.pipes.clear()
            self.pipes[name] = Pipeline.load(self.checkpoints[name], self.device)
        return self.pipes[name]

    def request(self, pipe: Pipeline, prompt: str, timeline: str, seconds: float | None, size: str, seed: int | None,
                negative_prompt: str, steps: int | None, cfg: float | None, image: str | None, video: str | None,
                keep_input: bool) -> Request:
        """The page's fields -> a Request through Pipeline.request (the one check); a bad value raises gr.Error."""
        prompts, at = [prompt or ""], [0.0]
        try:
            for i, line in enumerate((timeline or "").splitlines(), 1):
                if not line.strip():
                    continue
                head, sep, text = line.partition(":")
                try:
                    t = float(head.strip().removesuffix("s").strip())
                except ValueError:
                    sep = ""
                if not sep:
                    raise GenerateError(f"later prompts, line {i} '{line.strip()}': write 'SECONDS: prompt', "
                                        f"e.g. '5: a blue square moving up'")
                prompts.append(text.strip())
                at.append(t)
            for name, value in (("seconds", seconds), ("seed", seed)):
                if value is None:
                    raise GenerateError(f"--{name}: give a number")
            try:
                wh = parse_size(size.strip()) if size and size.strip() else None
            except ArgumentTypeError as e:
                raise GenerateError(f"--{e}") from None
            overrides = {k: v for k, v in (("steps", steps), ("cfg_scale", cfg)) if v is not None}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                req = pipe.request(prompts, at=at, seconds=float(seconds), size=wh, seed=int(seed),
                                   negative_prompt=negative_prompt or "", sample=overrides, image=image or None,
                                   video=video or None, keep_input=bool(keep_input),
                                   label=label)
        except GenerateError as e:
            raise gr.Error(str(e)) from None
        for w in caught:
            gr.Warning(str(w.message))
        for note in req.notes:
            gr.Info(note)
        return req

    def generate(self, prompt: str, timeline: str, seconds: float, size: str, seed: int, negative_prompt: str,
                 steps: int | None, cfg: float | None, checkpoint: str, image: str | None, video: str | None,
                 keep_input: bool, request: gr.Request):
        """Yield (video, status, command): the newest seconds after each chunk, then the whole mp4."""
        t0 = time.perf_counter()
        try:
            pipe = self.pipeline(checkpoint)
        except (GenerateError, CheckpointError, ConfigError) as e:
            raise gr.Error(str(e)) from None
        req = self.request(pipe, prompt, timeline, seconds, size, seed, negative_prompt, steps, cfg, image, video,
                           keep_input)
        run = Run(pipe, req, self.checkpoints[checkpoint])
        session = request.session_hash
        self.runs[session] = run
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        try:
            yield from self.stream(run, folder, t0)
        finally:
            if self.runs.get(session) is run:
                del self.runs[session]
            shutil.rmtree(folder, ignore_errors=True)

    def stream(self, run: Run, folder: Path, t0: float):
        """Yield (video, status, command): the new frames while the run goes (PREVIEW_SECONDS), then the whole mp4.
        The chunks are made by a thread of their own (App.make), so generation never waits for the page."""
        pipe, req = run.pipe, run.req
        n, _ = pipe.frame_count(req)
        chunks: queue.Queue = queue.Queue()
        maker = threading.Thread(target=self.make, args=(run, chunks), daemon=True)
        maker.start()
        new: deque = deque(maxlen=max(1, round(PREVIEW_SECONDS * req.fps)))  # made since the last update
        out = folder / f"videodit-seed{req.seed}.mp4"
        first = None
        played = 0.0  # when the player will have played the last update
        try:
            with VideoWriter(out, fps=req.fps) as writer:
                while (x := chunks.get()) is not None:
                    if isinstance(x, BaseException):
                        raise gr.Error(str(x)) if isinstance(x, GenerateError) else x
                    writer.write(x)
                    new.extend(x)
                    if writer.frames_written == n or (first and (chunks.qsize() or time.perf_counter() < played)):
                        continue  # the first chunk at once; later ones when the player is ready for them
                    first = first or time.perf_counter() - t0
                    preview = folder / f"preview-{writer.frames_written:06d}.mp4"
                    with VideoWriter(preview, fps=req.fps, preset="ultrafast") as w:
                        w.write(np.stack(new))
                    played = time.perf_counter() + len(new) / req.fps
                    new.clear()
                    status = (f"**Making**: {run.made / req.fps:.1f} s of {req.seconds:g} s made in "
                              f"{time.perf_counter() - t0:.1f} s (first frames after {first:.1f} s); the player "
                              f"plays each new part, the whole video comes at the end.\n\n" + timeline(run))
                    yield str(preview), status, command(run, req.seconds)
                    preview.unlink(missing_ok=True)  # the page has its own copy by now
        finally:
            run.stop.set()  # a page that went away, or an error: the maker ends after its chunk
            maker.join()
        seconds = req.seconds if writer.frames_written == n else run.made / req.fps
        done = "Stopped" if writer.frames_written < n else "Done"
        status = (f"**{done}**: {writer.frames_written} frames ({seconds:g} s at {req.fps} fps, "
                  f"{req.width}x{req.height}) in {time.perf_counter() - t0:.1f} s.\n\n" + timeline(run))
        yield str(out), status, command(run, seconds)

    def make(self, run: Run, chunks: queue.Queue) -> None:
        """The maker thread: frames chunk by chunk into `chunks`, then None (or the error). Only it touches run.req,
        between two chunks: a prompt asked for mid-run steers the chunks from the next one on, and Stop ends the
        run after the chunk being made."""
        given = run.req.video_frames if run.req.keep_input else 0  # the clip's frames, written before the new ones
        new = run.pipe.frame_count(run.req)[0] - given
        written = 0
        frames = run.pipe.frames(run.req)
        try:
            for x in frames:
                written += len(x)
                run.made = max(0, written - given)
                chunks.put(x)
                if run.stop.is_set() and run.made:
                    break
                with run.lock:
                    prompt, run.next_prompt = run.next_prompt, None
                if prompt is not None and 0 < run.made < new:  # checked by change_prompt when asked
                    run.pipe.extend(run.req, prompt, start_time(run.made, run.req.fps), label)
        except BaseException as e:  # handed to the page's thread, which raises it
            chunks.put(e)
        finally:
            frames.close()
            chunks.put(None)

    def change_prompt(self, prompt: str, request: gr.Request) -> None:
        """The prompt for the coming chunks of this visitor's run (from the chunk after the one being made)."""
        run = self.runs.get(request.session_hash)
        if run is None:
            raise gr.Error("nothing is being made: set the prompt and the later prompts, then Generate")
        req, cf = run.req, run.pipe.cfg.model.chunk_frames
        # the chunk being made keeps its prompt; the first has 1 + 4 (cf - 1) frames, every later one 4 cf
        soonest = start_time(run.made + (1 + 4 * (cf - 1) if run.made == 0 and req.video is None else 4 * cf),
                             req.fps)
        if soonest >= req.seconds:
            raise gr.Error("the last chunk is being made: too late to change the prompt of this run")
        at = list(req.at)  # first: the maker appends a prompt before its time
        try:  # checked now, on a copy, as the run will check it between two chunks
            run.pipe.extend(replace(req, prompts=req.prompts[: len(at)], at=at), prompt, soonest, label)
        except GenerateError as e:
            raise gr.Error(str(e)) from None
        with run.lock:
            run.next_prompt = prompt
        gr.Info(f"from the next chunk: {prompt}")

    def stop(self, request: gr.Request) -> None:
        """Stop this visitor's run after the chunk being made; the mp4 keeps everything made."""
        run = self.runs.get(request.session_hash)
        if run is not None:
            run.stop.set()
            gr.Info("stopping after the chunk being made")


def timeline(run: Run) -> str:
    return "Prompts: " + "; ".join(f"from {number(a)} s: *{p}*" for p, a in zip(run.req.prompts, run.req.at)) + (
        f"; next chunk: *{run.next_prompt}*" if run.next_prompt else "")


def build(app: App):
    """The page: the fields on the left, the player, status and command line on the right."""
    default = next(iter(app.checkpoints))
    pipe = app.pipeline(default)
    s, d = pipe.cfg.sample, pipe.cfg.data
    with gr.Blocks(title="videodit", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("## videodit: text to video, shown while it is made")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    placeholder="a red circle moving to the right")
                later = gr.Textbox(label="Later prompts: one per line, SECONDS: prompt", lines=2, elem_id="timeline",
                                   placeholder="5: a blue square moving up")
                with gr.Row():
                    seconds = gr.Number(10, label="Seconds", elem_id="seconds")
                    size = gr.Textbox("", label="Size: N or WxH", placeholder=f"{d.size}", elem_id="size")
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                with gr.Accordion("Advanced", open=False):
                    negative = gr.Textbox(label="Negative prompt: what to steer away from")
                    with gr.Row():
                        steps = gr.Number(None, label="Steps per chunk", precision=0, placeholder=f"{s.steps}")
                        cfg = gr.Number(None, label="Guidance (CFG)", placeholder=f"{s.cfg_scale:g}")
                    checkpoint = gr.Dropdown(list(app.checkpoints), value=default, label="Checkpoint")
                    image = gr.Image(None, type="filepath", label="First frame (optional)")
                    video = gr.Video(None, label="A clip to continue (optional)", sources=["upload"])
                    keep = gr.Checkbox(False, label="Write the clip before its continuation")
                with gr.Row():
                    start = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=1):
                player = gr.Video(label="Video", autoplay=True, interactive=False, height=360, elem_id="player")
                status = gr.Markdown("Empty fields take the checkpoint's values.", elem_id="status")
                with gr.Row():
                    change = gr.Textbox(label="Change the prompt while it runs", scale=3, elem_id="next-prompt",
                                        placeholder="a blue square moving up")
                    apply = gr.Button("From the next chunk", scale=1, elem_id="change")
                line = gr.Textbox(label="The same video with sample.py", buttons=["copy"], interactive=False)
        start.click(app.generate, [prompt, later, seconds, size, seed, negative, steps, cfg, checkpoint, image, video,
                                   keep], [player, status, line], api_name="generate", concurrency_limit=1)
        stop.click(app.stop, None, None, api_name="stop", concurrency_limit=None)
        apply.click(app.change_prompt, change, None, api_name="change_prompt", concurrency_limit=None)
    return demo


def default_checkpoints() -> list[Path]:
    found = sorted(p.parent for p in CHECKPOINTS.glob("*/config.yaml"))
    return sorted(found, key=lambda p: p.name != "tiny")  # the shipped model first


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="videodit-app: a browser page that shows the video while it is made")
    p.add_argument("--checkpoint", action="append", type=Path,
                   help="a checkpoint folder to offer (repeat for more; the first is the default). Default: the "
                        "folders in the repository's checkpoints/, the shipped tiny model first")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--queue", type=int, default=16, help="visitors who may wait for their turn (default 16)")
    args = p.parse_args(argv)
    import torch

    checkpoints = args.checkpoint or default_checkpoints()
    try:
        if not checkpoints:
            raise GenerateError(f"no checkpoint found in '{CHECKPOINTS}'; give one with --checkpoint FOLDER")
        if args.threads is not None:
            if args.threads < 1:
                raise GenerateError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        if args.queue < 1:
            raise GenerateError(f"--queue must be >= 1, got {args.queue}")
        app = App(checkpoints, args.device)
        demo = build(app)
    except (GenerateError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.host not in LOCAL_HOSTS:
        print(f"warning: listening on {args.host}: anyone who reaches port {args.port} of this machine can use the "
              f"app and its processor, without a login", file=sys.stderr)
    demo.queue(max_size=args.queue)
    try:
        demo.launch(server_name=args.host, server_port=args.port, show_error=True, footer_links=["api"])
    finally:
        shutil.rmtree(app.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
