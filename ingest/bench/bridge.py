"""WebRTC bridge benchmarks: one 1080p30 6 Mbit/s RTMP stream (H.264 High + AAC) into viewers.

The App runs in this process; everything else runs in child processes so that only the server's
CPU is counted: the ffmpeg CLI pushes a file made at start (``-re -stream_loop -1 -c copy``,
like OBS), and aiortc viewers run in a child Python process (``python -m ingest.bench.bridge
viewers URL TOKEN``) that receives every packet but does not decode video.

Measured:

* server CPU (this process's CPU time / wall time, % of one core) with the stream and no viewer,
  one viewer, five viewers; the extra CPU per viewer is ``(cpu5 - cpu1) / 4``; these rows show
  their ratio to the ffmpeg baseline measured in the same run (``run_all``,
  :mod:`ingest.bench.compare`) but are information only: this process's CPU includes the
  bench's own work and the latency probe, so the targets are judged by ``compare``'s rows,
  which run the server in a process of its own;
* latency from an RTMP video message reaching the ingress (``RtmpPublisher.on_video``) to its
  packet leaving the viewer's track (``HubPacketTrack.recv`` → aiortc), p50 / p99, through the
  zero-cost-when-off :attr:`~ingest.webrtc.tracks.HubPacketTrack.probe`;
* time to first frame for a viewer that joins in the middle of a GOP: from its offer POST to its
  first *decoded* frame (a separate child that decodes), worst of three joins.

Run ``python -m ingest.bench.bridge`` for these alone, or ``ingest bench`` for everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from .child import JsonChild

WIDTH, HEIGHT, FPS, GOP_S = 1920, 1080, 30, 2
VIDEO_BIT_RATE = "6M"
MEDIA_SECONDS = 6
TARGET_LATENCY_P50_MS = 5.0
TARGET_LATENCY_P99_MS = 20.0
TARGET_TTFF_MS = 500.0
TTFF_JOINS = 3
EXTRA_VIEWERS = 4
BENCH_KEY = "benchkey"
BENCH_SECRET = "bench-secret-not-for-production-0123456789abcdef"
CALL_TYPE, CALL_ID, HOST = "default", "bench", "host"
STARTUP_TIMEOUT = 30.0


def make_media(directory: Path, seconds: int = MEDIA_SECONDS) -> Path:
    """1080p30 H.264 High at 6 Mbit/s (a moving, noisy test pattern that needs the bits), a 2 s
    GOP, no B-frames, and stereo AAC 48 kHz 160 kbit/s (OBS's defaults): an FLV file, made with
    the ffmpeg CLI."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the bridge benchmark needs the ffmpeg CLI (apt-get install ffmpeg)")
    path = directory / "bench-1080p30.flv"
    cmd = [
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS},noise=alls=10:allf=t",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", "superfast", "-profile:v", "high", "-bf", "0",
        "-g", str(FPS * GOP_S), "-keyint_min", str(FPS * GOP_S), "-sc_threshold", "0",
        "-b:v", VIDEO_BIT_RATE, "-maxrate", VIDEO_BIT_RATE, "-bufsize", VIDEO_BIT_RATE,
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-b:a", "160k", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=300)
    return path


def _row(name: str, value: float, unit: str, target: str, ok: bool | None) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok}


class _Probe:
    """RTMP video message arrival → the track's ``recv()`` return, in seconds."""

    def __init__(self) -> None:
        self.arrivals: OrderedDict[int, float] = OrderedDict()
        self.samples: list[float] = []
        self.recording = False
        self.latest_dts: int | None = None

    def on_video(self, timestamp: int) -> None:
        self.arrivals[timestamp] = time.perf_counter()
        self.latest_dts = timestamp
        if len(self.arrivals) > 10 * FPS:
            self.arrivals.popitem(last=False)

    def on_recv(self, track: Any, unit: Any) -> None:
        if not self.recording or track.kind != "video":
            return
        arrived = self.arrivals.get(unit.dts)
        if arrived is not None:
            self.samples.append(time.perf_counter() - arrived)


