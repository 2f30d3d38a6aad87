"""The WebRTC bridge through the whole App: ffmpeg pushes RTMP, aiortc viewers watch over WHEP.

Every test creates its users and call with ingest.client, pushes an FLV file made with the
ffmpeg CLI at real time (``-re``, looped) with a host's user token as the stream key, and watches
with an aiortc viewer (offering H.264 High like Chrome) holding a user token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from ingest.app import App
from ingest.calls.tokens import create_token
from ingest.media.hub import TrackAdded
from ingest.media.units import Kind
from ingest.webrtc.sending import LeanRtpSender
from tests.conftest import API_SECRET, api
from tests.e2e.calls import Call, livestream
from tests.e2e.media import MEDIA_DIR, finish, make_flv, push
from tests.e2e.webrtc_viewer import (
    VideoFrameInfo,
    Viewer,
    WhepRefusedError,
    dominant_frequency,
)
from tests.unit.webrtc.synth import chrome_like_h264

pytestmark = pytest.mark.e2e

TIMEOUT = 15.0
CID = "livestream:show"
FPS = 30
VIDEO_CLOCK, AUDIO_CLOCK = 90_000, 48_000
MAX_SKEW_S = 0.080
STALL_P95_S = 0.250
"""p95 of a live viewer's frame gaps (33 ms at 30 fps) while another viewer is frozen: a sender
blocked by the frozen one would show seconds; a busy 2-core machine adds tens of ms."""


# -- media ----------------------------------------------------------------------------------


def sync_flv(
    *, size: str = "1280x720", bframes: int = 0, seconds: int = 6, audio_delay: float = 0.0
) -> Path:
    """H.264 High + AAC 48 kHz with a sync event once per second.

    Video: ``testsrc2`` (moving, so the encoder works like for a real picture), covered by a
    white full frame during the first 100 ms of every second. Audio: a 440 Hz tone during the
    same 100 ms (sample accurate, ``aevalsrc``), silence otherwise. ``audio_delay`` shifts the
    audio content later (to check that the sync measurement sees it).
    """
    flash = "drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='lt(mod(t\\,1)\\,0.1)'"
    tone = (
        f"if(lt(mod(t-{audio_delay}\\,1)\\,0.1)*gte(t\\,{audio_delay})\\,0.8*sin(2*PI*440*t)\\,0)"
    )
    return make_flv(
        MEDIA_DIR / f"sync-{size}-bf{bframes}-{seconds}s-d{int(audio_delay * 1000)}.flv",
        seconds=seconds,
        size=size,
        fps=FPS,
        gop=FPS,
        bframes=bframes,
        video_filter=flash,
        audio=f"aevalsrc='{tone}':s=48000",
        tune="zerolatency",
    )


# -- the call -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _chrome_like_viewers(monkeypatch: pytest.MonkeyPatch) -> None:
    chrome_like_h264(monkeypatch)  # the in-process viewers offer H.264 High, like Chrome


@pytest.fixture
async def call(server: App) -> AsyncIterator[Call]:
    async with livestream(server, *CID.split(":")) as c:
        yield c


def token(user_id: str) -> str:
    return create_token(API_SECRET, user_id)


@contextlib.asynccontextmanager
async def publishing(call: Call, path: Path, user: str = "alice") -> AsyncIterator[str]:
    """ffmpeg pushes ``path`` in a loop at real time; yields the participant id once both of
    its tracks are in the hub."""
    with call.app.hub.watch(CID) as watch:
        proc = await push(f"{call.address}/{token(user)}", path, realtime=True, loop=True)
        try:
            kinds: set[Kind] = set()
            participant = ""
            while len(kinds) < 2:
                event = await asyncio.wait_for(watch.get(), TIMEOUT)
                if isinstance(event, TrackAdded):
                    kinds.add(event.kind)
                    participant = event.track.participant_id
            yield participant
        finally:
            if proc.returncode is None:
                proc.terminate()
            await finish(proc)


@contextlib.asynccontextmanager
async def watching(viewer: Viewer, url: str) -> AsyncIterator[Viewer]:
    try:
        await viewer.connect(url)
        yield viewer
    finally:
        await viewer.close()


# -- A/V sync -------------------------------------------------------------------------------


def _arrival_offset(viewer: Viewer, kind: str, clock: int, skip: float) -> float:
    """Median of (arrival time - media time) over the stream's frames, in seconds.

    Media time is what aiortc gives decoded frames as pts ((RTP timestamp - origin) / clock);
    arrival is when the frame's last RTP packet reached the viewer, before any jitter buffer.
    """
    origin = viewer.rtp_origin(kind)
    last: dict[int, float] = {}
    for p in viewer.packets[kind]:
        last[p.timestamp] = p.t
    start = min(last.values()) + skip
    values = [t - ((ts - origin) % 2**32) / clock for ts, t in last.items() if t >= start]
    assert len(values) > 10, f"too few {kind} frames"
    return statistics.median(values)


def _video_events(viewer: Viewer) -> list[float]:
    """Media times (s) at which the picture turns white."""
    events = []
    for before, frame in zip(viewer.frames, viewer.frames[1:], strict=False):
        if frame.luma > 200 >= before.luma:
            events.append(frame.pts / VIDEO_CLOCK)
    return events


def _audio_events(viewer: Viewer) -> list[float]:
    """Media times (s) at which the tone starts after at least 0.5 s of silence (sample
    accurate: each decoded frame's pts plus the sample's index)."""
    times = np.concatenate([a.pts + np.arange(len(a.samples)) for a in viewer.audio])
    loud = np.abs(np.concatenate([a.samples for a in viewer.audio]).astype(np.int32)) > 8000
    onsets = []
    last_loud = -1e9
    for t in times[loud] / AUDIO_CLOCK:
        if t - last_loud > 0.5:
            onsets.append(float(t))
        last_loud = t
    return onsets


def av_skews(viewer: Viewer, skip: float = 1.0) -> list[float]:
    """Audio minus video (s) at each sync event, as a receiver that lines streams up by
    arrival would play them (see :func:`test_720p30_passthrough_rate_tone_and_av_sync`)."""
    off_v = _arrival_offset(viewer, "video", VIDEO_CLOCK, skip)
    off_a = _arrival_offset(viewer, "audio", AUDIO_CLOCK, skip)
    first = min(p.t for p in viewer.packets["video"]) + skip
    video = [t + off_v for t in _video_events(viewer) if t + off_v >= first]
    audio = [t + off_a for t in _audio_events(viewer)]
    skews = []
    for v in video:
        nearest = min(audio, key=lambda a: abs(a - v), default=None)
        if nearest is not None and abs(nearest - v) < 0.5:
            skews.append(nearest - v)
    return skews


def pts_steps(frames: list[VideoFrameInfo]) -> set[int]:
    """The distinct pts differences (90 kHz) between successive decoded frames."""
    return {b.pts - a.pts for a, b in itertools.pairwise(frames)}


# -- tests ----------------------------------------------------------------------------------


async def test_720p30_passthrough_rate_tone_and_av_sync(call: Call) -> None:
    """720p30 High without B-frames passes through; AAC arrives as 440 Hz Opus, in sync.

    A/V sync is measured the way a receiver lines streams up, not from decoded-frame arrival:
    aiortc's own jitter buffers delay audio by 4 packets (80 ms) and video by one frame before
    decoding, which says nothing about the server. So for each stream we take, before any jitter
    buffer, the arrival time of every frame's last RTP packet minus its media time (RTP
    timestamp / clock) and keep the median: that stream's "media time → wall clock" mapping,
    which is what RTCP sender reports give a browser (aiortc stamps them with the send time).
    The source flashes white and beeps during the same 100 ms of every second; the flash's media
    time (first white frame's pts) and the beep's (first loud sample's pts, sample accurate)
    are mapped to wall clock with their own stream's mapping, and audio minus video is the skew.
    A server that sent audio 200 ms late, or delayed the tone's content, fails this test
    (:func:`test_av_sync_measurement_sees_a_200_ms_audio_delay` checks that).
    """
    path = sync_flv(seconds=8)
    await call.go_live()
    async with (
        publishing(call, path) as participant,
        watching(Viewer(token=token("viewer")), call.whep()) as viewer,
    ):
        assert "profile-level-id=64" in viewer.answer  # High, answered as the stream's
        await viewer.until("video", 30)  # past the start (the cached GOP, sent at once)
        start = len(viewer.frames)
        await viewer.until("video", start + 4 * FPS)
        steady = viewer.frames[start:]
        assert {(f.width, f.height) for f in viewer.frames} == {(1280, 720)}
        fps = (len(steady) - 1) / (steady[-1].t - steady[0].t)
        assert 27 <= fps <= 33, fps
        steps = pts_steps(steady)
        assert steps <= {2970, 3060}, steps  # every frame, 33-34 ms apart (ms timestamps)
        assert viewer.audio_rate == AUDIO_CLOCK
        samples = np.concatenate([a.samples for a in viewer.audio])[-2 * AUDIO_CLOCK :]
        assert abs(dominant_frequency(samples, AUDIO_CLOCK) - 440) <= 10
        skews = av_skews(viewer)
        print(f"A/V skew per event (ms): {[round(s * 1000) for s in skews]}")
        assert len(skews) >= 3, skews
        assert abs(statistics.mean(skews)) < MAX_SKEW_S, skews
        assert not call.app.sfu.transcoding(CID, participant)


async def test_av_sync_measurement_sees_a_200_ms_audio_delay(call: Call) -> None:
    """The same measurement on a source whose beep is 200 ms late reports ~200 ms."""
    path = sync_flv(size="640x360", seconds=4, audio_delay=0.2)
    await call.go_live()
    async with publishing(call, path), watching(Viewer(token=token("viewer")), call.whep()) as v:
        await v.until("video", 30)
        await v.until("video", len(v.frames) + 2 * FPS + 10)
        skews = av_skews(v)
        print(f"A/V skew per event with audio 200 ms late (ms): {[round(s * 1000) for s in skews]}")
        assert len(skews) >= 2, skews
        assert 0.15 < statistics.mean(skews) < 0.25, skews


async def test_b_frames_are_transcoded_for_webrtc(call: Call) -> None:
    path = sync_flv(bframes=2, seconds=4)
    async with (
        publishing(call, path) as participant,
        watching(Viewer(token=token("alice")), call.whep()) as viewer,  # a host, in backstage
    ):
        assert "profile-level-id=42e0" in viewer.answer  # the re-encode: constrained baseline
        await viewer.until("video", 45)
        assert {(f.width, f.height) for f in viewer.frames} == {(1280, 720)}
        assert call.app.sfu.transcoding(CID, participant)
        # The participant's health says so too (what a host's dashboard shows).
        async with api(call.app, token=token("alice")) as host:
            health = (await host.participants(*CID.split(":"))).participants[0].health
        assert health is not None
        assert health.webrtc is not None
        assert health.webrtc.video_transcoded is True
        assert health.video is not None
        assert health.video.b_frames is True
    assert not call.app.sfu.transcoding(CID, participant)  # nobody watches: nothing runs


async def test_backstage_viewers_wait_for_go_live_hosts_do_not(call: Call) -> None:
    path = sync_flv(size="640x360", seconds=4)
    async with publishing(call, path):
        early = Viewer(token=token("viewer"))
        try:
            with pytest.raises(WhepRefusedError) as refused:
                await early.connect(call.whep())
        finally:
            await early.close()
        assert refused.value.status == 403
        assert "not live yet" in refused.value.body
        async with watching(Viewer(token=token("alice")), call.whep()) as host:
            await host.until("video", 10)
        await call.go_live()
        async with watching(Viewer(token=token("viewer")), call.whep()) as viewer:
            await viewer.until("video", 10)
            await viewer.until("audio", AUDIO_CLOCK // 2)
            assert {(f.width, f.height) for f in viewer.frames} == {(640, 360)}


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_a_viewer_that_stops_reading_does_not_delay_the_others(call: Call) -> None:
    """A second viewer runs in a child process, frozen with SIGSTOP once it decodes video: it
    never reads its socket again. The first viewer's frames keep arriving on time."""
    path = sync_flv(size="640x360", seconds=4)
    await call.go_live()
    async with publishing(call, path), watching(Viewer(token=token("viewer")), call.whep()) as v:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e.webrtc_viewer", call.whep(), token("viewer"),
            cwd=str(Path(__file__).parents[2]),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 2 * TIMEOUT)
            assert line.strip() == b"first-frame", line
            os.kill(child.pid, signal.SIGSTOP)
            stopped = asyncio.to_thread(
                os.waitid, os.P_PID, child.pid, os.WSTOPPED | os.WNOWAIT
            )  # returns once the kernel has stopped it
            await asyncio.wait_for(stopped, TIMEOUT)
            assert _state(child.pid) == "T"
            assert len(call.app.sfu.sessions) == 2
            start = len(v.frames)
            await v.until("video", start + 3 * FPS + 1)
            gaps = np.diff([f.t for f in v.frames[start:]])
            p95 = float(np.percentile(gaps, 95))
            print(f"inter-arrival while the other viewer is stopped: p95 {p95 * 1000:.0f} ms")
            assert p95 < STALL_P95_S, p95
            steps = pts_steps(v.frames[start:])
            assert max(steps) < 4500, steps  # no frame lost either (a loop of the file adds ~10 ms)
            assert _state(child.pid) == "T"  # it really was stopped all along
            assert len(call.app.sfu.sessions) == 2
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGCONT)
                child.kill()
            await child.wait()


