"""AAC → Opus for WebRTC: decode, resample to 48 kHz, encode exact 20 ms Opus packets.

Opus gets the source's channels: mono stays mono (an Opus decoder plays it on both channels, and
the encoder works half as hard), anything else becomes stereo. Samples go to libopus as 32-bit
float (its native format: no 16-bit rounding, ~25 % less CPU than s16).

One transcoder per audio track, shared by every viewer. It is synchronous and holds no asyncio
state, so it may run in a worker thread (``asyncio.to_thread``); one call at a time per instance.

Where the CPU goes (one stereo 48 kHz AAC frame of 1024 samples, ~1.07 Opus frames): libopus's
encode ~110 µs, FFmpeg's AAC decode ~10 µs, the rest is glue. To keep the glue small:

* 48 kHz planar float (what FFmpeg's AAC decoder gives for OBS's default) is interleaved with
  numpy straight from the decoded frame's planes into our own sample buffer, from which the 20 ms
  frames are encoded in place; other rates and layouts go through ``av.AudioResampler`` first.
* libopus is called directly through ctypes (:func:`libopus`), the very library PyAV's FFmpeg
  links (found through PyAV's own extension module, so a wheel's bundled copy or the system's),
  with the settings FFmpeg's ``libopus`` encoder applies for ours (the packets are byte for byte
  the same). This skips, per 20 ms frame, an ``AVFrame``, PyAV's encode-side resampler (a filter
  graph that re-cuts frames to 960 samples) and an ``AVPacket``: ~25 µs less per AAC frame.
  Where the library or its symbols cannot be found, or a self-check of the settings fails (e.g.
  a platform where ctypes cannot call libopus's variadic ``opus_encoder_ctl``), PyAV's encoder
  is used instead, with the same output.

Timestamps: each packet's ``pts`` (time base 1/48000) is the time of its first sample, derived
from the input units' pts (ms x 48) and advanced by exactly :data:`OPUS_FRAME_SAMPLES` per packet,
so audio stays in sync with video. When the input jumps by more than :data:`RESYNC_THRESHOLD_MS`
from where the decoded samples say it should be, the buffered samples are padded with silence into
one last packet and the pts base restarts at the new input time (never going back: pts stay
strictly increasing). The resampler's and Opus encoder's own delays (< 3 ms) are not compensated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from typing import Any, NamedTuple, Protocol

import av
import av.error
import numpy as np
import numpy.typing as npt

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
_PCM = npt.NDArray[np.float32]


class OpusPacket(NamedTuple):
    """One Opus packet of :data:`OPUS_FRAME_SAMPLES` samples."""

    pts: int
    """Time of its first sample, in 1/48000 s."""
    data: bytes


class AacToOpus:
    """Transcodes one AAC track (raw frames + AudioSpecificConfig) to 20 ms Opus packets.

    ``direct``: call libopus through ctypes (``None``: when :func:`libopus` finds it), or use
    PyAV's encoder (``False``)."""

    def __init__(
        self,
        config: AudioConfig,
        *,
        bit_rate: int = OPUS_BIT_RATE_DEFAULT,
        direct: bool | None = None,
    ) -> None:
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
        self._lib = libopus() if direct is None or direct else None
        if direct and self._lib is None:
            raise MediaError("libopus cannot be called directly here")
        self.channels = 0
        """Channels of the Opus packets (1 or 2), known from the first decoded frame."""
        self._encoder: _Encoder | None = None  # opened at the first decoded frame
        self._resampler: av.AudioResampler | None = None  # only for what is not 48 kHz fltp
        self._resampling: tuple[str, str, int] | None = None  # what it was made for
        self._pcm: _PCM = np.zeros((0, 1), dtype=np.float32)  # interleaved 48 kHz samples
        self._pcm_address = 0
        self._fill = 0  # samples (per channel) in _pcm
        self._padding = 0  # silence samples in the last padded frame
        self._next_pts: int | None = None  # pts of the next output packet (48 kHz)
        self._anchor = 0  # input time (48 kHz) where the decoded samples started counting
        self._decoded = 0  # input samples decoded since the anchor
        self._input_rate = config.sample_rate or OPUS_SAMPLE_RATE

    @property
    def direct(self) -> bool:
        """Whether libopus is called directly (else through PyAV's encoder)."""
        return self._lib is not None

    def _expected(self) -> int | None:
        """Where (48 kHz) the next input unit should start, judging by the samples decoded."""
        if self._next_pts is None:
            return None
        return self._anchor + self._decoded * OPUS_SAMPLE_RATE // self._input_rate

    def feed(self, unit: MediaUnit) -> list[OpusPacket]:
        """Decode one raw AAC frame; return the Opus packets now complete (often 0 or 1)."""
        start = unit.pts * _TICKS_PER_MS
        if self._next_pts is None:
            self._next_pts = start
            self._restart(start)
            packets: list[OpusPacket] = []
        else:
            expected = self._anchor + self._decoded * OPUS_SAMPLE_RATE // self._input_rate
            if abs(start - expected) > RESYNC_THRESHOLD_MS * _TICKS_PER_MS:
                log.info(
                    "AAC→Opus: input jumped %+d ms, restarting the pts base",
                    (start - expected) // _TICKS_PER_MS,
                )
                packets = self._drain(pad=True)
                self._next_pts = max(start, self._next_pts)
                self._restart(start)
            else:
                packets = []
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
            rate = frame.sample_rate
            if rate != self._input_rate:
                self._restart(self._expected() or start)
                self._input_rate = rate
            samples = frame.samples
            self._decoded += samples
            if self._encoder is None:
                self._open(frame.layout.nb_channels)
            if (
                rate == OPUS_SAMPLE_RATE
                and frame.format.name == "fltp"
                and frame.layout.nb_channels == self.channels
            ):
                if self._resampler is not None:
                    self._flush_resampler()
                self._write_planes(frame.planes, samples)
            else:
                self._resample(frame)
        if self._fill >= OPUS_FRAME_SAMPLES:
            packets += self._drain(pad=False)
        return packets

    def flush(self) -> list[OpusPacket]:
        """End of input: encode what is buffered (the last packet padded with silence). The
        transcoder cannot be fed afterwards."""
        encoder = self._encoder
        if self._next_pts is None or encoder is None:
            return []
        if self._resampler is not None:
            self._flush_resampler()
        packets = self._drain(pad=True)
        if self._padding < encoder.lookahead:  # the lookahead still holds real audio: keep it
            # what FFmpeg's libopus encoder does at its end: one more frame of silence
            self._pcm[:OPUS_FRAME_SAMPLES] = 0
            packets += self._encode(0)
        return packets

    def _open(self, source_channels: int) -> None:
        self.channels = channels = 1 if source_channels == 1 else 2
        self._grow(4 * OPUS_FRAME_SAMPLES)
        if self._lib is not None:
            self._encoder = _DirectEncoder(self._lib, channels, self._bit_rate)
        else:
            self._encoder = _PyAVEncoder(channels, self._bit_rate)

    def _restart(self, start: int) -> None:
        self._anchor = start
        self._decoded = 0

    def _grow(self, samples: int) -> None:
        """Room for ``samples`` per channel in the sample buffer, keeping what it holds."""
        pcm = np.zeros((max(samples, 2 * len(self._pcm)), self.channels), dtype=np.float32)
        pcm[: self._fill] = self._pcm[: self._fill]
        self._pcm = pcm
        self._pcm_address = pcm.ctypes.data

    def _write_planes(self, planes: Sequence[Any], samples: int) -> None:
        """Append a 48 kHz planar float frame (of our channels), interleaved."""
        fill = self._fill
        if fill + samples > len(self._pcm):
            self._grow(fill + samples)
        out = self._pcm[fill : fill + samples]
        out[:, 0] = np.frombuffer(planes[0], np.float32, samples)
        if self.channels == 2:
            out[:, 1] = np.frombuffer(planes[1], np.float32, samples)
        self._fill = fill + samples

    def _resample(self, frame: av.AudioFrame) -> None:
        """Append any other frame, resampled to 48 kHz interleaved float of our channels."""
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._resampler is not None and source != self._resampling:
            self._flush_resampler()
        if self._resampler is None:
            layout = "mono" if self.channels == 1 else "stereo"
            self._resampler = av.AudioResampler(format="flt", layout=layout, rate=OPUS_SAMPLE_RATE)
            self._resampling = source
        frame.pts = None
        self._write_frames(self._resampler.resample(frame))

    def _flush_resampler(self) -> None:
        assert self._resampler is not None
        resampler, self._resampler = self._resampler, None
        self._write_frames(resampler.resample(None))

    def _write_frames(self, frames: Iterable[av.AudioFrame]) -> None:
        for out in frames:
            samples = out.samples
            fill = self._fill
            if fill + samples > len(self._pcm):
                self._grow(fill + samples)
            flat = out.to_ndarray().reshape(-1, self.channels)
            self._pcm[fill : fill + samples] = flat[:samples]
            self._fill = fill + samples

    def _drain(self, *, pad: bool) -> list[OpusPacket]:
        """Encode every whole 20 ms frame buffered; with ``pad``, also the remainder."""
        packets: list[OpusPacket] = []
        self._padding = 0
        fill = self._fill
        start = 0
        while fill - start >= OPUS_FRAME_SAMPLES:
            packets += self._encode(start)
            start += OPUS_FRAME_SAMPLES
        if start:
            fill -= start
            if fill:
                self._pcm[:fill] = self._pcm[start : start + fill]
        if pad and fill:
            self._pcm[fill:OPUS_FRAME_SAMPLES] = 0
            self._padding = OPUS_FRAME_SAMPLES - fill
            packets += self._encode(0)
            fill = 0
        self._fill = fill
        return packets

    def _encode(self, start: int) -> list[OpusPacket]:
        """Encode the 20 ms at ``start`` (samples) in the buffer; stamp the packets."""
        encoder = self._encoder
        assert encoder is not None
        assert self._next_pts is not None
        address = self._pcm_address + start * self.channels * 4
        packets = []
        for data in encoder.encode(self._pcm, start, address):
            packets.append(OpusPacket(self._next_pts, data))
            self._next_pts += OPUS_FRAME_SAMPLES
        return packets


