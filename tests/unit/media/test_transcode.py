"""H.264 with B-frames → H.264 without: same frames, same pts, same keyframes, no B."""

from __future__ import annotations

import asyncio
import itertools
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.frame import PictureType

from ingest.errors import MediaError
from ingest.media.codecs.h264 import split_annexb
from ingest.media.codecs.transcode import BFrameRemover, _parameter_sets
from ingest.media.units import Kind, MediaUnit, VideoConfig

WIDTH, HEIGHT, FPS, GOP = 320, 240, 30, 15


def h264_with_b_frames(frames: int = 60) -> tuple[VideoConfig, list[MediaUnit]]:
    """Moving pictures encoded by libx264 with B-frames, as Annex B units in decode order."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = WIDTH, HEIGHT
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 1000)
    encoder.framerate = Fraction(FPS)
    encoder.bit_rate = 400_000
    encoder.options = {
        "preset": "veryfast",
        "bf": "2",
        "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0",
    }
    encoder.open()
    packets = []
    for i in range(frames):
        image = np.full((HEIGHT, WIDTH, 3), (i * 4) % 256, np.uint8)
        x, y = (i * 5) % (WIDTH - 40), (i * 3) % (HEIGHT - 40)
        image[y : y + 40, x : x + 40] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = round(i * 1000 / FPS)
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    units = [
        MediaUnit(Kind.VIDEO, "h264", p.dts or 0, p.pts or 0, bytes(p), keyframe=p.is_keyframe)
        for p in packets
    ]
    nals = split_annexb(units[0].data)
    sps = next(n for n in nals if n[0] & 0x1F == 7)
    pps = next(n for n in nals if n[0] & 0x1F == 8)
    config = VideoConfig("h264", b"", (sps,), (pps,), WIDTH, HEIGHT, sps[1], sps[3], sps[2])
    return config, units


def decode(units: list[MediaUnit]) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create("h264", "r")
    frames = []
    for unit in units:
        packet = av.Packet(unit.data)
        packet.pts, packet.dts, packet.time_base = unit.pts, unit.dts, Fraction(1, 1000)
        frames += decoder.decode(packet)
    return frames + decoder.decode(None)


def test_removes_b_frames_keeping_frames_pts_and_keyframes() -> None:
    config, units = h264_with_b_frames()
    assert any(u.pts != u.dts for u in units)  # the input really has reordered frames
    assert any(f.pict_type == PictureType.B for f in decode(units))

    remover = BFrameRemover(config, bit_rate=300_000, frame_rate=FPS)
    out = [o for u in units for o in remover.feed(u)]
    out += remover.flush()

    assert len(out) == len(units)
    assert all(u.dts == u.pts for u in out)
    assert all(b.pts > a.pts for a, b in itertools.pairwise(out))
    assert [u.pts for u in out] == sorted(u.pts for u in units)
    assert [u.pts for u in out if u.keyframe] == [u.pts for u in units if u.keyframe]
    for unit in out:
        types = {n[0] & 0x1F for n in split_annexb(unit.data)}
        assert unit.data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))  # Annex B
        if unit.keyframe:
            assert {5, 7, 8} <= types  # IDR led by SPS and PPS
        else:
            assert 5 not in types

    frames = decode(out)
    assert len(frames) == len(units)
    assert {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
    assert all(f.pict_type != PictureType.B for f in frames)
    assert [f.pts for f in frames] == [u.pts for u in out]

    assert remover.config is not None
    assert remover.config.profile == 66  # constrained Baseline
    assert (remover.config.width, remover.config.height) == (WIDTH, HEIGHT)
    assert remover.config.record[0] == 1


async def test_usable_from_a_worker_thread() -> None:
    config, units = h264_with_b_frames(frames=20)

    def run() -> list[MediaUnit]:
        remover = BFrameRemover(config, bit_rate=200_000)
        return [o for u in units for o in remover.feed(u)] + remover.flush()

    assert len(await asyncio.to_thread(run)) == 20


def test_garbage_is_counted_not_raised() -> None:
    config, units = h264_with_b_frames(frames=20)
    remover = BFrameRemover(config, bit_rate=200_000)
    remover.feed(MediaUnit(Kind.VIDEO, "h264", 0, 0, b"\x00\x00\x00\x01\x65" + b"\xff" * 20))
    out = [o for u in units for o in remover.feed(u)] + remover.flush()
    assert out[0].keyframe
    assert len(out) >= len(units) - 1


def test_parameter_sets_from_avcc_record() -> None:
    sps, pps = b"\x67\x42\xc0\x1e\xaa", b"\x68\xce\x3c\x80"
    record = bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0, len(sps)]) + sps
    record += bytes([1, 0, len(pps)]) + pps
    assert _parameter_sets(VideoConfig("h264", record)) == ([sps], [pps])
    assert _parameter_sets(VideoConfig("h264", record[:-2])) == ([], [])
    assert _parameter_sets(VideoConfig("h264", b"")) == ([], [])


def test_refuses_other_codecs() -> None:
    with pytest.raises(MediaError):
        BFrameRemover(VideoConfig("hevc", b""), bit_rate=1)


def test_fast_start_on_a_cached_gop_encodes_the_keyframe_then_the_newest_picture() -> None:
    """A viewer arriving late in a long GOP: the keyframe at once, then straight to the newest
    decoded picture (the backlog is decoded, not encoded), then the live frames, in order."""
    config, units = h264_with_b_frames(GOP)  # one whole GOP: the cache a late joiner meets
    backlog, live = units[:-4], units[-4:]
    remover = BFrameRemover(config, bit_rate=300_000, frame_rate=FPS)

    first = remover.first_picture(backlog[0])
    # out without waiting for more input, and repeated so that the next frame has begun
    assert [u.pts for u in first] == [backlog[0].pts, backlog[0].pts + 1]
    assert [u.keyframe for u in first] == [True, False]

    caught = remover.catch_up(backlog)
    assert len(caught) == 1  # only the newest decoded picture is encoded
    assert not caught[0].keyframe
    assert first[-1].pts < caught[0].pts <= max(u.pts for u in backlog)

    out = [o for u in live for o in remover.feed(u)] + remover.flush()
    stream = first + caught + out
    assert all(b.pts > a.pts for a, b in itertools.pairwise(stream))  # nothing stale, in order
    assert max(u.pts for u in stream) == max(u.pts for u in units)  # reaches the live edge
    frames = decode(stream)  # a decoder starting at the first unit shows every picture
    assert len(frames) == len(stream)
    assert all(f.pict_type != PictureType.B for f in frames)
