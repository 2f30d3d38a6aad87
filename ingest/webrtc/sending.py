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

**Private internals** (aiortc 1.16, aioice 0.13, pylibsrtp 1.0), checked by
:func:`check_aiortc` at import, so a changed dependency fails the server's start with
:class:`AiortcChanged` rather than sending nothing: the sender's name-mangled fields
(:data:`_SENDER_ATTRS`), ``RTCDtlsTransport._state`` / ``_tx_srtp`` and its tx counters,
``RTCIceTransport._connection``, aioice ``Connection._nominated`` and ``StunProtocol.transport``,
pylibsrtp ``Session._srtp`` (its ``srtp_t``) and its cffi binding's ``srtp_protect``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import traceback
from collections.abc import Callable
from typing import Any

from aioice.ice import Connection as IceConnection
from aioice.ice import StunProtocol
from aiortc import clock
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions, HeaderExtensionsMap
from aiortc.utils import random32
from pylibsrtp import Session as SrtpSession
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from ingest.webrtc.aiortc_compat import RangedConnection

log = logging.getLogger("ingest.webrtc")

_S = "_RTCRtpSender__"
_TRACK = _S + "track"
_ENCODER = _S + "encoder"
_MID = _S + "mid"
_EXTENSIONS = _S + "rtp_header_extensions_map"
_RTP_STARTED = _S + "rtp_started"
_RTP_EXITED = _S + "rtp_exited"
_RTX_PAYLOAD_TYPE = _S + "rtx_payload_type"
_RTX_SEQUENCE_NUMBER = _S + "rtx_sequence_number"
_NTP_TIMESTAMP = _S + "ntp_timestamp"
_RTP_TIMESTAMP = _S + "rtp_timestamp"
_OCTET_COUNT = _S + "octet_count"
_PACKET_COUNT = _S + "packet_count"
_SENDER_ATTRS = (
    _TRACK,
    _ENCODER,
    _MID,
    _EXTENSIONS,
    _RTP_STARTED,
    _RTP_EXITED,
    _RTX_PAYLOAD_TYPE,
    _RTX_SEQUENCE_NUMBER,
    _NTP_TIMESTAMP,
    _RTP_TIMESTAMP,
    _OCTET_COUNT,
    _PACKET_COUNT,
)
"""The sender fields :class:`LeanRtpSender` reads or writes (set in ``RTCRtpSender.__init__``)."""
_DTLS_TX_BYTES = "_RTCDtlsTransport__tx_bytes"
_DTLS_TX_PACKETS = "_RTCDtlsTransport__tx_packets"

_HEADER = struct.Struct("!BBHLL")
_EXTENSION_HEADER = struct.Struct("!HH")
_SEQ = struct.Struct("!H")
_VERSION_2 = 0x80
_HAS_EXTENSION = 0x10
_MARKER = 0x80


class AiortcChanged(RuntimeError):
    """aiortc's sender (or aioice's connection) no longer has the internals we rely on."""


SendTo = Callable[[bytes | memoryview, Any], None]

SRTP_BUFFER_BYTES = 1500
"""The one buffer packets are SRTP-protected in (in place); like pylibsrtp's own per session."""
SRTP_MAX_TRAILER_BYTES = 16 + 128
"""What protection may append (tag + MKI), so a packet must fit in the buffer minus this."""
_SRTP_BUFFER = _srtp_ffi.new("char[]", SRTP_BUFFER_BYTES)
_SRTP_VIEW = memoryview(_srtp_ffi.buffer(_SRTP_BUFFER))
_SRTP_LENGTH = _srtp_ffi.new("int *")
_srtp_protect = _srtp_lib.srtp_protect


class SrtpError(RuntimeError):
    """libsrtp refused to protect a packet."""


def protect_in_place(context: Any, packet: bytes) -> memoryview:
    """``packet`` SRTP-protected with a libsrtp ``srtp_t``: a view of the shared buffer, valid
    until the next call (send it at once, before any ``await``; the event loop is the only
    caller). pylibsrtp's ``Session.protect`` does the same but copies the result into new bytes,
    and costs ~1.5 µs more a packet."""
    length = len(packet)
    if length > SRTP_BUFFER_BYTES - SRTP_MAX_TRAILER_BYTES:
        raise ValueError(f"an RTP packet of {length} bytes is too long to protect")
    _SRTP_VIEW[:length] = packet
    _SRTP_LENGTH[0] = length
    status = _srtp_protect(context, _SRTP_BUFFER, _SRTP_LENGTH)
    if status:
        raise SrtpError(f"srtp_protect failed with libsrtp status {status}")
    return _SRTP_VIEW[: _SRTP_LENGTH[0]]


