"""A leaner RTP send loop for our viewers' aiortc senders: the per-viewer, per-packet cost.

Every viewer of a 1080p30 6 Mbit/s stream gets ~680 RTP packets a second, and aiortc's
``RTCRtpSender._run_rtp`` spends, per packet: an ``RtpPacket`` object, two NTP clock reads
through ``datetime`` (abs-send-time and the RTCP SR fields), a header-extension map walk, the
``serialize`` of the header, then four coroutine calls (DTLS transport → ICE transport → aioice
connection → protocol) before SRTP and ``sendto``. That was most of a viewer's CPU.

:class:`LeanRtpSender` replaces, on the senders of our hub tracks, ``_run_rtp`` and
``_retransmit`` (by switching the instance's class in :func:`~ingest.webrtc.packing.install`;
everything else stays aiortc's). Per unit: one clock read (:func:`ntp_now`, one ``time_ns``),
one header-extension block (:meth:`~ingest.webrtc.packing.HeaderExtensionsWriter.block`), the
payloads from the packer (shared by every viewer for H.264), two checks that the route found
for an earlier unit still holds. Per packet: the 12-byte header, extensions and
payload written into one batch buffer (``struct.pack_into`` and two slice copies) and SRTP in
place there (:func:`~ingest.webrtc.aiortc_compat.protect_at`: libsrtp's ``srtp_protect`` on the
DTLS transport's own session, without pylibsrtp's copies). Same bytes on the wire as aiortc's
loop.

**UDP GSO.** Packets of a unit that have the same size (the H.264 packer cuts FU-A fragments of
one size, the last one smaller) leave in one ``sendmsg`` with ``UDP_SEGMENT`` (Linux ≥ 4.18):
the kernel cuts the buffer into the same datagrams, and the system-call and routing cost is paid
once per run instead of once per packet (~6x less kernel CPU per packet on loopback). At most
:data:`GSO_MAX_SEGMENTS` datagrams and :data:`GSO_MAX_BYTES` a call. Where the kernel or the
route refuses (``EIO``: no checksum offload; ``EINVAL``: a segment over the path MTU;
``ENOPROTOOPT``: an old kernel) that sender sends one datagram per call from then on (logged
once). A single packet goes out with ``sendto``. When the socket cannot take a datagram now
(``EAGAIN``) or the transport already queues some, the datagrams go through the transport's
``sendto``, which queues them in order, as aiortc would.

* Sending goes straight to the nominated ICE pair's UDP socket when the DTLS transport is
  connected and the pair is a plain aioice UDP pair (no TURN) on asyncio's own transport;
  otherwise (or while ICE has no pair, or in tests with a fake transport) it falls back to
  aiortc's own ``_send_rtp``, one packet at a time.
* NACK / RTX: the history (:class:`SendHistory`) keeps whole units, one entry per unit
  (first sequence number, timestamp, payloads), as many as make :data:`HISTORY_PACKETS` packets
  (aiortc's bound). A NACKed packet is rebuilt from it and sent over RTX (or as itself without
  RTX), through aiortc's ``_send_rtp``, like aiortc; at most :data:`RETRANSMIT_MAX_PER_S` a
  second per sender, so a viewer's NACK storm costs the server little.
* RTCP sender reports and ``getStats`` keep working: the packet / octet counts and the last
  NTP / RTP timestamp pair that aiortc's ``_run_rtcp`` reads are written once per unit.

**Private internals** of aiortc / aioice / pylibsrtp / asyncio are used only through
:mod:`~ingest.webrtc.aiortc_compat` (checked there at import, so a changed dependency fails the
server's start with :class:`AiortcChanged` rather than sending nothing): once per unit the
sender's track, packer and counters and whether the route still holds
(:func:`~ingest.webrtc.aiortc_compat.route_usable`), the route itself only when it does not
(:func:`~ingest.webrtc.aiortc_compat.udp_route`: the libsrtp context, the transport and its
socket, the address); per packet only :func:`~ingest.webrtc.aiortc_compat.protect_at`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
import traceback
from collections import deque
from typing import Any, Protocol, cast

from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE
from aiortc.utils import random32

from ingest.webrtc.aiortc_compat import (
    SRTP_BATCH_BYTES,
    SRTP_BATCH_VIEW,
    SRTP_BUFFER_BYTES,
    SRTP_MAX_TRAILER_BYTES,
    SenderHooks,
    UdpRoute,
    count_sent,
    count_transport_sent,
    next_rtx,
    protect_at,
    route_usable,
    rtp_loop_ended,
    rtp_loop_started,
    rtp_send,
    sender_enabled,
    sender_header_extensions,
    sender_packer,
    sender_ssrcs,
    sender_track,
    udp_route,
)
from ingest.webrtc.aiortc_compat import AiortcChanged as AiortcChanged  # re-exported

log = logging.getLogger("ingest.webrtc")

GSO_MAX_SEGMENTS = 64
"""Datagrams one ``sendmsg`` may carry (the kernel's ``UDP_MAX_SEGMENTS`` on older Linux)."""
GSO_MAX_BYTES = 60_000
"""Bytes one ``sendmsg`` may carry (under the 65,507 of one UDP/IPv4 datagram's payload)."""
HISTORY_PACKETS = RTP_HISTORY_SIZE
"""Packets a sender remembers for retransmission (aiortc's 128), as whole units: the oldest unit
goes once the others hold this many."""
RETRANSMIT_MAX_PER_S = 300
"""Packets a sender retransmits a second at most (half of a 6 Mbit/s stream's packets lost);
NACKs beyond it are ignored until the next second."""
MAX_PACKET_BYTES = SRTP_BUFFER_BYTES - SRTP_MAX_TRAILER_BYTES
"""An RTP packet (before SRTP) longer than this is refused (it would not fit one datagram)."""

UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # <linux/udp.h>; Python 3.12 names it
_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP)

