"""HLS and recording rows of ``ingest bench``: LL-HLS part latency, remux CPU, composite CPU,
the CPU rows against a C baseline (the ffmpeg CLI doing the same job) measured in the same run.

In process, like the bridge rows (:mod:`.bridge`): a server on free ports, ffmpeg pushing the
bench's 1080p30 stream (``-re``, looped), the call going live with HLS.

- **Part latency**: from a video message's arrival at the server (the RTMP tag) to the moment the
  LL-HLS part that holds the frame is cut, i.e. downloadable (blocking playlist requests are
  answered then). Every frame of every part in the window counts.
- **Server CPU, one stream → LL-HLS**: the process's CPU with HLS on (RTMP in, remux, LL-HLS),
  against :func:`remux_command` (one ffmpeg receiving the same push and writing fMP4 HLS with
  ``-c copy``: segments only, no LL-HLS parts of at most 334 ms, no blocking playlist reloads
  to serve; files written to a temp directory, where ours keeps its window in memory).
- **Remux CPU** (info): the same with HLS on minus HLS off: what one stream's LL-HLS adds (no
  decode: a remux). ffmpeg's own difference (HLS against ``-f null``) measured 0-0.16 % of a
  core, within a clock tick or two of zero: no baseline to divide by.
- **Composite**: two hosts at 720p30 in one call; HLS on (so the call is composited: decoded,
  drawn into one picture, mixed, encoded once), against :func:`composite_command` (one ffmpeg
  receiving the same two pushes and doing :mod:`ingest.hls.composite`'s job with the same
  layout and encoder settings, writing fMP4 HLS); and (info) HLS on minus HLS off.

Ours and the baseline take turns (ours, ffmpeg, ours, ffmpeg), never at the same time, with the
same warm-up and window; the baseline's CPU is its process's user + system time
(:func:`~ingest.bench.compare.proc_cpu_seconds`).
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

from ingest.hls import composite

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
from .compare import _listening, _stop, free_port, proc_cpu_seconds

TARGET_PART_LATENCY_P50_MS = 400.0
TARGET_RATIO_REMUX = 1.0
"""Server CPU for one stream into LL-HLS, ours / ffmpeg's ``-c copy`` HLS: at most this."""
TARGET_RATIO_COMPOSITE = 1.0
"""Server CPU compositing two 720p30 hosts into HLS, ours / ffmpeg's: at most this (the decode,
scale and encode are the same C libraries in both)."""
STARTUP_TIMEOUT = 30.0
WARMUP_S = 2.0
"""After the HLS output started, before measuring (ours and ffmpeg alike)."""
SOURCE_720P = (1280, 720)
"""The composite bench's hosts (:func:`_make_720p`)."""


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


# -- the ffmpeg baseline -----------------------------------------------------------------------


def _hls_output(out: Path) -> list[str]:
    """fMP4 HLS into ``out``: segments cut at the first keyframe after 1 s (as ours:
    ``SEGMENT_MIN_MS``), a sliding window of as many segments as ours."""
    from ingest.hls.segmenter import SEGMENT_MIN_MS
    from ingest.hls.stream import WINDOW_SEGMENTS

    return [
        "-f", "hls", "-hls_segment_type", "fmp4", "-hls_time", f"{SEGMENT_MIN_MS / 1000:g}",
        "-hls_list_size", str(WINDOW_SEGMENTS), "-hls_flags", "delete_segments",
        str(out / "index.m3u8"),
    ]  # fmt: skip


def _listen(port: int) -> list[str]:
    return ["-listen", "1", "-i", f"rtmp://127.0.0.1:{port}/live/bench"]


def remux_command(port: int, out: Path) -> list[str]:
    """One RTMP publish on ``port`` copied into fMP4 HLS (no decode, no LL-HLS parts)."""
    return ["ffmpeg", "-nostdin", "-v", "error", *_listen(port), "-c", "copy", *_hls_output(out)]


def composite_command(ports: tuple[int, int], out: Path) -> list[str]:
    """Two RTMP publishes composited as :class:`ingest.hls.composite.Compositor` does for two
    720p hosts: each scaled (bilinear, as PyAV's ``reformat``) into its cell of the 1280x720
    grid, aspect kept, black bars; 30 fps; audio resampled to 48 kHz stereo and summed; libx264
    ``veryfast``/``zerolatency``, High, no B-frames, the same bit rate and keyframe interval;
    AAC at the same rate. Into fMP4 HLS."""
    (x0, _, cell_w, cell_h), (x1, _, _, _) = composite.grid(2)
    fw, fh = composite.fit(*SOURCE_720P, cell_w, cell_h)
    w, h, fps = composite.WIDTH, composite.HEIGHT, composite.FPS
    gop = composite.GOP_S * fps
    audio = f"aresample={composite.AUDIO_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo"
    graph = ";".join(
        [
            f"[0:v]scale={fw}:{fh}:flags=bilinear[v0]",
            f"[1:v]scale={fw}:{fh}:flags=bilinear[v1]",
            f"[v0][v1]hstack=inputs=2,pad={w}:{h}:{x0 + (cell_w - fw) // 2}:"
            f"{(cell_h - fh) // 2}:black,fps={fps},format=yuv420p[v]",
            f"[0:a]{audio}[a0]",
            f"[1:a]{audio}[a1]",
            "[a0][a1]amix=inputs=2:normalize=0[a]",
        ]
    )
    assert x1 == x0 + cell_w  # two cells side by side: hstack draws them
    return [
        "ffmpeg", "-nostdin", "-v", "error", *_listen(ports[0]), *_listen(ports[1]),
        "-filter_complex", graph, "-map", "[v]", "-map", "[a]",
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-profile:v", "high",
        "-bf", "0", "-b:v", str(composite.VIDEO_BITRATE),
        "-x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
        "-c:a", "aac", "-b:a", str(composite.AUDIO_BITRATE), "-ar", str(composite.AUDIO_RATE),
        "-ac", "2", *_hls_output(out),
    ]  # fmt: skip


