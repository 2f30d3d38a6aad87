"""Glass-to-glass latency measured in a browser: ``ingest bench glass [--seconds S] [--json]``
(or ``python -m ingest.glass``).

A browser bench next to ``ingest bench``: an in-process server (development mode, loopback),
headless Chromium (the system's, driven by Playwright: the ``test`` extra) and three rows:

- **RTMP -> WebRTC**: a child process draws frames whose top row is a pixel-block code of the
  wall clock at capture (:func:`draw_code`, the format of ``samples/latency.html``), encodes them
  with libx264 ``ultrafast``/``zerolatency`` (no B-frames, 1 s GOP) and publishes over RTMP with
  libavformat (PyAV); the reader page watches it over the call WebSocket.
- **RTMP -> LL-HLS**: the same stream through the call's LL-HLS in hls.js (low-latency mode).
- **WHIP -> WebRTC**: a sender page draws the code into a canvas and publishes it over WHIP
  (Chromium's VP8); the reader watches it over the call WebSocket.

The reader page decodes the code from every presented frame (``requestVideoFrameCallback``) and
subtracts it from its own clock: capture, encode, network, server, decode and presentation.
Sender and reader run on this machine, so they share one clock. Targets (loopback): RTMP ->
WebRTC p50 <= 250 ms, WHIP -> WebRTC p50 <= 150 ms, LL-HLS p50 <= 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BITS = 32
BLOCKS = BITS + 2  # a white and a black guard block, then the bits
WRAP = 2**32
FPS = 30
WIDTH, HEIGHT = 640, 360
GOP = 30
TARGETS_MS = {"rtmp -> WebRTC": 250.0, "whip -> WebRTC": 150.0, "rtmp -> LL-HLS": 2000.0}
"""p50 targets per row (loopback, zero-latency encoders)."""
SETUP_TIMEOUT_S = 60.0
"""Connections, first frames and the first HLS segment on a busy machine."""
MIN_SAMPLES = 30
"""A row with fewer measured frames is reported as not measured."""


def draw_code(img: np.ndarray[Any, Any], ms: int) -> None:
    """Write ``ms`` (mod 2^32) as the block code into an RGB image (in place)."""
    b = img.shape[1] // 40
    value = ms % WRAP
    for i in range(BLOCKS):
        bit = 1 if i == 0 else 0 if i == 1 else (value >> (BITS - 1 - (i - 2))) & 1
        img[b : 2 * b, b + i * b : b + (i + 1) * b] = 255 if bit else 0


def read_code(img: np.ndarray[Any, Any]) -> int | None:
    """The time in an RGB image's code, or None when the guards do not read."""
    b = img.shape[1] // 40
    y = b + b // 2

    def lum(i: int) -> float:
        px = img[y, b + i * b + b // 2].astype(float)
        return float(0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2])

    if lum(0) < 160 or lum(1) > 96:
        return None
    value = 0
    for i in range(BITS):
        value = value * 2 + (1 if lum(i + 2) > 128 else 0)
    return value


def push(url: str, seconds: float) -> None:
    """Publish coded frames (and a tone) over RTMP in real time, for ``seconds``."""
    import av

    with av.open(url, "w", format="flv", options={"flush_packets": "1"}) as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        v.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "bf": "0",
            "g": str(GOP),
            "keyint_min": str(GOP),
        }
        a = out.add_stream("aac", rate=48000)
        a.layout = "stereo"
        t = np.arange(1024) / 48000
        audio_pts = 0
        start = time.monotonic()
        base = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        i = 0
        while i < seconds * FPS:
            due = start + i / FPS
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the source's own clock: a camera delivers in real time
            img = base.copy()
            img[:, :, 2] = (i * 4) % 256  # a changing picture
            draw_code(img, int(time.time() * 1000))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in v.encode(frame):
                out.mux(p)
            while audio_pts < (i + 1) * 48000 // FPS:
                tone = (0.2 * np.sin(2 * np.pi * 440 * (t + audio_pts / 48000))).astype(np.float32)
                af = av.AudioFrame.from_ndarray(
                    np.stack([tone, tone]), format="fltp", layout="stereo"
                )
                af.sample_rate, af.pts = 48000, audio_pts
                audio_pts += 1024
                for p in a.encode(af):
                    out.mux(p)
            i += 1


@dataclass
class Row:
    name: str
    frames: int
    unreadable: int
    p50_ms: float | None
    p95_ms: float | None
    target_ms: float

    @property
    def meets(self) -> bool | None:
        return None if self.p50_ms is None else self.p50_ms <= self.target_ms


def summarize(samples: dict[str, list[float]], unreadable: dict[str, int]) -> list[Row]:
    rows = []
    for name, target in TARGETS_MS.items():
        values = sorted(samples.get(name, []))
        enough = len(values) >= MIN_SAMPLES
        rows.append(
            Row(
                name,
                len(values),
                unreadable.get(name, 0),
                statistics.median(values) if enough else None,
                float(values[min(len(values) - 1, int(0.95 * len(values)))]) if enough else None,
                target,
            )
        )
    return rows


async def _wait(page: Any, expression: str) -> None:
    await page.wait_for_function(expression, timeout=SETUP_TIMEOUT_S * 1000)