class _Encoder(Protocol):
    lookahead: int
    """The encoder's delay in samples (its first packet starts this much before the input)."""

    def encode(self, pcm: _PCM, start: int, address: int) -> list[bytes]:
        """Encode the 20 ms at ``pcm[start:]`` (interleaved float32, C-contiguous; its first
        sample at the memory ``address``)."""
        ...


# libopus's API (opus_defines.h): stable since 1.0
_OPUS_OK = 0
_OPUS_APPLICATION_RESTRICTED_LOWDELAY = 2051
_OPUS_SET_BITRATE = 4002
_OPUS_GET_BITRATE = 4003
_OPUS_SET_VBR = 4006
_OPUS_SET_COMPLEXITY = 4010
_OPUS_SET_VBR_CONSTRAINT = 4020
_OPUS_GET_LOOKAHEAD = 4027
_MAX_PACKET = 4000  # bytes: what libopus's documentation recommends for a packet buffer
_CELT_FULLBAND_20MS = 31  # the TOC config of our packets (restricted low delay: CELT only)


class LibOpus:
    """The few libopus functions the direct encoder calls, with their C signatures."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.create = lib.opus_encoder_create
        self.create.restype = ctypes.c_void_p
        self.create.argtypes = [
            ctypes.c_int32,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        self.destroy = lib.opus_encoder_destroy
        self.destroy.restype = None
        self.destroy.argtypes = [ctypes.c_void_p]
        self.encode_float = lib.opus_encode_float
        self.encode_float.restype = ctypes.c_int32
        self.encode_float.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int32,
        ]
        # opus_encoder_ctl is variadic: one prototype per argument type we pass
        address = ctypes.cast(lib.opus_encoder_ctl, ctypes.c_void_p).value
        if address is None:
            raise OSError("opus_encoder_ctl has no address")
        self.ctl_set = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int32
        )(address)
        self.ctl_get = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int32)
        )(address)


def _pyav_module_paths() -> list[str]:
    """PyAV's extension modules that link libavcodec (and through it libopus)."""
    paths = []
    for name in ("av._core", "av.codec.context"):
        try:
            path = getattr(importlib.import_module(name), "__file__", None)
        except ImportError:
            continue
        if path:
            paths.append(path)
    return paths


