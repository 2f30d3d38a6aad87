"""Bench viewers in a process apart from the server: they count RTP packets and never decode.

Run as ``python -m ingest.bench.probe``; JSON lines in on stdin, JSON lines out on stdout:

* ``{"cmd": "whep", "url": ..., "token": ...}``: a WebRTC viewer (aiortc: ICE, DTLS, SRTP) of our
  server; retried while the WHEP endpoint answers 404 (the stream is not up yet). Answers
  ``{"event": "added", "index": i}`` once its first video packet arrived.
* ``{"cmd": "sink", "count": n}``: ``n`` plain UDP sinks for the ffmpeg baseline (a video and an
  audio port, each with its RTCP port). The RTP header is not encrypted by SRTP, so counting needs
  no key. Answers ``{"event": "sinks", "first": i, "ports": [[video, video_rtcp, audio,
  audio_rtcp], ...]}``.
* ``{"cmd": "stats"}``: ``{"event": "stats", "viewers": [[video_frames, video_packets,
  audio_packets, lost], ...]}`` counted since each viewer started (``lost``: RTP sequence numbers
  never seen, all SSRCs).
* ``{"cmd": "close"}``: closes every viewer and sink, answers ``{"event": "closed"}``.

WebRTC viewers send no NACK (their aiortc receiver is bypassed after the SRTP layer), like the
baseline's sinks, so both count the same thing: packets the server sent that arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from typing import Any

import httpx

WHEP_RETRY_S = 0.2
WHEP_DEADLINE_S = 30.0
RECEIVE_BUFFER = 4 * 1024 * 1024
"""SO_RCVBUF of every viewer socket (both systems alike; capped by net.core.rmem_max): a 1080p
keyframe is a burst of ~100 datagrams, more than Linux's default 208 KiB holds."""


