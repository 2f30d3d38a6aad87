"""Our send path on real loopback UDP sockets: runs of equal-size packets leave in one
``sendmsg`` (UDP GSO), every datagram arrives as its own SRTP packet, in order, decrypting to the
RTP packet aiortc would have sent; where GSO is refused, or the transport already queues, the
same datagrams leave one per call."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from ingest.webrtc.aiortc_compat import UdpRoute
from ingest.webrtc.packing import H264_PAYLOAD_MAX, packetize_h264
from ingest.webrtc.sending import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    MAX_PACKET_BYTES,
    UdpBatcher,
)
from tests.unit.webrtc.test_packing import ABS_URI, MID_URI, access_unit, ext_params

pytestmark = pytest.mark.e2e

KEY = bytes(range(28))
SSRC = 0x1234ABCD
PAYLOAD_TYPE = 102
EXTENSIONS = bytes.fromhex("bede00021030000022123456")  # mid "0" + abs-send-time
EXTENSION_MAP = HeaderExtensionsMap()
EXTENSION_MAP.configure(ext_params({MID_URI: 1, ABS_URI: 2}))


def session(direction: int) -> Session:
    return Session(
        Policy(key=KEY, ssrc_type=direction, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    )


class NoGsoSocket(socket.socket):
    """A real UDP socket whose kernel "refuses" GSO, as one without checksum offload does."""

    refused = 0

    def sendmsg(self, *args: Any, **kwargs: Any) -> int:
        self.refused += 1
        raise OSError(errno.EIO, "Input/output error")


@dataclass
class Link:
    route: UdpRoute
    receiver: socket.socket
    rx: Session

    def received(self, count: int) -> list[RtpPacket]:
        packets = []
        for _ in range(count):
            datagram = self.receiver.recv(65536)
            packets.append(RtpPacket.parse(self.rx.unprotect(datagram), EXTENSION_MAP))
        return packets


@pytest.fixture
async def link(request: pytest.FixtureRequest) -> AsyncIterator[Link]:
    cls = getattr(request, "param", socket.socket)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5.0)
    sock = cls(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
    tx = session(Policy.SSRC_ANY_OUTBOUND)
    route = UdpRoute(tx._srtp[0], transport, sock, receiver.getsockname())
    try:
        yield Link(route, receiver, session(Policy.SSRC_ANY_INBOUND))
    finally:
        transport.close()
        receiver.close()


def send(link: Link, batcher: UdpBatcher, payloads: list[bytes], seq: int = 65530) -> int:
    return batcher.send_unit(
        link.route, payloads, 0x90, PAYLOAD_TYPE, seq, 90_000, SSRC, EXTENSIONS
    )


def check(packets: list[RtpPacket], payloads: list[bytes], seq: int = 65530) -> None:
    assert [p.payload for p in packets] == payloads
    assert [p.sequence_number for p in packets] == [
        (seq + i) & 0xFFFF for i in range(len(payloads))
    ]
    assert [p.marker for p in packets] == [0] * (len(payloads) - 1) + [1]
    assert {(p.ssrc, p.payload_type, p.timestamp) for p in packets} == {
        (SSRC, PAYLOAD_TYPE, 90_000)
    }
    assert {(p.extensions.mid, p.extensions.abs_send_time) for p in packets} == {("0", 0x123456)}


async def test_a_frame_leaves_in_one_call_per_run(link: Link) -> None:
    # STAP-A (SPS, PPS, SEI), 3 full FU-A fragments + a shorter last one, a small slice
    payloads = packetize_h264(access_unit(big=5000))
    assert [len(p) for p in payloads[1:4]] == [H264_PAYLOAD_MAX] * 3
    assert len(payloads[4]) < H264_PAYLOAD_MAX
    assert len(payloads) == 6
    batcher = UdpBatcher()
    wire = send(link, batcher, payloads)
    check(link.received(len(payloads)), payloads)
    assert batcher.sends == 3  # the STAP-A, the fragments, the small slice
    assert batcher.gso
    # what went on the wire: each packet, its header and extensions, and the 16-byte GCM tag
    assert wire == sum(12 + len(EXTENSIONS) + len(p) + 16 for p in payloads)


async def test_runs_stop_at_the_segment_and_byte_limits(link: Link) -> None:
    nal = bytes([0x65]) + bytes(range(1, 256)) * 400  # ~100 KB: 79 fragments
    payloads = packetize_h264(b"\x00\x00\x00\x01" + nal)
    batcher = UdpBatcher()
    send(link, batcher, payloads)
    check(link.received(len(payloads)), payloads)
    per_call = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // (12 + len(EXTENSIONS) + H264_PAYLOAD_MAX))
    assert batcher.sends == -(-len(payloads) // per_call)


async def test_single_packets_and_sizes_that_differ(link: Link) -> None:
    payloads = [b"\x01" * 100, b"\x02" * 200, b"\x03" * 200, b"\x04" * 50, b"\x05" * 300]
    batcher = UdpBatcher()
    send(link, batcher, payloads, seq=7)
    check(link.received(len(payloads)), payloads, seq=7)
    assert batcher.sends == 3  # [100], [200, 200, 50], [300]: only the last of a run is short


@pytest.mark.parametrize("link", [NoGsoSocket], indirect=True)
async def test_refused_gso_sends_one_datagram_per_call(link: Link) -> None:
    payloads = packetize_h264(access_unit(big=5000))
    batcher = UdpBatcher()
    send(link, batcher, payloads)
    check(link.received(len(payloads)), payloads)
    assert not batcher.gso  # it does not try again
    sock = link.route.sock
    assert isinstance(sock, NoGsoSocket)
    assert sock.refused == 1
    send(link, batcher, payloads, seq=100)
    check(link.received(len(payloads)), payloads, seq=100)
    assert sock.refused == 1
    assert batcher.sends == 2 * len(payloads)


async def test_behind_queued_datagrams_everything_goes_through_the_transport(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = link.route.transport
    through: list[bytes] = []
    sendto = transport.sendto

    def queued_sendto(data: bytes, addr: Any = None) -> None:
        through.append(data)
        sendto(data, addr)

    monkeypatch.setattr(transport, "get_write_buffer_size", lambda: 1)
    monkeypatch.setattr(transport, "sendto", queued_sendto)
    payloads = packetize_h264(access_unit(big=3000))
    send(link, UdpBatcher(), payloads)
    check(link.received(len(payloads)), payloads)
    assert len(through) == len(payloads)


async def test_a_packet_too_long_is_refused(link: Link) -> None:
    with pytest.raises(ValueError, match="too long"):
        send(link, UdpBatcher(), [bytes(MAX_PACKET_BYTES - 12 - len(EXTENSIONS) + 1)])