def _candidates() -> Iterator[str]:
    yield from _pyav_module_paths()
    system = ctypes.util.find_library("opus")  # runs ldconfig: only when PyAV's did not do
    if system:
        yield system


def _load(candidates: Iterable[str]) -> LibOpus | None:
    """The first candidate whose symbols include libopus's and whose encoder passes a check."""
    for candidate in candidates:
        try:
            # dlsym through a library's handle also searches what it links: PyAV's module finds
            # the libopus its FFmpeg was linked with (bundled in the wheel, or the system's)
            lib = LibOpus(ctypes.CDLL(candidate))
            _DirectEncoder(lib, 2, OPUS_BIT_RATE_DEFAULT).check()
            _DirectEncoder(lib, 1, OPUS_BIT_RATE_DEFAULT).check()
        except (OSError, AttributeError, MediaError) as exc:
            log.debug("libopus not usable through %s: %s", candidate, exc)
            continue
        return lib
    return None


@functools.cache
def libopus() -> LibOpus | None:
    """libopus for direct calls, or ``None`` (then PyAV's encoder is used): looked up through
    PyAV's own modules first, then as ``libopus`` on the system's library path."""
    lib = _load(_candidates())
    if lib is None:
        log.info("AAC→Opus: libopus not callable directly here; encoding through PyAV")
    return lib


