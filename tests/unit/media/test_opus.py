"""AAC → Opus: exact 20 ms packets, pts from the input timeline, the tone survives."""

from __future__ import annotations

import ctypes.util
import itertools
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from ingest.errors import MediaError
from ingest.media.codecs import opus
from ingest.media.codecs.opus import (
    OPUS_FRAME_SAMPLES,
    OPUS_SAMPLE_RATE,
    RESYNC_THRESHOLD_MS,
    AacToOpus,
    OpusPacket,
    libopus,
)
from ingest.media.units import AudioConfig, Kind, MediaUnit


def aac_sine(
    freq: float = 440.0, seconds: float = 2.0, rate: int = 44100, layout: str = "stereo"
) -> tuple[AudioConfig, list[MediaUnit]]:
    """A sine encoded with PyAV's AAC encoder, as raw-frame MediaUnits with ms timestamps."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate = rate
    encoder.layout = layout
    encoder.format = "fltp"
    encoder.bit_rate = 128_000
    encoder.time_base = Fraction(1, rate)
    encoder.open()
    channels = 2 if layout == "stereo" else 1
    n = int(seconds * rate)
    tone = (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
    packets = []
    for start in range(0, n - 1023, 1024):
        frame = av.AudioFrame.from_ndarray(
            np.tile(tone[start : start + 1024], (channels, 1)), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = start
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    priming = -(packets[0].pts or 0)
    units = []
    for packet in packets:
        ms = round(((packet.pts or 0) + priming) * 1000 / rate)
        units.append(MediaUnit(Kind.AUDIO, "aac", ms, ms, bytes(packet)))
    config = AudioConfig("aac", bytes(encoder.extradata or b""), rate, channels, 2)
    return config, units


def decode_opus(packets: list[OpusPacket]) -> list[np.ndarray[Any, Any]]:
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = OPUS_SAMPLE_RATE
    decoder.layout = "stereo"
    out = []
    for packet in packets:
        frames = decoder.decode(av.Packet(packet.data))
        out.append(np.concatenate([f.to_ndarray().reshape(-1) for f in frames]))
    return out


def dominant_frequency(samples: np.ndarray[Any, Any], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def transcode(
    config: AudioConfig, units: list[MediaUnit], direct: bool | None = None
) -> list[OpusPacket]:
    transcoder = AacToOpus(config, direct=direct)
    packets = []
    for unit in units:
        packets += transcoder.feed(unit)
    return packets + transcoder.flush()


@pytest.mark.parametrize("direct", [True, False], ids=["libopus", "pyav"])
@pytest.mark.parametrize("rate", [8000, 44100, 48000])  # 8 kHz: frames of 6144 samples
def test_sine_becomes_20ms_opus_packets_in_sync(direct: bool, rate: int) -> None:
    config, units = aac_sine(rate=rate)
    packets = transcode(config, units, direct)

    pts = [p.pts or 0 for p in packets]
    assert pts[0] == units[0].pts * 48
    assert all(b - a == OPUS_FRAME_SAMPLES for a, b in itertools.pairwise(pts))

    decoded = decode_opus(packets)
    assert all(len(d) == OPUS_FRAME_SAMPLES * 2 for d in decoded)  # interleaved stereo s16
    left = np.concatenate(decoded).reshape(-1, 2)[:, 0].astype(np.float64)
    assert abs(dominant_frequency(left[4800:], OPUS_SAMPLE_RATE) - 440) <= 5
    assert np.sqrt(np.mean(left[4800:-4800] ** 2)) > 0.2 * 32767  # a tone, not silence

    input_samples = len(units) * 1024 * OPUS_SAMPLE_RATE / config.sample_rate
    assert abs(len(packets) * OPUS_FRAME_SAMPLES - input_samples) <= OPUS_FRAME_SAMPLES


@pytest.mark.parametrize("direct", [True, False], ids=["libopus", "pyav"])
def test_mono_input_stays_mono_and_plays_on_both_channels(direct: bool) -> None:
    config, units = aac_sine(freq=1000.0, seconds=0.5, rate=48000, layout="mono")
    transcoder = AacToOpus(config, direct=direct)
    packets = [p for u in units for p in transcoder.feed(u)] + transcoder.flush()
    assert transcoder.channels == 1
    assert all(p.data[0] & 0x04 == 0 for p in packets)  # TOC byte: the mono flag
    decoded = decode_opus(packets)
    stereo = np.concatenate(decoded).reshape(-1, 2).astype(np.float64)
    for channel in (0, 1):
        assert abs(dominant_frequency(stereo[2400:, channel], OPUS_SAMPLE_RATE) - 1000) <= 5


def test_stereo_input_is_stereo_opus() -> None:
    config, units = aac_sine(seconds=0.5)
    transcoder = AacToOpus(config)
    packets = [p for u in units for p in transcoder.feed(u)]
    assert transcoder.channels == 2
    assert packets
    assert all(p.data[0] & 0x04 for p in packets)  # TOC byte: the stereo flag


@pytest.mark.parametrize("direct", [True, False], ids=["libopus", "pyav"])
def test_input_jump_restarts_the_pts_base(direct: bool) -> None:
    config, units = aac_sine(seconds=1.0, rate=48000)
    jump = 5000
    later = [MediaUnit(u.kind, u.codec, u.dts + jump, u.pts + jump, u.data) for u in units]
    transcoder = AacToOpus(config, direct=direct)
    first = [p for u in units for p in transcoder.feed(u)]
    second = [p for u in later for p in transcoder.feed(u)]
    second += transcoder.flush()
    pts = [p.pts or 0 for p in first + second]
    assert all(b > a for a, b in itertools.pairwise(pts))  # strictly increasing
    assert later[0].pts * 48 in pts  # the new base is the input's time
    assert pts[len(first)] < later[0].pts * 48  # after the padded rest of the first part
    steps = {b - a for a, b in itertools.pairwise(pts)}
    assert len(steps - {OPUS_FRAME_SAMPLES}) == 1  # exactly one jump


def test_small_timestamp_jitter_does_not_resync() -> None:
    config, units = aac_sine(seconds=1.0)
    jittered = [
        MediaUnit(u.kind, u.codec, u.dts + (i % 3) * 5, u.pts + (i % 3) * 5, u.data)
        for i, u in enumerate(units)
    ]
    assert RESYNC_THRESHOLD_MS > 2 * 5
    pts = [p.pts or 0 for p in transcode(config, jittered)]
    assert {b - a for a, b in itertools.pairwise(pts)} == {OPUS_FRAME_SAMPLES}


def test_undecodable_frames_are_skipped_and_counted() -> None:
    config, units = aac_sine(seconds=0.3)
    transcoder = AacToOpus(config)
    transcoder.feed(units[0])
    transcoder.feed(MediaUnit(Kind.AUDIO, "aac", units[1].dts, units[1].pts, b"\xff" * 50))
    for unit in units[2:]:
        transcoder.feed(unit)
    assert transcoder.decode_errors == 1


def test_refuses_non_aac() -> None:
    with pytest.raises(MediaError):
        AacToOpus(AudioConfig("opus", b"x", 48000, 2))
    with pytest.raises(MediaError):
        AacToOpus(AudioConfig("aac", b"", 44100, 2))


@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("layout", ["stereo", "mono"])
def test_direct_libopus_makes_the_same_packets_as_pyav(rate: int, layout: str) -> None:
    """Same settings as FFmpeg's libopus encoder: byte for byte the same packets and pts, the
    last padded packet and the encoder's tail included; and on a resync too."""
    config, units = aac_sine(seconds=1.0, rate=rate, layout=layout)
    later = [MediaUnit(u.kind, u.codec, u.dts + 3000, u.pts + 3000, u.data) for u in units]
    assert AacToOpus(config).direct  # PyAV's wheel (or the system) gives libopus
    direct = transcode(config, units + later, direct=True)
    pyav = transcode(config, units + later, direct=False)
    assert len(direct) > 90
    assert direct == pyav


