"""Media units: the timed, codec-level pieces every sink (WebRTC, HLS, recording) consumes.

Timestamps are integer milliseconds on the *participant's* timeline: unwrapped (64-bit, never
going back at the 32-bit RTMP wrap) and rebased so that a publisher who reconnects continues where
the previous connection stopped. ``pts = dts + composition time``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    AUDIO = "audio"
    VIDEO = "video"


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """What a decoder needs before the first frame (from the AVC/HEVC sequence header)."""

    codec: str  # "h264", "vp8" (WHIP, forwarded); "hevc", "av1", "vp9" recognised, refused
    record: bytes  # the raw decoder configuration record (avcC for H.264; empty from WHIP)
    sps: tuple[bytes, ...] = ()  # parameter sets without start codes
    pps: tuple[bytes, ...] = ()
    width: int = 0
    height: int = 0
    profile: int = 0  # profile_idc (66 Baseline, 77 Main, 100 High, ...)
    level: int = 0  # level_idc (31 = 3.1)
    profile_compat: int = 0  # constraint flags byte, for profile-level-id
    forwarded: bool = False
    """The units carry the publisher's RTP payloads (:attr:`MediaUnit.payloads`, WHIP):
    WebRTC viewers get them as received, never repacked, decoded or encoded."""

    @property
    def profile_level_id(self) -> str:
        """The SDP ``profile-level-id`` (RFC 6184) of this stream, e.g. ``640028``."""
        return f"{self.profile:02x}{self.profile_compat:02x}{self.level:02x}"


@dataclass(frozen=True, slots=True)
class AudioConfig:
    codec: str  # "aac" (carried); "opus" (WHIP, forwarded)
    record: bytes  # AudioSpecificConfig for AAC
    sample_rate: int = 0
    channels: int = 0
    object_type: int = 0  # AAC audio object type (2 = LC)
    forwarded: bool = False
    """As :attr:`VideoConfig.forwarded`."""


@dataclass(frozen=True, slots=True)
class MediaUnit:
    """One access unit (video) or one audio frame.

    For H.264 ``data`` is Annex B (start codes), with SPS and PPS in front of every IDR.
    For AAC ``data`` is one raw frame (no ADTS header) of 1024 samples.
    From a WebRTC publisher (WHIP), ``payloads`` are the frame's RTP payloads exactly as the
    publisher sent them, in sequence order (``data`` is the depacketized frame: Annex B for
    H.264, the VP8 frame, the Opus packet).
    """

    kind: Kind
    codec: str
    dts: int  # ms, participant timeline
    pts: int  # ms, participant timeline
    data: bytes
    keyframe: bool = False
    payloads: tuple[bytes, ...] | None = None

    @property
    def composition_offset(self) -> int:
        return self.pts - self.dts
