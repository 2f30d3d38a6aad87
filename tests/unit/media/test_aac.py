"""AAC helpers: AudioSpecificConfig parse/build and ADTS headers (checked by FFmpeg's parser)."""

from __future__ import annotations

import contextlib
import io
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import MediaError
from ingest.media.codecs import aac


def bits_to_bytes(bits: str) -> bytes:
    bits = bits.replace(" ", "")
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def test_common_configs() -> None:
    lc44 = aac.parse_audio_specific_config(bytes.fromhex("1210"))
    assert (lc44.object_type, lc44.sample_rate, lc44.channels) == (2, 44100, 2)
    assert lc44.name == "AAC-LC"
    assert lc44.frame_length == 1024
    mono48 = aac.parse_audio_specific_config(bytes.fromhex("1188"))
    assert (mono48.sample_rate, mono48.channels) == (48000, 1)
    # FFmpeg's encoder appends a backward-compatible SBR sync extension: ignored.
    ff = aac.parse_audio_specific_config(bytes.fromhex("119056e500"))
    assert (ff.object_type, ff.sample_rate, ff.channels) == (2, 48000, 2)
    surround = aac.parse_audio_specific_config(bits_to_bytes("00010 0011 0111 000"))
    assert surround.channels == 8


def test_escape_object_type_and_explicit_rate() -> None:
    usac = aac.parse_audio_specific_config(bits_to_bytes("11111 001010 0011 0010"))
    assert usac.object_type == 42
    assert usac.name == "xHE-AAC (USAC)"
    explicit = aac.parse_audio_specific_config(
        bits_to_bytes("00010 1111" + format(37800, "024b") + "0001 000")
    )
    assert explicit.sample_rate == 37800
    assert explicit.frequency_index == 0xF
    assert explicit.channels == 1


def test_explicit_he_aac_and_960_frames() -> None:
    # HE-AAC v1: AOT 5, core 24 kHz, stereo, SBR at 48 kHz, core AOT 2.
    he = aac.parse_audio_specific_config(bits_to_bytes("00101 0110 0010 0011 00010 000"))
    assert (he.object_type, he.core_object_type) == (5, 2)
    assert (he.sample_rate, he.extension_sample_rate, he.output_sample_rate) == (
        24000,
        48000,
        48000,
    )
    config, _ = aac.audio_config_from_asc(bits_to_bytes("00101 0110 0010 0011 00010 000"))
    assert (config.sample_rate, config.object_type, config.codec) == (48000, 5, "aac")
    short = aac.parse_audio_specific_config(bits_to_bytes("00010 0100 0010 100"))
    assert short.frame_length == 960


@pytest.mark.parametrize(
    ("rate", "channels", "aot"),
    [(44100, 2, 2), (48000, 1, 2), (22050, 2, 1), (37800, 2, 2), (48000, 8, 2), (48000, 2, 42)],
)
def test_build_round_trip(rate: int, channels: int, aot: int) -> None:
    asc = aac.parse_audio_specific_config(aac.build_audio_specific_config(rate, channels, aot))
    assert (asc.sample_rate, asc.channels, asc.object_type) == (rate, channels, aot)


def test_build_matches_known_bytes() -> None:
    assert aac.build_audio_specific_config(44100, 2) == bytes.fromhex("1210")
    assert aac.build_audio_specific_config(48000, 2) == bytes.fromhex("1190")


def test_errors() -> None:
    with pytest.raises(MediaError, match="truncated: 1 bytes"):
        aac.parse_audio_specific_config(b"\x12")
    with pytest.raises(MediaError, match="object type 0"):
        aac.parse_audio_specific_config(b"\x00\x00")
    with pytest.raises(MediaError, match="reserved samplingFrequencyIndex 13"):
        aac.parse_audio_specific_config(bits_to_bytes("00010 1101 0010 000"))
    with pytest.raises(MediaError, match="truncated while reading samplingFrequency"):
        aac.parse_audio_specific_config(bits_to_bytes("00010 1111 0000"))
    with pytest.raises(MediaError, match="explicit sampling frequency of 0"):
        aac.parse_audio_specific_config(bits_to_bytes("00010 1111" + "0" * 24 + "0010"))
    with pytest.raises(MediaError, match="without a program config"):
        aac.build_audio_specific_config(48000, 7)


@given(st.binary(max_size=16))
def test_parser_only_raises_media_error(data: bytes) -> None:
    with contextlib.suppress(MediaError):
        aac.parse_audio_specific_config(data)


def test_adts_header_golden() -> None:
    header = aac.adts_header(bytes.fromhex("1210"), 100)
    assert header.hex() == "fff150800d7ffc"  # LC, 44.1 kHz, stereo, 107 bytes, VBR
    with pytest.raises(MediaError, match="explicit sample rate"):
        aac.adts_header(aac.build_audio_specific_config(37800, 2), 10)
    with pytest.raises(MediaError, match="ADTS cannot carry xHE-AAC"):
        aac.adts_header(aac.build_audio_specific_config(48000, 2, 42), 10)
    with pytest.raises(MediaError, match="does not fit"):
        aac.adts_header(bytes.fromhex("1210"), 9000)


def test_adts_stream_decodes_with_ffmpeg() -> None:
    enc = av.CodecContext.create("aac", "w")
    enc.sample_rate = 44100
    enc.layout = "stereo"
    enc.format = "fltp"
    enc.time_base = Fraction(1, 44100)
    enc.open()
    asc = bytes(enc.extradata or b"")
    frames: list[bytes] = []
    for i in range(10):
        samples = np.sin(np.arange(1024) * 0.05 + i).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(
            np.stack([samples, samples]), format="fltp", layout="stereo"
        )
        frame.sample_rate = 44100
        frame.pts = i * 1024
        frames += [bytes(p) for p in enc.encode(frame)]
    frames += [bytes(p) for p in enc.encode(None) if p.size]
    stream = b"".join(aac.to_adts(asc, f) for f in frames)
    with av.open(io.BytesIO(stream), format="aac", mode="r") as container:
        packets = [bytes(p) for p in container.demux(audio=0) if p.size]
        assert container.streams.audio[0].codec_context.sample_rate == 44100
    assert [p[aac.ADTS_HEADER_SIZE :] for p in packets] == frames
    with av.open(io.BytesIO(stream), format="aac", mode="r") as container:
        decoded = list(container.decode(audio=0))
    assert len(decoded) == len(frames)
    assert all(f.samples == 1024 and f.sample_rate == 44100 for f in decoded)
