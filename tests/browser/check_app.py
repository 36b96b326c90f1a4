"""The app in a real browser: start videodit-app, drive Debian's headless Chromium through Selenium, type a prompt,
Generate, wait for the first chunk to play in the player before the run ends, change the prompt, Stop, wait for
the kept mp4 to play, and save a screenshot. Run on demand (not in CI); it downloads nothing:

    apt-get install -y chromium chromium-driver && pip install -e ".[app]"
    python tests/browser/check_app.py                        # the shipped model; screenshot docs/app.png
    python tests/browser/check_app.py --full --seconds 20    # no stop: the total time of the whole video

Prints the timings (click to first frames in the player, click to the end) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[2]
PLAYER = "const v = document.querySelector('#player video'); "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what: str, check, timeout: float, every: float = 0.05):
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if value := check():
            return value
        time.sleep(every)
    raise SystemExit(f"check failed: no {what} within {timeout:g} s")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default="a red circle moving to the right")
    p.add_argument("--then", default="a blue square moving up", help="the prompt typed in while it runs")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--full", action="store_true", help="let the run finish instead of stopping it")
    p.add_argument("--app-args", default="", help="more videodit-app flags, e.g. '--checkpoint X --threads 2'")
    p.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "app.png")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args()
    for exe in (args.chromium, args.chromedriver):
        if not Path(exe).is_file():
            print(f"error: '{exe}' not found: apt-get install -y chromium chromium-driver", file=sys.stderr)
            return 2

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "videodit.app.server", "--port", str(port),
                               *args.app_args.split()], cwd=ROOT)
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(flag)
    browser = None
    try:
        def up():
            try:
                return urllib.request.urlopen(url, timeout=1).status == 200
            except OSError:
                return server.poll() is not None and sys.exit("check failed: videodit-app exited")

        wait("app at " + url, up, 180, every=0.5)
        started = time.perf_counter() - t0
        browser = webdriver.Chrome(service=Service(args.chromedriver), options=options)
        browser.get(url)
        prompt = wait("prompt box", lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"), 60)[0]
        prompt.send_keys(args.prompt)
        seconds = browser.find_element(By.CSS_SELECTOR, "#seconds input")
        seconds.clear()
        seconds.send_keys(f"{args.seconds:g}")
        status = lambda: browser.find_element(By.CSS_SELECTOR, "#status").text  # noqa: E731
        playing = lambda: browser.execute_script(  # noqa: E731
            PLAYER + "return v && v.readyState >= 2 && v.currentTime > 0 ? v.currentTime : 0")

        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        click = time.perf_counter()
        wait("frames in the player", lambda: browser.execute_script(
            PLAYER + "return v && v.readyState >= 2 && v.videoWidth > 0"), 600, every=0.02)
        first = time.perf_counter() - click
        assert "Making" in status(), f"the run ended before its first chunk was shown: {status()!r}"
        wait("playback of the first chunk", playing, 60)
        print(f"click to first frames in the player: {first:.2f} s (status: {status().splitlines()[0]})")

        if args.full:
            wait("the end of the run", lambda: "Done" in status(), 3600, every=0.1)
        else:
            box = browser.find_element(By.CSS_SELECTOR, "#next-prompt textarea")
            box.send_keys(args.then)
            browser.find_element(By.CSS_SELECTOR, "#change").click()
            time.sleep(1.0)
            browser.find_element(By.CSS_SELECTOR, "#stop").click()
            wait("the stopped run's mp4", lambda: "Stopped" in status() or "Done" in status(), 600, every=0.1)
        total = time.perf_counter() - click
        final = status()
        wait("playback of the mp4", playing, 60)
        time.sleep(0.8)  # a frame or two into the video
        browser.execute_script("document.querySelectorAll('.toast-wrap').forEach(t => t.remove())")  # the notes
        frames = int(final.split(":")[1].split()[0])
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(args.screenshot))
        shot = args.screenshot.stat().st_size // 1024
        print(f"click to the {'end' if args.full else 'stopped mp4'}: {total:.1f} s, {frames} frames "
              f"({final.splitlines()[0]})")
        print(f"app started in {started:.1f} s; peak memory of the app process {peak_rss_mb(server.pid):.0f} MiB; "
              f"screenshot {args.screenshot} ({shot} KiB)")
        print(json.dumps({"first_frames_s": round(first, 2), "total_s": round(total, 1), "frames": frames,
                          "stopped": not args.full, "app_start_s": round(started, 1),
                          "app_peak_rss_mib": round(peak_rss_mb(server.pid)), "screenshot": str(args.screenshot)}))
        return 0
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
