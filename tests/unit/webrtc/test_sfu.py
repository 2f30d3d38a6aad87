"""The SFU's answers (profile-level-id, Opus only), shared bridges, sessions and limits.

In-process: aiortc viewers make offers; no media flows (connections are never established),
though aiortc binds local UDP sockets to gather host candidates.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from ingest.errors import InputError, NotFoundError, RateLimitedError
from ingest.media.codecs.opus import AacToOpus
from ingest.media.codecs.transcode import BFrameRemover
from ingest.media.hub import Hub
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig
from ingest.webrtc.bridge import VideoBridge
from ingest.webrtc.sfu import MAX_OFFER_BYTES, SFU
from tests.unit.webrtc.offers import CHROME, FIREFOX

CID, PID, UID = "livestream:show", "alice-rtmp", "alice"
HIGH = VideoConfig(codec="h264", record=b"", width=1280, height=720, profile=100, level=40)
AAC = AudioConfig(codec="aac", record=b"\x11\x90", sample_rate=48_000, channels=2)


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture
async def sfu(hub: Hub) -> AsyncIterator[SFU]:
    sfu = SFU(hub)
    yield sfu
    await sfu.stop()


def publish(hub: Hub, video: VideoConfig | None = HIGH, audio: AudioConfig | None = AAC) -> None:
    if video is not None:
        hub.publish(CID, PID, UID, Kind.VIDEO, video)
    if audio is not None:
        hub.publish(CID, PID, UID, Kind.AUDIO, audio)


async def aiortc_offer(kinds: tuple[str, ...] = ("audio", "video")) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


def section(sdp: str, kind: str) -> str:
    return next(s for s in sdp.split("m=")[1:] if s.startswith(kind))


@pytest.mark.usefixtures("chrome_like")
async def test_answer_carries_the_streams_high_profile_level_id(hub: Hub, sfu: SFU) -> None:
    publish(hub)
    answer, session_id = await sfu.subscribe(await aiortc_offer(), CID, PID)
    video = section(answer, "video")
    assert "profile-level-id=640028" in video
    assert "packetization-mode=1" in video
    assert "level-asymmetry-allowed=1" in video
    assert "a=sendonly" in video
    assert len(re.findall(r"a=rtpmap:\d+ H264/90000", video)) == 1
    audio = section(answer, "audio")
    assert re.findall(r"a=rtpmap:\d+ (\S+)", audio) == ["opus/48000/2"]
    assert "a=sendonly" in audio
    assert "a=candidate:" in answer
    assert sfu.sessions[session_id].video_profile_level_id == "640028"


async def test_chrome_offer_gets_its_high_payload_type(hub: Hub, sfu: SFU) -> None:
    publish(hub)
    answer, _ = await sfu.subscribe(CHROME, CID, PID)
    video = section(answer, "video")
    assert "a=rtpmap:112 H264/90000" in video
    assert "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640028" in (
        video
    )
    assert "a=fmtp:113 apt=112" in video
    assert "VP8" not in video
    assert "a=rtpmap:111 opus/48000/2" in section(answer, "audio")


async def test_firefox_offer_gets_its_own_entry_back(hub: Hub, sfu: SFU) -> None:
    publish(hub)
    answer, session_id = await sfu.subscribe(FIREFOX, CID, PID)
    fmtp = re.search(r"a=fmtp:126 (\S+)", answer)
    assert fmtp is not None
    assert set(fmtp.group(1).split(";")) == {
        "profile-level-id=42e01f",
        "level-asymmetry-allowed=1",
        "packetization-mode=1",
    }
    assert sfu.sessions[session_id].video_profile_level_id == "42e01f"
    assert "a=rtpmap:109 opus/48000/2" in answer


async def test_b_frame_source_is_answered_as_constrained_baseline(hub: Hub, sfu: SFU) -> None:
    publish(hub, audio=None)
    track = hub.track(CID, PID, Kind.VIDEO)
    assert track is not None
    track.push(MediaUnit(Kind.VIDEO, "h264", 0, 66, b"\x00\x00\x01\x65", keyframe=True))
    answer, _ = await sfu.subscribe(CHROME, CID, PID)
    assert "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e028" in (
        answer
    )
    bridge = sfu.bridge(track)
    assert bridge is not None
    assert bridge.transcoding


async def test_two_viewers_share_one_transcoder_per_track(hub: Hub) -> None:
    removers: list[object] = []
    opus: list[AacToOpus] = []

    def remover(config: VideoConfig) -> BFrameRemover:
        removers.append(config)
        return BFrameRemover(config, bit_rate=500_000)

    def transcoder(config: AudioConfig) -> AacToOpus:
        opus.append(AacToOpus(config))
        return opus[-1]

    sfu = SFU(hub, remover_factory=remover, opus_factory=transcoder)
    try:
        publish(hub)
        video = hub.track(CID, PID, Kind.VIDEO)
        audio = hub.track(CID, PID, Kind.AUDIO)
        assert video is not None
        assert audio is not None
        video.push(MediaUnit(Kind.VIDEO, "h264", 0, 66, b"\x00\x00\x01\x65", keyframe=True))
        _first, one = await sfu.subscribe(CHROME, CID, PID)
        _second, two = await sfu.subscribe(await aiortc_offer(), CID, PID)
        assert len(removers) == 1  # one BFrameRemover for both viewers
        assert len(opus) == 1  # one AacToOpus for both viewers
        bridge = sfu.bridge(video)
        assert isinstance(bridge, VideoBridge)
        assert bridge.transcoding
        assert video.readers == 1
        assert audio.readers == 1
        assert bridge.output.readers == 2  # each viewer has its own reader
        await sfu.close(one)
        assert sfu.bridge(video) is bridge
        await sfu.close(two)
        assert sfu.bridge(video) is None  # the last viewer left: the bridge stopped
        assert bridge.ended
        assert video.readers == 0
        assert audio.readers == 0
    finally:
        await sfu.stop()


async def test_only_the_kinds_published_and_offered(hub: Hub, sfu: SFU) -> None:
    publish(hub, audio=None)
    answer, session_id = await sfu.subscribe(await aiortc_offer(), CID, PID)
    assert "a=inactive" in section(answer, "audio")
    assert [t.kind for t in sfu.sessions[session_id].tracks] == ["video"]
    with pytest.raises(InputError, match="no audio or video section this participant sends"):
        await sfu.subscribe(await aiortc_offer(("audio",)), CID, PID)
    hub.publish(CID, PID, UID, Kind.AUDIO, AAC)
    audio_only, _ = await sfu.subscribe(await aiortc_offer(("audio",)), CID, PID)
    assert "m=video" not in audio_only


async def test_not_publishing(sfu: SFU) -> None:
    with pytest.raises(NotFoundError, match="publishes nothing"):
        await sfu.subscribe(CHROME, CID, PID)


@pytest.mark.parametrize(
    ("offer", "message"),
    [
        ("hello", "no audio or video section"),
        ("v=0\r\nm=video nine\r\n", "not an SDP offer"),
        ("v=0\r\n" + "a=x\r\n" * (MAX_OFFER_BYTES // 5), "larger than"),
    ],
)
async def test_bad_offers(hub: Hub, sfu: SFU, offer: str, message: str) -> None:
    publish(hub)
    with pytest.raises(InputError, match=message):
        await sfu.subscribe(offer, CID, PID)
    assert not sfu.sessions


def without_payload_types(sdp: str, kind: str, keep: set[int]) -> str:
    """``sdp`` with the ``kind`` section reduced to the payload types in ``keep``."""
    out, current = [], ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            current = line[2:].split()[0]
            if current == kind:
                head = line.split()[:3]
                line = " ".join(head + [str(pt) for pt in sorted(keep)])
        match = re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+) ", line)
        if current == kind and match and int(match.group(1)) not in keep:
            continue
        out.append(line)
    return "\n".join(out) + "\n"


async def test_offer_without_h264_leaks_nothing(hub: Hub, sfu: SFU) -> None:
    publish(hub)
    vp8_only = without_payload_types(CHROME, "video", {96, 97})
    assert "H264" not in vp8_only
    with pytest.raises(InputError, match=r"H\.264"):
        await sfu.subscribe(vp8_only, CID, PID)
    assert not sfu.sessions
    video = hub.track(CID, PID, Kind.VIDEO)
    assert video is not None
    assert video.readers == 0
    assert sfu.bridge(video) is None


async def test_close_and_limits(hub: Hub) -> None:
    sfu = SFU(hub, max_sessions=1)
    try:
        publish(hub)
        _, session_id = await sfu.subscribe(CHROME, CID, PID)
        with pytest.raises(RateLimitedError):
            await sfu.subscribe(CHROME, CID, PID)
        await sfu.close(session_id)
        with pytest.raises(NotFoundError):
            await sfu.close(session_id)
        await sfu.subscribe(CHROME, CID, PID)
    finally:
        await sfu.stop()
    assert not sfu.sessions


async def test_a_session_that_never_connects_is_closed(hub: Hub) -> None:
    sfu = SFU(hub, connect_timeout=0.01)
    try:
        publish(hub)
        _, session_id = await sfu.subscribe(CHROME, CID, PID)  # nobody answers ICE on :50000
        session = sfu.sessions[session_id]
        assert session.watchdog is not None
        await asyncio.wait_for(session.watchdog, 5)
        await asyncio.wait_for(asyncio.gather(*sfu._closing), 5)
        assert session_id not in sfu.sessions
        video = hub.track(CID, PID, Kind.VIDEO)
        assert video is not None
        assert video.readers == 0
    finally:
        await sfu.stop()


async def test_stop_closes_everything(hub: Hub) -> None:
    sfu = SFU(hub)
    publish(hub)
    sessions = [(await sfu.subscribe(CHROME, CID, PID))[1] for _ in range(2)]
    pcs = [sfu.sessions[s].pc for s in sessions]
    await sfu.stop()
    assert not sfu.sessions
    assert all(pc.connectionState == "closed" for pc in pcs)
    assert all(t.readers == 0 for t in hub.tracks(CID))
