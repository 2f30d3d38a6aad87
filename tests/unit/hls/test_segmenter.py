"""The remux: parts and segments cut by the rules, and the fMP4 they make read back by FFmpeg."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from fractions import Fraction

import av
import pytest

from ingest.errors import MediaError
from ingest.hls import fmp4
from ingest.hls.segmenter import (
    MAX_PENDING_AUDIO,
    PART_TARGET_MS,
    SEGMENT_MIN_MS,
    Init,
    Part,
    Segmenter,
)
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig
from tests.unit.webrtc.synth import aac_clip, h264_clip


class Collect:
    def __init__(self) -> None:
        self.inits: list[Init] = []
        self.parts: list[Part] = []
        self.segments: list[tuple[int, float]] = []

    def on_init(self, init: Init) -> None:
        self.inits.append(init)

    def on_part(self, part: Part) -> None:
        self.parts.append(part)

    def on_segment_end(self, msn: int, duration: float) -> None:
        self.segments.append((msn, duration))


def interleave(video: tuple[MediaUnit, ...], audio: tuple[MediaUnit, ...]) -> Iterator[MediaUnit]:
    """Units in arrival order, as an RTMP publisher sends them (by dts, audio first on ties)."""
    yield from sorted([*video, *audio], key=lambda u: (u.dts, 0 if u.kind is Kind.AUDIO else 1))


def remux(
    frames: int = 150, gop: int = 60, bf: int = 2
) -> tuple[Collect, VideoConfig, tuple[MediaUnit, ...], tuple[MediaUnit, ...]]:
    vconfig, video = h264_clip(frames, width=320, height=240, gop=gop, bf=bf)
    aconfig, audio = aac_clip(frames / 30)
    sink = Collect()
    seg = Segmenter(sink)
    seg.configure(vconfig, aconfig)
    for unit in interleave(video, audio):
        if unit.kind is Kind.VIDEO:
            seg.push_video(unit)
        else:
            seg.push_audio(unit)
    seg.flush()
    return sink, vconfig, video, audio


def boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        assert size >= 8
        out.append((kind, data[pos + 8 : pos + size]))
        pos += size
    assert pos == len(data)
    return out


def test_parts_and_segments_follow_the_rules() -> None:
    sink, _, _, _ = remux()
    assert len(sink.inits) == 1
    # 150 frames, GOP of 60 at 30 fps: segments of 2 s, 2 s and the 1 s rest.
    assert [msn for msn, _ in sink.segments] == [0, 1, 2]
    # (ms timestamps of a 30 fps clip: a frame lasts 33 or 34 ms)
    assert [round(d, 2) for _, d in sink.segments] == [2.0, 2.0, 1.0]
    for part in sink.parts:
        assert 0 < part.duration <= PART_TARGET_MS / 1000
        assert part.independent == (part.index == 0)
    for msn, duration in sink.segments:
        parts = [p for p in sink.parts if p.msn == msn]
        assert abs(sum(p.duration for p in parts) - duration) < 1e-9
        assert [p.index for p in parts] == list(range(len(parts)))
    assert [p.number for p in sink.parts] == list(range(len(sink.parts)))
    for part in sink.parts:
        kinds = [k for k, _ in boxes(part.data)]
        assert kinds == [b"moof", b"mdat"]
    assert SEGMENT_MIN_MS <= 2000


def test_the_fmp4_reads_back_as_what_was_pushed() -> None:
    sink, _, video, audio = remux()
    data = sink.inits[0].data + b"".join(p.data for p in sink.parts)
    with av.open(io.BytesIO(data), "r", format="mp4") as container:
        vstream = container.streams.video[0]
        astream = container.streams.audio[0]
        tb = vstream.time_base
        assert vstream.codec_context.name == "h264"
        assert (vstream.codec_context.width, vstream.codec_context.height) == (320, 240)
        assert astream.codec_context.name == "aac"
        assert astream.codec_context.sample_rate == 48_000
        vpackets = []
        apackets = 0
        decoded = 0
        for packet in container.demux():
            if packet.size == 0:
                continue
            if packet.stream.type == "video":
                vpackets.append(packet)
                decoded += len(packet.decode())
            else:
                apackets += 1
        decoded += len(vstream.codec_context.decode(None))
    assert decoded == len(video)
    end = video[0].dts + round(sum(d for _, d in sink.segments) * 1000)
    assert apackets == len([a for a in audio if a.dts < end])  # audio after the last frame: cut
    base = video[0].dts
    assert tb == Fraction(1, fmp4.VIDEO_TIMESCALE)
    for packet, unit in zip(vpackets, video, strict=True):
        assert packet.dts is not None
        assert packet.pts is not None
        assert round(packet.dts * tb * 1000) == unit.dts - base
        assert round(packet.pts * tb * 1000) == unit.pts - base  # B-frames kept as they were
        assert packet.is_keyframe == unit.keyframe
        assert bytes(packet) == fmp4.video_sample_data(unit.data)


def test_a_new_config_makes_a_new_init_and_a_new_source_continues_the_timeline() -> None:
    vconfig, video = h264_clip(90, width=320, height=240, gop=30)
    sink = Collect()
    seg = Segmenter(sink)
    seg.configure(vconfig, None)
    for unit in video[:45]:
        seg.push_video(unit)
    seg.restart()  # the publisher left; a new one comes, with its own clock
    end = sum(p.duration for p in sink.parts)
    assert sink.segments[-1][0] == seg.msn - 1
    for unit in video[:45]:
        seg.push_video(MediaUnit(unit.kind, unit.codec, unit.dts + 99_000, unit.pts + 99_000,
                                 unit.data, unit.keyframe))  # fmt: skip
    seg.flush()
    assert len(sink.inits) == 1  # same config: same init
    later = [p for p in sink.parts if p.msn > 1]
    first = later[0]
    moof = dict(boxes(first.data))[b"moof"]
    tfdt = moof.index(b"tfdt")
    decode_time = struct.unpack(">Q", moof[tfdt + 8 : tfdt + 16])[0]
    assert decode_time == round(end * 1000) * 90  # continues, no jump back or ahead
    other = VideoConfig("h264", vconfig.record, vconfig.sps, vconfig.pps, 640, 480)
    seg.configure(other, None)
    seg.push_video(video[0])
    assert len(sink.inits) == 2
    assert sink.inits[1].id == 2


def test_units_before_the_first_keyframe_and_unsupported_codecs() -> None:
    vconfig, video = h264_clip(40, width=320, height=240, gop=30)
    sink = Collect()
    seg = Segmenter(sink)
    seg.configure(vconfig, None)
    for unit in video[1:30]:  # no keyframe among them
        seg.push_video(unit)
    assert sink.inits == []
    assert sink.parts == []
    with pytest.raises(MediaError, match=r"H\.264"):
        seg.configure(VideoConfig("hevc", b""), None)
    with pytest.raises(MediaError, match="AAC"):
        seg.configure(vconfig, AudioConfig("opus", b"", 48000, 2))


def test_esds_and_avcc_carry_the_configs() -> None:
    vconfig, _ = h264_clip(2, width=320, height=240)
    aconfig, _ = aac_clip(0.1)
    init = fmp4.init_segment(vconfig, aconfig)
    assert [k for k, _ in boxes(init)] == [b"ftyp", b"moov"]
    assert b"avcC" + fmp4.avcc_record(vconfig) in init
    assert aconfig.record in init
    with pytest.raises(ValueError, match="needs"):
        fmp4.init_segment(None, None)
    with pytest.raises(ValueError, match="sample"):
        fmp4.fragment(1, [fmp4.TrackRun(1, 0, [])])


def test_audio_waiting_for_video_is_bounded() -> None:
    vconfig, video = h264_clip(40, width=320, height=240, gop=30)
    aconfig, audio = aac_clip(1.0)
    sink = Collect()
    seg = Segmenter(sink)
    seg.configure(vconfig, aconfig)
    seg.push_video(video[0])
    t0 = video[0].dts
    for i in range(MAX_PENDING_AUDIO + 50):  # video stalls, audio keeps coming
        a = audio[i % len(audio)]
        seg.push_audio(MediaUnit(a.kind, a.codec, t0 + i, t0 + i, a.data))
    late = video[1]
    seg.push_video(MediaUnit(late.kind, late.codec, t0 + 400, t0 + 400, late.data, False))
    (part,) = sink.parts  # cut by the late frame: 400 ms is over the part target
    moof = dict(boxes(part.data))[b"moof"]
    truns = [i for i in range(len(moof)) if moof.startswith(b"trun", i)]
    counts = [struct.unpack(">I", moof[i + 8 : i + 12])[0] for i in truns]
    assert counts == [1, MAX_PENDING_AUDIO]  # one frame, the newest audio


def test_audio_before_the_first_keyframe_waits_for_it_and_duplicates_drop() -> None:
    vconfig, video = h264_clip(40, width=320, height=240, gop=30)
    aconfig, audio = aac_clip(1.0)
    sink = Collect()
    seg = Segmenter(sink)
    seg.configure(vconfig, aconfig)
    t0 = video[0].dts
    early = [MediaUnit(a.kind, a.codec, t0 - 30 + 20 * i, t0 - 30 + 20 * i, a.data) for i, a in
             enumerate(audio[:4])]  # fmt: skip
    for a in early:  # -30, -10 (older than the keyframe: dropped), +10, +30 (kept)
        seg.push_audio(a)
    seg.push_audio(early[-1])  # given twice
    seg.push_video(video[0])
    seg.flush()
    moof = dict(boxes(sink.parts[0].data))[b"moof"]
    truns = [i for i in range(len(moof)) if moof.startswith(b"trun", i)]
    counts = [struct.unpack(">I", moof[i + 8 : i + 12])[0] for i in truns]
    assert counts == [1, 2]  # the frame; +10 and +30, once each
