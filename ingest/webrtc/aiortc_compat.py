"""Every use of aiortc's, aioice's and pylibsrtp's private internals, checked once at start.

No other module of ``ingest`` reaches past their public API: what needs more calls a small
function here. :func:`check` runs when this module is imported (so the server refuses to start
on versions it was not written for; bounded in ``pyproject.toml``) and names every missing piece.
The sections, each listing its private names:

* **UDP port range** (:class:`RangedConnection`, :func:`use_port_range`).
* **Forwarding** a WHIP publisher's RTP without decoding it, and keyframe requests both ways.
* **Round-trip time** of a publisher's ICE pair (its health).
* **Negotiated codecs** of a viewer's transceiver (:func:`set_negotiated_codecs`).
* **Our RTP senders**: what :mod:`~ingest.webrtc.packing` and :mod:`~ingest.webrtc.sending` need
  of aiortc's sender, DTLS / ICE transports and libsrtp, as functions called once per unit or
  per route (the per-packet path only calls :func:`protect_at` and the socket).

**UDP port range.** aioice binds each peer connection's host candidates to a random port, which no
firewall rule or container port mapping can admit. :class:`RangedConnection` gathers host
candidates on ports of a configured range instead (``webrtc_udp_ports = "50000-50100"``); the
server-reflexive (STUN) and relayed (TURN) candidates are gathered as aioice does. It replaces
the ``Connection`` class aiortc's ``RTCIceGatherer`` instantiates, and only does anything once
:func:`use_port_range` has set a range.

Private names used (aioice 0.13, aiortc 1.16, bounded in ``pyproject.toml``):
``aiortc.rtcicetransport.Connection``, ``aioice.ice.StunProtocol``,
``aioice.ice.server_reflexive_candidate``, ``Connection._protocols``, ``Connection.stun_server``
and ``StunProtocol.local_candidate``. :func:`check_ice` verifies them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from asyncio import selector_events
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiortc.rtcicetransport as rtcicetransport
from aioice import ice as aioice_ice
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import MediaStreamTrack
from aiortc.codecs.base import Encoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Session as SrtpSession
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

log = logging.getLogger("ingest.webrtc")

UDP_RECEIVE_BUFFER = 262144  # bytes, as aioice sets on its own sockets


class AiortcChanged(RuntimeError):
    """aiortc / aioice / pylibsrtp no longer has what this module relies on."""


AioiceChanged = AiortcChanged  # its first name


def check_ice() -> list[str]:
    """What the UDP port range relies on and aiortc / aioice no longer have."""
    problems = []
    if not hasattr(rtcicetransport, "Connection"):
        problems.append("aiortc.rtcicetransport no longer imports aioice's Connection")
    for name in ("StunProtocol", "server_reflexive_candidate"):
        if not hasattr(aioice_ice, name):
            problems.append(f"aioice.ice has no {name}")
    probe = aioice_ice.Connection(ice_controlling=False)
    for attr in ("_protocols", "stun_server", "get_component_candidates"):
        if not hasattr(probe, attr):
            problems.append(f"aioice's Connection has no {attr}")
    return problems


def check() -> None:
    """Raise :class:`AiortcChanged` naming everything of aiortc / aioice / pylibsrtp this module
    relies on and no longer finds. Runs once, when this module is imported (so at start: the
    server refuses to start on versions it was not written for, bounded in ``pyproject.toml``)."""
    problems = [
        *check_ice(),
        *check_forwarding(),
        *check_round_trip(),
        *check_transceiver(),
        *check_sender(),
    ]
    if problems:
        raise AiortcChanged(
            "this aiortc / aioice / pylibsrtp does not match ingest.webrtc.aiortc_compat "
            "(written for aiortc 1.16, aioice 0.13, pylibsrtp 1.0): " + "; ".join(problems)
        )


@dataclass(frozen=True, slots=True)
class PortRange:
    """Inclusive UDP port range for WebRTC media."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1024 <= self.low <= self.high <= 65535:
            raise ValueError(
                f"UDP port range {self.low}-{self.high} must lie within 1024-65535, low <= high"
            )

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"50000-50100"`` (or a single port)."""
        low, _, high = text.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"'{text}' is not a UDP port range: write it as 50000-50100") from None
        return cls(first, last)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    async def bind(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], aioice_ice.StunProtocol],
        address: str,
    ) -> tuple[asyncio.DatagramTransport, aioice_ice.StunProtocol]:
        """A datagram endpoint on a free port of the range (tried from a random start)."""
        start = random.randrange(self.size)
        last: OSError | None = None
        for i in range(self.size):
            port = self.low + (start + i) % self.size
            try:
                return await loop.create_datagram_endpoint(factory, local_addr=(address, port))
            except OSError as exc:  # taken: try the next one
                last = exc
        raise OSError(
            f"no free UDP port in {self.low}-{self.high} on {address} ({last}): widen "
            "webrtc_udp_ports or lower max viewers"
        )


_range: PortRange | None = None


def use_port_range(ports: PortRange | None) -> None:
    """From now on, new peer connections bind their host candidates within ``ports``."""
    global _range
    check()
    _range = ports
    setattr(rtcicetransport, "Connection", RangedConnection)  # noqa: B010 (aiortc builds it)


def port_range() -> PortRange | None:
    return _range


class RangedConnection(aioice_ice.Connection):
    """aioice's Connection, with host candidates bound within the configured port range."""

    async def get_component_candidates(
        self,
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109 (aioice's signature)
    ) -> list[Candidate]:
        ports = _range
        if ports is None:
            return await super().get_component_candidates(component, addresses, timeout)
        loop = asyncio.get_running_loop()
        candidates: list[Candidate] = []
        hosts: list[aioice_ice.StunProtocol] = []
        for address in addresses:
            try:
                transport, protocol = await ports.bind(
                    loop, lambda: aioice_ice.StunProtocol(self), address
                )
            except OSError as exc:
                log.warning("cannot bind a WebRTC host candidate: %s", exc)
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            host, port = transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=port,
                type="host",
            )
            hosts.append(protocol)
            candidates.append(protocol.local_candidate)
        self._protocols += hosts
        if self.stun_server:
            queries = [
                asyncio.create_task(aioice_ice.server_reflexive_candidate(p, self.stun_server))
                for p in hosts
                if ipaddress.ip_address(p.local_candidate.host).version == 4
            ]
            if queries:
                done, pending = await asyncio.wait(queries, timeout=timeout)
                for task in pending:
                    task.cancel()
                candidates += [t.result()[0] for t in done if t.exception() is None]
        # TURN (relayed candidates): aioice's own code, with no host addresses to bind.
        return candidates + await super().get_component_candidates(component, [], timeout)


