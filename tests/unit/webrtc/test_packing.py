"""Shared RTP packing: payloads aiortc's depacketizer reads back (Opus: aiortc's own bytes),
FU-A fragments of one size for UDP GSO, once per unit, through a real sender.

Also guards the private aiortc internals ``ingest.webrtc.packing`` sets (see its docstring).
"""

from __future__ import annotations

import asyncio
import random
import struct
from asyncio import selector_events
from fractions import Fraction
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.opus import OpusEncoder
from aiortc.rtcrtpparameters import (
    RTCRtcpParameters,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import (
    RTCP_RTPFB_NACK,
    HeaderExtensions,
    HeaderExtensionsMap,
    RtcpRtpfbPacket,
    RtpPacket,
)

from ingest.media.codecs.h264 import split_annexb
from ingest.media.hub import Track
from ingest.media.units import Kind, MediaUnit, VideoConfig
from ingest.webrtc.aiortc_compat import check as check_aiortc
from ingest.webrtc.bridge import OPUS_CONFIG, VideoBridge
from ingest.webrtc.packing import (
    AUDIO_TIME_BASE,
    H264_PAYLOAD_MAX,
    VIDEO_TIME_BASE,
    AiortcChanged,
    H264Packer,
    HeaderExtensionsWriter,
    OpusPacker,
    PayloadCache,
    UnitPacket,
    install,
    installed_packer,
    packetize_h264,
)
from ingest.webrtc.sending import LeanRtpSender
from ingest.webrtc.sfu import add_viewer_track
from ingest.webrtc.tracks import (
    OpusAudioTrack,
    PassthroughVideoTrack,
    to_packet,
)

TIMEOUT = 10.0
VCFG = VideoConfig(codec="h264", record=b"", profile=100, level=40)
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def nal(header: int, size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes([header]) + bytes(rng.randrange(1, 256) for _ in range(size - 1))


def access_unit(seed: int = 0, big: int = 5000) -> bytes:
    """SPS, PPS, SEI (small: STAP-A), a large IDR slice (FU-A) and a small one (single NAL)."""
    nals = [nal(0x67, 12, seed), nal(0x68, 4, seed + 1), nal(0x06, 30, seed + 2)]
    nals += [nal(0x65, big, seed + 3), nal(0x65, 700, seed + 4)]
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


def video(ts: int, data: bytes) -> MediaUnit:
    return MediaUnit(Kind.VIDEO, "h264", ts, ts, data, keyframe=True)


def test_aiortc_still_has_what_we_set() -> None:
    check_aiortc()  # also ran at import


def test_check_fails_loudly_when_asyncio_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    def sendto(self: Any, data: bytes, addr: Any = None) -> None:
        self.socket_elsewhere.sendto(data, addr)

    monkeypatch.setattr(selector_events._SelectorDatagramTransport, "sendto", sendto)  # type: ignore[attr-defined]
    with pytest.raises(AiortcChanged, match="_sock"):
        check_aiortc()


def test_check_fails_loudly_when_the_sender_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    def __init__(self: Any, track: Any, transport: Any) -> None:
        self.encoder = None  # a sender whose fields are no longer name-mangled __encoder

    monkeypatch.setattr(RTCRtpSender, "__init__", __init__)
    with pytest.raises(AiortcChanged, match="_RTCRtpSender__encoder"):
        check_aiortc()


def test_install_checks_the_sender() -> None:
    class NotASender:
        pass

    with pytest.raises(AiortcChanged):
        install(NotASender(), OpusPacker())  # type: ignore[arg-type]


def depacketize(payloads: list[bytes]) -> list[bytes]:
    """The NAL units aiortc's receiver makes of ``payloads`` (its depacketizer, then Annex B)."""
    return split_annexb(b"".join(H264PayloadDescriptor.parse(p)[1] for p in payloads))


@pytest.mark.parametrize("big", [1200, 1299, 1300, 1301, 1302, 2597, 2598, 5000, 60_000])
def test_h264_payloads_read_back_and_fragments_have_one_size(big: int) -> None:
    data = access_unit(big=big)
    unit = video(40, data)
    payloads, pts = H264Packer(PayloadCache()).pack(UnitPacket(unit, 3600, VIDEO_TIME_BASE))
    assert pts == 3600
    assert payloads == packetize_h264(data)
    assert depacketize(payloads) == split_annexb(data)
    assert all(len(p) <= H264_PAYLOAD_MAX for p in payloads)
    fragments = [p for p in payloads if p[0] & 0x1F == 28]
    if big > H264_PAYLOAD_MAX:  # FU-A: full fragments, then a last one no longer
        assert fragments[0][1] & 0x80  # start
        assert fragments[-1][1] & 0x40  # end
        assert {len(p) for p in fragments[:-1]} == {H264_PAYLOAD_MAX}
        assert len(fragments[-1]) <= H264_PAYLOAD_MAX
    else:
        assert not fragments
    # SPS, PPS and SEI travel together in one STAP-A, the small slice alone
    assert payloads[0][0] & 0x1F == 24
    assert payloads[-1] == split_annexb(data)[-1]


def test_h264_packetizer_keeps_f_and_the_highest_nri_and_reads_three_byte_start_codes() -> None:
    nals = [bytes([0x06, 1, 2]), bytes([0xE7, 3]), bytes([0x28, 4, 5])]  # SEI, F|SPS(NRI 3), PPS
    data = b"\x00\x00\x01" + nals[0] + b"\x00\x00\x00\x01" + b"\x00\x00\x01".join(nals[1:])
    [stap] = packetize_h264(data)
    assert stap[0] == 0x80 | 0x60 | 24
    assert depacketize([stap]) == nals
    assert packetize_h264(b"") == []
    # a NAL unit that fills a payload exactly goes alone; a small one after it too
    full = bytes([0x65]) + bytes(range(1, 256)) * 5 + bytes(range(1, 25))
    assert len(full) == H264_PAYLOAD_MAX
    assert packetize_h264(b"\x00\x00\x01" + full + b"\x00\x00\x01" + nals[0]) == [full, nals[0]]


def test_other_time_bases_are_converted() -> None:
    unit = video(40, access_unit())
    _, ts = H264Packer(PayloadCache()).pack(UnitPacket(unit, 40, Fraction(1, 1000)))
    assert ts == 3600
    assert OpusPacker().pack(UnitPacket(unit, 40, Fraction(1, 1000)))[1] == 1920


def test_opus_is_aiortcs() -> None:
    unit = MediaUnit(Kind.AUDIO, "opus", 20, 20, b"\xfc\xff\xfe", keyframe=True)
    expected = OpusEncoder().pack(to_packet(unit, 960, AUDIO_TIME_BASE))
    assert OpusPacker().pack(UnitPacket(unit, 960, AUDIO_TIME_BASE)) == expected


def test_packers_refuse_other_packets() -> None:
    unit = video(0, access_unit())
    with pytest.raises(TypeError, match="UnitPacket"):
        H264Packer(PayloadCache()).pack(to_packet(unit, 0, VIDEO_TIME_BASE))
    with pytest.raises(TypeError, match="does not encode"):
        OpusPacker().encode(object())


def test_payloads_are_cut_once_per_unit_and_timestamps_stay_per_viewer() -> None:
    cache = PayloadCache()
    unit = video(40, access_unit())
    a, b = H264Packer(cache), H264Packer(cache)
    pa, ta = a.pack(UnitPacket(unit, 3600, VIDEO_TIME_BASE))
    pb, tb = b.pack(UnitPacket(unit, 3500, VIDEO_TIME_BASE))
    assert pa is pb
    assert (ta, tb) == (3600, 3500)
    assert (cache.misses, cache.hits) == (1, 1)
    twin = video(40, bytes(unit.data))  # equal data, another unit: its own entry
    assert a.pack(UnitPacket(twin, 3600, VIDEO_TIME_BASE))[0] is not pa
    assert cache.misses == 2


def test_cache_is_bounded() -> None:
    cache = PayloadCache(max_units=3)
    units = [video(i, access_unit(seed=i, big=100)) for i in range(5)]
    for unit in units:
        cache.payloads(unit)
    assert len(cache) == 3
    cache.payloads(units[0])  # evicted: cut again
    assert (cache.misses, cache.hits) == (6, 0)
    cache.payloads(units[4])
    assert cache.hits == 1


def ext_params(ids: dict[str, int]) -> RTCRtpParameters:
    return RTCRtpParameters(
        headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ids.items()]
    )


EXTENSION_IDS = [
    {MID_URI: 1, ABS_URI: 3},
    {MID_URI: 4, ABS_URI: 14},
    {MID_URI: 9},
    {ABS_URI: 2},
    {},
    {MID_URI: 15, ABS_URI: 3},  # two-byte form: aiortc's own code
]
"""Header-extension ids as SDP may negotiate them (one-byte form, partial, none, two-byte)."""


@pytest.mark.parametrize("ids", [*EXTENSION_IDS, {MID_URI: 1, ABS_URI: 200}])
def test_header_extensions_are_aiortcs(ids: dict[str, int]) -> None:
    ours, theirs = HeaderExtensionsWriter(), HeaderExtensionsMap()
    ours.configure(ext_params(ids))
    theirs.configure(ext_params(ids))
    rng = random.Random(1)
    cases: list[HeaderExtensions] = []
    for mid in (None, "0", "1", "video", "a" * 16, "a" * 17, "é"):
        for abs_send_time in (None, 0, 1, 0xFFFFFF, rng.randrange(1 << 24), 1 << 24):
            cases.append(HeaderExtensions(mid=mid, abs_send_time=abs_send_time))
    cases.append(HeaderExtensions(mid="0", abs_send_time=5, audio_level=(False, 30)))
    cases.append(HeaderExtensions(mid="0", abs_send_time=5, transport_sequence_number=7))
    cases.append(HeaderExtensions(mid="0", rtp_stream_id="r0"))
    for values in cases:
        assert ours.set(values) == theirs.set(values), values
    packet = RtpPacket(payload_type=102, sequence_number=9, timestamp=77, payload=b"x" * 50)
    packet.extensions = HeaderExtensions(mid="1", abs_send_time=123_456)
    assert packet.serialize(ours) == packet.serialize(theirs)


@pytest.mark.parametrize("ids", EXTENSION_IDS)
def test_a_units_extension_block_is_the_header_and_what_aiortc_writes(
    ids: dict[str, int],
) -> None:
    ours, theirs = HeaderExtensionsWriter(), HeaderExtensionsMap()
    ours.configure(ext_params(ids))
    theirs.configure(ext_params(ids))
    rng = random.Random(2)
    for mid in ("0", "0", None, "video", "0", "a" * 16, "a" * 17, "é"):  # mids change too
        for abs_send_time in (0, 1, 0xFFFFFF, rng.randrange(1 << 24)):
            profile, value = theirs.set(HeaderExtensions(mid=mid, abs_send_time=abs_send_time))
            expected = struct.pack("!HH", profile, len(value) // 4) + value if value else b""
            assert ours.block(mid, abs_send_time) == expected, (mid, abs_send_time)


async def test_install_on_real_transceivers() -> None:
    source = Track("default:c", "p", "u", Kind.VIDEO, VCFG)
    bridge = VideoBridge(source)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        track, transceiver = add_viewer_track(pc, bridge)
        assert isinstance(track, PassthroughVideoTrack)
        assert track.payloads is bridge.payloads
        packer = installed_packer(transceiver.sender)
        assert isinstance(packer, H264Packer)
        assert packer.cache is bridge.payloads
        assert type(transceiver.sender) is LeanRtpSender
        with pytest.raises(RuntimeError, match="already has an encoder"):
            install(transceiver.sender, OpusPacker())
    finally:
        await pc.close()


# -- through aiortc's RTCRtpSender: what goes on the wire, NACK / RTX -------------------------


class FakeDtls:
    """Stands in for the DTLS transport: keeps the (unprotected) RTP / RTCP bytes sent."""

    state = "connected"
    _stats_id = "fake"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.sent_more = asyncio.Event()
        """Set whenever something is sent (cleared by :func:`wait_for`)."""

    def _register_rtp_sender(self, sender: Any, parameters: Any) -> None:
        pass

    def _unregister_rtp_sender(self, sender: Any) -> None:
        pass

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)
        self.sent_more.set()

    def _get_stats(self) -> list[Any]:
        return []

    def rtp(self, ext_map: HeaderExtensionsMap) -> list[RtpPacket]:
        return [RtpPacket.parse(d, ext_map) for d in self.sent if not 192 <= d[1] <= 223]


def send_parameters(kind: str) -> RTCRtpSendParameters:
    if kind == "video":
        codecs = [
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=102,
                parameters={"packetization-mode": "1", "profile-level-id": "640028"},
            ),
            RTCRtpCodecParameters(
                mimeType="video/rtx", clockRate=90000, payloadType=103, parameters={"apt": 102}
            ),
        ]
    else:
        codecs = [RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111)]
    return RTCRtpSendParameters(
        codecs=codecs,
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=4, uri=MID_URI),
            RTCRtpHeaderExtensionParameters(id=2, uri=ABS_URI),
        ],
        muxId="0",
        rtcp=RTCRtcpParameters(cname="test", ssrc=1),
    )


