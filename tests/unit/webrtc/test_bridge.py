"""Per-track bridges: passthrough, B-frame switch (once, shared), AAC → Opus, end and stop."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import cast

import pytest
from aiortc.sdp import H264Profile, parse_h264_profile_level_id

from ingest.errors import MediaError
from ingest.media.codecs.transcode import BFrameRemover
from ingest.media.hub import Reader, Track, TrackEndedError
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig
from ingest.webrtc.bridge import (
    AUDIO_INLINE_BUDGET_S,
    AUDIO_INLINE_SMOOTHING,
    OPUS_CONFIG,
    SOURCE_QUEUE_VIDEO,
    AudioBridge,
    VideoBridge,
    bridge_for,
    default_remover,
)
from tests.unit.webrtc.synth import aac_clip, h264_clip

TIMEOUT = 20.0
VCFG = VideoConfig(codec="h264", record=b"", width=320, height=240, profile=100, level=30)


def unit(pts: int, dts: int | None = None, key: bool = False) -> MediaUnit:
    return MediaUnit(Kind.VIDEO, "h264", pts if dts is None else dts, pts, b"\x00\x00\x01\x41", key)


class FakeRemover:
    """Records what it is fed; outputs each unit with dts = pts."""

    def __init__(self) -> None:
        self.fed: list[MediaUnit] = []
        self.config: VideoConfig | None = None

    def feed(self, u: MediaUnit) -> list[MediaUnit]:
        self.fed.append(u)
        return [MediaUnit(Kind.VIDEO, "h264", u.pts, u.pts, b"re" + u.data, u.keyframe)]

    def flush(self) -> list[MediaUnit]:
        return []

    def first_picture(self, u: MediaUnit) -> list[MediaUnit]:
        self.first = u
        return [MediaUnit(Kind.VIDEO, "h264", u.pts, u.pts, b"re" + u.data, True)]

    def catch_up(self, units: list[MediaUnit]) -> list[MediaUnit]:
        self.fed += units
        u = max(units, key=lambda u: u.pts)
        return [MediaUnit(Kind.VIDEO, "h264", u.pts, u.pts, b"re" + u.data, False)]


async def take(reader: Reader, count: int) -> list[MediaUnit]:
    return [await asyncio.wait_for(reader.get(), TIMEOUT) for _ in range(count)]


async def drain_to_end(reader: Reader) -> list[MediaUnit]:
    out = []
    while True:
        try:
            out.append(await asyncio.wait_for(reader.get(), TIMEOUT))
        except TrackEndedError:
            return out


def source(config: VideoConfig | AudioConfig = VCFG) -> Track:
    kind = Kind.VIDEO if isinstance(config, VideoConfig) else Kind.AUDIO
    return Track("default:c", "p", "u", kind, config)


async def test_passthrough_republishes_the_same_units() -> None:
    src = source()
    bridge = VideoBridge(src)
    bridge.start()
    viewer = bridge.output.subscribe()
    units = [unit(0, key=True), unit(33), unit(67)]
    for u in units:
        src.push(u)
    assert await take(viewer, 3) == units
    assert not bridge.transcoding
    assert bridge.last_pts == 67
    assert bridge.profile_level_id == "64001e"
    assert src.readers == 1
    await bridge.stop()
    assert src.readers == 0
    assert bridge.ended


async def test_late_bridge_starts_from_the_sources_gop() -> None:
    src = source()
    for u in [unit(0, key=True), unit(33), unit(67)]:
        src.push(u)
    bridge = VideoBridge(src)
    bridge.start()
    viewer = bridge.output.subscribe()
    assert [u.pts for u in await take(viewer, 3)] == [0, 33, 67]
    await bridge.stop()


async def test_b_frames_in_the_cached_gop_are_known_before_any_viewer() -> None:
    src = source()
    for u in [unit(33, 0, key=True), unit(100, 33), unit(67, 67)]:
        src.push(u)
    fake = FakeRemover()
    bridge = VideoBridge(src, remover_factory=lambda c: cast(BFrameRemover, fake))
    bridge.start()
    assert bridge.transcoding  # decided synchronously from the cache
    assert bridge.profile_level_id == "42e01e"  # what the re-encode will be
    viewer = bridge.output.subscribe()
    out = await take(viewer, 2)
    assert [u.pts for u in fake.fed] == [33, 100, 67]  # the whole GOP went to the transcoder
    assert fake.first.pts == 33  # its keyframe first, alone, then only the newest picture
    assert [u.pts for u in out] == [33, 100]
    assert all(u.data.startswith(b"re") for u in out)
    await bridge.stop()


async def test_b_frames_detected_mid_gop_switch_at_the_next_keyframe() -> None:
    src = source()
    fake = FakeRemover()
    made = []

    def factory(config: VideoConfig) -> BFrameRemover:
        made.append(config)
        return cast(BFrameRemover, fake)

    bridge = VideoBridge(src, remover_factory=factory)
    bridge.start()
    viewer = bridge.output.subscribe()
    first = [unit(0, key=True), unit(33), unit(67)]
    for u in first:
        src.push(u)
    assert await take(viewer, 3) == first  # passed through
    src.push(unit(133, 100))  # reordered, mid-GOP: the rest of this GOP is dropped
    src.push(unit(100, 133))
    src.push(unit(200, 167, key=True))
    src.push(unit(267, 200))
    out = await take(viewer, 2)
    assert bridge.transcoding
    assert made == [VCFG]
    assert [u.pts for u in fake.fed] == [200, 267]
    assert [(u.pts, u.dts, u.keyframe) for u in out] == [(200, 200, True), (267, 267, False)]
    await bridge.stop()


async def test_real_b_frames_are_removed_once_for_all_viewers() -> None:
    config, units = h264_clip(30, width=320, height=240, gop=15, bf=2)
    assert any(u.pts != u.dts for u in units)
    src = source(config)
    made: list[BFrameRemover] = []

    def factory(c: VideoConfig) -> BFrameRemover:
        made.append(default_remover(c))
        return made[-1]

    bridge = VideoBridge(src, remover_factory=factory)
    bridge.start()
    viewers = [bridge.output.subscribe(), bridge.output.subscribe()]
    for u in units:
        src.push(u)
    src.end()
    outs = [await drain_to_end(v) for v in viewers]
    assert len(made) == 1
    assert bridge.transcoding
    assert outs[0] == outs[1]
    assert len(outs[0]) == len(units)
    assert all(u.pts == u.dts for u in outs[0])
    assert all(b.pts > a.pts for a, b in itertools.pairwise(outs[0]))
    assert [u.pts for u in outs[0] if u.keyframe] == [u.pts for u in units if u.keyframe]
    out_config = bridge.output.config
    assert isinstance(out_config, VideoConfig)
    assert out_config.profile == 66  # constrained baseline re-encode
    assert bridge.profile_level_id == out_config.profile_level_id
    profile = parse_h264_profile_level_id(bridge.profile_level_id)[0]
    assert profile is H264Profile.PROFILE_CONSTRAINED_BASELINE
    assert bridge.ended


async def test_aac_becomes_20ms_opus_on_the_same_timeline() -> None:
    config, units = aac_clip(1.0)
    src = source(config)
    bridge = AudioBridge(src)
    assert bridge.transcoding
    bridge.start()
    viewer = bridge.output.subscribe()
    for u in units:
        src.push(u)
    src.end()
    out = await drain_to_end(viewer)
    assert bridge.output.config == OPUS_CONFIG
    assert all(u.codec == "opus" for u in out)
    assert out[0].pts == units[0].pts
    assert [b.pts - a.pts for a, b in itertools.pairwise(out)] == [20] * (len(out) - 1)
    assert len(out) * 20 >= len(units) * 1024 * 1000 // 48_000


async def test_aac_to_opus_moves_off_the_loop_when_a_frame_exceeds_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On the event loop while frames are cheap (the first one's set-up and a single slow frame
    do not count); slow frames that lift the moving average over AUDIO_INLINE_BUDGET_S move
    that bridge to the worker thread for good, with the same output."""
    caplog.set_level(logging.INFO, "ingest.webrtc")
    config, units = aac_clip(0.5)
    reference_src = source(config)
    reference = AudioBridge(reference_src)
    reference.start()
    reference_out = reference.output.subscribe()
    for u in units:
        reference_src.push(u)
    reference_src.end()
    expected = await drain_to_end(reference_out)
    assert reference.inline  # a real frame is well under the budget

    calls = 0
    now = 0.0

    def clock() -> float:  # frames "take" a quarter of the budget; the 1st 4 x (set-up), the
        nonlocal calls, now  # 5th 30 x (a garbage collection), the 14th and 15th 6 x
        calls += 1
        frame = (calls + 1) // 2
        if calls % 2 == 0:
            now += AUDIO_INLINE_BUDGET_S * {1: 4, 5: 30, 14: 6, 15: 6}.get(frame, 0.25)
        return now

    src = source(config)
    bridge = AudioBridge(src, clock=clock)
    bridge.start()
    viewer = bridge.output.subscribe()
    for u in units[:13]:
        src.push(u)
    first = await take(viewer, 10)
    assert bridge.inline
    assert bridge.inline_cost < AUDIO_INLINE_BUDGET_S
    assert 0 < AUDIO_INLINE_SMOOTHING < 1
    for u in units[13:]:
        src.push(u)
    src.end()
    out = [*first, *await drain_to_end(viewer)]
    assert not bridge.inline
    assert calls == 30  # measured until it moved (the 15th frame), not after
    assert [(u.pts, u.data) for u in out] == [(u.pts, u.data) for u in expected]
    assert caplog.text.count("worker thread") == 1


