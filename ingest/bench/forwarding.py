"""Forwarding benchmark: one 2.5 Mbit/s VP8 + Opus WHIP publisher into WHEP viewers.

The App runs in this process; the publisher (aiortc, VP8 from moving 960x540 pictures at 30 fps
held at 2.5 Mbit/s, Opus from a tone) and the viewers (``python -m ingest.bench.bridge viewers``,
receiving every packet without decoding) run in child processes, so only the server's CPU is
counted. The server forwards the publisher's RTP payloads as received: per viewer only the RTP
header and SRTP are new.

Measured:

* server CPU with the publisher and no viewer, one viewer, five viewers; the extra CPU per viewer
  is ``(cpu5 - cpu1) / 4``, judged by its ratio to the ffmpeg ``tee`` baseline's extra CPU per
  viewer in the same run's fan-out (:mod:`.compare`; ``ingest bench`` sets it): the same
  per-viewer job (RTP header, SRTP, send), target at most
  :data:`~ingest.bench.compare.TARGET_RATIO_PER_VIEWER` x ffmpeg's;
* time to first frame for a viewer that joins seconds after the publisher's last keyframe (aiortc
  makes VP8 keyframes only at start and on request): from its offer POST to its first decoded
  frame, worst of three joins. It starts only because its join asks the publisher for one (PLI).

Run ``python -m ingest.bench.forwarding`` for these alone, or ``ingest bench`` for everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .bridge import (
    BENCH_SECRET,
    CALL_ID,
    CALL_TYPE,
    EXTRA_VIEWERS,
    HOST,
    STARTUP_TIMEOUT,
    TTFF_JOINS,
    _Child,
    _cpu_percent,
    _create_call,
    _row,
    _server,
)
from .child import stop_process

WIDTH, HEIGHT, FPS = 960, 540, 30
VIDEO_BIT_RATE = 2_500_000
NOISE_PATCH = 96
"""Side of the square of fresh noise in each picture: what makes the encoder spend its bits."""
TARGET_TTFF_MS = 500.0
JOIN_AFTER_S = 2.0
"""A late joiner comes at least this long after the publisher's previous keyframe."""


class _PublisherChild:
    """The WHIP publisher child process: ``ready`` / ``keyframes N`` JSON lines out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.keyframes = 0
        self.last_keyframe = 0.0
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def start(cls, url: str, token: str) -> _PublisherChild:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ingest.bench.forwarding",
            "publisher",
            url,
            token,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        child = cls(proc)
        child._reader = asyncio.create_task(child._read())
        await asyncio.wait_for(child._ready, STARTUP_TIMEOUT)
        return child

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if message["event"] == "ready" and not self._ready.done():
                self._ready.set_result(None)
            elif message["event"] == "keyframe":
                self.keyframes += 1
                self.last_keyframe = time.monotonic()
            elif message["event"] == "error" and not self._ready.done():
                self._ready.set_exception(RuntimeError(f"publisher: {message['message']}"))
        if not self._ready.done():
            self._ready.set_exception(RuntimeError("the publisher process ended"))

    async def stop(self) -> None:
        await stop_process(self.proc)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def _after_keyframe(publisher: _PublisherChild) -> None:
    """Until :data:`JOIN_AFTER_S` after the publisher's last keyframe (it makes none unasked)."""
    await _wait_for(lambda: publisher.keyframes > 0)
    delay = publisher.last_keyframe + JOIN_AFTER_S - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)  # a point in time, not a condition


async def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark's publisher sent no keyframe")
        await asyncio.sleep(0.05)


