"""An aiortc WHEP viewer for end-to-end tests, usable in process or as a child process.

:class:`Viewer` POSTs its offer to a WHEP URL, then records what arrives:

* every RTP packet, before aiortc's jitter buffer (:attr:`Viewer.packets`: arrival time, RTP
  timestamp, sequence number; retransmissions (RTX) separately in :attr:`Viewer.retransmitted`),
  optionally dropping some (:attr:`Viewer.drop`) to exercise NACK;
* every decoded video frame (arrival time, size, pts, mean luma) and audio frame (arrival time,
  pts, samples of the first channel).

As a child process (``python -m tests.e2e.webrtc_viewer URL TOKEN``) it connects, prints
``first-frame`` on stdout when the first video frame is decoded, then keeps receiving until it
is killed: a viewer the test can freeze with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription

TIMEOUT = 15.0


class VideoFrameInfo(NamedTuple):
    t: float
    """Arrival (``time.perf_counter()``) of the decoded frame."""
    width: int
    height: int
    pts: int
    """90 kHz, from the RTP timestamp (aiortc starts it at 0)."""
    luma: float
    """Mean of a sample of the Y plane (0..255)."""


class AudioFrameInfo(NamedTuple):
    t: float
    pts: int
    """48 kHz, from the RTP timestamp (aiortc starts it at 0)."""
    samples: np.ndarray[Any, Any]
    """The first channel, int16."""


class PacketInfo(NamedTuple):
    t: float
    timestamp: int
    """The RTP timestamp as sent (random origin)."""
    seq: int


class WhepRefusedError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"WHEP POST answered {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Viewer:
    """An aiortc viewer: records packets, decoded video frames and audio."""

    token: str = "viewer-token"
    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[]))
    )
    frames: list[VideoFrameInfo] = field(default_factory=list)
    audio: list[AudioFrameInfo] = field(default_factory=list)
    packets: dict[str, list[PacketInfo]] = field(default_factory=lambda: {"audio": [], "video": []})
    retransmitted: list[int] = field(default_factory=list)
    """Original sequence numbers of the video packets that arrived again as RTX."""
    dropped: list[int] = field(default_factory=list)
    """Sequence numbers of the packets :attr:`drop` made us ignore."""
    drop: Callable[[RtpPacket], bool] | None = None
    """Called for each first transmission of a video packet; ``True`` drops it."""
    audio_rate: int = 0
    answer: str = ""
    location: str = ""
    posted_at: float = 0.0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    first_frame: asyncio.Future[float] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    receivers: dict[str, RTCRtpReceiver] = field(default_factory=dict)
    _rtx_types: set[int] = field(default_factory=set)
    _wanted: list[tuple[str, int, asyncio.Future[None]]] = field(default_factory=list)

    async def post(self, url: str) -> httpx.Response:
        """Send the offer; on 201 apply the answer. Returns the HTTP response."""
        for kind in ("video", "audio"):
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            self.receivers[kind] = transceiver.receiver
            self._tap(kind, transceiver.receiver)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tasks.append(asyncio.create_task(self._consume(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.posted_at = time.perf_counter()
        async with httpx.AsyncClient() as http:
            resp = await http.post(
                url,
                content=self.pc.localDescription.sdp,
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {self.token}",
                },
                timeout=TIMEOUT,
            )
        if resp.status_code == 201:
            self.answer = resp.text
            self.location = resp.headers["location"]
            for media in SessionDescription.parse(self.answer).media:
                self._rtx_types |= {
                    c.payloadType
                    for c in media.rtp.codecs
                    if c.mimeType.lower().endswith("/rtx") and c.payloadType is not None
                }
            await self.pc.setRemoteDescription(RTCSessionDescription(self.answer, "answer"))
        return resp

    async def connect(self, url: str) -> None:
        """:meth:`post`; :class:`WhepRefusedError` unless the server answered 201."""
        resp = await self.post(url)
        if resp.status_code != 201:
            raise WhepRefusedError(resp.status_code, resp.text)

    async def until(self, kind: str, count: int, within: float = TIMEOUT) -> None:
        """Until ``count`` video frames / audio samples arrived."""
        if self._count(kind) >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._wanted.append((kind, count, future))
        await asyncio.wait_for(future, within)

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def rtp_origin(self, kind: str) -> int:
        """The RTP timestamp aiortc maps to pts 0 for this kind (its private TimestampMapper)."""
        mapper = self.receivers[kind]._RTCRtpReceiver__timestamp_mapper  # type: ignore[attr-defined]
        origin = mapper._origin
        assert origin is not None, f"no {kind} frame was decoded yet"
        return int(origin)

    def _tap(self, kind: str, receiver: RTCRtpReceiver) -> None:
        """Record (and maybe drop) each RTP packet before aiortc handles it."""
        handle = receiver._handle_rtp_packet

        async def tapped(packet: RtpPacket, arrival_time_ms: int) -> None:
            now = time.perf_counter()
            if packet.payload_type in self._rtx_types:
                if len(packet.payload) >= 2:
                    self.retransmitted.append(int.from_bytes(packet.payload[:2], "big"))
            else:
                if kind == "video" and self.drop is not None and self.drop(packet):
                    self.dropped.append(packet.sequence_number)
                    return
                self.packets[kind].append(PacketInfo(now, packet.timestamp, packet.sequence_number))
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = tapped  # type: ignore[method-assign]

    def _count(self, kind: str) -> int:
        if kind == "video":
            return len(self.frames)
        return sum(len(a.samples) for a in self.audio)

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame: Any = await track.recv()
            except MediaStreamError:
                return
            now = time.perf_counter()
            if track.kind == "video":
                luma = np.frombuffer(frame.planes[0], np.uint8)[::61]
                info = VideoFrameInfo(now, frame.width, frame.height, frame.pts, float(luma.mean()))
                self.frames.append(info)
                if not self.first_frame.done():
                    self.first_frame.set_result(now)
            else:
                self.audio_rate = frame.sample_rate
                pcm = frame.to_ndarray()  # packed s16: (1, samples x channels)
                mono = pcm.reshape(-1, len(frame.layout.channels)).T[0]
                self.audio.append(AudioFrameInfo(now, frame.pts, mono))
            for wanted in [w for w in self._wanted if self._count(w[0]) >= w[1]]:
                self._wanted.remove(wanted)
                if not wanted[2].done():
                    wanted[2].set_result(None)


def dominant_frequency(samples: np.ndarray[Any, Any], rate: int) -> float:
    window = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(window))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


async def _child(url: str, token: str) -> None:
    viewer = Viewer(token=token)
    await viewer.connect(url)
    await asyncio.wait_for(viewer.first_frame, TIMEOUT)
    print("first-frame", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    import pytest

    from tests.unit.webrtc.synth import chrome_like_h264

    chrome_like_h264(pytest.MonkeyPatch())  # this process only, until it exits
    asyncio.run(_child(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
