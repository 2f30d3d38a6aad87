"""Stream health from synthetic units with explicit arrival times."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import av
import numpy as np

from ingest.media.codecs import h264
from ingest.media.codecs.aac import audio_config_from_asc, build_audio_specific_config
from ingest.media.health import Health
from ingest.media.units import Kind, MediaUnit, VideoConfig

HIGH_1080_SPS = bytes.fromhex("67640028acd940780227e584000003000400000300f03c60c658")
HIGH_1080_PPS = bytes.fromhex("68ef8fcb")
VIDEO_1080 = h264.video_config_from_parameter_sets([HIGH_1080_SPS], [HIGH_1080_PPS])
AUDIO_48K = audio_config_from_asc(build_audio_specific_config(48000, 2))[0]


def video(dts: int, size: int, keyframe: bool = False, offset: int = 0) -> MediaUnit:
    return MediaUnit(Kind.VIDEO, "h264", dts, dts + offset, bytes(size), keyframe)


def audio(dts: int, size: int = 256) -> MediaUnit:
    return MediaUnit(Kind.AUDIO, "aac", dts, dts, bytes(size), True)


def feed(
    health: Health,
    seconds: float,
    start_ms: int = 0,
    fps: int = 30,
    frame_bytes: int = 10_000,
    gop_s: float = 2.0,
    offset: int = 0,
    with_audio: bool = True,
) -> int:
    """Feed ``seconds`` of 30 fps video (+ 48 kHz AAC) arriving in real time; return end ms."""
    frames = round(seconds * fps)
    gop = round(gop_s * fps)
    audio_next = start_ms
    for i in range(frames):
        dts = start_ms + i * 1000 // fps
        while with_audio and audio_next <= dts:
            health.on_unit(audio(audio_next), audio_next / 1000)
            audio_next += 1024 * 1000 // 48000
        health.on_unit(video(dts, frame_bytes, i % gop == 0, offset), dts / 1000)
    return start_ms + frames * 1000 // fps


def test_rates_resolution_and_profile() -> None:
    health = Health(window=5.0)
    health.on_config(VIDEO_1080)
    health.on_config(AUDIO_48K)
    end = feed(health, 10)
    now = end / 1000
    snap = health.snapshot(now)
    json.dumps(snap)
    v = snap["video"]
    assert isinstance(v, dict)
    assert v["resolution"] == "1920x1080"
    assert v["profile_level"] == "High 4.0"
    assert v["profile_level_id"] == "640028"
    assert v["codec"] == "h264"
    assert abs(v["fps"] - 30.0) < 0.2
    assert abs(v["bitrate_kbps"] - 2400) < 20  # 30 x 10 kB x 8 bit per second
    assert v["keyframe_interval_s"] == 2.0
    assert v["b_frames"] is False
    a = snap["audio"]
    assert isinstance(a, dict)
    assert (a["codec"], a["profile"], a["sample_rate"], a["channels"]) == (
        "aac",
        "AAC-LC",
        48000,
        2,
    )
    assert abs(a["bitrate_kbps"] - 256 * 8 * 46.9 / 1000) < 3
    assert abs(snap["bitrate_kbps"] - v["bitrate_kbps"] - a["bitrate_kbps"]) < 0.2
    assert snap["hints"] == []
    assert abs(snap["av_skew_ms"]) < 30


def test_empty_snapshot() -> None:
    snap = Health().snapshot(0.0)
    assert snap["video"] is None
    assert snap["audio"] is None
    assert snap["bitrate_kbps"] == 0.0
    assert snap["hints"] == []


def test_keyframe_interval_hint_appears_and_disappears() -> None:
    health = Health()
    health.on_config(VIDEO_1080)
    end = feed(health, 17, gop_s=8.0)
    hints = health.hints(end / 1000)
    assert any(h.startswith("keyframe interval 8.0 s: set it to 1-2 s in OBS") for h in hints)
    assert "Output > Keyframe Interval" in hints[0]
    end = feed(health, 5, start_ms=end, gop_s=1.0)
    assert health.keyframe_interval() == 1.0
    assert not any("keyframe" in h for h in health.hints(end / 1000))


def test_missing_keyframes_are_reported_before_the_second_one() -> None:
    health = Health()
    for i in range(150):  # 5 s, one keyframe at the start only
        health.on_unit(video(i * 33, 1000, keyframe=i == 0), i * 0.033)
    assert health.keyframe_interval() == 4.917
    assert any(h.startswith("keyframe interval 4.9 s") for h in health.hints(5.0))
    never = Health()
    for i in range(100):
        never.on_unit(video(i * 33, 1000), i * 0.033)
    assert any(h.startswith("no keyframe yet after 3.3 s") for h in never.hints(3.3))


def test_b_frames_hint_appears_and_disappears() -> None:
    health = Health(window=5.0)
    health.on_config(VIDEO_1080)
    end = feed(health, 3, offset=66)
    hint = (
        "B-frames present: the WebRTC bridge must transcode video; set OBS x264 'bframes=0' / "
        "profile baseline to avoid it"
    )
    assert hint in health.hints(end / 1000)
    assert health.snapshot(end / 1000)["video"]["b_frames"] is True
    end = feed(health, 6, start_ms=end)
    assert hint not in health.hints(end / 1000)
    # Reordering with equal pts/dts spread also counts.
    other = Health()
    other.on_unit(video(0, 10, True), 0.0)
    other.on_unit(video(33, 10), 0.033)
    assert not other.b_frames(0.04)
    other.on_unit(MediaUnit(Kind.VIDEO, "h264", 66, 20, b"x"), 0.066)
    assert other.b_frames(0.07)


def test_av_skew_hint() -> None:
    health = Health()
    health.on_unit(video(10_000, 100, True), 0.0)
    health.on_unit(audio(11_500), 0.0)
    assert health.av_skew_ms() == 1500
    assert any(
        h.startswith("audio/video timestamps 1500 ms apart (audio ahead)")
        for h in health.hints(0.1)
    )
    health.on_unit(audio(10_020), 0.1)
    assert not any("apart" in h for h in health.hints(0.1))


def test_high_bitrate_and_resolution_hints() -> None:
    health = Health()
    health.on_config(VideoConfig("h264", b"", width=2560, height=1440))
    end = feed(health, 6, frame_bytes=50_000)  # 12 Mbit/s
    hints = health.hints(end / 1000)
    assert any(re.match(r"video bitrate 1[12]\d{3} kbps is very high", h) for h in hints)
    assert any(h.startswith("resolution 2560x1440 is above 1080p") for h in hints)


def test_low_fps_and_no_audio_hints() -> None:
    health = Health()
    end = feed(health, 8, fps=10, with_audio=False, gop_s=1.0)
    hints = health.hints(end / 1000)
    assert any(h.startswith("frame rate 10.0 fps is low") for h in hints)
    assert any(h.startswith("no audio received") for h in hints)


def test_profile_browsers_cannot_decode() -> None:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 64, 64, "yuv420p10le"
    ctx.time_base = Fraction(1, 30)
    ctx.options = {"preset": "ultrafast"}
    ctx.open()
    frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
    frame = frame.reformat(format="yuv420p10le")
    frame.pts = 0
    data = b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])
    sps, pps = h264.parameter_sets(h264.split_annexb(data))
    health = Health()
    health.on_config(h264.video_config_from_parameter_sets(sps, pps))
    hints = health.hints(0.0)
    assert any(
        h.startswith("H.264 High 10 (4:2:0, 10-bit) cannot be decoded by browsers") for h in hints
    )
    assert health.snapshot(0.0)["video"]["bit_depth"] == 10


def test_window_slides() -> None:
    health = Health(window=2.0)
    for i in range(60):
        health.on_unit(video(i * 33, 1000, i == 0), i / 30)
    assert health.bitrate_kbps(1.99) > 0
    assert health.bitrate_kbps(10.0) == 0.0
    assert health.fps(10.0) is None
    health.on_metadata({"encoder": "obs-output module (libobs version 30.1.2)"})
    assert health.snapshot(10.0)["encoder"] == "obs-output module (libobs version 30.1.2)"