# --- forwarding (WHIP): receive RTP without decoding, keyframe requests both ways -------------
#
# Private names used (aiortc 1.16): the receiver's name-mangled ``__jitter_buffer`` (its
# ``add(packet) -> (pli, frame)`` is handed every packet after SRTP, statistics, NACK and RTX
# handling, with ``packet._data`` depacketized), ``RTCRtpReceiver._send_rtcp_pli`` and
# ``RTCRtpSender._send_keyframe`` (called by the sender's RTCP handling for a PLI or FIR).
# :func:`check_forwarding` verifies them.

_JITTER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"


class _ForwardingTap:
    """Stands in for a receiver's jitter buffer: hands each packet to ``sink`` and never
    returns a frame, so aiortc never decodes (its decoder thread never makes a decoder)."""

    def __init__(self, sink: Callable[[RtpPacket], None]) -> None:
        self.sink = sink
        self.capacity = 0

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self.sink(packet)
        return False, None


def check_forwarding() -> list[str]:
    """What forwarding relies on and aiortc no longer has."""
    problems = []
    if _JITTER_BUFFER_ATTR not in RTCRtpReceiver.__init__.__code__.co_names:
        problems.append(f"RTCRtpReceiver.__init__ no longer sets {_JITTER_BUFFER_ATTR}")
    if _JITTER_BUFFER_ATTR not in RTCRtpReceiver._handle_rtp_packet.__code__.co_names:
        problems.append("RTCRtpReceiver._handle_rtp_packet no longer feeds its jitter buffer")
    if not callable(getattr(RTCRtpReceiver, "_send_rtcp_pli", None)):
        problems.append("RTCRtpReceiver has no _send_rtcp_pli()")
    if "_send_keyframe" not in RTCRtpSender._handle_rtcp_packet.__code__.co_names:
        problems.append("RTCRtpSender._handle_rtcp_packet no longer calls _send_keyframe")
    return problems


