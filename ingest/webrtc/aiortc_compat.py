"""Where we reach into aioice/aiortc beyond their public API, checked once at start.

(Also: forwarding a WebRTC publisher's RTP without decoding it, see the end of this module.)

**UDP port range.** aioice binds each peer connection's host candidates to a random port, which no
firewall rule or container port mapping can admit. :class:`RangedConnection` gathers host
candidates on ports of a configured range instead (``webrtc_udp_ports = "50000-50100"``); the
server-reflexive (STUN) and relayed (TURN) candidates are gathered as aioice does. It replaces
the ``Connection`` class aiortc's ``RTCIceGatherer`` instantiates, and only does anything once
:func:`use_port_range` has set a range.

Private names used (aioice 0.13, aiortc 1.16, bounded in ``pyproject.toml``):
``aiortc.rtcicetransport.Connection``, ``aioice.ice.StunProtocol``,
``aioice.ice.server_reflexive_candidate``, ``Connection._protocols``, ``Connection.stun_server``
and ``StunProtocol.local_candidate``. :func:`check` verifies them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiortc.rtcicetransport as rtcicetransport
from aioice import ice as aioice_ice
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import RtpPacket

log = logging.getLogger("ingest.webrtc")

UDP_RECEIVE_BUFFER = 262144  # bytes, as aioice sets on its own sockets


class AioiceChanged(RuntimeError):
    """aioice/aiortc no longer has what this module relies on."""


def check() -> None:
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
    if problems:
        raise AioiceChanged(
            "this aiortc / aioice does not match ingest.webrtc.aiortc_compat (written for "
            "aiortc 1.16, aioice 0.13): " + "; ".join(problems)
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
# :func:`check_forwarding` verifies them, at import.

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


def check_forwarding() -> None:
    """Raise :class:`AioiceChanged` unless aiortc still has what forwarding relies on."""
    problems = []
    if _JITTER_BUFFER_ATTR not in RTCRtpReceiver.__init__.__code__.co_names:
        problems.append(f"RTCRtpReceiver.__init__ no longer sets {_JITTER_BUFFER_ATTR}")
    if _JITTER_BUFFER_ATTR not in RTCRtpReceiver._handle_rtp_packet.__code__.co_names:
        problems.append("RTCRtpReceiver._handle_rtp_packet no longer feeds its jitter buffer")
    if not callable(getattr(RTCRtpReceiver, "_send_rtcp_pli", None)):
        problems.append("RTCRtpReceiver has no _send_rtcp_pli()")
    if "_send_keyframe" not in RTCRtpSender._handle_rtcp_packet.__code__.co_names:
        problems.append("RTCRtpSender._handle_rtcp_packet no longer calls _send_keyframe")
    if problems:
        raise AioiceChanged(
            "this aiortc does not match ingest.webrtc.aiortc_compat's forwarding (written for "
            "aiortc 1.16): " + "; ".join(problems)
        )


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


check_forwarding()


# --- round-trip time of a peer connection (for a WHIP publisher's health) ------------------------
#
# aiortc's receiver does not measure RTT (only a sender learns it from receiver reports). We time
# a STUN binding request on the nominated ICE pair, as aioice's own consent checks (RFC 7675)
# send them. Private names (aioice 0.13): ``RTCIceTransport._connection``,
# ``Connection._nominated``, ``Connection.build_request``, ``Connection.remote_password`` and
# ``StunProtocol.request``; checked by :func:`check_round_trip` at import.


def check_round_trip() -> None:
    problems = []
    for name in ("_nominated", "build_request", "remote_password"):
        if not hasattr(aioice_ice.Connection(ice_controlling=False), name):
            problems.append(f"aioice's Connection has no {name}")
    if not callable(getattr(aioice_ice.StunProtocol, "request", None)):
        problems.append("aioice's StunProtocol has no request()")
    if "_connection" not in rtcicetransport.RTCIceTransport.__init__.__code__.co_names:
        problems.append("RTCIceTransport no longer keeps its aioice _connection")
    if problems:
        raise AioiceChanged(
            "this aiortc / aioice does not match ingest.webrtc.aiortc_compat's round-trip "
            "measure: " + "; ".join(problems)
        )


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


check_round_trip()


# --- the codecs a transceiver negotiated (viewers' H.264 profile) ---------------------------------
#
# aiortc negotiates against its global codec table, which lists H.264 as Baseline / Constrained
# Baseline only. A viewer's video transceiver is told the codec it really sends (the stream's
# profile, the remote's payload type) by replacing ``RTCRtpTransceiver._codecs`` after
# ``setRemoteDescription``: ``createAnswer`` writes it into the answer and the sender sends with
# its first entry. Checked by :func:`check_transceiver` at import.


def check_transceiver() -> None:
    if "_codecs" not in RTCRtpTransceiver.__init__.__code__.co_names:
        raise AioiceChanged("aiortc's RTCRtpTransceiver no longer keeps its codecs in _codecs")


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs ``transceiver`` offered or negotiated (a copy of the list)."""
    return list(transceiver._codecs)


def set_negotiated_codecs(
    transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]
) -> None:
    """Make ``transceiver`` answer and send ``codecs`` (first entry first)."""
    transceiver._codecs = codecs


check_transceiver()
