"""A leaner RTP send loop for our viewers' aiortc senders: the per-viewer, per-packet cost.

Every viewer of a 1080p30 6 Mbit/s stream gets ~680 RTP packets a second, and aiortc's
``RTCRtpSender._run_rtp`` spends, per packet: an ``RtpPacket`` object, two NTP clock reads
through ``datetime`` (abs-send-time and the RTCP SR fields), a header-extension map walk, the
``serialize`` of the header, then four coroutine calls (DTLS transport → ICE transport → aioice
connection → protocol) before SRTP and ``sendto``. That was most of a viewer's CPU.

:class:`LeanRtpSender` replaces, on the senders of our hub tracks, ``_run_rtp`` and
``_retransmit`` (by switching the instance's class in :func:`~ingest.webrtc.packing.install`;
everything else stays aiortc's). Per unit: one clock read, one header-extension block (our
:class:`~ingest.webrtc.packing.HeaderExtensionsWriter`), the payloads from the packer (shared by
every viewer for H.264), the route resolved once. Per packet: one ``struct.pack`` of the 12-byte
header, SRTP in place in one buffer (:func:`protect_in_place`: libsrtp's ``srtp_protect`` on the
DTLS transport's own session, without pylibsrtp's copies) and the socket's ``sendto``. Same bytes
on the wire as aiortc's loop.

* Sending goes straight to the nominated ICE pair's UDP transport when the DTLS transport is
  connected and the pair is a plain aioice UDP pair (no TURN); otherwise (or while ICE has no
  pair, or in tests with a fake transport) it falls back to aiortc's own ``_send_rtp``.
* NACK / RTX: the history keeps, for the last :data:`~aiortc.rtp.RTP_HISTORY_SIZE` sequence
  numbers, (sequence number, timestamp, marker, payload); a NACKed packet is rebuilt from it
  and sent over RTX (or as itself without RTX), through aiortc's ``_send_rtp``, like aiortc.
* RTCP sender reports and ``getStats`` keep working: the packet / octet counts and the last
  NTP / RTP timestamp pair that aiortc's ``_run_rtcp`` reads are written once per unit.

**Private internals** of aiortc / aioice / pylibsrtp are used only through
:mod:`~ingest.webrtc.aiortc_compat` (checked there at import, so a changed dependency fails the
server's start with :class:`AiortcChanged` rather than sending nothing): once per unit the sender's
track, packer and counters, once per unit the route (:func:`~ingest.webrtc.aiortc_compat.
udp_route`: the libsrtp context, the socket's bound ``sendto``, the address); per packet only
:func:`~ingest.webrtc.aiortc_compat.protect_in_place` and that ``sendto``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import traceback
from typing import Any

from aiortc import clock
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions
from aiortc.utils import random32

from ingest.webrtc.aiortc_compat import AiortcChanged as AiortcChanged  # re-exported
from ingest.webrtc.aiortc_compat import (
    SenderHooks,
    count_sent,
    count_transport_sent,
    next_rtx,
    protect_in_place,
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

log = logging.getLogger("ingest.webrtc")

_HEADER = struct.Struct("!BBHLL")
_EXTENSION_HEADER = struct.Struct("!HH")
_SEQ = struct.Struct("!H")
_VERSION_2 = 0x80
_HAS_EXTENSION = 0x10
_MARKER = 0x80


class LeanRtpSender(SenderHooks):
    """aiortc's sender with our RTP loop and retransmission (see the module docstring).

    Never constructed: :func:`~ingest.webrtc.packing.install` switches a new sender's class to
    this one, after giving it its packer and header-extension writer."""

    _lean_history: dict[int, tuple[int, int, int, bytes]]
    _lean_payload_type: int
    lean_packets = 0
    """Packets this sender sent straight to the socket (the rest went through aiortc)."""

    def _lean_extensions(self, abs_send_time: int) -> bytes:
        """The header-extension block (with its 4-byte header) of every packet of a unit."""
        writer, mid = sender_header_extensions(self)
        profile, value = writer.set(HeaderExtensions(mid=mid, abs_send_time=abs_send_time))
        if not value:
            return b""
        return _EXTENSION_HEADER.pack(profile, len(value) >> 2) + value

    async def run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        rtp_loop_started(self)
        self._lean_history = history = {}
        self._lean_payload_type = payload_type = codec.payloadType or 0  # always set by send()
        ssrc, _ = sender_ssrcs(self)
        sequence_number = random_sequence_number()
        timestamp_origin = random32()
        header = _HEADER.pack
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
                ntp = clock.current_ntp_time()
                extensions = self._lean_extensions((ntp >> 14) & 0x00FFFFFF)
                first = _VERSION_2 | (_HAS_EXTENSION if extensions else 0)
                dtls = self.transport
                route = udp_route(dtls)
                send = rtp_send(dtls)  # aiortc's path, for routes we do not send on
                last = len(payloads) - 1
                octets = wire = 0
                for i, payload in enumerate(payloads):
                    marker = _MARKER if i == last else 0
                    packet = (
                        header(first, marker | payload_type, sequence_number, timestamp, ssrc)
                        + extensions
                        + payload
                    )
                    history[sequence_number % RTP_HISTORY_SIZE] = (
                        sequence_number,
                        timestamp,
                        marker,
                        payload,
                    )
                    if route is None:
                        await send(packet)
                    else:
                        protected = protect_in_place(route[0], packet)
                        route[1](protected, route[2])
                        wire += len(protected)
                    octets += len(payload)
                    sequence_number = (sequence_number + 1) & 0xFFFF
                if route is not None:
                    count_transport_sent(dtls, wire, last + 1)
                    self.lean_packets += last + 1
                count_sent(self, ntp, timestamp, octets, last + 1)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # like aiortc: log and end (stop() waits for the exited event)
            log.warning("RTP sender of %s stopped: %s", self.kind, traceback.format_exc())
        rtp_loop_ended(self)

    async def retransmit(self, sequence_number: int) -> None:
        """Resend a packet a receiver reported lost, over RTX when negotiated."""
        history = getattr(self, "_lean_history", None)
        entry = history.get(sequence_number % RTP_HISTORY_SIZE) if history else None
        if entry is None or entry[0] != sequence_number:
            return
        _, timestamp, marker, payload = entry
        extensions = self._lean_extensions((clock.current_ntp_time() >> 14) & 0x00FFFFFF)
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
