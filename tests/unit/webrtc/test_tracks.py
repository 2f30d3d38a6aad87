"""Viewer tracks: hub units → av.Packets on the RTP clock, catch-up stamping, end, stop."""

from __future__ import annotations

from fractions import Fraction

import pytest
from aiortc.mediastreams import MediaStreamError

from ingest.media.hub import Track
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig
from ingest.webrtc.bridge import OPUS_CONFIG
from ingest.webrtc.packing import AUDIO_TIME_BASE, VIDEO_TIME_BASE
from ingest.webrtc.tracks import (
    OpusAudioTrack,
    PassthroughVideoTrack,
    to_packet,
)

VCFG = VideoConfig(codec="h264", record=b"", profile=100, level=40)
IDR = b"\x00\x00\x00\x01\x67\x64\x00\x28\x00\x00\x00\x01\x68\xee\x00\x00\x00\x01\x65\x88"
P = b"\x00\x00\x00\x01\x41\x9a"


def video(ts: int, key: bool = False) -> MediaUnit:
    return MediaUnit(Kind.VIDEO, "h264", ts, ts, IDR if key else P, keyframe=key)


def opus(ts: int) -> MediaUnit:
    return MediaUnit(Kind.AUDIO, "opus", ts, ts, b"\xfc\xff\xfe", keyframe=True)


def video_track() -> Track:
    return Track("default:c", "p", "u", Kind.VIDEO, VCFG)


def test_time_bases() -> None:
    assert Fraction(1, 90_000) == VIDEO_TIME_BASE
    assert Fraction(1, 48_000) == AUDIO_TIME_BASE


def test_to_packet() -> None:
    packet = to_packet(video(40, key=True), 3600, VIDEO_TIME_BASE)
    assert bytes(packet) == IDR
    assert (packet.pts, packet.dts, packet.time_base) == (3600, 3600, VIDEO_TIME_BASE)


async def test_video_packets_keep_annexb_data_and_90khz_pts() -> None:
    track = video_track()
    viewer = PassthroughVideoTrack(track.subscribe())
    units = [video(1000, key=True), video(1033), video(1067)]
    for unit in units:
        track.push(unit)
    packets = [await viewer.recv() for _ in units]
    assert [bytes(p) for p in packets] == [u.data for u in units]
    assert [p.pts for p in packets] == [90_000, 92_970, 96_030]
    assert all(p.time_base == VIDEO_TIME_BASE for p in packets)
    assert viewer.kind == "video"
    assert viewer.packets == 3


async def test_opus_packets_have_48khz_pts() -> None:
    track = Track("default:c", "p", "u", Kind.AUDIO, OPUS_CONFIG)
    viewer = OpusAudioTrack(track.subscribe())
    for ts in (500, 520, 540):
        track.push(opus(ts))
    packets = [await viewer.recv() for _ in range(3)]
    assert [p.pts for p in packets] == [24_000, 24_960, 25_920]
    assert all(p.time_base == AUDIO_TIME_BASE for p in packets)
    assert all(bytes(p) == b"\xfc\xff\xfe" for p in packets)
    assert viewer.kind == "audio"


async def test_timestamps_always_grow() -> None:
    track = video_track()
    viewer = PassthroughVideoTrack(track.subscribe())
    for ts in (100, 100, 90):  # bogus input: equal, then going back
        track.push(video(ts, key=ts == 100))
    pts = [(await viewer.recv()).pts or 0 for _ in range(3)]
    assert pts[0] == 9000
    assert pts[0] < pts[1] < pts[2]


async def test_cached_gop_is_stamped_just_before_the_live_edge() -> None:
    track = video_track()
    gop = [video(0, key=True)] + [video(i * 100) for i in range(1, 30)]  # 3 s of backlog
    for unit in gop:
        track.push(unit)
    live = {"pts": 2900}
    viewer = PassthroughVideoTrack(track.subscribe(from_gop=True), live_edge=lambda: live["pts"])
    backlog = [(await viewer.recv()).pts for _ in gop]
    edge = 2900 * 90
    assert backlog == [edge - 30 + i for i in range(29)] + [edge]  # 1 tick apart, then live
    assert viewer.caught_up_after == 29
    track.push(video(3000))
    live["pts"] = 3000
    assert (await viewer.recv()).pts == 3000 * 90  # live frames keep their own time


async def test_without_live_edge_frames_keep_their_pts() -> None:
    track = video_track()
    for ts in (0, 100, 200):
        track.push(video(ts, key=ts == 0))
    viewer = PassthroughVideoTrack(track.subscribe(from_gop=True))
    assert [(await viewer.recv()).pts for _ in range(3)] == [0, 9000, 18000]


async def test_end_of_hub_track_ends_the_viewer_track() -> None:
    track = video_track()
    viewer = PassthroughVideoTrack(track.subscribe())
    track.push(video(0, key=True))
    track.end()
    assert bytes(await viewer.recv()) == IDR  # queued units drain first
    with pytest.raises(MediaStreamError):
        await viewer.recv()
    assert viewer.readyState == "ended"


async def test_stop_closes_the_reader() -> None:
    track = video_track()
    viewer = PassthroughVideoTrack(track.subscribe())
    assert track.readers == 1
    viewer.stop()
    assert track.readers == 0
    with pytest.raises(MediaStreamError):
        await viewer.recv()


async def test_a_slow_viewer_drops_alone() -> None:
    track = video_track()
    slow = PassthroughVideoTrack(track.subscribe(max_queue=5))
    fast = PassthroughVideoTrack(track.subscribe(max_queue=100))
    units = [video(i * 33, key=i % 10 == 0) for i in range(25)]
    got = []
    for unit in units:
        track.push(unit)
        got.append((await fast.recv()).pts)
    assert got == [u.pts * 90 for u in units]  # the fast one missed nothing
    slow_pts = []
    while slow.reader.queued:
        slow_pts.append((await slow.recv()).pts)
    assert slow.reader.dropped > 0
    assert slow_pts[0] == 660 * 90  # resumed at the last keyframe (unit 20)


def test_audio_config_of_opus_output() -> None:
    assert AudioConfig("opus", b"", sample_rate=48_000, channels=2) == OPUS_CONFIG