async def test_opus_source_passes_through() -> None:
    src = source(OPUS_CONFIG)
    bridge = AudioBridge(src)
    assert not bridge.transcoding
    bridge.start()
    viewer = bridge.output.subscribe()
    packet = MediaUnit(Kind.AUDIO, "opus", 20, 20, b"\xfc", True)
    src.push(packet)
    assert await take(viewer, 1) == [packet]
    await bridge.stop()


async def test_a_failing_transcoder_ends_the_output(caplog: pytest.LogCaptureFixture) -> None:
    src = source()

    class Broken(FakeRemover):
        def feed(self, u: MediaUnit) -> list[MediaUnit]:
            raise RuntimeError("boom")

    bridge = VideoBridge(src, remover_factory=lambda c: cast(BFrameRemover, Broken()))
    bridge.start()
    viewer = bridge.output.subscribe()
    src.push(unit(33, 0, key=True))
    assert await drain_to_end(viewer) == []
    assert "failed" in caplog.text
    assert src.readers == 0


def test_bridge_for_refuses_other_codecs() -> None:
    hevc = VideoConfig(codec="hevc", record=b"")
    with pytest.raises(MediaError, match=r"H\.264"):
        bridge_for(source(hevc))
    mp3 = AudioConfig(codec="mp3", record=b"")
    with pytest.raises(MediaError, match="AAC or Opus"):
        bridge_for(source(mp3))
    assert isinstance(bridge_for(source()), VideoBridge)
    assert isinstance(bridge_for(source(OPUS_CONFIG)), AudioBridge)


def test_default_remover_bit_rate_scales_with_the_picture() -> None:
    hd = VideoConfig(codec="h264", record=b"", width=1280, height=720)
    assert default_remover(hd).bit_rate == 1280 * 720 * 3
    assert default_remover(VCFG).bit_rate == 500_000  # the floor
    assert SOURCE_QUEUE_VIDEO == 601