def forward_receiver(receiver: RTCRtpReceiver, sink: Callable[[RtpPacket], None]) -> None:
    """From now on, ``receiver`` hands every RTP packet to ``sink`` (in arrival order, RTX
    unwrapped, ``packet._data`` depacketized) and decodes nothing. Call before it receives."""
    current = vars(receiver).get(_JITTER_BUFFER_ATTR)
    if not isinstance(current, JitterBuffer):
        raise AioiceChanged(f"{receiver!r} has no jitter buffer in {_JITTER_BUFFER_ATTR}")
    setattr(receiver, _JITTER_BUFFER_ATTR, _ForwardingTap(sink))


def is_forwarding(receiver: RTCRtpReceiver) -> bool:
    """Whether :func:`forward_receiver` set up ``receiver``."""
    return isinstance(vars(receiver).get(_JITTER_BUFFER_ATTR), _ForwardingTap)


def depayloaded(packet: RtpPacket) -> bytes:
    """The depacketized payload aiortc stored on a packet before its jitter buffer."""
    data = getattr(packet, "_data", b"")
    return data if isinstance(data, bytes) else b""


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Ask the publisher of ``media_ssrc`` for a keyframe (RTCP PLI)."""
    await receiver._send_rtcp_pli(media_ssrc)


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the subscriber of ``sender`` sends a PLI or FIR (aiortc's own
    handling would ask the sender's encoder, which forwarded media does not have)."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


# --- round-trip time of a peer connection (for a WHIP publisher's health) ------------------------
#
# aiortc's receiver does not measure RTT (only a sender learns it from receiver reports). We time
# a STUN binding request on the nominated ICE pair, as aioice's own consent checks (RFC 7675)
# send them. Private names (aioice 0.13): ``RTCIceTransport._connection``,
# ``Connection._nominated``, ``Connection.build_request``, ``Connection.remote_password`` and
# ``StunProtocol.request``; checked by :func:`check_round_trip`.


def check_round_trip() -> list[str]:
    """What the round-trip measure relies on and aiortc / aioice no longer have."""
    problems = []
    for name in ("_nominated", "build_request", "remote_password"):
        if not hasattr(aioice_ice.Connection(ice_controlling=False), name):
            problems.append(f"aioice's Connection has no {name}")
    if not callable(getattr(aioice_ice.StunProtocol, "request", None)):
        problems.append("aioice's StunProtocol has no request()")
    if "_connection" not in rtcicetransport.RTCIceTransport.__init__.__code__.co_names:
        problems.append("RTCIceTransport no longer keeps its aioice _connection")
    return problems


ROUND_TRIP_TIMEOUT = 1.0
"""A STUN round trip slower than this (s) counts as no answer."""


async def round_trip(receiver: RTCRtpReceiver) -> float | None:
    """Seconds a STUN binding request takes on the receiver's nominated ICE pair; ``None`` if it
    is not connected or no answer came within :data:`ROUND_TRIP_TIMEOUT`."""
    ice = getattr(receiver.transport, "transport", None)
    connection = getattr(ice, "_connection", None)
    if not isinstance(connection, aioice_ice.Connection) or connection.remote_password is None:
        return None
    pair = connection._nominated.get(1)
    if pair is None:
        return None
    request = connection.build_request(pair, nominate=False)
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            pair.protocol.request(
                request,
                pair.remote_addr,
                integrity_key=connection.remote_password.encode("utf8"),
                retransmissions=0,
            ),
            ROUND_TRIP_TIMEOUT,
        )
    except (stun.TransactionError, TimeoutError, ConnectionError, OSError):
        return None
    return time.monotonic() - started


# --- the codecs a transceiver negotiated (viewers' H.264 profile) ---------------------------------
#
# aiortc negotiates against its global codec table, which lists H.264 as Baseline / Constrained
# Baseline only. A viewer's video transceiver is told the codec it really sends (the stream's
# profile, the remote's payload type) by replacing ``RTCRtpTransceiver._codecs`` after
# ``setRemoteDescription``: ``createAnswer`` writes it into the answer and the sender sends with
# its first entry. Checked by :func:`check_transceiver`.


def check_transceiver() -> list[str]:
    if "_codecs" not in RTCRtpTransceiver.__init__.__code__.co_names:
        return ["aiortc's RTCRtpTransceiver no longer keeps its codecs in _codecs"]
    return []


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs ``transceiver`` offered or negotiated (a copy of the list)."""
    return list(transceiver._codecs)


