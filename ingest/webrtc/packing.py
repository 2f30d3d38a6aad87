"""RTP packing done once per unit for every viewer, and where our senders are set up.

aiortc's :class:`~aiortc.RTCRtpSender`, given pre-encoded packets, calls its codec's
``Encoder.pack(packet)`` for every viewer: for H.264 that splits the Annex B access unit and cuts
it into FU-A / STAP-A payloads, ~20 per 1080p frame, identical for every viewer of the unit. Then
it builds, serialises (with header extensions), SRTP-protects and sends each RTP packet.

Here:

* :class:`UnitPacket` is what our tracks' ``recv()`` returns instead of an ``av.Packet``: the hub
  unit and the viewer's own RTP timestamp (``pts`` in ``time_base``, ``bytes()`` like a packet),
  without copying the data into a new ``av.Packet`` per viewer.
* :class:`H264Packer` / :class:`OpusPacker` replace aiortc's codec encoders on our senders. The
  H.264 payloads of a unit come from a :class:`PayloadCache` shared by every viewer of a bridge
  (:func:`packetize_h264`, run once per unit); the RTP timestamp stays per viewer.
* :func:`packetize_h264` is RFC 6184's non-interleaved mode like aiortc's packetizer (single NAL
  units, STAP-A for small ones in a row, FU-A for large ones, at most :data:`H264_PAYLOAD_MAX`
  bytes a payload), except that FU-A fragments all have the same size but the last (aiortc
  evens them out): so a unit's packets leave in one ``sendmsg`` with UDP GSO (``sending``).
* :class:`HeaderExtensionsWriter` replaces the sender's header-extension map with one that writes
  the extensions our senders use (``mid``, ``abs-send-time``) byte for byte like aiortc's, without
  building lists and structs per packet; anything else goes to aiortc's own code.

* :func:`install` also switches the sender to :class:`~ingest.webrtc.sending.LeanRtpSender`,
  our RTP send loop (the per-packet work that remains per viewer: header, SRTP, ``sendto``).

**Private aiortc internals** (the sender's name-mangled ``__encoder`` and
``__rtp_header_extensions_map``) are used only through :mod:`~ingest.webrtc.aiortc_compat`
(:func:`~ingest.webrtc.aiortc_compat.prepare_sender`), checked there when it is imported: if
aiortc changes them, the server does not start (:class:`AiortcChanged`) instead of sending with
aiortc's own encoder.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from fractions import Fraction
from typing import Any

from aiortc.codecs.base import Encoder
from aiortc.rtcrtpparameters import RTCRtpParameters
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap

from ingest.media.codecs.h264 import split_annexb
from ingest.media.units import MediaUnit
from ingest.webrtc.aiortc_compat import AiortcChanged as AiortcChanged  # re-exported
from ingest.webrtc.aiortc_compat import prepare_sender, sender_packer
from ingest.webrtc.sending import LeanRtpSender

VIDEO_TIME_BASE = Fraction(1, 90_000)
"""RTP time base of H.264 (the tracks' ``time_base`` is this very object: no Fraction math)."""
AUDIO_TIME_BASE = Fraction(1, 48_000)
"""RTP time base of Opus."""

PAYLOAD_CACHE_UNITS = 90
"""H.264 units whose payloads a :class:`PayloadCache` keeps (3 s at 30 fps): every live viewer
packs the newest unit within milliseconds of the others; a joiner's GOP backlog mostly hits too."""

H264_PAYLOAD_MAX = 1300
"""Bytes of an H.264 RTP payload at most, as aiortc's packetizer: with the RTP header, header
extensions and the SRTP tag a packet stays under 1400 bytes (no IP fragmentation on the usual
paths, VPNs and tunnels included)."""

_EXTENSION_HEADER = struct.Struct("!HH")  # RFC 3550 5.3.1: profile, length in 32-bit words
_STAP_A = 24
_FU_A = 28

_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def packetize_h264(data: bytes, max_payload: int = H264_PAYLOAD_MAX) -> list[bytes]:
    """The RTP payloads of an Annex B access unit (RFC 6184, non-interleaved mode): NAL units
    that fit go alone, or several in a row in one STAP-A; larger ones are cut into FU-A
    fragments of ``max_payload`` bytes each but the last."""
    nals = split_annexb(data)
    out: list[bytes] = []
    count = len(nals)
    i = 0
    while i < count:
        nal = nals[i]
        if len(nal) > max_payload:
            out += _fu_a(nal, max_payload)
            i += 1
            continue
        end = i + 1
        size = 3 + len(nal)  # STAP-A header, then a 2-byte length before each NAL unit
        while end < count and size + 2 + len(nals[end]) <= max_payload:
            size += 2 + len(nals[end])
            end += 1
        if end == i + 1:
            out.append(nal)
        else:
            group = nals[i:end]
            forbidden = nri = 0
            for n in group:
                forbidden |= n[0] & 0x80
                nri = max(nri, n[0] & 0x60)
            parts = [bytes((forbidden | nri | _STAP_A,))]
            for n in group:
                parts += (len(n).to_bytes(2, "big"), n)
            out.append(b"".join(parts))
        i = end
    return out


def _fu_a(nal: bytes, max_payload: int) -> list[bytes]:
    indicator = (nal[0] & 0xE0) | _FU_A
    kind = nal[0] & 0x1F
    chunk = max_payload - 2  # FU indicator + FU header
    middle = bytes((indicator, kind))
    out = [bytes((indicator, kind | 0x80)) + nal[1 : 1 + chunk]]
    pos, end = 1 + chunk, len(nal)
    while end - pos > chunk:
        out.append(middle + nal[pos : pos + chunk])
        pos += chunk
    out.append(bytes((indicator, kind | 0x40)) + nal[pos:])
    return out


class UnitPacket:
    """One viewer's view of a hub unit for aiortc: quacks like the ``av.Packet`` aiortc reads
    (``pts``, ``dts``, ``time_base``, ``bytes()``) and keeps the unit itself for the packers."""

    __slots__ = ("dts", "pts", "time_base", "unit")

    def __init__(self, unit: MediaUnit, pts: int, time_base: Fraction) -> None:
        self.unit = unit
        self.pts = pts
        self.dts = pts
        self.time_base = time_base

    def __bytes__(self) -> bytes:
        return self.unit.data

    def __repr__(self) -> str:
        return f"<UnitPacket pts={self.pts} {len(self.unit.data)} bytes>"


class PayloadCache:
    """H.264 payloads of the most recent units, shared by every viewer of one bridge.

    Keyed by the unit's identity; the entry keeps the unit alive, so its ``id`` is not reused
    while cached. Bounded (least recently packed first out); single event loop, no locking."""

    def __init__(self, max_units: int = PAYLOAD_CACHE_UNITS) -> None:
        self.max_units = max_units
        self._entries: OrderedDict[int, tuple[MediaUnit, list[bytes]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def payloads(self, unit: MediaUnit) -> list[bytes]:
        """The unit's payloads (the same list for every caller: do not modify it)."""
        key = id(unit)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is unit:
            self.hits += 1
            return entry[1]
        self.misses += 1
        payloads = packetize_h264(unit.data)
        entries = self._entries
        entries[key] = (unit, payloads)
        if len(entries) > self.max_units:
            entries.popitem(last=False)
        return payloads


class _UnitPacker(Encoder):
    """Base of our pre-encoded "encoders": ``pack`` only, timestamps in :attr:`time_base`."""

    time_base: Fraction

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise TypeError(f"{type(self).__name__} packs hub units, it does not encode frames")

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        if type(packet) is not UnitPacket:
            raise TypeError(f"{type(self).__name__} packs UnitPackets, not {type(packet)}")
        pts: int = packet.pts
        if packet.time_base is not self.time_base and packet.time_base != self.time_base:
            pts = int(pts * packet.time_base / self.time_base)
        return self._payloads(packet.unit), pts

    def _payloads(self, unit: MediaUnit) -> list[bytes]:
        raise NotImplementedError


class H264Packer(_UnitPacker):
    """H.264 at 90 kHz, payloads from the bridge's shared :class:`PayloadCache`."""

    time_base = VIDEO_TIME_BASE

    def __init__(self, cache: PayloadCache) -> None:
        self.cache = cache

    def _payloads(self, unit: MediaUnit) -> list[bytes]:
        return self.cache.payloads(unit)


class OpusPacker(_UnitPacker):
    """Opus at 48 kHz: one packet per RTP payload (like aiortc's ``OpusEncoder.pack``)."""

    time_base = AUDIO_TIME_BASE

    def _payloads(self, unit: MediaUnit) -> list[bytes]:
        return [unit.data]


class ForwardPacker(_UnitPacker):
    """Forwarded WebRTC media (WHIP): the publisher's RTP payloads exactly as received
    (``unit.payloads``), for any codec; only the RTP header is the viewer's own."""

    def __init__(self, time_base: Fraction) -> None:
        self.time_base = time_base

    def _payloads(self, unit: MediaUnit) -> list[bytes]:
        payloads = unit.payloads
        if payloads is None:
            raise TypeError(f"{unit!r} has no RTP payloads to forward")
        return list(payloads)


class HeaderExtensionsWriter(HeaderExtensionsMap):
    """aiortc's header-extension map, with a fast ``set`` for what our senders write.

    aiortc's sender sets ``mid`` and ``abs_send_time`` on every packet (``audio_level`` only when
    it encodes audio itself, never for pre-encoded media). When only those two are set, their ids
    fit the one-byte form (RFC 8285) and the values are in range, the extension block is
    assembled here (the ``mid`` part once per mid); it is byte-identical to aiortc's. Any other
    case is aiortc's own ``set``."""

    def __init__(self) -> None:
        super().__init__()
        self._mid_id = 0
        self._abs_id = 0
        self._mid: str | None = None
        self._mid_part = b""
        self._fast = True

    def configure(self, parameters: RTCRtpParameters) -> None:
        super().configure(parameters)
        for ext in parameters.headerExtensions:
            if ext.uri == _MID_URI:
                self._mid_id = ext.id
            elif ext.uri == _ABS_SEND_TIME_URI:
                self._abs_id = ext.id
        self._fast = 0 <= self._mid_id <= 14 and 0 <= self._abs_id <= 14
        self._mid = None

    def set(self, values: HeaderExtensions) -> tuple[int, bytes]:
        if (
            not self._fast
            or values.audio_level is not None
            or values.rtp_stream_id is not None
            or values.repaired_rtp_stream_id is not None
            or values.transmission_offset is not None
            or values.transport_sequence_number is not None
        ):
            return super().set(values)
        mid = values.mid
        if mid is not None and self._mid_id:
            if mid != self._mid:
                encoded = mid.encode("utf8")
                if not 0 < len(encoded) <= 16:
                    return super().set(values)
                self._mid = mid
                self._mid_part = bytes([(self._mid_id << 4) | (len(encoded) - 1)]) + encoded
            value = self._mid_part
        else:
            value = b""
        abs_send_time = values.abs_send_time
        if abs_send_time is not None and self._abs_id:
            if abs_send_time >> 24:  # out of 24 bits (or negative): aiortc's struct decides
                return super().set(values)
            value += ((self._abs_id << 28) | (2 << 24) | abs_send_time).to_bytes(4, "big")
        if not value:
            return 0, b""
        return 0xBEDE, value + b"\x00" * (-len(value) % 4)

    def block(self, mid: str | None, abs_send_time: int) -> bytes:
        """The whole extension block (its 4-byte header, then the elements) of a packet with
        ``mid`` and ``abs_send_time``, as ``set`` would make it: once per unit on our senders,
        without building aiortc's ``HeaderExtensions``."""
        mid_id = self._mid_id
        if (
            self._fast
            and 0 <= abs_send_time < 1 << 24
            and (mid is None or not mid_id or mid == self._mid)
        ):
            value = self._mid_part if mid is not None and mid_id else b""
            if self._abs_id:
                value += ((self._abs_id << 28) | (2 << 24) | abs_send_time).to_bytes(4, "big")
            if not value:
                return b""
            value += b"\x00" * (-len(value) % 4)
            return _EXTENSION_HEADER.pack(0xBEDE, len(value) >> 2) + value
        profile, value = self.set(HeaderExtensions(mid=mid, abs_send_time=abs_send_time))
        if not value:
            return b""
        return _EXTENSION_HEADER.pack(profile, len(value) >> 2) + value


def install(sender: RTCRtpSender, packer: Encoder) -> None:
    """Make a new (not yet started) sender pack with ``packer``, write header extensions with a
    :class:`HeaderExtensionsWriter` and send with our RTP loop
    (:class:`~ingest.webrtc.sending.LeanRtpSender`). Call it right after ``addTransceiver``."""
    prepare_sender(sender, packer, HeaderExtensionsWriter(), LeanRtpSender)


def installed_packer(sender: RTCRtpSender) -> Encoder | None:
    """The packer a sender uses (for tests and checks)."""
    return sender_packer(sender)