async def test_lost_video_packets_are_retransmitted_after_nack(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The viewer drops the first transmission of every 25th video packet: its NACKs make the
    server's RTP sender retransmit them (RTX), and the frames they belong to still decode."""
    asked: list[int] = []
    retransmit = LeanRtpSender._retransmit  # our senders' (ingest.webrtc.sending)

    async def counting(self: LeanRtpSender, sequence_number: int) -> None:
        asked.append(sequence_number)
        await retransmit(self, sequence_number)

    monkeypatch.setattr(LeanRtpSender, "_retransmit", counting)
    seen = 0
    lost: dict[int, int] = {}  # seq -> RTP timestamp

    def drop(packet: RtpPacket) -> bool:
        nonlocal seen
        seen += 1
        if seen > 100 and seen % 25 == 0 and len(lost) < 20:
            lost[packet.sequence_number] = packet.timestamp
            return True
        return False

    path = sync_flv(size="640x360", seconds=4)
    await call.go_live()
    viewer = Viewer(token=token("viewer"), drop=drop)
    async with publishing(call, path), watching(viewer, call.whep()) as v:
        await v.until("video", 10)

        async def all_dropped() -> None:
            while len(lost) < 20:
                await v.until("video", len(v.frames) + 1)

        await asyncio.wait_for(all_dropped(), TIMEOUT)
        await v.until("video", len(v.frames) + 10)  # the frames after the last drop
        assert set(lost) <= set(asked), "the server was asked for every lost packet"
        assert set(lost) <= set(v.retransmitted), "and sent each again, as RTX"
        origin = v.rtp_origin("video")
        decoded = {f.pts for f in v.frames}
        assert {(ts - origin) % 2**32 for ts in lost.values()} <= decoded
        steps = pts_steps(v.frames[10:])
        assert max(steps) < 4500, steps  # no frame was skipped (a loop of the file adds ~10 ms)
