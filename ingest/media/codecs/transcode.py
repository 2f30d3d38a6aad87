"""H.264 with B-frames → H.264 without B-frames, for WebRTC (which cannot carry reordered frames).

:class:`BFrameRemover` decodes Annex B access units (in decode order, pts may differ from dts) with
FFmpeg's H.264 decoder and re-encodes them with libx264 for low latency (``tune=zerolatency``, no
B-frames, constrained Baseline by default). It keeps the stream's shape: same resolution, same pts
(so the same frame rate), and an IDR exactly where the input had a keyframe (x264's own keyframe
placement and scene cuts are off), each IDR led by SPS and PPS in band. Output units come in
presentation order with ``dts == pts``.

Starting on a cached GOP (a viewer arrives while the source is seconds into a long GOP) would
mean transcoding every cached frame before the live one: 8 s of 1080p took 1.6 s. Instead
:meth:`BFrameRemover.first_picture` encodes the GOP's keyframe alone at once (the first picture a
viewer gets, in tens of ms), and :meth:`BFrameRemover.catch_up` decodes the rest without encoding
it (non-reference frames skipped), then encodes only the newest picture: the output reaches the
live edge after one decode pass of the backlog, about 4x faster than real time.

Synchronous and free of asyncio so it can run in a worker thread (``asyncio.to_thread``); PyAV
releases the GIL while coding. One call at a time per instance.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from fractions import Fraction
from typing import Any

import av
import av.error
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame

from ingest.errors import MediaError
from ingest.media.codecs import h264
from ingest.media.units import Kind, MediaUnit, VideoConfig

log = logging.getLogger("ingest.media")

FRAME_RATE_DEFAULT = Fraction(30)
"""Only informs x264's rate control; the output keeps the input's timestamps."""
PRESET_DEFAULT = "veryfast"
PROFILE_DEFAULT = "baseline"  # x264's baseline is Constrained Baseline (42e0..): every browser
MS = Fraction(1, 1000)

_START_CODE = b"\x00\x00\x00\x01"


class BFrameRemover:
    """Re-encodes one H.264 track without B-frames, keyframe for keyframe."""

    def __init__(
        self,
        config: VideoConfig,
        *,
        bit_rate: int,
        frame_rate: Fraction | int = FRAME_RATE_DEFAULT,
        preset: str = PRESET_DEFAULT,
        profile: str = PROFILE_DEFAULT,
    ) -> None:
        if config.codec != "h264":
            raise MediaError(f"BFrameRemover needs H.264 video, not {config.codec!r}")
        self.bit_rate = bit_rate
        self.frame_rate = Fraction(frame_rate)
        self.preset = preset
        self.profile = profile
        self.config: VideoConfig | None = None
        """The output's config (SPS/PPS, avcC, profile-level-id) once the first IDR is out."""
        self.decode_errors = 0
        """Input units the decoder rejected (skipped; decoding recovers at the next IDR)."""
        self._decoder = av.CodecContext.create("h264", "r")
        sps, pps = _parameter_sets(config)
        if sps and pps:
            self._decoder.extradata = b"".join(_START_CODE + n for n in (*sps, *pps))
        self._encoder: VideoCodecContext | None = None
        self._keyframes: set[int] = set()  # pts of input keyframes not yet decoded
        self._last_pts: int | None = None
        self._stale_through: int | None = None  # after catch_up: decoded frames up to here drop

    def first_picture(self, unit: MediaUnit) -> list[MediaUnit]:
        """Encode the keyframe ``unit`` alone, at once, as the output's first IDR (a decoder of
        its own, flushed, so the picture comes out without the reorder delay), followed by a
        repeat of it 1 ms later. Then give the same unit, with what follows it, to
        :meth:`catch_up` or :meth:`feed`."""
        decoder = av.CodecContext.create("h264", "r")
        if self._decoder.extradata:
            decoder.extradata = self._decoder.extradata
        try:
            frames = [*decoder.decode(self._packet(unit)), *decoder.decode(None)]
        except av.error.FFmpegError as exc:
            log.warning("H.264 transcode: the first keyframe does not decode: %s", exc)
            return []
        if not frames:
            return []
        picture = frames[-1]
        out = self._encode(picture)
        # The same picture again, 1 ms later (a P-frame of a few bytes): receivers that take a
        # frame as complete when the next one starts (aiortc's jitter buffer does) show the
        # keyframe now instead of after catch_up.
        picture.pts = (self._last_pts or 0) + 1
        out += self._encode(picture)
        self._stale_through = self._last_pts
        return out

    def catch_up(self, units: list[MediaUnit]) -> list[MediaUnit]:
        """Decode a backlog (decode order) without encoding it, skipping frames nothing refers
        to, and encode only its newest decoded picture; the units after it go to :meth:`feed`.
        Frames of the backlog that the decoder gives out later (reordering) are dropped."""
        newest: VideoFrame | None = None
        self._decoder.skip_frame = "NONREF"
        try:
            for unit in units:
                for frame in self._decode(unit):
                    if newest is None or (frame.pts or 0) >= (newest.pts or 0):
                        newest = frame
        finally:
            self._decoder.skip_frame = "DEFAULT"
        stale = self._stale_through
        if newest is None or (stale is not None and (newest.pts or 0) <= stale):
            return []
        out = self._encode(newest)
        self._stale_through = self._last_pts
        return out

    def feed(self, unit: MediaUnit) -> list[MediaUnit]:
        """Take one access unit (decode order); return the units encoded so far, in order."""
        out: list[MediaUnit] = []
        stale = self._stale_through
        for frame in self._decode(unit):
            if stale is not None and frame.pts is not None and frame.pts <= stale:
                continue  # already behind what catch_up encoded
            out += self._encode(frame)
        return out

    @staticmethod
    def _packet(unit: MediaUnit) -> av.Packet[Any]:
        packet = av.Packet(unit.data)
        packet.pts = unit.pts
        packet.dts = unit.dts
        packet.time_base = MS
        return packet

    def _decode(self, unit: MediaUnit) -> list[VideoFrame]:
        if unit.keyframe:
            self._keyframes.add(unit.pts)
        try:
            return list(self._decoder.decode(self._packet(unit)))
        except av.error.FFmpegError as exc:
            self.decode_errors += 1
            if self.decode_errors == 1 or self.decode_errors % 100 == 0:
                log.warning(
                    "H.264 transcode: undecodable unit (%d so far): %s", self.decode_errors, exc
                )
            return []

    def flush(self) -> list[MediaUnit]:
        """End of input: drain the decoder's reorder buffer and the encoder. Feed no more."""
        out: list[MediaUnit] = []
        try:
            frames = self._decoder.decode(None)
        except av.error.FFmpegError as exc:
            log.warning("H.264 transcode: flushing the decoder failed: %s", exc)
            frames = []
        stale = self._stale_through
        for frame in frames:
            if stale is None or frame.pts is None or frame.pts > stale:
                out += self._encode(frame)
        if self._encoder is not None:
            out += self._drain(self._encoder)
            self._encoder = None
        return out

    def _encode(self, frame: VideoFrame) -> list[MediaUnit]:
        out: list[MediaUnit] = []
        pts = frame.pts
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            fixed = 0 if self._last_pts is None else self._last_pts + 1
            log.debug("H.264 transcode: pts %s not increasing, using %d", pts, fixed)
            pts = fixed
        self._last_pts = pts
        key = pts in self._keyframes
        if self._keyframes:
            self._keyframes = {k for k in self._keyframes if k > pts}
        encoder = self._encoder
        if encoder is None or (encoder.width, encoder.height) != (frame.width, frame.height):
            if encoder is not None:
                log.info(
                    "H.264 transcode: %dx%d → %dx%d, new encoder",
                    encoder.width,
                    encoder.height,
                    frame.width,
                    frame.height,
                )
                out += self._drain(encoder)
            encoder = self._encoder = self._open_encoder(frame.width, frame.height)
            key = True  # a new encoder starts with an IDR anyway
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        frame.pts = pts
        frame.time_base = MS
        # never pass the decoded type on: a B (or stray I) would be forced on x264
        frame.pict_type = PictureType.I if key else PictureType.NONE
        for packet in encoder.encode(frame):
            out.append(self._unit(packet))
        return out

    def _drain(self, encoder: VideoCodecContext) -> list[MediaUnit]:
        return [self._unit(p) for p in encoder.encode(None) if p.size]

    def _unit(self, packet: av.Packet[Any]) -> MediaUnit:
        pts = packet.pts if packet.pts is not None else (self._last_pts or 0)
        data = bytes(packet)
        if packet.is_keyframe:
            self._learn_config(data)
        return MediaUnit(Kind.VIDEO, "h264", pts, pts, data, keyframe=packet.is_keyframe)

    def _open_encoder(self, width: int, height: int) -> VideoCodecContext:
        kbps = max(1, self.bit_rate // 1000)
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width = width
        encoder.height = height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = MS
        encoder.framerate = self.frame_rate
        encoder.bit_rate = self.bit_rate
        encoder.max_b_frames = 0
        encoder.options = {
            "preset": self.preset,
            "tune": "zerolatency",
            "profile": self.profile,
            "bf": "0",
            "forced-idr": "1",
            "x264-params": (
                "repeat-headers=1:annexb=1:keyint=infinite:scenecut=0"
                f":vbv-maxrate={kbps}:vbv-bufsize={kbps}"
            ),
        }
        encoder.open()
        return encoder

    def _learn_config(self, data: bytes) -> None:
        sps, pps = h264.parameter_sets(h264.split_annexb(data))
        if not sps or not pps or len(sps[0]) < 4:
            return
        if self.config is not None and self.config.sps == sps[:1] and self.config.pps == pps[:1]:
            return
        config = h264.video_config_from_parameter_sets(sps[:1], pps[:1])
        encoder = self._encoder
        if encoder is not None and (config.width, config.height) != (encoder.width, encoder.height):
            config = replace(config, width=encoder.width, height=encoder.height)
        self.config = config


def _parameter_sets(config: VideoConfig) -> tuple[list[bytes], list[bytes]]:
    """SPS and PPS from the config's fields, else from its avcC record (if it parses)."""
    if config.sps and config.pps:
        return list(config.sps), list(config.pps)
    try:
        avcc = h264.parse_avcc_record(config.record)
    except MediaError:
        return [], []
    return list(avcc.sps), list(avcc.pps)