def test_without_libopus_symbols_pyav_encodes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert opus._load(["/nonexistent/libopus.so.0"]) is None  # no such library
    assert opus._load([np.__file__]) is None  # not a shared library
    assert opus._load([ctypes.util.find_library("c") or "libc.so.6"]) is None  # no libopus symbols
    monkeypatch.setattr(opus, "libopus", lambda: None)
    config, units = aac_sine(seconds=0.3, rate=48000)
    transcoder = AacToOpus(config)
    assert not transcoder.direct
    packets = [p for u in units for p in transcoder.feed(u)] + transcoder.flush()
    assert {b.pts - a.pts for a, b in itertools.pairwise(packets)} == {OPUS_FRAME_SAMPLES}
    with pytest.raises(MediaError, match="libopus"):
        AacToOpus(config, direct=True)


def test_libopus_that_fails_the_self_check_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """E.g. ctl calls that go wrong on a platform: the bit rate does not read back."""
    found = libopus()
    assert found is not None
    candidates = opus._pyav_module_paths()
    assert opus._load(candidates) is not None
    system = ctypes.util.find_library("opus")  # the fallback: a libopus on the library path
    assert system is None or opus._load([system]) is not None
    monkeypatch.setattr(opus, "_OPUS_GET_BITRATE", opus._OPUS_GET_LOOKAHEAD)
    assert opus._load(candidates) is None