def check_aiortc() -> None:
    """Raise :class:`AiortcChanged` unless aiortc / aioice still have what :class:`LeanRtpSender`
    uses (see the module docstring)."""
    init_names = set(RTCRtpSender.__init__.__code__.co_names)
    init_names |= set(RTCRtpSender.replaceTrack.__code__.co_names)  # sets __track
    problems = [f"RTCRtpSender.__init__ no longer sets {a}" for a in _SENDER_ATTRS]
    problems = [p for p, a in zip(problems, _SENDER_ATTRS, strict=True) if a not in init_names]
    if not {_RTP_TIMESTAMP, _NTP_TIMESTAMP, _OCTET_COUNT, _PACKET_COUNT} <= set(
        RTCRtpSender._run_rtcp.__code__.co_names
    ):
        problems.append("RTCRtpSender._run_rtcp no longer reports our counters")
    if "_retransmit" not in RTCRtpSender._handle_rtcp_packet.__code__.co_names:
        problems.append("RTCRtpSender._handle_rtcp_packet no longer calls _retransmit")
    if "_run_rtp" not in RTCRtpSender.send.__code__.co_names:
        problems.append("RTCRtpSender.send no longer starts _run_rtp")
    send_rtp = set(RTCDtlsTransport._send_rtp.__code__.co_names)
    if not {"_state", "_tx_srtp", "protect", _DTLS_TX_BYTES, _DTLS_TX_PACKETS} <= send_rtp:
        problems.append("RTCDtlsTransport._send_rtp no longer protects with _tx_srtp")
    if "_srtp" not in SrtpSession.__init__.__code__.co_names:
        problems.append("pylibsrtp's Session no longer keeps its srtp_t in _srtp")
    if "_connection" not in RTCIceTransport.start.__code__.co_names:
        problems.append("RTCIceTransport no longer keeps its aioice _connection")
    if "_nominated" not in IceConnection.sendto.__code__.co_names:
        problems.append("aioice's Connection.sendto no longer uses _nominated")
    if "transport" not in StunProtocol.send_data.__code__.co_names:
        problems.append("aioice's StunProtocol.send_data no longer uses its transport")
    if problems:
        raise AiortcChanged(
            "this aiortc / aioice does not match ingest.webrtc.sending (written for aiortc 1.16, "
            "aioice 0.13): " + "; ".join(problems)
        )


# aioice's Connection, or ours binding within the UDP port range (same sockets, same pairs)
_PLAIN_CONNECTIONS = (IceConnection, RangedConnection)


def _route(dtls: Any) -> tuple[Any, SendTo, Any] | None:
    """(libsrtp context, UDP sendto, remote address) of a connected DTLS transport over a plain
    UDP ICE pair; ``None`` for anything else (then aiortc's own ``_send_rtp`` is used)."""
    if type(dtls) is not RTCDtlsTransport:
        return None
    if dtls._state != State.CONNECTED:
        raise ConnectionError("Cannot send encrypted RTP, not connected")
    connection = getattr(dtls.transport, "_connection", None)
    if connection is None or type(connection) not in _PLAIN_CONNECTIONS:
        return None
    pair = connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("Cannot send data, not connected")
    protocol = pair.protocol
    session = dtls._tx_srtp
    if type(protocol) is not StunProtocol or protocol.transport is None:
        return None
    if type(session) is not SrtpSession:
        return None
    return session._srtp[0], protocol.transport.sendto, pair.remote_addr


