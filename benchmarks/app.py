"""The app's cost over sample.py: the same video through videodit-app (driven by gradio_client, no browser) and
through generate() (what sample.py runs after loading), in one process with the model loaded once, alternated.

    python benchmarks/app.py [--seconds 20] [--threads 1] [--rounds 2]

Goal: the app's total time within 10% of sample.py's generation. Times click -> first frames (the first update)
and the whole mp4. Last line: one JSON object. (In a real browser: tests/browser/check_app.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    p.add_argument("--prompt", default="a red circle moving to the right")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch
    from gradio_client import Client

    from videodit.app.server import App, build
    from videodit.generate import generate

    torch.set_num_threads(args.threads)
    app = App([args.checkpoint], "cpu")
    name = next(iter(app.checkpoints))
    pipe = app.pipeline(name)
    req = pipe.request([args.prompt], seconds=args.seconds)
    demo = build(app)
    demo.queue(max_size=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    client = Client(url, verbose=False)
    cli, page, first = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            generate(pipe, req, Path(tmp) / "cli.mp4")
            cli.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            job = client.submit(args.prompt, "", args.seconds, "", 0, "", None, None, name, None, None, False,
                                api_name="/generate")
            for i, _ in enumerate(job):
                if i == 0:
                    first.append(time.perf_counter() - t0)
            page.append(time.perf_counter() - t0)
    demo.close()
    cli_s, page_s = statistics.median(cli), statistics.median(page)
    print(f"{args.seconds:g} s of video, {args.threads} thread(s): sample.py's generate() {cli_s:.1f} s, the app "
          f"{page_s:.1f} s ({page_s / cli_s:.2f}x; rounds {[round(t, 1) for t in cli]} vs "
          f"{[round(t, 1) for t in page]}); "
          f"first frames after {statistics.median(first):.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": args.seconds, "threads": args.threads, "sample_generate_s": round(cli_s, 2),
                      "app_s": round(page_s, 2), "ratio": round(page_s / cli_s, 3),
                      "first_frames_s": round(statistics.median(first), 2), "peak_rss_mib": round(peak)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
