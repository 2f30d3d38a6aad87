"""Media made in memory for the WebRTC tests, and a publisher that plays it into a hub.

* :func:`h264_clip`: moving pictures encoded by libx264 (High profile) as Annex B access units
  (SPS/PPS in band before each IDR), pts/dts in ms, optionally with B-frames.
* :func:`aac_clip`: a sine tone as raw AAC frames (1024 samples, ~21.33 ms apart).
* :class:`Publisher`: pushes clips into hub tracks at real time, looping them with timestamps that
  keep increasing; :meth:`Publisher.reached` resolves when a given time has been published.
* :func:`chrome_like_h264`: makes this process's aiortc offer and accept H.264 High, as Chrome
  does (aiortc alone only knows Constrained Baseline); for the *viewer* side of tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.codecs import CODECS

from ingest.media.codecs.h264 import (
    parameter_sets,
    split_annexb,
    video_config_from_parameter_sets,
)
from ingest.media.hub import Hub, Track
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig
from ingest.webrtc.negotiation import high_profile_viewer_codecs

MS = Fraction(1, 1000)
CALL_CID = "livestream:show"
PARTICIPANT = "alice-rtmp"
USER = "alice"


@functools.lru_cache(maxsize=8)
def h264_clip(
    frames: int,
    *,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    gop: int = 60,
    bf: int = 0,
    bit_rate: int = 1_500_000,
) -> tuple[VideoConfig, tuple[MediaUnit, ...]]:
    """``frames`` frames of High profile H.264, an IDR every ``gop`` frames, in decode order."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = MS
    encoder.framerate = Fraction(fps)
    encoder.bit_rate = bit_rate
    encoder.options = {
        "preset": "veryfast",
        "profile": "high",
        "bf": str(bf),
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
    }
    encoder.open()
    base = np.zeros((height, width, 3), np.uint8)
    base[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    base[:, :, 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    packets = []
    for i in range(frames):
        image = base.copy()
        x, y = (i * 13) % (width - 160), (i * 7) % (height - 160)
        image[y : y + 160, x : x + 160] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 1000 // fps
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    units = tuple(
        MediaUnit(Kind.VIDEO, "h264", p.dts or 0, p.pts or 0, bytes(p), keyframe=p.is_keyframe)
        for p in packets
    )
    sps, pps = parameter_sets(split_annexb(units[0].data))
    return video_config_from_parameter_sets(sps, pps), units


@functools.lru_cache(maxsize=4)
def aac_clip(
    seconds: float, *, freq: float = 440.0, rate: int = 48_000
) -> tuple[AudioConfig, tuple[MediaUnit, ...]]:
    """A ``freq`` Hz stereo tone as raw AAC-LC frames with pts/dts in ms."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate = rate
    encoder.layout = "stereo"
    encoder.format = "fltp"
    encoder.bit_rate = 128_000
    encoder.time_base = Fraction(1, rate)
    encoder.open()
    count = math.ceil(seconds * rate / 1024)
    packets = []
    for i in range(count):
        t = (np.arange(1024) + i * 1024) / rate
        tone = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = rate
        frame.pts = i * 1024
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    units = []
    for k, p in enumerate(q for q in packets if q.size):
        ms = k * 1024 * 1000 // rate
        units.append(MediaUnit(Kind.AUDIO, "aac", ms, ms, bytes(p), keyframe=True))
    asc = bytes(encoder.extradata or b"")
    config = AudioConfig("aac", asc, sample_rate=rate, channels=2, object_type=2)
    return config, tuple(units)


class Publisher:
    """Plays clips into a participant's hub tracks at real time, looping; stop with
    :meth:`stop` (which ends the tracks)."""

    def __init__(
        self,
        hub: Hub,
        video: tuple[VideoConfig, tuple[MediaUnit, ...]] | None,
        audio: tuple[AudioConfig, tuple[MediaUnit, ...]] | None,
        *,
        fps: int = 30,
        call_cid: str = CALL_CID,
        participant_id: str = PARTICIPANT,
        user_id: str = USER,
    ) -> None:
        self.hub = hub
        self.tracks: dict[Kind, Track] = {}
        self._clips: list[tuple[Track, tuple[MediaUnit, ...], int]] = []
        if video is not None:
            track = hub.publish(call_cid, participant_id, user_id, Kind.VIDEO, video[0])
            self.tracks[Kind.VIDEO] = track
            self._clips.append((track, video[1], len(video[1]) * 1000 // fps))
        if audio is not None:
            track = hub.publish(call_cid, participant_id, user_id, Kind.AUDIO, audio[0])
            self.tracks[Kind.AUDIO] = track
            rate = audio[0].sample_rate
            self._clips.append((track, audio[1], len(audio[1]) * 1024 * 1000 // rate))
        self.published_ms = 0
        self._marks: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for track in self.tracks.values():
            track.end()

    async def reached(self, ms: int) -> None:
        """Resolves once units up to ``ms`` (dts) have been pushed."""
        if self.published_ms >= ms:
            return
        future = asyncio.get_running_loop().create_future()
        self._marks.append((ms, future))
        await future

    def _schedule(self) -> Iterator[tuple[int, Track, MediaUnit]]:
        """Every track's units, looping, merged by dts."""

        def loop(
            track: Track, units: tuple[MediaUnit, ...], period: int
        ) -> Iterator[tuple[int, Track, MediaUnit]]:
            k = 0
            while True:
                off = k * period
                for u in units:
                    shifted = MediaUnit(
                        u.kind, u.codec, u.dts + off, u.pts + off, u.data, keyframe=u.keyframe
                    )
                    yield shifted.dts, track, shifted
                k += 1

        import heapq

        return heapq.merge(*(loop(*c) for c in self._clips), key=lambda e: e[0])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for dts, track, unit in self._schedule():
            delay = start + max(0, dts) / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the source's own clock
            track.push(unit)
            self.published_ms = max(self.published_ms, dts)
            for mark in [m for m in self._marks if m[0] <= self.published_ms]:
                self._marks.remove(mark)
                if not mark[1].done():
                    mark[1].set_result(None)


def chrome_like_h264(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let this process's aiortc offer/accept H.264 High (``64001f``) like Chrome, for the
    test's duration. Only the *viewer* needs it; the SFU does not touch aiortc's table."""
    # High first, as Chrome orders it when it can decode it in hardware
    codecs = [*high_profile_viewer_codecs("64001f"), *CODECS["video"]]
    monkeypatch.setitem(CODECS, "video", codecs)