class LeanRtpSender(RTCRtpSender):
    """aiortc's sender with our RTP loop and retransmission (see the module docstring).

    Never constructed: :func:`~ingest.webrtc.packing.install` switches a new sender's class to
    this one, after giving it its packer and header-extension writer."""

    _lean_history: dict[int, tuple[int, int, int, bytes]]
    _lean_payload_type: int
    lean_packets = 0
    """Packets this sender sent straight to the socket (the rest went through aiortc)."""

    def _lean_extensions(self, abs_send_time: int) -> bytes:
        """The header-extension block (with its 4-byte header) of every packet of a unit."""
        writer: HeaderExtensionsMap = getattr(self, _EXTENSIONS)
        profile, value = writer.set(
            HeaderExtensions(mid=getattr(self, _MID), abs_send_time=abs_send_time)
        )
        if not value:
            return b""
        return _EXTENSION_HEADER.pack(profile, len(value) >> 2) + value

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        getattr(self, _RTP_STARTED).set()
        self._lean_history = history = {}
        self._lean_payload_type = payload_type = codec.payloadType or 0  # always set by send()
        ssrc = self._ssrc
        sequence_number = random_sequence_number()
        timestamp_origin = random32()
        header = _HEADER.pack
        try:
            while True:
                track = getattr(self, _TRACK)
                if not track:
                    await asyncio.sleep(0.02)
                    continue
                data = await track.recv()
                if not self._enabled:
                    continue
                packer: Encoder = getattr(self, _ENCODER)
                payloads, pts = packer.pack(data)
                if not payloads:
                    continue
                timestamp = (timestamp_origin + pts) & 0xFFFFFFFF
                ntp = clock.current_ntp_time()
                extensions = self._lean_extensions((ntp >> 14) & 0x00FFFFFF)
                first = _VERSION_2 | (_HAS_EXTENSION if extensions else 0)
                route = _route(self.transport)
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
                        await self.transport._send_rtp(packet)
                    else:
                        protected = protect_in_place(route[0], packet)
                        route[1](protected, route[2])
                        wire += len(protected)
                    octets += len(payload)
                    sequence_number = (sequence_number + 1) & 0xFFFF
                if route is not None:
                    dtls = self.transport
                    setattr(dtls, _DTLS_TX_BYTES, getattr(dtls, _DTLS_TX_BYTES) + wire)
                    setattr(dtls, _DTLS_TX_PACKETS, getattr(dtls, _DTLS_TX_PACKETS) + last + 1)
                    self.lean_packets += last + 1
                setattr(self, _NTP_TIMESTAMP, ntp)
                setattr(self, _RTP_TIMESTAMP, timestamp)
                setattr(self, _OCTET_COUNT, getattr(self, _OCTET_COUNT) + octets)
                setattr(self, _PACKET_COUNT, getattr(self, _PACKET_COUNT) + last + 1)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # like aiortc: log and end (stop() waits for the exited event)
            log.warning("RTP sender of %s stopped: %s", self.kind, traceback.format_exc())
        track = getattr(self, _TRACK)
        if track:
            track.stop()
            setattr(self, _TRACK, None)
        setattr(self, _ENCODER, None)
        getattr(self, _RTP_EXITED).set()

    async def _retransmit(self, sequence_number: int) -> None:
        """Resend a packet a receiver reported lost, over RTX when negotiated."""
        history = getattr(self, "_lean_history", None)
        entry = history.get(sequence_number % RTP_HISTORY_SIZE) if history else None
        if entry is None or entry[0] != sequence_number:
            return
        _, timestamp, marker, payload = entry
        extensions = self._lean_extensions((clock.current_ntp_time() >> 14) & 0x00FFFFFF)
        first = _VERSION_2 | (_HAS_EXTENSION if extensions else 0)
        rtx_payload_type: int | None = getattr(self, _RTX_PAYLOAD_TYPE)
        if rtx_payload_type is None:
            packet = _HEADER.pack(
                first, marker | self._lean_payload_type, sequence_number, timestamp, self._ssrc
            )
        else:
            rtx_sequence_number: int = getattr(self, _RTX_SEQUENCE_NUMBER)
            setattr(self, _RTX_SEQUENCE_NUMBER, (rtx_sequence_number + 1) & 0xFFFF)
            packet = _HEADER.pack(
                first, marker | rtx_payload_type, rtx_sequence_number, timestamp, self._rtx_ssrc
            )
            payload = _SEQ.pack(sequence_number) + payload
        await self.transport._send_rtp(packet + extensions + payload)


check_aiortc()
