"""``ingest bench floor``: our data path with none of the layers between its parts.

One process (``python -m ingest.bench.floor``) runs the parts of this server that touch every
RTMP message, and nothing else: our RTMP server (:mod:`ingest.rtmp`), our FLV reader
(:class:`~ingest.flv.tags.TagReader`), our AAC → Opus (:class:`~ingest.media.codecs.opus.
AacToOpus`), our H.264 packetizer and our send loop (:class:`~ingest.webrtc.sending.UdpBatcher`:
RTP header, SRTP in place, a frame's packets in one GSO ``sendmsg``). Each message goes from the
socket to the UDP send in one call: no hub, no bridges, no tasks between them, no aiortc (no
ICE, DTLS or RTCP). It sends to the ffmpeg baseline's plain UDP sinks, which count packets
without decrypting them, so the three systems are measured alike.

What it is for: the CPU that the server's layers (hub and GOP cache, bridges, aiortc's sender
and its RTCP, the event-loop turns between them) add to the work every design must do in
Python. ``ours / floor`` is that overhead; ``floor / ffmpeg`` is how close Python with these
parts can get to the C baseline at all. It is a measuring instrument, not a server: one
publisher per stream key ``s<i>``, sent to the i-th sink, no authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pylibsrtp import Policy
from pylibsrtp import Session as SrtpSession

from ingest.bench.compare import (
    FPS,
    Baseline,
    Ours,
    Plan,
    Sample,
    _listening,
    _measure,
    _Probes,
    _probes,
    _push,
    _spawn,
    _stop,
    _wait_for,
    await_video,
    free_port,
    make_media,
)
from ingest.errors import MediaError
from ingest.flv.tags import TagReader
from ingest.media.codecs.opus import AacToOpus
from ingest.media.timeline import Timeline
from ingest.media.units import AudioConfig, MediaUnit
from ingest.rtmp.server import PublishRequest, RTMPServer
from ingest.webrtc.aiortc_compat import UdpRoute, srtp_context
from ingest.webrtc.packing import packetize_h264
from ingest.webrtc.sending import UdpBatcher

FLOOR_STREAMS = (1, 8)
"""Streams (one viewer each) ``ingest bench floor`` measures: the issue's two CPU targets."""
FLOOR_RUNS = 2
"""Interleaved runs of each system at each number of streams (the medians are reported)."""
VIDEO_PAYLOAD_TYPE = 102
AUDIO_PAYLOAD_TYPE = 111
_VERSION_2 = 0x80
_VIDEO_CLOCK_PER_MS = 90


