"""WHEP end to end: a hub fed in real time, the WHEP router on uvicorn, an aiortc viewer.

The publisher plays H.264 High (1280x720, 30 fps, libx264) and a 440 Hz AAC tone, made in memory,
into hub tracks at real time. The viewer (aiortc, offering H.264 High like Chrome) POSTs its offer
over HTTP, receives, decodes, and checks: picture size, frame rate, the tone's pitch, the B-frame
transcoded path, and how fast a late joiner sees its first picture (the GOP cache).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from fastapi import FastAPI

from ingest.media.hub import Hub
from ingest.media.units import Kind
from ingest.webrtc.sfu import SFU
from ingest.webrtc.whep import build_whep_router
from tests.unit.webrtc.synth import (
    CALL_CID,
    PARTICIPANT,
    Publisher,
    aac_clip,
    chrome_like_h264,
    h264_clip,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 15.0
WIDTH, HEIGHT, FPS = 1280, 720, 30


@dataclass
class Server:
    url: str
    hub: Hub
    sfu: SFU


async def authorize(token: str, call_type: str, call_id: str, user_id: str) -> tuple[str, str]:
    assert token == "viewer-token"
    return f"{call_type}:{call_id}", f"{user_id}-rtmp"


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    chrome_like_h264(monkeypatch)  # the viewer's side; the SFU does not need it
    hub = Hub()
    sfu = SFU(hub)
    app = FastAPI()
    app.include_router(build_whep_router(sfu, authorize))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until uvicorn accepts: no start race
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    http = uvicorn.Server(config)
    task = asyncio.create_task(http.serve(sockets=[sock]))
    try:
        yield Server(f"http://127.0.0.1:{port}", hub, sfu)
    finally:
        await sfu.stop()
        http.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)
        sock.close()
        hub.close()


@dataclass
class Viewer:
    """An aiortc viewer: records decoded video frames (arrival time, size) and audio."""

    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[]))
    )
    frames: list[tuple[float, int, int]] = field(default_factory=list)
    audio: list[np.ndarray[Any, Any]] = field(default_factory=list)
    audio_rate: int = 0
    answer: str = ""
    location: str = ""
    posted_at: float = 0.0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    first_frame: asyncio.Future[float] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    _wanted: list[tuple[str, int, asyncio.Future[None]]] = field(default_factory=list)

    async def connect(self, url: str) -> None:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")

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
                    "Authorization": "Bearer viewer-token",
                },
            )
        assert resp.status_code == 201, resp.text
        self.answer = resp.text
        self.location = resp.headers["location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer, "answer"))

    async def until(self, kind: str, count: int) -> None:
        """Until ``count`` video frames / audio samples arrived."""
        if self._count(kind) >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._wanted.append((kind, count, future))
        await asyncio.wait_for(future, TIMEOUT)

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _count(self, kind: str) -> int:
        if kind == "video":
            return len(self.frames)
        return sum(a.shape[-1] for a in self.audio)

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame: Any = await track.recv()
            except MediaStreamError:
                return
            now = time.perf_counter()
            if track.kind == "video":
                self.frames.append((now, frame.width, frame.height))
                if not self.first_frame.done():
                    self.first_frame.set_result(now)
            else:
                self.audio_rate = frame.sample_rate
                pcm = frame.to_ndarray()  # packed s16: (1, samples x channels)
                self.audio.append(pcm.reshape(-1, len(frame.layout.channels)).T[0])
            for wanted in [w for w in self._wanted if self._count(w[0]) >= w[1]]:
                self._wanted.remove(wanted)
                if not wanted[2].done():
                    wanted[2].set_result(None)


def dominant_frequency(samples: np.ndarray[Any, Any], rate: int) -> float:
    window = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(window))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def whep_url(server: Server) -> str:
    call_type, call_id = CALL_CID.split(":")
    return f"{server.url}/whep/{call_type}/{call_id}/{PARTICIPANT.removesuffix('-rtmp')}"


async def test_high_profile_video_and_opus_audio(server: Server) -> None:
    video = h264_clip(135, gop=120)  # 4.5 s, looped
    audio = aac_clip(4.5)
    assert video[0].profile == 100  # High
    publisher = Publisher(server.hub, video, audio)
    publisher.start()
    viewer = Viewer()
    try:
        await viewer.connect(whep_url(server))
        assert f"profile-level-id={video[0].profile_level_id}" in viewer.answer
        await viewer.until("video", 60)
        await viewer.until("audio", 48_000)
        sizes = {(w, h) for _, w, h in viewer.frames}
        assert sizes == {(WIDTH, HEIGHT)}
        steady = [t for t, _, _ in viewer.frames[15:]]  # past the start
        fps = (len(steady) - 1) / (steady[-1] - steady[0])
        assert 25 <= fps <= 36, fps
        assert viewer.audio_rate == 48_000
        samples = np.concatenate(viewer.audio)[-36_000:]  # the last 0.75 s
        assert abs(dominant_frequency(samples, 48_000) - 440) <= 10
        bridge = server.sfu.bridge(publisher.tracks[Kind.VIDEO])
        assert bridge is not None
        assert not bridge.transcoding
        async with httpx.AsyncClient() as http:
            resp = await http.delete(server.url + viewer.location)
        assert resp.status_code == 200
        assert not server.sfu.sessions
    finally:
        await viewer.close()
        await publisher.stop()


async def test_b_frames_are_removed_for_the_viewer(server: Server) -> None:
    video = h264_clip(90, gop=60, bf=2)
    assert any(u.pts != u.dts for u in video[1])
    publisher = Publisher(server.hub, video, aac_clip(3.0))
    publisher.start()
    viewer = Viewer()
    try:
        await viewer.connect(whep_url(server))
        assert "profile-level-id=42e0" in viewer.answer  # the re-encode: constrained baseline
        await viewer.until("video", 45)
        assert {(w, h) for _, w, h in viewer.frames} == {(WIDTH, HEIGHT)}
        bridge = server.sfu.bridge(publisher.tracks[Kind.VIDEO])
        assert bridge is not None
        assert bridge.transcoding
    finally:
        await viewer.close()
        await publisher.stop()


async def test_late_joiner_sees_a_picture_at_once(server: Server) -> None:
    video = h264_clip(135, gop=120)  # one keyframe every 4 s
    publisher = Publisher(server.hub, video, aac_clip(4.5))
    publisher.start()
    viewer = Viewer()
    try:
        await publisher.reached(3000)  # 3 s into the 4 s GOP
        await viewer.connect(whep_url(server))
        first = await asyncio.wait_for(viewer.first_frame, TIMEOUT)
        elapsed = first - viewer.posted_at
        print(f"late joiner: first frame {elapsed * 1000:.0f} ms after the offer POST")
        assert elapsed < 0.5
        assert viewer.frames[0][1:] == (WIDTH, HEIGHT)
        # the publisher leaves: the session closes by itself
        (session,) = server.sfu.sessions.values()
        await publisher.stop()
        await asyncio.wait_for(session.closed.wait(), TIMEOUT)
        assert not server.sfu.sessions
    finally:
        await viewer.close()
        await publisher.stop()
