"""The browser app without a browser: its functions driven through gradio_client against an app launched on
localhost (tests/browser/check_app.py drives a real Chromium)."""

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # CI reaches nothing but PyPI
gr = pytest.importorskip("gradio", reason='the app extra is not installed: pip install -e ".[app]"')
gradio_client = pytest.importorskip("gradio_client", reason='the app extra is not installed: pip install -e ".[app]"')

from gradio_client.exceptions import AppError  # noqa: E402
from test_sample import make_checkpoint  # noqa: E402

from videodit.app.server import App, build  # noqa: E402
from videodit.video_io import read_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving to the left"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))  # 32x32 at 8 fps, chunks of 2 latent frames, 2 steps


@pytest.fixture(scope="module")
def url(ckpt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build(App([ckpt], "cpu"))
    demo.queue(max_size=4)
    _, local, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield local
    demo.close()


def generate(client, ckpt, **fields):
    """Submit a run with the page's defaults plus `fields`."""
    values = dict(prompt=PROMPT, timeline="", seconds=2, size="", seed=0, negative_prompt="", steps=None, cfg=None,
                  checkpoint=str(ckpt), image=None, video=None, keep_input=False) | fields
    return client.submit(*values.values(), api_name="/generate")


def frames(path) -> int:
    return len(read_video(path))


def test_two_seconds_stream_chunks_then_the_whole_mp4(url, ckpt):
    """A 2 s run: the first chunk's frames arrive before the end (then the new frames when the player has played
    them), then the mp4 with all 16 frames and the sample.py line with the run's settings."""
    client = gradio_client.Client(url, verbose=False)
    job = generate(client, ckpt, seed=5)
    seen = [(out, job.done()) for out in job]
    *partial, (final, _) = seen
    # 3 chunks of 5, 8 and 3 frames: the first shown at once, the second only if the run is slower than playback
    assert 1 <= len(partial) <= 2 and not any(done for _, done in partial) and "Making" in partial[0][0][1]
    assert [frames(p[0]) for p, _ in partial] == [5, 8][: len(partial)]
    video, status, line = final
    assert frames(video) == 16 and status.startswith("**Done**: 16 frames")
    assert "--seconds 2 " in line and "--seed 5" in line and f"--checkpoint {ckpt}" in line


def test_prompt_changed_mid_run_and_stop_keep_a_reproducible_mp4(url, ckpt, tmp_path):
    """Change the prompt while it runs, then stop: the mp4 ends early at a chunk boundary and is complete, the new
    prompt starts where the command line's --at says, and sample.py with that line writes the same video."""
    client = gradio_client.Client(url, verbose=False)
    job = generate(client, ckpt, seconds=300, steps=1)
    while not job.outputs():  # the first chunk is out
        time.sleep(0.01)
    client.predict("a blue square moving up", api_name="/change_prompt")
    while "s: *a blue square moving up*" not in job.outputs()[-1][1]:  # an update whose timeline has it
        time.sleep(0.01)
    client.predict(api_name="/stop")
    video, status, line = job.result()
    n = frames(video)
    assert status.startswith("**Stopped**") and 13 <= n < 2400 and (n - 5) % 8 == 0
    args = shlex.split(line)
    assert args[:2] == ["python", "sample.py"] and args.count("--prompt") == 2 and args.count("--at") == 2
    out = tmp_path / "same.mp4"
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), *args[2 : args.index("--out")], "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    same, made = read_video(out).astype(float), read_video(video).astype(float)
    # the same frames up to the encoder: x264 can choose differently for inputs a rounding apart
    assert same.shape == made.shape and abs(same - made).mean(axis=(1, 2, 3)).max() < 3
    changed_at = float(args[args.index("--at", args.index("--at") + 1) + 1])
    assert changed_at * 8 in range(13, n, 8)  # a chunk start after the one being made when it was asked


@pytest.mark.parametrize("fields, needle", [
    ({"seconds": -1}, "--seconds must be in (0, 600], got -1"),
    ({"size": "33"}, "--size 33x33 (width x height) cannot be made by this checkpoint"),
    ({"size": "big"}, "size must be N or WxH"),
    ({"prompt": "  "}, "every --prompt must be non-empty"),
    ({"timeline": "soon a blue square"}, "later prompts, line 1 'soon a blue square': write 'SECONDS: prompt'"),
    ({"timeline": "3: a blue square"}, "--at 3 starts a prompt at or after the end of the video (2 s)"),
    ({"steps": 0}, "--steps"),
])
def test_invalid_values_give_the_page_error(url, ckpt, fields, needle):
    """The page's message is Pipeline.request's (the one check sample.py uses), before any frame is made."""
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(AppError) as e:
        generate(client, ckpt, **fields).result()
    assert needle in str(e.value)


def test_change_and_stop_without_a_run(url):
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(AppError, match="nothing is being made"):
        client.predict("a blue square moving up", api_name="/change_prompt")
    client.predict(api_name="/stop")  # harmless


def test_gradio_missing_gives_the_install_line(monkeypatch, capsys):
    from videodit.app import main

    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main([]) == 2
    assert 'pip install -e ".[app]"' in capsys.readouterr().err