class _Output:
    """One RTP stream to one sink: sequence numbers, SSRC, SRTP, the UDP route."""

    def __init__(self, sock: socket.socket, transport: Any, port: int, key: bytes) -> None:
        # kept: the route holds a pointer into this session's libsrtp context
        self.session = SrtpSession(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        self.route = UdpRoute(srtp_context(self.session), transport, sock, ("127.0.0.1", port))
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self.sequence_number = 0
        self.batcher = UdpBatcher()

    def send(self, payloads: list[bytes], payload_type: int, timestamp: int) -> None:
        self.batcher.send_unit(
            self.route, payloads, _VERSION_2, payload_type, self.sequence_number,
            timestamp & 0xFFFFFFFF, self.ssrc, b"",
        )  # fmt: skip
        self.sequence_number = (self.sequence_number + len(payloads)) & 0xFFFF


class FloorSession:
    """One publish: its messages parsed, transcoded, packetized and sent inline."""

    def __init__(self, video: _Output, audio: _Output) -> None:
        self.reader = TagReader(Timeline())
        self.video = video
        self.audio = audio
        self._opus: AacToOpus | None = None
        self._opus_source: AudioConfig | None = None

    def on_metadata(self, metadata: dict[str, object]) -> None:
        self.reader.on_metadata(metadata)

    def on_audio(self, timestamp: int, payload: bytes) -> None:
        for unit in self.reader.audio(timestamp, payload):
            config = self.reader.audio_config
            assert config is not None
            if self._opus is None or config != self._opus_source:
                self._opus, self._opus_source = AacToOpus(config), config
            for packet in self._opus.feed(unit):
                self.audio.send([packet.data], AUDIO_PAYLOAD_TYPE, packet.pts)  # 48 kHz

    def on_video(self, timestamp: int, payload: bytes) -> None:
        units: list[MediaUnit] = self.reader.video(timestamp, payload)
        for unit in units:
            payloads = packetize_h264(unit.data)
            if payloads:
                self.video.send(payloads, VIDEO_PAYLOAD_TYPE, unit.pts * _VIDEO_CLOCK_PER_MS)

    async def on_close(self, reason: str | None) -> None:
        pass


class FloorHandler:
    """Accepts stream key ``s<i>`` and sends it to the i-th ``[video, _, audio, _]`` sink."""

    def __init__(self, sinks: Sequence[Sequence[int]], sock: socket.socket, transport: Any) -> None:
        self.sinks = sinks
        self.sock = sock
        self.transport = transport
        self.key = os.urandom(30)  # 16-byte key + 14-byte salt, like the baseline's

    async def on_publish(
        self, request: PublishRequest, disconnect: Callable[[str], None]
    ) -> FloorSession:
        try:
            index = int(request.stream_key.removeprefix("s"))
            video, _, audio, _ = self.sinks[index]
        except (ValueError, IndexError):
            raise MediaError(f"the floor knows stream keys s0 to s{len(self.sinks) - 1}") from None
        return FloorSession(
            _Output(self.sock, self.transport, video, self.key),
            _Output(self.sock, self.transport, audio, self.key),
        )


async def serve(port: int, sinks: Sequence[Sequence[int]]) -> None:
    """Listen on 127.0.0.1:``port`` until cancelled."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
    server = RTMPServer(FloorHandler(sinks, sock, transport), "127.0.0.1", port)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
        transport.close()


class Floor:
    """The floor process as a measured system (like :class:`~ingest.bench.compare.Baseline`)."""

    name = "floor"

    async def run(self, media: Path, streams: int, probes: _Probes, plan: Plan) -> Sample:
        sinks: list[list[int]] = []
        for _ in range(streams):
            sinks += (await probes.pick().ask("sinks", cmd="sink", count=1))["ports"]
        port = free_port()
        server = await _spawn(
            sys.executable, "-m", "ingest.bench.floor", "--port", str(port),
            "--sinks", json.dumps(sinks),
        )  # fmt: skip
        pushers: list[asyncio.subprocess.Process] = []
        try:
            await _wait_for(lambda: _listening(port), "the floor to listen")
            for i in range(streams):
                pushers.append(await _push(media, f"rtmp://127.0.0.1:{port}/live/s{i}"))
            await await_video(probes, [server], "the floor")
            return await _measure(self.name, streams, 1, [server.pid], probes, plan)
        finally:
            await probes.close()
            for p in pushers:
                await _stop(p)
            await _stop(server)


@dataclass
class FloorReport:
    """Samples of the three systems, by number of streams."""

    samples: dict[int, dict[str, list[Sample]]] = field(default_factory=dict)

    def median(self, streams: int, system: str) -> float | None:
        """Median CPU per stream of the system's measured runs (``None``: none measured)."""
        values = [s.cpu_per_stream for s in self.samples.get(streams, {}).get(system, []) if s.ok()]
        return statistics.median(values) if values else None

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for streams in sorted(self.samples):
            ours, floor, base = (self.median(streams, n) for n in ("ingest", "floor", "ffmpeg"))
            rows.append(
                {
                    "streams": streams,
                    "ingest": ours,
                    "floor": floor,
                    "ffmpeg": base,
                    "ingest/ffmpeg": _ratio(ours, base),
                    "floor/ffmpeg": _ratio(floor, base),
                    "ingest/floor": _ratio(ours, floor),
                }
            )
        return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


async def _run(
    streams: Sequence[int], runs: int, plan: Plan, log: Callable[[str], None]
) -> FloorReport:
    report = FloorReport()
    with tempfile.TemporaryDirectory(prefix="ingest-floor-") as tmp:
        log(f"making {plan.height}p{FPS} test media with ffmpeg…")
        media = await asyncio.to_thread(
            make_media, Path(tmp), width=plan.width, height=plan.height,
            video_bit_rate=plan.video_bit_rate,
        )  # fmt: skip
        ours, floor, base = Ours(Path(tmp) / "data"), Floor(), Baseline()
        await ours.start()
        try:
            async with _probes() as probes:
                for n in streams:
                    by_system = report.samples.setdefault(n, {})
                    for i in range(runs):
                        log(f"{n} stream(s), run {i + 1}/{runs}…")
                        for name in ("ingest", "floor", "ffmpeg"):
                            try:
                                if name == "ingest":
                                    sample = await ours.run(media, n, 1, probes, plan)
                                elif name == "floor":
                                    sample = await floor.run(media, n, probes, plan)
                                else:
                                    sample = await base.run(media, n, 1, probes, plan)
                            except (RuntimeError, TimeoutError) as e:
                                log(f"  {name}: not measured: {e}")
                                await probes.restart()
                                continue
                            by_system.setdefault(name, []).append(sample)
                            log(
                                f"  {name:>6}: CPU {sample.cpu_per_stream:.2f} %/stream, "
                                f"fps >= {sample.min_fps:.1f}, lost {sample.lost}"
                            )
        finally:
            await ours.stop()
    return report


def run(
    streams: Sequence[int] = FLOOR_STREAMS,
    runs: int = FLOOR_RUNS,
    plan: Plan | None = None,
    log: Callable[[str], None] | None = None,
) -> FloorReport:
    """Measure ours, the floor and ffmpeg, interleaved (blocking; ~2.5 minutes by default)."""
    return asyncio.run(_run(streams, runs, plan or Plan(), log or (lambda _: None)))


def markdown(report: FloorReport) -> str:
    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        "| streams | ingest %/stream | floor %/stream | ffmpeg %/stream "
        "| ingest / ffmpeg | floor / ffmpeg | ingest / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.rows():
        lines.append(
            f"| {r['streams']} | {cell(r['ingest'], 2)} | {cell(r['floor'], 2)} "
            f"| {cell(r['ffmpeg'], 2)} | {cell(r['ingest/ffmpeg'], 2)} "
            f"| {cell(r['floor/ffmpeg'], 2)} | {cell(r['ingest/floor'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """The floor process: ``--port`` to listen on, ``--sinks`` as JSON
    (``[[video, video_rtcp, audio, audio_rtcp], ...]``, one per stream key ``s<i>``)."""
    parser = argparse.ArgumentParser(prog="python -m ingest.bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sinks", required=True)
    args = parser.parse_args(argv)
    sinks = json.loads(args.sinks)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, sinks))


if __name__ == "__main__":
    main()
