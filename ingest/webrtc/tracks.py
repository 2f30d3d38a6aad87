"""aiortc tracks that send pre-encoded hub media: ``recv()`` returns a packet, not a frame.

aiortc's RTP sender packs a packet with its encoder's ``pack()`` instead of encoding, and sets
the RTP timestamp to ``random origin + pts x time_base x clock rate``. Our packets are
:class:`~ingest.webrtc.packing.UnitPacket` (the hub unit plus this viewer's pts, no copy of the
data), packed by :meth:`HubPacketTrack.packer` (H.264: FU-A / STAP-A payloads cut once per unit
for all viewers of a bridge; Opus: one packet per RTP packet), which
:func:`~ingest.webrtc.packing.install` sets on the track's sender. So the pts we give is
the RTP timeline: video at 90 kHz (ms x 90), audio at 48 kHz (ms x 48), both from the same
participant timeline, which keeps audio and video in sync (receivers line them up with RTCP SR).

In this mode aiortc ignores PLI/FIR. A viewer therefore starts at a keyframe from the hub's GOP
cache. Those cached frames are older than live; sent with their real timestamps they would make
a browser's jitter buffer play the whole GOP late, so while a viewer catches up (frames behind
the live edge are queued) each frame is stamped just before the live edge instead, 1 tick apart:
the browser decodes the backlog at once and shows live pictures, with timestamps that only grow.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any, ClassVar

import av
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ingest.media.hub import Reader, TrackEndedError
from ingest.media.units import MediaUnit
from ingest.webrtc.packing import (
    AUDIO_TIME_BASE,
    VIDEO_TIME_BASE,
    ForwardPacker,
    H264Packer,
    OpusPacker,
    PayloadCache,
    UnitPacket,
)

VIDEO_CLOCK_RATE = VIDEO_TIME_BASE.denominator
AUDIO_CLOCK_RATE = AUDIO_TIME_BASE.denominator

LiveEdge = Callable[[], int | None]
"""Returns the pts (ms) of the newest unit the viewer's source has, or ``None``."""
RecvProbe = Callable[["HubPacketTrack", MediaUnit], None]
"""Called with each unit just before :meth:`HubPacketTrack.recv` hands it to aiortc."""


class HubPacketTrack(MediaStreamTrack):
    """Base: reads units from a hub :class:`Reader`, returns them as :class:`UnitPacket`.

    Stopping the track (aiortc does when the sender stops) closes the reader; the end of the hub
    track ends this track (:class:`MediaStreamError`, which stops aiortc's sender quietly).
    """

    clock_rate = 0
    time_base = Fraction(1)
    probe: ClassVar[RecvProbe | None] = None
    """A latency probe (``ingest bench``); ``None`` (one attribute test per packet) when off."""

    def __init__(self, reader: Reader) -> None:
        super().__init__()
        self.reader = reader
        self.packets = 0
        """Packets returned by :meth:`recv`."""
        self._last_ts: int | None = None

    async def recv(self) -> UnitPacket:  # type: ignore[override]
        """The next unit as a packet whose pts is in :attr:`time_base`."""
        if self.readyState != "live":
            raise MediaStreamError
        try:
            unit = await self.reader.get()
        except TrackEndedError:
            self.stop()
            raise MediaStreamError from None
        ts = self._timestamp(unit)
        if self._last_ts is not None and ts <= self._last_ts:
            ts = self._last_ts + 1  # RTP timestamps of successive frames must differ
        self._last_ts = ts
        self.packets += 1
        packet = UnitPacket(unit, ts, self.time_base)
        probe = HubPacketTrack.probe
        if probe is not None:
            probe(self, unit)
        return packet

    def stop(self) -> None:
        super().stop()
        self.reader.close()

    def packer(self) -> Encoder:
        """A new packer of this track's packets for its aiortc sender (see ``packing``)."""
        raise NotImplementedError

    def _timestamp(self, unit: MediaUnit) -> int:
        return unit.pts * self.clock_rate // 1000


class PassthroughVideoTrack(HubPacketTrack):
    """H.264 access units (Annex B, SPS/PPS before each IDR) as packets at 90 kHz.

    ``live_edge`` enables the catch-up stamping of the module docstring; without it every frame
    keeps its own pts.
    """

    kind = "video"
    clock_rate = VIDEO_CLOCK_RATE
    time_base = VIDEO_TIME_BASE

    def __init__(
        self,
        reader: Reader,
        *,
        live_edge: LiveEdge | None = None,
        payloads: PayloadCache | None = None,
    ) -> None:
        super().__init__(reader)
        self.payloads = payloads if payloads is not None else PayloadCache()
        """H.264 payloads per unit, shared by every viewer of the same bridge output."""
        self._live_edge = live_edge
        self._catching_up = live_edge is not None
        self.caught_up_after = 0
        """Frames sent before reaching the live edge (the cached GOP's backlog)."""

    def _timestamp(self, unit: MediaUnit) -> int:
        ts = unit.pts * VIDEO_CLOCK_RATE // 1000
        if not self._catching_up or self._live_edge is None:
            return ts
        live = self._live_edge()
        behind = self.reader.queued  # frames after this one, all no newer than the live edge
        if live is None or unit.pts >= live or behind == 0:
            self._catching_up = False
            return ts
        self.caught_up_after += 1
        return live * VIDEO_CLOCK_RATE // 1000 - behind - 1

    def packer(self) -> Encoder:
        return H264Packer(self.payloads)


class OpusAudioTrack(HubPacketTrack):
    """20 ms Opus packets (from the shared transcoder) at 48 kHz."""

    kind = "audio"
    clock_rate = AUDIO_CLOCK_RATE
    time_base = AUDIO_TIME_BASE

    def packer(self) -> Encoder:
        return OpusPacker()


class ForwardedVideoTrack(HubPacketTrack):
    """A WebRTC publisher's video (VP8, H.264) forwarded as received: its payloads at 90 kHz."""

    kind = "video"
    clock_rate = VIDEO_CLOCK_RATE
    time_base = VIDEO_TIME_BASE

    def packer(self) -> Encoder:
        return ForwardPacker(self.time_base)


class ForwardedAudioTrack(HubPacketTrack):
    """A WebRTC publisher's Opus forwarded as received, at 48 kHz."""

    kind = "audio"
    clock_rate = AUDIO_CLOCK_RATE
    time_base = AUDIO_TIME_BASE

    def packer(self) -> Encoder:
        return ForwardPacker(self.time_base)


def to_packet(unit: MediaUnit, pts: int, time_base: Fraction) -> av.Packet[Any]:
    """``unit.data`` as an ``av.Packet`` with ``pts`` (and ``dts``) in ``time_base`` (for aiortc's
    own encoders; our senders use :class:`UnitPacket`)."""
    packet = av.Packet(unit.data)
    packet.pts = pts
    packet.dts = pts
    packet.time_base = time_base
    return packet
