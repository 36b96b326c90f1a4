"""videodit-app: the browser app (videodit/app/server.py); Gradio comes with `pip install -e ".[app]"`."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the app calls no one
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('error: the app needs Gradio: pip install -e ".[app]"', file=sys.stderr)
        return 2
    from videodit.app.server import main as serve

    return serve(argv)