async def wait_for(condition: Any, *transports: FakeDtls) -> None:
    """Until ``condition()`` holds, re-checked each time one of ``transports`` sends."""

    async def until() -> None:
        while not condition():
            for transport in transports:
                transport.sent_more.clear()
            waits = [asyncio.create_task(t.sent_more.wait()) for t in transports]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    await asyncio.wait_for(until(), TIMEOUT)


async def test_two_senders_share_payloads_and_nack_retransmits() -> None:
    source = Track("default:c", "p", "u", Kind.VIDEO, VCFG)
    cache = PayloadCache()
    dtls = [FakeDtls(), FakeDtls()]
    tracks = [PassthroughVideoTrack(source.subscribe(), payloads=cache) for _ in dtls]
    senders = [RTCRtpSender(t, d) for t, d in zip(tracks, dtls, strict=True)]  # type: ignore[arg-type]
    for sender, track in zip(senders, tracks, strict=True):
        install(sender, track.packer())
        await sender.send(send_parameters("video"))
    units = [video(1000, access_unit(seed=1)), video(1033, access_unit(seed=2, big=3000))]
    for unit in units:
        source.push(unit)
    expected = [packetize_h264(u.data) for u in units]
    total = sum(len(p) for p in expected)
    ext_map = HeaderExtensionsMap()
    ext_map.configure(send_parameters("video"))
    try:
        await wait_for(lambda: all(len(d.rtp(ext_map)) >= total for d in dtls), *dtls)
        for sender, d in zip(senders, dtls, strict=True):
            packets = d.rtp(ext_map)
            assert [p.payload for p in packets] == [x for p in expected for x in p]
            assert [p.marker for p in packets] == [
                int(i == len(p) - 1) for p in expected for i in range(len(p))
            ]
            assert all(p.ssrc == sender._ssrc and p.payload_type == 102 for p in packets)
            assert all(p.extensions.mid == "0" for p in packets)
            assert all(p.extensions.abs_send_time is not None for p in packets)
            first, last = packets[0], packets[-1]
            assert (last.timestamp - first.timestamp) % (1 << 32) == 33 * 90
        assert cache.misses == 2
        assert cache.hits == 2
        # a NACK is answered from the sender's history, over RTX
        sender, d = senders[0], dtls[0]
        lost = d.rtp(ext_map)[3]
        before = len(d.sent)
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=sender._ssrc)
        nack.lost = [lost.sequence_number]
        await sender._handle_rtcp_packet(nack)
        rtx = RtpPacket.parse(d.sent[before], ext_map)
        assert (rtx.payload_type, rtx.ssrc) == (103, sender._rtx_ssrc)
        assert rtx.payload[2:] == lost.payload
        assert int.from_bytes(rtx.payload[:2], "big") == lost.sequence_number
        assert rtx.timestamp == lost.timestamp
        assert rtx.extensions.mid == "0"
    finally:
        for sender in senders:
            await sender.stop()