async def measure(seconds: float = 15.0, *, data_dir: Path | None = None) -> list[Row]:
    """Run the three rows (``seconds`` of measuring each phase) and return them."""
    import httpx
    from playwright.async_api import async_playwright

    from .app import App
    from .config import load

    chromium = _chromium()
    with tempfile.TemporaryDirectory(prefix="ingest-glass-") as tmp:
        settings = load(
            None,
            environ={},
            data_dir=data_dir or Path(tmp),
            host="127.0.0.1",
            http_port=0,
            rtmp_port=0,
            public_host="127.0.0.1",
            log_level="WARNING",
        )
        app = App(settings)
        await app.start()
        proc: asyncio.subprocess.Process | None = None
        base = f"http://127.0.0.1:{app.http_port}"
        try:
            async with httpx.AsyncClient() as http:
                dev = await http.post(
                    f"{base}/api/v2/dev/token",
                    json={"user_id": "rtmp-host", "call_type": "livestream", "call_id": "glass"},
                )
                dev.raise_for_status()
                host = dev.json()
                live = await http.post(
                    f"{base}/api/v2/video/call/livestream/glass/go_live",
                    params={"api_key": host["api_key"]},
                    headers={"Authorization": host["token"]},
                    json={"start_hls": True},
                )
                live.raise_for_status()
                call = live.json()["call"]
            rtmp_url = f"{call['ingress']['rtmp']['address']}/{host['token']}"
            playlist = call["egress"]["hls"]["playlist_url"]
            total = 3 * seconds + 3 * SETUP_TIMEOUT_S
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ingest.glass", "push", rtmp_url, str(total)
            )
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=chromium,
                    headless=True,
                    args=[
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--autoplay-policy=no-user-gesture-required",
                        "--mute-audio",
                    ],
                )
                try:
                    reader = await browser.new_page()
                    await reader.goto(f"{base}/samples/latency.html?role=read&id=glass")
                    await _wait(reader, "() => window.glass.ready")
                    # phase 1: the RTMP host over WebRTC and LL-HLS
                    await _wait(
                        reader, "() => (window.glass.samples['rtmp -> WebRTC'] || []).length > 10"
                    )
                    await reader.evaluate(f"() => window.glass.watchHls({json.dumps(playlist)})")
                    await _wait(
                        reader, "() => (window.glass.samples['rtmp -> LL-HLS'] || []).length > 10"
                    )
                    await reader.evaluate("() => window.glass.reset()")
                    await asyncio.sleep(seconds)  # measuring for a fixed time, not waiting
                    phase1 = await reader.evaluate("() => window.glass")
                    await reader.evaluate("() => { window.glass.stopHls(); window.glass.reset(); }")
                    # phase 2: a browser host over WHIP
                    sender = await browser.new_page()
                    await sender.goto(
                        f"{base}/samples/latency.html?role=send&id=glass&user=whip-host"
                    )
                    await _wait(sender, "() => window.glass.ready")
                    await _wait(
                        reader, "() => (window.glass.samples['whip -> WebRTC'] || []).length > 10"
                    )
                    await reader.evaluate("() => window.glass.reset()")
                    await asyncio.sleep(seconds)
                    phase2 = await reader.evaluate("() => window.glass")
                finally:
                    await browser.close()
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
            if proc is not None:
                await proc.wait()
            await app.stop()
    samples = {
        "rtmp -> WebRTC": phase1["samples"].get("rtmp -> WebRTC", []),
        "rtmp -> LL-HLS": phase1["samples"].get("rtmp -> LL-HLS", []),
        "whip -> WebRTC": phase2["samples"].get("whip -> WebRTC", []),
    }
    unreadable = {
        "rtmp -> WebRTC": phase1["unreadable"].get("rtmp -> WebRTC", 0),
        "rtmp -> LL-HLS": phase1["unreadable"].get("rtmp -> LL-HLS", 0),
        "whip -> WebRTC": phase2["unreadable"].get("whip -> WebRTC", 0),
    }
    return summarize(samples, unreadable)


def _chromium() -> str:
    import os
    import shutil

    path = os.environ.get("INGEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise SystemExit(
            f"no Chromium at {path}: `apt-get install chromium`, or set INGEST_CHROMIUM"
        )
    return path


def table(rows: list[Row]) -> str:
    lines = [
        "| path | frames | unreadable | p50 ms | p95 ms | target p50 | meets |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50 = "-" if r.p50_ms is None else f"{r.p50_ms:.0f}"
        p95 = "-" if r.p95_ms is None else f"{r.p95_ms:.0f}"
        meets = "not measured" if r.meets is None else "yes" if r.meets else "no"
        lines.append(
            f"| {r.name} | {r.frames} | {r.unreadable} | {p50} | {p95} | "
            f"<= {r.target_ms:.0f} | {meets} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingest.glass", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command")
    p_push = sub.add_parser("push", help="publish coded frames over RTMP (the bench's sender)")
    p_push.add_argument("url")
    p_push.add_argument("seconds", type=float)
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per phase")
    parser.add_argument("--json", action="store_true", help="rows as JSON")
    args = parser.parse_args(argv)
    if args.command == "push":
        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            push(args.url, args.seconds)
        return 0
    rows = asyncio.run(measure(args.seconds))
    print(render(rows, as_json=args.json))
    return 0 if all(r.meets for r in rows) else 1


def render(rows: list[Row], *, as_json: bool = False) -> str:
    """The rows as a markdown table, or as JSON."""
    if as_json:
        return json.dumps([{**r.__dict__, "meets": r.meets} for r in rows], indent=2)
    return table(rows)


if __name__ == "__main__":
    raise SystemExit(main())
