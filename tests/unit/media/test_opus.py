"""AAC → Opus: exact 20 ms packets, pts from the input timeline, the tone survives."""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from ingest.errors import MediaError
from ingest.media.codecs.opus import (
    OPUS_FRAME_SAMPLES,
    OPUS_SAMPLE_RATE,
    OPUS_TIME_BASE,
    RESYNC_THRESHOLD_MS,
    AacToOpus,
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


def decode_opus(packets: list[av.Packet[Any]]) -> list[np.ndarray[Any, Any]]:
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = OPUS_SAMPLE_RATE
    decoder.layout = "stereo"
    out = []
    for packet in packets:
        frames = decoder.decode(av.Packet(bytes(packet)))
        out.append(np.concatenate([f.to_ndarray().reshape(-1) for f in frames]))
    return out


def dominant_frequency(samples: np.ndarray[Any, Any], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def transcode(config: AudioConfig, units: list[MediaUnit]) -> list[av.Packet[Any]]:
    transcoder = AacToOpus(config)
    packets = []
    for unit in units:
        packets += transcoder.feed(unit)
    return packets + transcoder.flush()


def test_sine_becomes_20ms_opus_packets_in_sync() -> None:
    config, units = aac_sine()
    packets = transcode(config, units)

    pts = [p.pts or 0 for p in packets]
    assert pts[0] == units[0].pts * 48
    assert all(b - a == OPUS_FRAME_SAMPLES for a, b in itertools.pairwise(pts))
    assert all(p.time_base == OPUS_TIME_BASE for p in packets)
    assert all(p.duration == OPUS_FRAME_SAMPLES for p in packets)

    decoded = decode_opus(packets)
    assert all(len(d) == OPUS_FRAME_SAMPLES * 2 for d in decoded)  # interleaved stereo s16
    left = np.concatenate(decoded).reshape(-1, 2)[:, 0].astype(np.float64)
    assert abs(dominant_frequency(left[4800:], OPUS_SAMPLE_RATE) - 440) <= 5
    assert np.sqrt(np.mean(left[4800:-4800] ** 2)) > 0.2 * 32767  # a tone, not silence

    input_samples = len(units) * 1024 * OPUS_SAMPLE_RATE / config.sample_rate
    assert abs(len(packets) * OPUS_FRAME_SAMPLES - input_samples) <= OPUS_FRAME_SAMPLES


def test_mono_input_stays_mono_and_plays_on_both_channels() -> None:
    config, units = aac_sine(freq=1000.0, seconds=0.5, rate=48000, layout="mono")
    transcoder = AacToOpus(config)
    packets = [p for u in units for p in transcoder.feed(u)] + transcoder.flush()
    assert transcoder.channels == 1
    assert all(bytes(p)[0] & 0x04 == 0 for p in packets)  # TOC byte: the mono flag
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
    assert all(bytes(p)[0] & 0x04 for p in packets)  # TOC byte: the stereo flag


def test_input_jump_restarts_the_pts_base() -> None:
    config, units = aac_sine(seconds=1.0)
    jump = 5000
    later = [MediaUnit(u.kind, u.codec, u.dts + jump, u.pts + jump, u.data) for u in units]
    transcoder = AacToOpus(config)
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
