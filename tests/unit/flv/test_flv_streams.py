"""Real H.264/AAC from PyAV encoders → FLV (our writer) → TagReader, checked packet by packet."""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import pytest

from ingest.flv import file as flv
from ingest.flv import tags
from ingest.flv.tags import TagReader
from ingest.media.codecs import h264
from ingest.media.units import Kind, MediaUnit

WIDTH, HEIGHT, FPS = 320, 240, 30


@dataclass(frozen=True)
class Encoded:
    pts: int  # ms
    dts: int  # ms
    keyframe: bool
    data: bytes  # Annex B (video) or raw AAC


def ms(value: int | None) -> int:
    assert value is not None
    return value


def encode_video(frames: int = 75, options: Mapping[str, str] | None = None) -> list[Encoded]:
    """libx264 at 30 fps in a millisecond time base; a keyframe every 30 frames."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ctx.framerate = Fraction(FPS)
    ctx.time_base = Fraction(1, 1000)
    ctx.options = {"preset": "ultrafast", "g": "30", "keyint_min": "30", **(options or {})}
    ctx.open()
    packets = []
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(frames):
        rgb = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, (x + y) % 256], -1)
        rgb = rgb.astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 1000 // FPS
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    out = [Encoded(ms(p.pts), ms(p.dts), p.is_keyframe, bytes(p)) for p in packets if p.size]
    shift = -min(0, *(e.dts for e in out))  # FLV timestamps are not negative
    return [Encoded(e.pts + shift, e.dts + shift, e.keyframe, e.data) for e in out]


def encode_audio(seconds: float, rate: int) -> tuple[bytes, list[Encoded]]:
    ctx = av.CodecContext.create("aac", "w")
    ctx.sample_rate = rate
    ctx.layout = "stereo"
    ctx.format = "fltp"
    ctx.time_base = Fraction(1, rate)
    ctx.open()
    packets = []
    for i in range(int(seconds * rate / 1024)):
        t = (np.arange(1024) + i * 1024) / rate
        samples = np.sin(2 * np.pi * 440 * t).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(
            np.stack([samples, samples]), format="fltp", layout="stereo"
        )
        frame.sample_rate = rate
        frame.pts = i * 1024
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    units = [
        Encoded(ms(p.pts) * 1000 // rate, ms(p.pts) * 1000 // rate, True, bytes(p))
        for p in packets
        if p.size and ms(p.pts) >= 0
    ]
    return bytes(ctx.extradata or b""), units


def build_flv(
    video: list[Encoded], audio: list[Encoded], asc: bytes, strip_parameter_sets: bool = True
) -> tuple[bytes, bytes, bytes]:
    """An FLV file the way ffmpeg/OBS write it; returns (file, sps, pps)."""
    sps, pps = h264.parameter_sets(h264.split_annexb(video[0].data))
    record = h264.build_avcc_record(sps, pps)
    entries: list[tuple[int, int, Kind, bytes]] = [
        (0, 0, Kind.VIDEO, tags.avc_sequence_header_body(record)),
        (0, 1, Kind.AUDIO, tags.aac_sequence_header_body(asc)),
    ]
    for i, v in enumerate(video):
        nals = h264.split_annexb(v.data)
        if strip_parameter_sets:
            nals = [n for n in nals if h264.nal_type(n) not in (h264.NAL_SPS, h264.NAL_PPS)]
        body = tags.avc_nalu_body(nals, v.keyframe, v.pts - v.dts)
        entries.append((v.dts, 2 + 2 * i, Kind.VIDEO, body))
    for i, a in enumerate(audio):
        entries.append((a.dts, 3 + 2 * i, Kind.AUDIO, tags.aac_frame_body(a.data)))
    entries.sort()
    data = flv.write_flv((kind, ts, body) for ts, _, kind, body in entries)
    return data, sps[0], pps[0]


def read_units(data: bytes) -> tuple[TagReader, list[MediaUnit], list[MediaUnit]]:
    reader = TagReader()
    video: list[MediaUnit] = []
    audio: list[MediaUnit] = []
    for tag in flv.read_flv(data):
        if tag.kind is Kind.VIDEO:
            video += reader.video(tag.timestamp, tag.body)
        elif tag.kind is Kind.AUDIO:
            audio += reader.audio(tag.timestamp, tag.body)
    return reader, video, audio


def decode(units: list[MediaUnit]) -> list[av.VideoFrame]:
    ctx = av.CodecContext.create("h264", "r")
    frames: list[av.VideoFrame] = []
    for unit in units:
        frames += ctx.decode(av.Packet(unit.data))
    frames += ctx.decode(None)
    return frames


def expected_annexb(e: Encoded, sps: bytes, pps: bytes) -> bytes:
    nals = [n for n in h264.split_annexb(e.data) if h264.nal_type(n) != h264.NAL_AUD]
    if e.keyframe and sps not in nals:
        nals = [sps, pps, *nals]
    return h264.to_annexb(nals)


@pytest.mark.parametrize(
    ("options", "b_frames"),
    [
        ({"bf": "2", "preset": "veryfast"}, True),
        ({"profile": "baseline"}, False),
        ({"bf": "0", "x264-params": "aud=1"}, False),
    ],
)
@pytest.mark.parametrize("strip", [True, False])
def test_units_match_encoder_packets(options: dict[str, str], b_frames: bool, strip: bool) -> None:
    video = encode_video(options=options)
    asc, audio = encode_audio(2.5, 48000)
    data, sps, pps = build_flv(video, audio, asc, strip_parameter_sets=strip)
    reader, vunits, aunits = read_units(data)

    assert reader.video_config is not None
    assert (reader.video_config.width, reader.video_config.height) == (WIDTH, HEIGHT)
    assert reader.has_b_frames is b_frames
    reordered = any(b.pts < a.pts for a, b in itertools.pairwise(vunits))
    assert reordered is b_frames
    assert [(u.dts, u.pts, u.keyframe) for u in vunits] == [
        (e.dts, e.pts, e.keyframe) for e in video
    ]
    assert [u.data for u in vunits] == [expected_annexb(e, sps, pps) for e in video]
    assert sum(u.keyframe for u in vunits) == 3
    assert not any(h264.NAL_AUD in {n[0] & 0x1F for n in h264.split_annexb(u.data)} for u in vunits)

    assert reader.audio_config is not None
    assert (reader.audio_config.sample_rate, reader.audio_config.channels) == (48000, 2)
    assert reader.audio_config.object_type == 2
    assert [(u.dts, u.data) for u in aunits] == [(e.dts, e.data) for e in audio]
    assert all(u.kind is Kind.AUDIO and u.codec == "aac" for u in aunits)

    frames = decode(vunits)
    assert len(frames) == len(video)
    assert {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}


def test_decoding_can_start_at_any_idr() -> None:
    video = encode_video(options={"bf": "2", "preset": "veryfast"})
    asc, audio = encode_audio(0.5, 44100)
    data, _, _ = build_flv(video, audio, asc)
    _, vunits, _ = read_units(data)
    starts = [i for i, u in enumerate(vunits) if u.keyframe]
    assert len(starts) == 3
    for start in starts[1:]:
        frames = decode(vunits[start:])
        assert len(frames) >= len(vunits) - start - 2  # open-GOP B-frames may be skipped
        assert frames[0].width == WIDTH


def test_our_flv_is_readable_by_ffmpeg() -> None:
    video = encode_video(options={"bf": "2", "preset": "veryfast"})
    asc, audio = encode_audio(2.5, 44100)
    data, _, _ = build_flv(video, audio, asc)
    with av.open(io.BytesIO(data), format="flv", mode="r") as container:
        vstream = container.streams.video[0]
        astream = container.streams.audio[0]
        assert (vstream.codec_context.width, vstream.codec_context.height) == (WIDTH, HEIGHT)
        assert astream.codec_context.sample_rate == 44100
        counts = {"video": 0, "audio": 0}
        for packet in container.demux():
            if packet.size:
                counts[packet.stream.type] += 1
    assert counts == {"video": len(video), "audio": len(audio)}


def test_restream_round_trip() -> None:
    """Units → tag bodies (writer) → units again."""
    video = encode_video(40, {"bf": "2", "preset": "veryfast"})
    asc, audio = encode_audio(1.0, 48000)
    data, _, _ = build_flv(video, audio, asc)
    first, vunits, aunits = read_units(data)
    assert first.video_config is not None
    assert first.audio_config is not None
    entries = [
        (Kind.VIDEO, 0, tags.video_config_body(first.video_config)),
        (Kind.AUDIO, 0, tags.audio_config_body(first.audio_config)),
        *[(Kind.VIDEO, u.dts, tags.video_unit_body(u)) for u in vunits],
        *[(Kind.AUDIO, u.dts, tags.audio_unit_body(u)) for u in aunits],
    ]
    _, vagain, aagain = read_units(flv.write_flv(entries))
    assert vagain == vunits
    assert aagain == aunits