async def _ffmpeg_cpu(
    command: list[str], pushes: list[tuple[int, Path]], out: Path, window: float
) -> float:
    """Run the baseline ``command``, push each ``(port, media)`` to it once it listens there,
    and measure its CPU (% of one core) over ``window`` seconds after its first segment and
    :data:`WARMUP_S`."""
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "wb") as errors:  # noqa: ASYNC230 (ffmpeg holds it)
        server = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=errors,
        )  # fmt: skip
    pushers: list[asyncio.subprocess.Process] = []

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not condition():
            if server.returncode is not None:
                why = (out.parent / f"{out.name}.log").read_text(errors="replace").strip()
                raise RuntimeError(f"the baseline ffmpeg exited: {why[-300:] or 'no message'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    try:
        for port, media in pushes:  # ffmpeg opens its inputs one after the other
            await until(lambda port=port: _listening(port), "the baseline ffmpeg to listen")  # type: ignore[misc]
            pushers.append(await _push(f"rtmp://127.0.0.1:{port}/live/bench", media))
        await until((out / "index.m3u8").exists, "the baseline's first HLS segment")
        await asyncio.sleep(WARMUP_S)  # as ours: past the start
        cpu0, wall0 = proc_cpu_seconds(server.pid), time.perf_counter()
        await asyncio.sleep(window)
        cpu = proc_cpu_seconds(server.pid) - cpu0
        wall = time.perf_counter() - wall0
        if server.returncode is not None:
            raise RuntimeError("the baseline ffmpeg exited while measured")
        return cpu / wall * 100
    finally:
        for p in pushers:
            await _stop(p)
        await _stop(server)


async def _baseline(
    what: str,
    command: list[str],
    pushes: list[tuple[int, Path]],
    out: Path,
    window: float,
    log: Callable[[str], None],
) -> float:
    """:func:`_ffmpeg_cpu`, or NaN (logged) if the baseline could not be measured."""
    log(f"ffmpeg baseline: {what} ({window:.0f} s)…")
    try:
        cpu = await _ffmpeg_cpu(command, pushes, out, window)
    except (RuntimeError, TimeoutError) as e:
        log(f"  ffmpeg baseline not measured: {e}")
        return float("nan")
    log(f"  ffmpeg: {cpu:.1f} % core")
    return cpu


def _ratio_row(name: str, value: float, baseline: float, target: float) -> dict[str, Any]:
    """A CPU row judged by its ratio to the baseline (not met if the baseline is missing)."""
    ratio = value / baseline if baseline > 0 else None  # NaN > 0 is False
    ok = ratio is not None and ratio <= target
    return {**_row(name, value, "% core", f"<= {target:g} x ffmpeg", ok), "baseline": baseline,
            "ratio": ratio}  # fmt: skip


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
                        await asyncio.sleep(WARMUP_S)  # the remux is at the live edge
                        log(f"HLS on: one 1080p30 stream, part latency ({window:.0f} s)…")
                        clock.recording = True
                        on = await _cpu_percent(window)
                        clock.recording = False
            finally:
                for p in procs:
                    p.terminate()
                    await p.wait()
        port = free_port()
        remux_base = await _baseline(
            "one 1080p30 stream, -c copy to fMP4 HLS",
            remux_command(port, Path(tmp) / "ffmpeg-remux"),
            [(port, media)],
            Path(tmp) / "ffmpeg-remux",
            window,
            log,
        )
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
                        await asyncio.sleep(WARMUP_S)
                        log(f"HLS on: the two hosts composited ({window:.0f} s)…")
                        two_on = await _cpu_percent(window)
            finally:
                for p in procs:
                    p.terminate()
                    await p.wait()
        ports = free_port(), free_port()
        composite_base = await _baseline(
            "two 720p30 hosts composited into fMP4 HLS",
            composite_command(ports, Path(tmp) / "ffmpeg-composite"),
            [(ports[0], left), (ports[1], right)],
            Path(tmp) / "ffmpeg-composite",
            window,
            log,
        )

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
        _ratio_row(
            "LL-HLS: server CPU, one 1080p30 stream in, LL-HLS out",
            on,
            remux_base,
            TARGET_RATIO_REMUX,
        ),
        _row(
            "LL-HLS remux CPU, one 1080p30 stream",
            remux,
            "% core",
            "(info: HLS on minus off)",
            None,
        ),
        _ratio_row(
            "HLS composite: server CPU, two 720p30 hosts in, HLS out",
            two_on,
            composite_base,
            TARGET_RATIO_COMPOSITE,
        ),
        _row(
            "HLS composite CPU, two 720p30 hosts",
            composite,
            "% core",
            "(info: HLS on minus off)",
            None,
        ),
    ]


def bench_hls(
    seconds: float = 2.0, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    return asyncio.run(_bench(seconds, log or (lambda _: None)))
