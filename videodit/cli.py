"""What the command-line entry points share: argument errors as one line, signals as a clean stop."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the flag (exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived: unwind (temporary files are removed on the way) and exit."""


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGINT into `Interrupted`, so `with` blocks and `finally` clauses run before the exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_interrupted)


def parse_size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '96x64' -> (96, 64): width first, as ffmpeg and Wan write sizes."""
    try:
        if "x" in text.lower():
            w, h = text.lower().split("x")
            return int(w), int(h)
        return int(text), int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH (width first, e.g. 96x64), got '{text}'") from None