def set_negotiated_codecs(
    transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]
) -> None:
    """Make ``transceiver`` answer and send ``codecs`` (first entry first)."""
    transceiver._codecs = codecs


# --- our RTP senders (packing.py, sending.py) -------------------------------------------------
#
# A viewer's sender packs our units with our packer and runs our send loop
# (:class:`~ingest.webrtc.sending.LeanRtpSender`). What that takes of aiortc 1.16 / aioice 0.13 /
# pylibsrtp 1.0, all here: the sender's name-mangled fields (:data:`SENDER_ATTRS`), its
# ``_ssrc`` / ``_rtx_ssrc`` / ``_enabled``, the ``_run_rtp`` / ``_retransmit`` hooks
# (:class:`SenderHooks`), ``RTCDtlsTransport._state`` / ``_tx_srtp`` / ``_send_rtp`` and its tx
# counters, ``RTCIceTransport._connection``, aioice ``Connection._nominated`` and
# ``StunProtocol.transport``, asyncio's ``_SelectorDatagramTransport._sock`` (the socket, for
# ``sendmsg`` with UDP GSO), pylibsrtp ``Session._srtp`` (its ``srtp_t``) and its cffi binding's
# ``srtp_protect``. :func:`check_sender` verifies them. The per-packet path calls nothing here but
# :func:`protect_at`; :func:`udp_route` hands out the socket and SRTP context once per unit.

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
SENDER_ATTRS = (
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
"""The sender fields our senders read or write (set in ``RTCRtpSender.__init__``)."""
_DTLS_TX_BYTES = "_RTCDtlsTransport__tx_bytes"
_DTLS_TX_PACKETS = "_RTCDtlsTransport__tx_packets"


def check_sender() -> list[str]:
    """What our senders rely on and aiortc / aioice / pylibsrtp no longer have (empty: all)."""
    init_names = set(RTCRtpSender.__init__.__code__.co_names)
    init_names |= set(RTCRtpSender.replaceTrack.__code__.co_names)  # sets __track
    problems = [f"RTCRtpSender.__init__ no longer sets {a}" for a in SENDER_ATTRS]
    problems = [p for p, a in zip(problems, SENDER_ATTRS, strict=True) if a not in init_names]
    for name in ("_ssrc", "_rtx_ssrc", "_enabled"):
        if name not in init_names:
            problems.append(f"RTCRtpSender.__init__ no longer sets {name}")
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
    if "_connection" not in rtcicetransport.RTCIceTransport.start.__code__.co_names:
        problems.append("RTCIceTransport no longer keeps its aioice _connection")
    if "_nominated" not in aioice_ice.Connection.sendto.__code__.co_names:
        problems.append("aioice's Connection.sendto no longer uses _nominated")
    if "transport" not in aioice_ice.StunProtocol.send_data.__code__.co_names:
        problems.append("aioice's StunProtocol.send_data no longer uses its transport")
    sendto = getattr(_DATAGRAM_TRANSPORT, "sendto", None)
    if sendto is None or "_sock" not in sendto.__code__.co_names:
        problems.append("asyncio's datagram transport no longer keeps its socket in _sock")
    return problems


class SenderHooks(RTCRtpSender):
    """aiortc's sender whose RTP loop and retransmission are a subclass's :meth:`run_rtp` and
    :meth:`retransmit`. Never constructed: :func:`prepare_sender` switches a sender's class."""

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        await self.run_rtp(codec)

    async def _retransmit(self, sequence_number: int) -> None:
        await self.retransmit(sequence_number)

    async def run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        raise NotImplementedError

    async def retransmit(self, sequence_number: int) -> None:
        raise NotImplementedError


def prepare_sender(
    sender: RTCRtpSender,
    packer: Encoder,
    extensions: HeaderExtensionsMap,
    cls: type[SenderHooks],
) -> None:
    """Make a new (not yet started) sender pack with ``packer``, write header extensions with
    ``extensions`` and run ``cls``'s send loop."""
    if isinstance(sender, SenderHooks):
        raise RuntimeError(f"{sender!r} already has an encoder (install once, before it starts)")
    if type(sender) is not RTCRtpSender:
        raise AiortcChanged(f"{sender!r} is a {type(sender)}, not aiortc's RTCRtpSender")
    attrs = vars(sender)
    if _ENCODER not in attrs or _EXTENSIONS not in attrs:
        raise AiortcChanged(f"{sender!r} lacks {_ENCODER} / {_EXTENSIONS}")
    if attrs[_ENCODER] is not None:
        raise RuntimeError(f"{sender!r} already has an encoder (install before it starts)")
    if not isinstance(attrs[_EXTENSIONS], HeaderExtensionsMap):
        raise AiortcChanged(f"{sender!r}'s {_EXTENSIONS} is not a HeaderExtensionsMap")
    setattr(sender, _ENCODER, packer)
    setattr(sender, _EXTENSIONS, extensions)
    sender.__class__ = cls


def sender_packer(sender: RTCRtpSender) -> Encoder | None:
    """The packer (encoder) a sender packs with; ``None`` once its loop ended."""
    packer: Encoder | None = vars(sender).get(_ENCODER)
    return packer


def sender_track(sender: RTCRtpSender) -> MediaStreamTrack | None:
    track: MediaStreamTrack | None = getattr(sender, _TRACK)
    return track


def sender_enabled(sender: RTCRtpSender) -> bool:
    return bool(sender._enabled)


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(SSRC, RTX SSRC) of a sender."""
    return sender._ssrc, sender._rtx_ssrc


def sender_header_extensions(sender: RTCRtpSender) -> tuple[HeaderExtensionsMap, str | None]:
    """The sender's header-extension map and its mid (both set up by ``send()``)."""
    return getattr(sender, _EXTENSIONS), getattr(sender, _MID)


def rtp_loop_started(sender: RTCRtpSender) -> None:
    """Tell aiortc the send loop runs (``send()`` waits for it)."""
    getattr(sender, _RTP_STARTED).set()


def rtp_loop_ended(sender: RTCRtpSender) -> None:
    """The send loop ended, as aiortc's own ends: the track stops, ``stop()`` may return."""
    track = getattr(sender, _TRACK)
    if track:
        track.stop()
        setattr(sender, _TRACK, None)
    setattr(sender, _ENCODER, None)
    getattr(sender, _RTP_EXITED).set()


def count_sent(sender: RTCRtpSender, ntp: int, timestamp: int, octets: int, packets: int) -> None:
    """What the sender's RTCP sender reports and ``getStats`` read, once per unit."""
    setattr(sender, _NTP_TIMESTAMP, ntp)
    setattr(sender, _RTP_TIMESTAMP, timestamp)
    setattr(sender, _OCTET_COUNT, getattr(sender, _OCTET_COUNT) + octets)
    setattr(sender, _PACKET_COUNT, getattr(sender, _PACKET_COUNT) + packets)


def next_rtx(sender: RTCRtpSender) -> tuple[int, int] | None:
    """(RTX payload type, its next sequence number) when RTX was negotiated; ``None`` if not."""
    payload_type: int | None = getattr(sender, _RTX_PAYLOAD_TYPE)
    if payload_type is None:
        return None
    sequence_number: int = getattr(sender, _RTX_SEQUENCE_NUMBER)
    setattr(sender, _RTX_SEQUENCE_NUMBER, (sequence_number + 1) & 0xFFFF)
    return payload_type, sequence_number


def rtp_send(transport: Any) -> Callable[[bytes], Awaitable[None]]:
    """aiortc's own way to send an RTP packet on a sender's (DTLS) transport, bound."""
    send: Callable[[bytes], Awaitable[None]] = transport._send_rtp
    return send


_DATAGRAM_TRANSPORT: Any = getattr(selector_events, "_SelectorDatagramTransport", None)

# aioice's Connection, or ours binding within the UDP port range (same sockets, same pairs)
_PLAIN_CONNECTIONS = (aioice_ice.Connection, RangedConnection)


@dataclass(frozen=True, slots=True)
class UdpRoute:
    """Where a connected viewer's RTP goes when it can go straight to the socket."""

    srtp: Any
    """The libsrtp ``srtp_t`` of the DTLS transport's sending session (for :func:`protect_at`)."""
    transport: Any
    """The ICE pair's UDP transport, asyncio's ``_SelectorDatagramTransport`` (it queues what
    the socket cannot take at once; ``get_write_buffer_size()`` says how much it holds)."""
    sock: socket.socket
    """Its socket, for ``sendto`` / ``sendmsg`` without the transport's per-call checks."""
    addr: Any
    """The remote address of the nominated pair."""


def udp_route(dtls: Any) -> UdpRoute | None:
    """The :class:`UdpRoute` of a connected DTLS transport over a plain UDP ICE pair (asyncio's
    selector transport); ``None`` for anything else (TURN, another event loop's transports,
    stand-ins in tests: then :func:`rtp_send`). ``ConnectionError`` when not connected."""
    if type(dtls) is not RTCDtlsTransport:
        return None
    if dtls._state != DtlsState.CONNECTED:
        raise ConnectionError("Cannot send encrypted RTP, not connected")
    connection = getattr(dtls.transport, "_connection", None)
    if connection is None or type(connection) not in _PLAIN_CONNECTIONS:
        return None
    pair = connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("Cannot send data, not connected")
    protocol = pair.protocol
    session = dtls._tx_srtp
    if type(protocol) is not aioice_ice.StunProtocol or protocol.transport is None:
        return None
    if type(session) is not SrtpSession:
        return None
    transport = protocol.transport
    if type(transport) is not _DATAGRAM_TRANSPORT or transport.is_closing():
        return None  # another event loop's transport (uvloop's): aiortc's path
    sock = getattr(transport, "_sock", None)
    if type(sock) is not socket.socket:
        return None
    return UdpRoute(srtp_context(session), transport, sock, pair.remote_addr)


def route_usable(dtls: Any, route: UdpRoute) -> bool:
    """Whether a :class:`UdpRoute` that :func:`udp_route` gave for ``dtls`` still holds: DTLS
    still connected and the pair's transport open (aioice never changes a nominated pair; its
    transport closes with the connection). Cheaper than asking :func:`udp_route` again."""
    return dtls._state == DtlsState.CONNECTED and not route.transport.is_closing()


def srtp_context(session: SrtpSession) -> Any:
    """The libsrtp ``srtp_t`` of a pylibsrtp session (for :func:`protect_at`)."""
    return session._srtp[0]


def count_transport_sent(dtls: Any, octets: int, packets: int) -> None:
    """The DTLS transport's tx counters (``getStats``), for packets sent past its ``_send_rtp``."""
    setattr(dtls, _DTLS_TX_BYTES, getattr(dtls, _DTLS_TX_BYTES) + octets)
    setattr(dtls, _DTLS_TX_PACKETS, getattr(dtls, _DTLS_TX_PACKETS) + packets)


SRTP_BUFFER_BYTES = 1500
"""Room for one packet: an RTP packet plus :data:`SRTP_MAX_TRAILER_BYTES` fits in this."""
SRTP_MAX_TRAILER_BYTES = 16 + 128
"""What protection may append (tag + MKI), so a packet must fit in the buffer minus this."""
SRTP_BATCH_BYTES = 65536
"""The buffer a run of packets is protected in, one after the other, to leave in one
``sendmsg`` (UDP GSO): :data:`~ingest.webrtc.sending.GSO_MAX_BYTES` plus a packet."""
_SRTP_LENGTH = _srtp_ffi.new("int *")
_srtp_protect = _srtp_lib.srtp_protect
_SRTP_BATCH = _srtp_ffi.new("char[]", SRTP_BATCH_BYTES)
SRTP_BATCH_VIEW = memoryview(_srtp_ffi.buffer(_SRTP_BATCH))
"""The batch buffer: write a plain RTP packet at some offset, then :func:`protect_at` it there.
One event loop uses it, between two ``await``s."""


def protect_at(context: Any, offset: int, length: int) -> int:
    """SRTP-protect, in place, the ``length``-byte RTP packet at ``offset`` of
    :data:`SRTP_BATCH_VIEW` with a libsrtp ``srtp_t`` (pylibsrtp's ``Session.protect`` does the
    same, but copies in and out); returns the protected length. The caller keeps
    ``offset + length + SRTP_MAX_TRAILER_BYTES`` within the buffer."""
    if offset < 0 or length < 12 or offset + length + SRTP_MAX_TRAILER_BYTES > SRTP_BATCH_BYTES:
        raise ValueError(f"no room to protect {length} bytes at {offset} of the batch buffer")
    _SRTP_LENGTH[0] = length
    status = _srtp_protect(context, _SRTP_BATCH + offset, _SRTP_LENGTH)
    if status:
        raise SrtpError(f"srtp_protect failed with libsrtp status {status}")
    protected: int = _SRTP_LENGTH[0]
    return protected


class SrtpError(RuntimeError):
    """libsrtp refused to protect a packet."""


check()