class _DirectEncoder:
    """libopus through ctypes, set up as FFmpeg's ``libopus`` encoder is for ours
    (``-application lowdelay -frame_duration 20 -b:a <bit_rate>``, its defaults: VBR not
    constrained, complexity 10)."""

    def __init__(self, lib: LibOpus, channels: int, bit_rate: int) -> None:
        self._lib = lib
        self.channels = channels
        self._bit_rate = bit_rate
        error = ctypes.c_int(0)
        state = lib.create(
            OPUS_SAMPLE_RATE, channels, _OPUS_APPLICATION_RESTRICTED_LOWDELAY, ctypes.byref(error)
        )
        if not state or error.value != _OPUS_OK:
            raise MediaError(f"opus_encoder_create failed ({error.value})")
        self._state: int = state
        weakref.finalize(self, lib.destroy, state)
        for request, value in (
            (_OPUS_SET_BITRATE, bit_rate),
            (_OPUS_SET_VBR, 1),
            (_OPUS_SET_VBR_CONSTRAINT, 0),
            (_OPUS_SET_COMPLEXITY, 10),
        ):
            if lib.ctl_set(state, request, value) != _OPUS_OK:
                raise MediaError(f"opus_encoder_ctl({request}, {value}) failed")
        self.bit_rate = self._get(_OPUS_GET_BITRATE)
        self.lookahead = self._get(_OPUS_GET_LOOKAHEAD)
        self._out = ctypes.create_string_buffer(_MAX_PACKET)
        self._encode = lib.encode_float

    def _get(self, request: int) -> int:
        value = ctypes.c_int32(-1)
        if self._lib.ctl_get(self._state, request, ctypes.byref(value)) != _OPUS_OK:
            raise MediaError(f"opus_encoder_ctl({request}) failed")
        return value.value

    def encode(self, pcm: _PCM, start: int, address: int) -> list[bytes]:
        out = self._out
        size = self._encode(self._state, address, OPUS_FRAME_SAMPLES, out, _MAX_PACKET)
        if size < 0:
            raise MediaError(f"opus_encode_float failed ({size})")
        return [out.raw[:size]]

    def check(self) -> None:
        """Raise :class:`MediaError` unless the settings read back and a frame encodes to a
        packet of ours (catches a platform where the variadic ctl calls go wrong)."""
        if self.bit_rate != self._bit_rate or not 0 <= self.lookahead < OPUS_FRAME_SAMPLES:
            raise MediaError(f"libopus reads back {self.bit_rate} bit/s, {self.lookahead}")
        pcm = np.zeros((OPUS_FRAME_SAMPLES, self.channels), dtype=np.float32)
        (packet,) = self.encode(pcm, 0, pcm.ctypes.data)
        stereo = bool(packet[0] & 0x04)
        if packet[0] >> 3 != _CELT_FULLBAND_20MS or stereo != (self.channels == 2):
            raise MediaError(f"libopus made an unexpected packet {packet[:1].hex()}")


class _PyAVEncoder:
    """FFmpeg's ``libopus`` encoder through PyAV (an ``AVFrame`` in, an ``AVPacket`` out)."""

    def __init__(self, channels: int, bit_rate: int) -> None:
        self._layout = "mono" if channels == 1 else "stereo"
        encoder: Any = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = OPUS_SAMPLE_RATE
        encoder.layout = self._layout
        encoder.format = "flt"
        encoder.bit_rate = bit_rate
        encoder.time_base = OPUS_TIME_BASE
        encoder.options = {"application": "lowdelay", "frame_duration": "20"}
        encoder.open()
        self._encoder = encoder
        self._pts = 0  # the encoder's own clock: +960 per frame, never resynced
        self.lookahead = 0  # learnt from the first packet

    def encode(self, pcm: _PCM, start: int, address: int) -> list[bytes]:
        samples = pcm[start : start + OPUS_FRAME_SAMPLES].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout=self._layout)
        frame.sample_rate = OPUS_SAMPLE_RATE
        frame.time_base = OPUS_TIME_BASE
        frame.pts = self._pts
        packets = [p for p in self._encoder.encode(frame) if p.size]
        if self._pts == 0 and packets:
            self.lookahead = max(0, -(packets[0].pts or 0))  # first packet: pts = -delay
        self._pts += OPUS_FRAME_SAMPLES
        return [bytes(p) for p in packets]