async def _bench(seconds: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from ingest.calls.tokens import create_token
    from ingest.media.hub import TrackAdded
    from ingest.media.units import Kind

    window = max(5.0, 3 * seconds)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-whip-") as tmp:
        async with _server(Path(tmp) / "data") as app:
            base = f"http://127.0.0.1:{app.http_port}"
            await _create_call(base)
            token = create_token(BENCH_SECRET, HOST, ttl=3600)
            whip = f"{base}/whip/{CALL_TYPE}/{CALL_ID}"
            whep = f"{base}/whep/{CALL_TYPE}/{CALL_ID}/{HOST}"
            cid = f"{CALL_TYPE}:{CALL_ID}"
            children: list[Any] = []
            with app.hub.watch(cid) as watch:
                publisher = await _PublisherChild.start(whip, token)
                children.append(publisher)
                try:
                    kinds: set[Kind] = set()
                    while len(kinds) < 2:
                        event = await asyncio.wait_for(watch.get(), STARTUP_TIMEOUT)
                        if isinstance(event, TrackAdded):
                            kinds.add(event.kind)
                    await asyncio.sleep(2.0)  # past the start
                    log(f"WHIP publisher: measuring ingest only ({window:.0f} s)…")
                    cpu0 = await _cpu_percent(window)
                    (participant,) = app.calls.list_participants(cid)
                    health = participant.health() if participant.health else {}

                    viewers = await _Child.start(whep, token, decode=False)
                    children.append(viewers)
                    await viewers.ask("add 1", "added")
                    await asyncio.sleep(1.0)
                    log(f"measuring 1 forwarded viewer ({window:.0f} s)…")
                    cpu1 = await _cpu_percent(window)
                    await viewers.ask(f"add {EXTRA_VIEWERS}", "added")
                    await asyncio.sleep(1.0)
                    log(f"measuring {1 + EXTRA_VIEWERS} forwarded viewers ({window:.0f} s)…")
                    frames0 = (await viewers.ask("stats", "stats"))["frames"]
                    cpu5 = await _cpu_percent(window)
                    frames1 = (await viewers.ask("stats", "stats"))["frames"]
                    await viewers.stop()

                    log(f"time to first frame, {TTFF_JOINS} late joins (keyframes on request)…")
                    joiner = await _Child.start(whep, token, decode=True)
                    children.append(joiner)
                    ttff: list[float] = []
                    for _ in range(TTFF_JOINS):
                        await _after_keyframe(publisher)
                        ttff.append(float((await joiner.ask("join", "ttff"))["ms"]))
                finally:
                    for child in children:
                        await child.stop()

    delivered = [(b - a) / window for a, b in zip(frames0, frames1, strict=True)]
    extra = (cpu5 - cpu1) / EXTRA_VIEWERS
    worst = max(ttff)
    kbps = float(health.get("bitrate_kbps") or 0.0)
    log(
        f"  (publisher {kbps:.0f} kbit/s; keyframes {publisher.keyframes}; first frames "
        f"{', '.join(f'{t:.0f}' for t in ttff)} ms; fps per viewer "
        f"{', '.join(f'{d:.1f}' for d in delivered)})"
    )
    return [
        _row("WHIP VP8 + Opus: publisher bit rate at the server", kbps, "kbit/s", "(info)", None),
        _row("WHIP forwarding: server CPU, publisher only", cpu0, "% core", "(info)", None),
        _row("WHIP forwarding: server CPU, 1 viewer", cpu1, "% core", "(info)", None),
        per_viewer_row(extra),
        _row(
            f"WHIP forwarding: first frame, late join (worst of {TTFF_JOINS})",
            worst,
            "ms",
            f"< {TARGET_TTFF_MS:g} ms",
            worst < TARGET_TTFF_MS,
        ),
        _row(
            f"WHIP forwarding: video fps per viewer ({1 + EXTRA_VIEWERS} viewers, lowest)",
            min(delivered),
            "fps",
            f">= {FPS - 2} fps (sanity)",
            min(delivered) >= FPS - 2,
        ),
    ]


def per_viewer_row(extra: float) -> dict[str, Any]:
    """The extra CPU per forwarded viewer (% of a core, shown as measured), to be judged by
    :func:`ingest.bench.apply_baseline` against the ffmpeg ``tee`` baseline's extra CPU per
    viewer measured in the same run (the same per-viewer job: RTP header, SRTP, send)."""
    return {
        **_row(
            f"WHIP forwarding: extra CPU per viewer (1 → {1 + EXTRA_VIEWERS})",
            extra,
            "% core",
            "(ratio to ffmpeg + tee: set by ingest bench)",
            None,
        ),
        "compare_to": "viewer",
    }


def bench_forwarding(
    seconds: float = 2.0, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    return asyncio.run(_bench(seconds, log or (lambda _: None)))


# --- the publisher child --------------------------------------------------------------------


def _say(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


async def _publish(url: str, token: str) -> None:
    import av
    import numpy as np
    from aiortc import (
        RTCConfiguration,
        RTCPeerConnection,
        RTCSessionDescription,
        VideoStreamTrack,
    )
    from aiortc.codecs import get_capabilities, vpx
    from aiortc.mediastreams import AudioStreamTrack
    from aiortc.rtp import RtpPacket, is_rtcp

    from ingest.webrtc.forwarding import vp8_keyframe

    # 2.5 Mbit/s whatever the receiver estimates (aiortc clamps to 1.5 Mbit/s and follows REMB)
    vpx.DEFAULT_BITRATE = vpx.MAX_BITRATE = VIDEO_BIT_RATE
    fixed = property(lambda self: VIDEO_BIT_RATE, lambda self, value: None)
    vpx.Vp8Encoder.target_bitrate = fixed  # type: ignore[assignment,method-assign]
    rng = np.random.default_rng(1)

    class Pictures(VideoStreamTrack):
        """A moving gradient with a patch of fresh noise: ~2.5 Mbit/s of VP8 at 30 fps."""

        count = 0

        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            x = (np.arange(WIDTH) + self.count * 4) % 256
            y = np.broadcast_to(x.astype(np.uint8), (HEIGHT * 3 // 2, WIDTH)).copy()
            top = (self.count * 7) % (HEIGHT - NOISE_PATCH)
            y[top : top + NOISE_PATCH, :NOISE_PATCH] = rng.integers(
                0, 255, (NOISE_PATCH, NOISE_PATCH), dtype=np.uint8
            )
            self.count += 1
            frame = av.VideoFrame.from_ndarray(y, format="yuv420p")
            frame.pts, frame.time_base = pts, time_base
            return frame

    class Tone(AudioStreamTrack):
        samples = 0

        async def recv(self) -> av.AudioFrame:
            frame = await super().recv()  # paced 20 ms silence: give it a tone
            assert isinstance(frame, av.AudioFrame)
            t = (np.arange(frame.samples) + self.samples) / frame.sample_rate
            pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
            tone = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            tone.sample_rate, tone.pts = frame.sample_rate, frame.pts
            tone.time_base = fractions.Fraction(1, frame.sample_rate)
            self.samples += frame.samples
            return tone

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(Pictures(), direction="sendonly")
    video.setCodecPreferences(
        [c for c in get_capabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]
    )
    pc.addTransceiver(Tone(), direction="sendonly")
    transport = video.sender.transport
    send = transport._send_rtp
    ssrc = video.sender._ssrc

    async def tapped(data: bytes) -> None:
        if not is_rtcp(data):
            packet = RtpPacket.parse(data)
            if packet.ssrc == ssrc and vp8_keyframe(packet.payload)[0]:
                _say("keyframe")
        await send(data)

    transport._send_rtp = tapped  # type: ignore[method-assign]
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            url,
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
            timeout=STARTUP_TIMEOUT,
        )
    if resp.status_code != 201:
        _say("error", message=f"WHIP answered {resp.status_code}: {resp.text}")
        return
    await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    _say("ready")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until the parent closes stdin
    await pc.close()


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        verdict = {True: "yes", False: "NO", None: ""}[r["ok"]]
        print(f"{r['name']:<64} {r['value']:>9.1f} {r['unit']:<7} {r['target']:<18} {verdict}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["publisher"]:
        asyncio.run(_publish(argv[1], argv[2]))
        return
    _print_rows(bench_forwarding(log=lambda m: print(m, file=sys.stderr)))


if __name__ == "__main__":
    main(sys.argv[1:])