async def test_opus_through_a_sender() -> None:
    source = Track("default:c", "p", "u", Kind.AUDIO, OPUS_CONFIG)
    track = OpusAudioTrack(source.subscribe())
    d = FakeDtls()
    sender = RTCRtpSender(track, d)  # type: ignore[arg-type]
    install(sender, track.packer())
    await sender.send(send_parameters("audio"))
    for ms in (0, 20, 40):
        source.push(MediaUnit(Kind.AUDIO, "opus", ms, ms, bytes([ms, 1, 2]), keyframe=True))
    ext_map = HeaderExtensionsMap()
    ext_map.configure(send_parameters("audio"))
    try:
        await wait_for(lambda: len(d.rtp(ext_map)) >= 3, d)
        packets = d.rtp(ext_map)
        assert [p.payload for p in packets] == [bytes([ms, 1, 2]) for ms in (0, 20, 40)]
        assert [(p.timestamp - packets[0].timestamp) % (1 << 32) for p in packets] == [
            0,
            960,
            1920,
        ]
        assert all(p.marker == 1 and p.payload_type == 111 for p in packets)
    finally:
        await sender.stop()


def test_unit_packet_quacks_like_av_packet() -> None:
    unit = MediaUnit(Kind.AUDIO, "opus", 20, 20, b"\x01\x02", keyframe=True)
    packet = UnitPacket(unit, 960, AUDIO_TIME_BASE)
    assert bytes(packet) == b"\x01\x02"
    assert (packet.pts, packet.dts, packet.time_base) == (960, 960, AUDIO_TIME_BASE)
    assert packet.unit is unit
    assert "960" in repr(packet)