@contextlib.contextmanager
def _instrumented(probe: _Probe) -> Any:
    """Install the probe: the ingress side is wrapped here (bench process only)."""
    from ingest.ingress import RtmpPublisher
    from ingest.webrtc.tracks import HubPacketTrack

    original = RtmpPublisher.on_video

    def on_video(self: RtmpPublisher, timestamp: int, payload: bytes) -> None:
        probe.on_video(timestamp)
        original(self, timestamp, payload)

    RtmpPublisher.on_video = on_video  # type: ignore[method-assign]
    HubPacketTrack.probe = probe.on_recv
    try:
        yield
    finally:
        RtmpPublisher.on_video = original  # type: ignore[method-assign]
        HubPacketTrack.probe = None


class _Child(JsonChild):
    """A viewer child process: line commands in, JSON lines out."""

    @classmethod
    async def start(cls, url: str, token: str, *, decode: bool) -> _Child:
        args = [sys.executable, "-m", "ingest.bench.bridge", "viewers", url, token]
        if decode:
            args.append("--decode")
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        child = cls(proc, STARTUP_TIMEOUT)
        await child.expect("ready")
        return child

    async def ask(self, command: str, event: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.expect(event)


async def _cpu_percent(window: float) -> float:
    """This process's CPU time over ``window`` seconds of wall time, in % of one core."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(window)
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100


@contextlib.asynccontextmanager
async def _server(data_dir: Path) -> AsyncIterator[Any]:
    from ingest.app import App
    from ingest.config import load

    settings = load(
        None,
        environ={},
        data_dir=data_dir,
        host="127.0.0.1",
        http_port=0,
        rtmp_port=0,
        public_host="127.0.0.1",
        api_key=BENCH_KEY,
        api_secret=BENCH_SECRET,
    )
    app = App(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def _create_call(base: str) -> str:
    """The host user and the call (through :mod:`ingest.client`); returns the RTMP address."""
    from ingest.calls.wire import CallRequest, MemberRequest, UserRequest
    from ingest.client import AsyncClient

    async with AsyncClient(base, BENCH_KEY, secret=BENCH_SECRET) as api:
        await api.upsert_users(UserRequest(id=HOST))
        request = CallRequest(created_by_id=HOST, members=[MemberRequest(user_id=HOST)])
        call = (await api.get_or_create_call(CALL_TYPE, CALL_ID, request)).call
        return call.ingress.rtmp.address


async def _bench(seconds: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from ingest.calls.tokens import create_token
    from ingest.media.hub import TrackAdded
    from ingest.media.units import Kind

    window = max(5.0, 3 * seconds)
    probe = _Probe()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        log("making 1080p30 test media with ffmpeg…")
        media = await asyncio.to_thread(make_media, Path(tmp))
        async with _server(Path(tmp) / "data") as app:
            base = f"http://127.0.0.1:{app.http_port}"
            address = await _create_call(base)
            token = create_token(BENCH_SECRET, HOST, ttl=3600)
            whep = f"{base}/whep/{CALL_TYPE}/{CALL_ID}/{HOST}"
            cid = f"{CALL_TYPE}:{CALL_ID}"
            with _instrumented(probe), app.hub.watch(cid) as watch:
                ffmpeg = await asyncio.create_subprocess_exec(
                    "ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
                    "-i", str(media), "-c", "copy", "-f", "flv", f"{address}/{token}",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                children: list[_Child] = []
                try:
                    video = None
                    kinds: set[Kind] = set()
                    while len(kinds) < 2:
                        event = await asyncio.wait_for(watch.get(), STARTUP_TIMEOUT)
                        if isinstance(event, TrackAdded):
                            kinds.add(event.kind)
                            if event.kind is Kind.VIDEO:
                                video = event.track
                    assert video is not None
                    await asyncio.sleep(2.0)  # past the start
                    log(f"measuring ingest only ({window:.0f} s)…")
                    cpu0 = await _cpu_percent(window)

                    viewers = await _Child.start(whep, token, decode=False)
                    children.append(viewers)
                    await viewers.ask("add 1", "added")
                    await asyncio.sleep(1.0)  # the bridges' transcoder started, caught up
                    log(f"measuring 1 viewer ({window:.0f} s)…")
                    probe.recording = True
                    cpu1 = await _cpu_percent(window)
                    probe.recording = False
                    latency_1 = probe.samples
                    probe.samples = []
                    stats1 = await viewers.ask("stats", "stats")

                    await viewers.ask(f"add {EXTRA_VIEWERS}", "added")
                    await asyncio.sleep(1.0)
                    log(f"measuring {1 + EXTRA_VIEWERS} viewers ({window:.0f} s)…")
                    probe.recording = True
                    frames0 = (await viewers.ask("stats", "stats"))["frames"]
                    cpu5 = await _cpu_percent(window)
                    probe.recording = False
                    frames1 = (await viewers.ask("stats", "stats"))["frames"]
                    latency_5 = probe.samples
                    await viewers.stop()

                    log(f"time to first frame, {TTFF_JOINS} joins in mid-GOP…")
                    joiner = await _Child.start(whep, token, decode=True)
                    children.append(joiner)
                    ttff: list[float] = []
                    for _ in range(TTFF_JOINS):
                        await _mid_gop(video, probe)
                        ttff.append(float((await joiner.ask("join", "ttff"))["ms"]))
                finally:
                    for child in children:
                        await child.stop()
                    if ffmpeg.returncode is None:
                        ffmpeg.terminate()
                    await ffmpeg.wait()

    delivered = [
        (b - a) / window for a, b in zip(frames0, frames1, strict=True)
    ]  # per-viewer fps while measuring
    extra = (cpu5 - cpu1) / EXTRA_VIEWERS
    lat = sorted(latency_1 + latency_5)
    p50 = _percentile(lat, 50) * 1000
    p99 = _percentile(lat, 99) * 1000
    worst = max(ttff)
    rows = [
        _row("Bridge 1080p30 6 Mbit/s: server CPU, ingest only", cpu0, "% core", "(info)", None),
        {
            **_row("Bridge: server CPU, 1 stream + 1 viewer", cpu1, "% core", "", None),
            "compare_to": "stream",  # the ratio to the ffmpeg baseline is set by run_all
            "judged_by": "Compare",  # the server in its own process, no probe (compare.py)
        },
        {
            **_row(
                f"Bridge: extra CPU per viewer (1 → {1 + EXTRA_VIEWERS})", extra, "% core", "", None
            ),
            "compare_to": "viewer",
            "judged_by": "Fan-out",
        },
        _row(
            "Bridge: RTMP message → RTP send, p50",
            p50,
            "ms",
            f"<= {TARGET_LATENCY_P50_MS:g} ms",
            p50 <= TARGET_LATENCY_P50_MS,
        ),
        _row(
            "Bridge: RTMP message → RTP send, p99",
            p99,
            "ms",
            f"<= {TARGET_LATENCY_P99_MS:g} ms",
            p99 <= TARGET_LATENCY_P99_MS,
        ),
        _row(
            f"Bridge: first frame, mid-GOP join (worst of {TTFF_JOINS})",
            worst,
            "ms",
            f"< {TARGET_TTFF_MS:g} ms",
            worst < TARGET_TTFF_MS,
        ),
        _row(
            f"Bridge: video fps per viewer ({1 + EXTRA_VIEWERS} viewers, lowest)",
            min(delivered),
            "fps",
            f">= {FPS - 2} fps (sanity: all media delivered)",
            min(delivered) >= FPS - 2,
        ),
    ]
    log(
        f"  ({len(latency_1)} + {len(latency_5)} latency samples; time to first frame "
        f"{', '.join(f'{t:.0f}' for t in ttff)} ms; 1-viewer frames {stats1['frames']})"
    )
    return rows


BF_GOP_FRAMES = 250
"""OBS 29's default x264 keyframe interval ("0 = auto", 250 frames, 8.3 s at 30 fps)."""
BF_B_FRAMES = 2
"""OBS's x264 default."""
BF_JOIN_POSITIONS = (0.3, 0.6, 0.9)
"""Where in the source's GOP each first viewer joins (fraction of the GOP)."""


async def _bench_first_frame_bframes(log: Callable[[str], None]) -> dict[str, Any]:
    """The first viewer's first frame when the bridge has to start its B-frame transcoder on a
    long cached GOP: a fresh bridge per join (the previous viewer left, the bridge stopped)."""
    from ingest.bench.compare import make_media as make_any_media
    from ingest.calls.tokens import create_token
    from ingest.media.hub import TrackAdded
    from ingest.media.units import Kind

    probe = _Probe()
    gop_ms = BF_GOP_FRAMES * 1000 / FPS
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        log(f"making 1080p30 test media with B-frames and a {gop_ms / 1000:.1f} s GOP…")
        media = await asyncio.to_thread(
            make_any_media,
            Path(tmp),
            seconds=BF_GOP_FRAMES / FPS,
            gop_frames=BF_GOP_FRAMES,
            b_frames=BF_B_FRAMES,
            name="bench-bframes.flv",
        )
        async with _server(Path(tmp) / "data") as app:
            base = f"http://127.0.0.1:{app.http_port}"
            address = await _create_call(base)
            token = create_token(BENCH_SECRET, HOST, ttl=3600)
            whep = f"{base}/whep/{CALL_TYPE}/{CALL_ID}/{HOST}"
            with _instrumented(probe), app.hub.watch(f"{CALL_TYPE}:{CALL_ID}") as watch:
                ffmpeg = await asyncio.create_subprocess_exec(
                    "ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
                    "-i", str(media), "-c", "copy", "-f", "flv", f"{address}/{token}",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                joiner: _Child | None = None
                try:
                    video = None
                    while video is None:
                        event = await asyncio.wait_for(watch.get(), STARTUP_TIMEOUT)
                        if isinstance(event, TrackAdded) and event.kind is Kind.VIDEO:
                            video = event.track
                    joiner = await _Child.start(whep, token, decode=True)
                    ttff: list[float] = []
                    for where in BF_JOIN_POSITIONS:
                        await _gop_position(video, probe, where * gop_ms, where * gop_ms + 300)
                        ttff.append(float((await joiner.ask("join", "ttff"))["ms"]))
                        deadline = time.monotonic() + STARTUP_TIMEOUT
                        while app.sfu.bridge(video) is not None:  # the bridge stops: next is first
                            if time.monotonic() > deadline:
                                raise RuntimeError("the bridge did not stop after its viewer left")
                            await asyncio.sleep(0.05)
                finally:
                    if joiner is not None:
                        await joiner.stop()
                    if ffmpeg.returncode is None:
                        ffmpeg.terminate()
                    await ffmpeg.wait()
    log(f"  first frames {', '.join(f'{t:.0f}' for t in ttff)} ms")
    worst = max(ttff)
    return _row(
        f"Bridge: first frame, first viewer, B-frames + {gop_ms / 1000:.1f} s GOP "
        f"(worst of {len(ttff)})",
        worst,
        "ms",
        f"< {TARGET_TTFF_MS:g} ms",
        worst < TARGET_TTFF_MS,
    )


def bench_first_frame_bframes(log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The B-frames + long GOP first-frame row (about 40 s, most of it making the media)."""
    return asyncio.run(_bench_first_frame_bframes(log or (lambda _: None)))


async def _gop_position(video: Any, probe: _Probe, low_ms: float, high_ms: float) -> None:
    """Wait until the source is between ``low_ms`` and ``high_ms`` after its GOP's keyframe."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        start, latest = video.cache_start, probe.latest_dts
        if start is not None and latest is not None and low_ms <= latest - start <= high_ms:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the source's GOP position is unknown")


async def _mid_gop(video: Any, probe: _Probe) -> None:
    """Wait until the source is in the middle of a GOP (about 1 s after its keyframe)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        start, latest = video.cache_start, probe.latest_dts
        if start is not None and latest is not None:
            into = latest - start
            if GOP_S * 1000 * 0.4 <= into <= GOP_S * 1000 * 0.6:
                return
        await asyncio.sleep(0.01)
    raise RuntimeError("the source's GOP position is unknown")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def bench_bridge(
    seconds: float = 2.0, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run the bridge benchmarks (about a minute); rows of {name, value, unit, target, ok}."""
    return asyncio.run(_bench(seconds, log or (lambda _: None)))


# -- the viewer child process ------------------------------------------------------------------


class _NoDecoder:
    """Stands in for aiortc's decoders in the CPU benchmark's viewers: frames are dropped."""

    def decode(self, encoded_frame: Any) -> list[Any]:
        return []


def _no_decoder(codec: Any) -> Any:
    return _NoDecoder()


def _chrome_like_h264() -> None:
    """Offer H.264 High like Chrome (aiortc alone offers Constrained Baseline only)."""
    from aiortc.codecs import CODECS

    from ingest.webrtc.negotiation import high_profile_viewer_codecs

    CODECS["video"] = [*high_profile_viewer_codecs("640028"), *CODECS["video"]]


class _ViewerProcess:
    def __init__(self, url: str, token: str, decode: bool) -> None:
        self.url = url
        self.token = token
        self.decode = decode
        self.pcs: list[Any] = []
        self.frames: list[int] = []
        self.tasks: dict[int, list[asyncio.Task[None]]] = {}

    def say(self, event: str, **data: Any) -> None:
        print(json.dumps({"event": event, **data}), flush=True)

    async def connect(self) -> tuple[Any, asyncio.Future[float], float]:
        """One viewer; returns (pc, first video frame future, offer POST time)."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
        from aiortc.rtp import RtpPacket

        loop = asyncio.get_running_loop()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        first: asyncio.Future[float] = loop.create_future()
        index = len(self.frames)
        self.frames.append(0)
        video = pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        if not self.decode:
            handle = video.receiver._handle_rtp_packet
            last_ts: list[int] = []

            async def counted(packet: RtpPacket, arrival_time_ms: int) -> None:
                if packet.payload_type != 104 and (not last_ts or packet.timestamp != last_ts[0]):
                    last_ts[:] = [packet.timestamp]
                    self.frames[index] += 1
                    if not first.done():
                        first.set_result(time.perf_counter())
                await handle(packet, arrival_time_ms)

            video.receiver._handle_rtp_packet = counted  # type: ignore[method-assign]

        tasks: list[asyncio.Task[None]] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            async def consume() -> None:
                while True:
                    try:
                        await track.recv()
                    except MediaStreamError:
                        return
                    if track.kind == "video":
                        self.frames[index] += 1
                        if not first.done():
                            first.set_result(time.perf_counter())

            if self.decode:
                tasks.append(asyncio.create_task(consume()))

        await pc.setLocalDescription(await pc.createOffer())
        posted = time.perf_counter()
        async with httpx.AsyncClient() as http:
            resp = await http.post(
                self.url,
                content=pc.localDescription.sdp,
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {self.token}",
                },
            )
        if resp.status_code != 201:
            raise RuntimeError(f"WHEP answered {resp.status_code}: {resp.text}")
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
        self.tasks[id(pc)] = tasks
        return pc, first, posted

    async def close(self, pc: Any) -> None:
        await pc.close()
        for task in self.tasks.pop(id(pc), []):
            task.cancel()

    async def run(self) -> None:
        if not self.decode:
            import aiortc.rtcrtpreceiver

            aiortc.rtcrtpreceiver.get_decoder = _no_decoder  # type: ignore[attr-defined]
        _chrome_like_h264()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.say("ready")
        while line := (await reader.readline()).decode().strip():
            command, _, arg = line.partition(" ")
            try:
                await self.handle(command, arg)
            except Exception as exc:
                self.say("error", message=f"{type(exc).__name__}: {exc}")
        for pc in self.pcs:
            await self.close(pc)

    async def handle(self, command: str, arg: str) -> None:
        if command == "add":
            firsts = []
            for _ in range(int(arg)):
                pc, first, _posted = await self.connect()
                self.pcs.append(pc)
                firsts.append(first)
            await asyncio.wait_for(asyncio.gather(*firsts), STARTUP_TIMEOUT)
            self.say("added", viewers=len(self.pcs))
        elif command == "stats":
            self.say("stats", frames=list(self.frames))
        elif command == "join":
            pc, first, posted = await self.connect()
            try:
                shown = await asyncio.wait_for(first, STARTUP_TIMEOUT)
                self.say("ttff", ms=(shown - posted) * 1000)
            finally:
                await self.close(pc)
        else:
            self.say("error", message=f"unknown command {command!r}")


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        verdict = {True: "yes", False: "NO", None: ""}[r["ok"]]
        print(f"{r['name']:<60} {r['value']:>9.1f} {r['unit']:<7} {r['target']:<22} {verdict}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["viewers"]:
        url, token = argv[1], argv[2]
        asyncio.run(_ViewerProcess(url, token, "--decode" in argv).run())
        return
    seconds = float(argv[0]) if argv else 2.0
    _print_rows(bench_bridge(seconds, log=lambda m: print(m, file=sys.stderr, flush=True)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
