"""AAC → Opus for WebRTC: decode, resample to 48 kHz, encode exact 20 ms Opus packets.

Opus gets the source's channels: mono stays mono (an Opus decoder plays it on both channels, and
the encoder works half as hard), anything else becomes stereo. Samples go to libopus as 32-bit
float (its native format: no 16-bit rounding, ~25 % less CPU than s16).

One transcoder per audio track, shared by every viewer. It is synchronous and holds no asyncio
state, so it may run in a worker thread (``asyncio.to_thread``); one call at a time per instance.

Timestamps: each packet's ``pts`` (time base 1/48000) is the time of its first sample, derived
from the input units' pts (ms x 48) and advanced by exactly :data:`OPUS_FRAME_SAMPLES` per packet,
so audio stays in sync with video. When the input jumps by more than :data:`RESYNC_THRESHOLD_MS`
from where the decoded samples say it should be, the buffered samples are padded with silence into
one last packet and the pts base restarts at the new input time (never going back: pts stay
strictly increasing). The resampler's and Opus encoder's own delays (< 3 ms) are not compensated.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any

import av
import av.error
import numpy as np

from ingest.errors import MediaError
from ingest.media.units import AudioConfig, MediaUnit

log = logging.getLogger("ingest.media")

OPUS_SAMPLE_RATE = 48_000
OPUS_CHANNELS = 2
"""The channels Opus is described with in SDP (RFC 7587: always 2); packets may be mono."""
OPUS_FRAME_SAMPLES = 960
"""20 ms at 48 kHz: every output packet holds exactly this many samples per channel."""
OPUS_TIME_BASE = Fraction(1, OPUS_SAMPLE_RATE)
OPUS_BIT_RATE_DEFAULT = 96_000
RESYNC_THRESHOLD_MS = 100
"""An input timestamp this far from the expected one restarts the pts base."""

_TICKS_PER_MS = OPUS_SAMPLE_RATE // 1000


class AacToOpus:
    """Transcodes one AAC track (raw frames + AudioSpecificConfig) to 20 ms Opus packets."""

    def __init__(self, config: AudioConfig, *, bit_rate: int = OPUS_BIT_RATE_DEFAULT) -> None:
        if config.codec != "aac":
            raise MediaError(f"AacToOpus needs AAC audio, not {config.codec!r}")
        if not config.record:
            raise MediaError("AAC audio without an AudioSpecificConfig cannot be decoded")
        self.config = config
        self.decode_errors = 0
        """Input units the AAC decoder rejected (skipped)."""
        self._decoder = av.CodecContext.create("aac", "r")
        self._decoder.extradata = config.record
        self._bit_rate = bit_rate
        self.channels = 0
        """Channels of the Opus packets (1 or 2), known from the first decoded frame."""
        self._resampler: av.AudioResampler | None = None
        self._encoder: Any = None  # opened at the first decoded frame, with its channels
        self._fifo = av.AudioFifo()
        self._lookahead = 0  # the encoder's delay in samples, learnt from its first packet
        self._padding = 0  # silence samples in the last padded frame
        self._encoder_pts = 0  # the encoder's own clock: +960 per frame, never resynced
        self._next_pts: int | None = None  # pts of the next output packet (48 kHz)
        self._anchor = 0  # input time (48 kHz) where the decoded samples started counting
        self._decoded = 0  # input samples decoded since the anchor
        self._input_rate = config.sample_rate or OPUS_SAMPLE_RATE

    def _expected(self) -> int | None:
        """Where (48 kHz) the next input unit should start, judging by the samples decoded."""
        if self._next_pts is None:
            return None
        return self._anchor + self._decoded * OPUS_SAMPLE_RATE // self._input_rate

    def feed(self, unit: MediaUnit) -> list[av.Packet[Any]]:
        """Decode one raw AAC frame; return the Opus packets now complete (often 0 or 1)."""
        packets: list[av.Packet[Any]] = []
        start = unit.pts * _TICKS_PER_MS
        expected = self._expected()
        if expected is None:
            self._next_pts = start
            self._restart(start)
        elif abs(start - expected) > RESYNC_THRESHOLD_MS * _TICKS_PER_MS:
            log.info(
                "AAC→Opus: input jumped %+d ms, restarting the pts base",
                (start - expected) // _TICKS_PER_MS,
            )
            packets += self._drain(pad=True)
            assert self._next_pts is not None
            self._next_pts = max(start, self._next_pts)
            self._restart(start)
        try:
            frames = self._decoder.decode(av.Packet(unit.data))
        except av.error.FFmpegError as exc:
            self.decode_errors += 1
            if self.decode_errors == 1 or self.decode_errors % 100 == 0:
                log.warning(
                    "AAC→Opus: undecodable AAC frame (%d so far): %s", self.decode_errors, exc
                )
            return packets
        for frame in frames:
            if self._resampler is None:
                self._open(frame.layout.nb_channels)
            assert self._resampler is not None
            if frame.sample_rate != self._input_rate:
                self._restart(self._expected() or start)
                self._input_rate = frame.sample_rate
            self._decoded += frame.samples
            frame.pts = None
            for out in self._resampler.resample(frame):
                out.pts = None
                self._fifo.write(out)
        packets += self._drain(pad=False)
        return packets

    def flush(self) -> list[av.Packet[Any]]:
        """End of input: encode what is buffered (the last packet padded with silence). The
        transcoder cannot be fed afterwards."""
        if self._next_pts is None or self._resampler is None:
            return []
        for out in self._resampler.resample(None):
            out.pts = None
            self._fifo.write(out)
        packets = self._drain(pad=True)
        tail = [p for p in self._encoder.encode(None) if p.size]
        if self._padding < self._lookahead:  # the lookahead still holds real audio: keep it
            packets += [self._stamp(p) for p in tail]
        return packets

    def _open(self, source_channels: int) -> None:
        self.channels = 1 if source_channels == 1 else 2
        layout = "mono" if self.channels == 1 else "stereo"
        self._resampler = av.AudioResampler(format="flt", layout=layout, rate=OPUS_SAMPLE_RATE)
        encoder: Any = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = OPUS_SAMPLE_RATE
        encoder.layout = layout
        encoder.format = "flt"
        encoder.bit_rate = self._bit_rate
        encoder.time_base = OPUS_TIME_BASE
        encoder.options = {"application": "lowdelay", "frame_duration": "20"}
        encoder.open()
        self._encoder = encoder

    def _restart(self, start: int) -> None:
        self._anchor = start
        self._decoded = 0

    def _drain(self, *, pad: bool) -> list[av.Packet[Any]]:
        """Encode every whole 20 ms frame buffered; with ``pad``, also the remainder."""
        packets: list[av.Packet[Any]] = []
        self._padding = 0
        while self._fifo.samples >= OPUS_FRAME_SAMPLES:
            frame = self._fifo.read(OPUS_FRAME_SAMPLES)
            assert frame is not None
            packets += self._encode(frame)
        if pad and self._fifo.samples:
            rest = self._fifo.read()
            assert rest is not None
            pcm = np.zeros((1, OPUS_FRAME_SAMPLES * self.channels), dtype=np.float32)
            data = rest.to_ndarray().reshape(1, -1)
            self._padding = OPUS_FRAME_SAMPLES - rest.samples
            pcm[:, : data.shape[1]] = data
            layout = "mono" if self.channels == 1 else "stereo"
            frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout=layout)
            packets += self._encode(frame)
        return packets

    def _encode(self, frame: av.AudioFrame) -> list[av.Packet[Any]]:
        frame.sample_rate = OPUS_SAMPLE_RATE
        frame.time_base = OPUS_TIME_BASE
        frame.pts = self._encoder_pts
        packets = [p for p in self._encoder.encode(frame) if p.size]
        if self._encoder_pts == 0 and packets:
            self._lookahead = max(0, -(packets[0].pts or 0))  # first packet: pts = -delay
        self._encoder_pts += OPUS_FRAME_SAMPLES
        return [self._stamp(p) for p in packets]

    def _stamp(self, packet: av.Packet[Any]) -> av.Packet[Any]:
        assert self._next_pts is not None
        packet.pts = packet.dts = self._next_pts
        packet.duration = OPUS_FRAME_SAMPLES
        packet.time_base = OPUS_TIME_BASE
        self._next_pts += OPUS_FRAME_SAMPLES
        return packet
