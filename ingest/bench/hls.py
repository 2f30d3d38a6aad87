"""HLS and recording rows of ``ingest bench``: LL-HLS part latency, remux CPU, composite CPU.

In process, like the bridge rows (:mod:`.bridge`): a server on free ports, ffmpeg pushing the
bench's 1080p30 stream (``-re``, looped), the call going live with HLS.

- **Part latency**: from a video message's arrival at the server (the RTMP tag) to the moment the
  LL-HLS part that holds the frame is cut, i.e. downloadable (blocking playlist requests are
  answered then). Every frame of every part in the window counts.
- **Remux CPU**: the process's CPU with HLS on minus the same push with HLS off: what one
  stream's LL-HLS costs (no decode: a remux).
- **Composite CPU**: two hosts at 720p30 in one call; HLS on (so the call is composited:
  decoded, drawn into one picture, mixed, encoded once) minus HLS off.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .bridge import (
    BENCH_SECRET,
    CALL_ID,
    CALL_TYPE,
    FPS,
    HOST,
    _cpu_percent,
    _create_call,
    _percentile,
    _row,
    _server,
    make_media,
)

TARGET_PART_LATENCY_P50_MS = 400.0
TARGET_REMUX_CPU = 2.0  # % of one core per stream
TARGET_COMPOSITE_CPU = 60.0  # % of one core for two 720p30 hosts
STARTUP_TIMEOUT = 30.0


class _PartClock:
    """Arrival of each video message, and when the part holding it was cut."""

    def __init__(self) -> None:
        self.arrivals: OrderedDict[int, float] = OrderedDict()
        self.samples: list[float] = []
        self.recording = False

    def on_video(self, timestamp: int) -> None:
        self.arrivals[timestamp] = time.perf_counter()
        if len(self.arrivals) > 20 * FPS:
            self.arrivals.popitem(last=False)

    def on_cut(self, dts: list[int]) -> None:
        if not self.recording:
            return
        now = time.perf_counter()
        for d in dts:
            arrived = self.arrivals.get(d)
            if arrived is not None:
                self.samples.append(now - arrived)


@contextlib.contextmanager
def _instrumented(clock: _PartClock) -> Iterator[None]:
    """Wrap the ingress and the segmenter (the bench process only)."""
    from ingest.hls.segmenter import Segmenter
    from ingest.ingress import RtmpPublisher

    on_video, cut = RtmpPublisher.on_video, Segmenter._cut

    def timed_video(self: RtmpPublisher, timestamp: int, payload: bytes) -> None:
        clock.on_video(timestamp)
        on_video(self, timestamp, payload)

    def timed_cut(self: Segmenter, end: int, *, end_segment: bool) -> None:
        held = [u.dts for u in self._video_units]
        cut(self, end, end_segment=end_segment)
        clock.on_cut(held)  # the part is in the playlist now: downloadable

    RtmpPublisher.on_video = timed_video  # type: ignore[method-assign]
    Segmenter._cut = timed_cut  # type: ignore[method-assign]
    try:
        yield
    finally:
        RtmpPublisher.on_video = on_video  # type: ignore[method-assign]
        Segmenter._cut = cut  # type: ignore[method-assign]


def _make_720p(directory: Path, name: str, tone: int, seconds: int = 6) -> Path:
    """720p30 H.264 (2 s GOP, no B-frames, 2.5 Mbit/s) with a sine tone, like a webcam host."""
    path = directory / name
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS}",
            "-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=48000",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "superfast", "-bf", "0",
            "-g", str(2 * FPS), "-b:v", "2500k", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "128k", str(path),
        ],
        check=True,
        timeout=300,
    )  # fmt: skip
    return path


async def _push(url: str, media: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
        "-i", str(media), "-c", "copy", "-f", "flv", url,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _until(sub: Any, event: str) -> None:
    while (await asyncio.wait_for(sub.get(), STARTUP_TIMEOUT))["type"] != event:
        pass


async def _bench(seconds: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from ingest.calls.tokens import create_token
    from ingest.calls.wire import MemberRequest
    from ingest.client import AsyncClient

    from .bridge import BENCH_KEY

    window = max(5.0, 3 * seconds)
    clock = _PartClock()
    cid = f"{CALL_TYPE}:{CALL_ID}"
    with tempfile.TemporaryDirectory(prefix="ingest-bench-hls-") as tmp:
        log("making the HLS bench media with ffmpeg…")
        media = await asyncio.to_thread(make_media, Path(tmp))
        left = await asyncio.to_thread(_make_720p, Path(tmp), "left.flv", 440)
        right = await asyncio.to_thread(_make_720p, Path(tmp), "right.flv", 880)
        # one 1080p30 host: part latency and the remux's CPU
        async with _server(Path(tmp) / "data") as app:
            base = f"http://127.0.0.1:{app.http_port}"
            address = await _create_call(base)
            procs = []
            try:
                with _instrumented(clock), app.bus.subscribe(cid) as sub:
                    key = create_token(BENCH_SECRET, HOST)
                    procs.append(await _push(f"{address}/{key}", media))
                    async with AsyncClient(base, BENCH_KEY, secret=BENCH_SECRET) as api:
                        await _until(sub, "ingress.started")
                        await asyncio.sleep(2.0)  # past the start
                        log(f"HLS off: one 1080p30 stream ({window:.0f} s)…")
                        off = await _cpu_percent(window)
                        await api.start_broadcasting(CALL_TYPE, CALL_ID)
                        await _until(sub, "call.hls_broadcasting_started")
                        await asyncio.sleep(2.0)  # the remux is at the live edge
                        log(f"HLS on: one 1080p30 stream, part latency ({window:.0f} s)…")
                        clock.recording = True
                        on = await _cpu_percent(window)
                        clock.recording = False
            finally:
                for p in procs:
                    p.terminate()
                    await p.wait()
        # two 720p30 hosts: the composite
        async with _server(Path(tmp) / "data2") as app:
            base = f"http://127.0.0.1:{app.http_port}"
            address = await _create_call(base)
            procs = []
            try:
                async with AsyncClient(base, BENCH_KEY, secret=BENCH_SECRET) as api:
                    await api.update_call_members(
                        CALL_TYPE, CALL_ID, update=[MemberRequest(user_id="guest")]
                    )
                    with app.bus.subscribe(cid) as sub:
                        for user, clip in ((HOST, left), ("guest", right)):
                            url = f"{address}/{create_token(BENCH_SECRET, user)}"
                            procs.append(await _push(url, clip))
                        for _ in range(2):
                            await _until(sub, "ingress.started")
                        await asyncio.sleep(2.0)  # both past the start
                        log(f"HLS off: two 720p30 hosts ({window:.0f} s)…")
                        two_off = await _cpu_percent(window)
                        await api.start_broadcasting(CALL_TYPE, CALL_ID)
                        await _until(sub, "call.hls_broadcasting_started")
                        await asyncio.sleep(2.0)
                        log(f"HLS on: the two hosts composited ({window:.0f} s)…")
                        two_on = await _cpu_percent(window)
            finally:
                for p in procs:
                    p.terminate()
                    await p.wait()

    lat = sorted(clock.samples)
    p50 = _percentile(lat, 50) * 1000 if lat else float("nan")
    remux = max(on - off, 0.0)
    composite = max(two_on - two_off, 0.0)
    return [
        _row(
            "LL-HLS: frame arrival -> its part downloadable, p50",
            p50,
            "ms",
            f"<= {TARGET_PART_LATENCY_P50_MS:.0f} ms",
            bool(lat) and p50 <= TARGET_PART_LATENCY_P50_MS,
        ),
        _row(
            "LL-HLS: frame arrival -> its part downloadable, p95",
            _percentile(lat, 95) * 1000 if lat else float("nan"),
            "ms",
            "",
            None,
        ),
        _row(
            "LL-HLS remux CPU, one 1080p30 stream",
            remux,
            "% core",
            f"<= {TARGET_REMUX_CPU:g} %",
            remux <= TARGET_REMUX_CPU,
        ),
        _row(
            "HLS composite CPU, two 720p30 hosts",
            composite,
            "% core",
            f"<= {TARGET_COMPOSITE_CPU:g} %",
            composite <= TARGET_COMPOSITE_CPU,
        ),
    ]


def bench_hls(
    seconds: float = 2.0, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    return asyncio.run(_bench(seconds, log or (lambda _: None)))