NTP_UNIX_OFFSET_S = 2_208_988_800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970)."""

_HEADER = struct.Struct("!BBHLL")
_SEQ = struct.Struct("!H")
_SEGMENT = struct.Struct("=H")
_VERSION_2 = 0x80
_HAS_EXTENSION = 0x10
_MARKER = 0x80
assert GSO_MAX_BYTES + SRTP_BUFFER_BYTES <= SRTP_BATCH_BYTES


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp, as aiortc's ``clock.current_ntp_time`` gives it
    (whole microseconds in the fraction), from one ``time_ns`` read instead of two ``datetime``
    objects: once per unit on every sender."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return ((seconds + NTP_UNIX_OFFSET_S) << 32) | ((nanoseconds // 1000) << 32) // 1_000_000


class _BlockWriter(Protocol):
    """What the sender needs of :class:`~ingest.webrtc.packing.HeaderExtensionsWriter`."""

    def block(self, mid: str | None, abs_send_time: int) -> bytes: ...


class LeanRtpSender(SenderHooks):
    """aiortc's sender with our RTP loop and retransmission (see the module docstring).

    Never constructed: :func:`~ingest.webrtc.packing.install` switches a new sender's class to
    this one, after giving it its packer and header-extension writer."""

    _lean_history: SendHistory
    _lean_budget: list[float]  # [retransmissions left, the second they count for]
    _lean_payload_type: int
    _lean_udp: UdpBatcher
    lean_packets = 0
    """Packets this sender sent straight to the socket (the rest went through aiortc)."""

    def _lean_extensions(self, abs_send_time: int) -> bytes:
        """The header-extension block (with its 4-byte header) of every packet of a unit."""
        writer, mid = sender_header_extensions(self)
        # install() gives every LeanRtpSender our HeaderExtensionsWriter (packing imports us)
        return cast(_BlockWriter, writer).block(mid, abs_send_time)

    async def run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        rtp_loop_started(self)
        self._lean_history = history = SendHistory()
        self._lean_budget = [RETRANSMIT_MAX_PER_S, 0.0]
        self._lean_payload_type = payload_type = codec.payloadType or 0  # always set by send()
        self._lean_udp = udp = UdpBatcher()
        ssrc, _ = sender_ssrcs(self)
        sequence_number = random_sequence_number()
        timestamp_origin = random32()
        header = _HEADER.pack
        route: UdpRoute | None = None
        route_dtls: Any = None
        try:
            while True:
                track = sender_track(self)
                if not track:
                    await asyncio.sleep(0.02)
                    continue
                data: Any = await track.recv()  # our tracks' UnitPackets
                if not sender_enabled(self):
                    continue
                packer = sender_packer(self)
                if packer is None:
                    break
                payloads, pts = packer.pack(data)
                if not payloads:
                    continue
                timestamp = (timestamp_origin + pts) & 0xFFFFFFFF
                ntp = ntp_now()
                extensions = self._lean_extensions((ntp >> 14) & 0x00FFFFFF)
                first = _VERSION_2 | (_HAS_EXTENSION if extensions else 0)
                dtls = self.transport
                if route is None or route_dtls is not dtls or not route_usable(dtls, route):
                    route, route_dtls = udp_route(dtls), dtls  # once, unless it changes
                history.append(sequence_number, timestamp, payloads)
                count = len(payloads)
                octets = sum(map(len, payloads))
                if route is not None:
                    wire = udp.send_unit(
                        route, payloads, first, payload_type, sequence_number, timestamp, ssrc,
                        extensions,
                    )  # fmt: skip
                    count_transport_sent(dtls, wire, count)
                    self.lean_packets += count
                else:
                    send = rtp_send(dtls)  # aiortc's path, for routes we do not send on
                    last = count - 1
                    for i, payload in enumerate(payloads):
                        marker = _MARKER if i == last else 0
                        seq = (sequence_number + i) & 0xFFFF
                        await send(
                            header(first, marker | payload_type, seq, timestamp, ssrc)
                            + extensions
                            + payload
                        )
                sequence_number = (sequence_number + count) & 0xFFFF
                count_sent(self, ntp, timestamp, octets, count)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # like aiortc: log and end (stop() waits for the exited event)
            log.warning("RTP sender of %s stopped: %s", self.kind, traceback.format_exc())
        rtp_loop_ended(self)

    async def retransmit(self, sequence_number: int) -> None:
        """Resend a packet a receiver reported lost, over RTX when negotiated."""
        history: SendHistory | None = getattr(self, "_lean_history", None)
        found = history.find(sequence_number) if history is not None else None
        if found is None:
            return
        budget = self._lean_budget
        now = time.monotonic()
        if now - budget[1] >= 1.0:
            budget[0], budget[1] = RETRANSMIT_MAX_PER_S, now
        if budget[0] <= 0:
            return
        budget[0] -= 1
        timestamp, payload, marker = found
        extensions = self._lean_extensions((ntp_now() >> 14) & 0x00FFFFFF)
        first = _VERSION_2 | (_HAS_EXTENSION if extensions else 0)
        ssrc, rtx_ssrc = sender_ssrcs(self)
        rtx = next_rtx(self)
        if rtx is None:
            packet = _HEADER.pack(
                first, marker | self._lean_payload_type, sequence_number, timestamp, ssrc
            )
        else:
            rtx_payload_type, rtx_sequence_number = rtx
            packet = _HEADER.pack(
                first, marker | rtx_payload_type, rtx_sequence_number, timestamp, rtx_ssrc
            )
            payload = _SEQ.pack(sequence_number) + payload
        await rtp_send(self.transport)(packet + extensions + payload)


class SendHistory:
    """A sender's recent units for retransmission: (first sequence number, timestamp, payloads)
    each, oldest first, together at least :data:`HISTORY_PACKETS` packets (and at most that plus
    the newest unit's)."""

    __slots__ = ("_next", "_packets", "_units")

    def __init__(self) -> None:
        self._units: deque[tuple[int, int, list[bytes]]] = deque()
        self._packets = 0
        self._next = 0  # the sequence number after the newest unit's last packet

    def append(self, sequence_number: int, timestamp: int, payloads: list[bytes]) -> None:
        units = self._units
        units.append((sequence_number, timestamp, payloads))
        self._packets += len(payloads)
        self._next = (sequence_number + len(payloads)) & 0xFFFF
        while len(units) > 1 and self._packets - len(units[0][2]) >= HISTORY_PACKETS:
            self._packets -= len(units.popleft()[2])

    def find(self, sequence_number: int) -> tuple[int, bytes, int] | None:
        """(timestamp, payload, marker) of a packet still remembered, else ``None``."""
        behind = (self._next - 1 - sequence_number) & 0xFFFF  # 0: the newest packet
        if behind >= self._packets:
            return None
        for _, timestamp, payloads in reversed(self._units):
            count = len(payloads)
            if behind < count:
                index = count - 1 - behind
                return timestamp, payloads[index], _MARKER if index == count - 1 else 0
            behind -= count
        return None


class UdpBatcher:
    """Writes, protects and sends a viewer's packets, in runs of equal size (UDP GSO)."""

    __slots__ = ("gso", "sends")

    def __init__(self) -> None:
        self.gso = True
        """Whether it still tries UDP GSO (it stops at the first refusal)."""
        self.sends = 0
        """System calls made (``sendto`` or ``sendmsg``; fewer than packets with GSO)."""

    def send_unit(
        self,
        route: UdpRoute,
        payloads: list[bytes],
        first: int,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        extensions: bytes,
    ) -> int:
        """Write, protect and send one unit's packets (``payloads`` behind one header each, the
        first with ``sequence_number``, the marker on the last); the bytes sent."""
        view = SRTP_BATCH_VIEW
        pack_into = _HEADER.pack_into
        srtp = route.srtp
        ext_len = len(extensions)
        head = 12 + ext_len
        last = len(payloads) - 1
        wire = 0
        offset = 0  # bytes of the current run in the buffer
        run = 0  # packets in the current run
        plain = 0  # their size before SRTP (the run's first)
        segment = 0  # their size after SRTP
        for i, payload in enumerate(payloads):
            size = head + len(payload)
            if size > MAX_PACKET_BYTES:
                raise ValueError(f"an RTP packet of {size} bytes is too long to protect")
            if run and (size > plain or run == GSO_MAX_SEGMENTS or offset + size > GSO_MAX_BYTES):
                self.send_run(route, offset, segment, run)
                wire += offset
                offset = run = 0
            pack_into(
                view,
                offset,
                first,
                (_MARKER if i == last else 0) | payload_type,
                (sequence_number + i) & 0xFFFF,
                timestamp,
                ssrc,
            )
            if ext_len:
                view[offset + 12 : offset + head] = extensions
            view[offset + head : offset + size] = payload
            protected = protect_at(srtp, offset, size)
            if not run:
                plain, segment = size, protected
            offset += protected
            run += 1
            if size < plain:  # a shorter packet ends its run (GSO: only the last may be short)
                self.send_run(route, offset, segment, run)
                wire += offset
                offset = run = 0
        if run:
            self.send_run(route, offset, segment, run)
            wire += offset
        return wire

    def send_run(self, route: UdpRoute, length: int, segment: int, count: int) -> None:
        """Send the ``count`` protected packets at the start of the batch buffer (each
        ``segment`` bytes but the last): one system call when the socket takes them now."""
        data = SRTP_BATCH_VIEW[:length]
        transport = route.transport
        if not transport.get_write_buffer_size():  # nothing queued before them
            try:
                if count == 1:
                    route.sock.sendto(data, route.addr)
                    self.sends += 1
                    return
                if self.gso:
                    route.sock.sendmsg(
                        [data],
                        [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(segment))],
                        0,
                        route.addr,
                    )
                    self.sends += 1
                    return
            except (BlockingIOError, InterruptedError):
                pass  # the socket is full: the transport queues them
            except OSError as e:
                if count == 1 or e.errno not in _GSO_REFUSED:
                    log.debug("RTP to %s not sent: %s", route.addr, e)  # UDP: a loss
                    return
                self.gso = False
                log.info("UDP GSO refused (%s): this viewer's packets leave one per system call", e)
        for start in range(0, length, segment):  # one datagram per call, queued in order
            transport.sendto(bytes(data[start : start + segment]), route.addr)
            self.sends += 1