def _grow(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _grow_ice_sockets(pc: Any) -> None:
    """The UDP sockets aioice gathered for ``pc`` (aiortc/aioice internals, bench only)."""
    for transceiver in pc.getTransceivers()[:1]:
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                _grow(transport.get_extra_info("socket"))


class Counter:
    """RTP packets of one viewer: video frames (marker bits), packets, sequence gaps."""

    __slots__ = ("audio_packets", "first_video", "seqs", "video_frames", "video_packets")

    def __init__(self) -> None:
        self.video_frames = 0
        self.video_packets = 0
        self.audio_packets = 0
        self.seqs: dict[int, list[int]] = {}  # ssrc -> [first, highest (extended), received]
        self.first_video: asyncio.Future[None] | None = None

    def rtp(self, ssrc: int, seq: int, marker: bool, video: bool) -> None:
        if video:
            self.video_packets += 1
            if marker:
                self.video_frames += 1
            first = self.first_video
            if first is not None and not first.done():
                first.set_result(None)
        else:
            self.audio_packets += 1
        state = self.seqs.get(ssrc)
        if state is None:
            self.seqs[ssrc] = [seq, seq, 1]
            return
        delta = (seq - state[1]) & 0xFFFF
        if delta < 0x8000:  # forward (a late packet, delta >= 0x8000, does not move the top)
            state[1] += delta
        state[2] += 1

    def datagram(self, data: bytes, video: bool) -> None:
        if len(data) < 12 or data[0] >> 6 != 2 or 72 <= data[1] & 0x7F <= 79:
            return  # not RTP, or RTCP (payload types 200-207 with the marker bit)
        self.rtp(
            int.from_bytes(data[8:12], "big"),
            int.from_bytes(data[2:4], "big"),
            bool(data[1] & 0x80),
            video,
        )

    @property
    def lost(self) -> int:
        return sum(top - first + 1 - received for first, top, received in self.seqs.values())

    def stats(self) -> list[int]:
        return [self.video_frames, self.video_packets, self.audio_packets, self.lost]


class _Sink(asyncio.DatagramProtocol):
    def __init__(self, counter: Counter | None, video: bool) -> None:
        self.counter = counter
        self.video = video

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.counter is not None:
            self.counter.datagram(data, self.video)


class Probe:
    def __init__(self) -> None:
        self.counters: list[Counter] = []
        self.pcs: list[Any] = []
        self.transports: list[asyncio.DatagramTransport] = []

    def say(self, event: str, **data: Any) -> None:
        print(json.dumps({"event": event, **data}), flush=True)

    async def whep(self, url: str, token: str) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from aiortc.rtp import RtpPacket

        counter = Counter()
        counter.first_video = asyncio.get_running_loop().create_future()
        deadline = time.monotonic() + WHEP_DEADLINE_S
        async with httpx.AsyncClient(timeout=WHEP_DEADLINE_S) as http:
            while True:
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                video = pc.addTransceiver("video", direction="recvonly")
                audio = pc.addTransceiver("audio", direction="recvonly")
                for transceiver, is_video in ((video, True), (audio, False)):

                    async def counted(
                        packet: RtpPacket, arrival_time_ms: int, is_video: bool = is_video
                    ) -> None:
                        counter.rtp(
                            packet.ssrc, packet.sequence_number, packet.marker == 1, is_video
                        )

                    transceiver.receiver._handle_rtp_packet = counted  # type: ignore[method-assign]
                await pc.setLocalDescription(await pc.createOffer())
                _grow_ice_sockets(pc)
                resp = await http.post(
                    url,
                    content=pc.localDescription.sdp,
                    headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
                )
                if resp.status_code == 201:
                    break
                await pc.close()
                if resp.status_code != 404 or time.monotonic() > deadline:
                    raise RuntimeError(f"WHEP answered {resp.status_code}: {resp.text}")
                await asyncio.sleep(WHEP_RETRY_S)
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
        self.pcs.append(pc)
        index = len(self.counters)
        self.counters.append(counter)
        await asyncio.wait_for(counter.first_video, WHEP_DEADLINE_S)
        self.say("added", index=index)

    async def sinks(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        first = len(self.counters)
        ports: list[list[int]] = []
        for _ in range(count):
            counter = Counter()
            self.counters.append(counter)
            row: list[int] = []
            for c, video in ((counter, True), (None, True), (counter, False), (None, False)):
                transport, _ = await loop.create_datagram_endpoint(
                    lambda c=c, video=video: _Sink(c, video),  # type: ignore[misc]
                    local_addr=("127.0.0.1", 0),
                )
                self.transports.append(transport)
                _grow(transport.get_extra_info("socket"))
                row.append(transport.get_extra_info("sockname")[1])
            ports.append(row)
        self.say("sinks", first=first, ports=ports)

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()
        for transport in self.transports:
            transport.close()
        self.pcs, self.transports, self.counters = [], [], []

    async def handle(self, message: dict[str, Any]) -> None:
        cmd = message.get("cmd")
        if cmd == "whep":
            await self.whep(message["url"], message["token"])
        elif cmd == "sink":
            await self.sinks(int(message["count"]))
        elif cmd == "stats":
            self.say("stats", viewers=[c.stats() for c in self.counters])
        elif cmd == "close":
            await self.close()
            self.say("closed")
        else:
            self.say("error", message=f"unknown command {cmd!r}")

    async def run(self) -> None:
        from ingest.bench.bridge import _chrome_like_h264

        _chrome_like_h264()  # once per process: it adds to aiortc's codec list
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.say("ready")
        tasks: set[asyncio.Task[None]] = set()
        while line := (await reader.readline()).strip():
            message = json.loads(line)

            async def one(message: dict[str, Any] = message) -> None:
                try:
                    await self.handle(message)
                except Exception as exc:
                    self.say("error", message=f"{type(exc).__name__}: {exc}")

            if message.get("cmd") == "whep":  # viewers connect concurrently
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                await one()
        await self.close()


if __name__ == "__main__":
    asyncio.run(Probe().run())
