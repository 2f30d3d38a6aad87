"""Our RTP send loop (``ingest.webrtc.sending``) without a network: what it writes through a
stand-in DTLS transport, its retransmissions without RTX, aiortc's counters, its import guard.

Its direct path (SRTP + the ICE pair's socket) runs in the e2e WebRTC tests."""

from __future__ import annotations

from typing import Any

import pytest
from aioice.ice import StunProtocol
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RTCP_RTPFB_NACK, HeaderExtensionsMap, RtcpRtpfbPacket, RtpPacket
from pylibsrtp import Policy, Session

from ingest.media.hub import Track
from ingest.media.units import Kind
from ingest.webrtc.aiortc_compat import (
    SRTP_BATCH_BYTES,
    SRTP_BATCH_VIEW,
    SRTP_BUFFER_BYTES,
    SRTP_MAX_TRAILER_BYTES,
    AiortcChanged,
    protect_at,
)
from ingest.webrtc.aiortc_compat import check as check_aiortc
from ingest.webrtc.aiortc_compat import udp_route as _route
from ingest.webrtc.packing import PayloadCache, install, packetize_h264
from ingest.webrtc.sending import (
    HISTORY_PACKETS,
    RETRANSMIT_MAX_PER_S,
    LeanRtpSender,
    SendHistory,
)
from ingest.webrtc.tracks import PassthroughVideoTrack
from tests.unit.webrtc.test_packing import (
    VCFG,
    FakeDtls,
    access_unit,
    send_parameters,
    video,
    wait_for,
)


def without_rtx(parameters: RTCRtpSendParameters) -> RTCRtpSendParameters:
    parameters.codecs = [c for c in parameters.codecs if c.mimeType != "video/rtx"]
    return parameters


async def started_sender(parameters: RTCRtpSendParameters) -> tuple[Track, LeanRtpSender, FakeDtls]:
    source = Track("default:c", "p", "u", Kind.VIDEO, VCFG)
    track = PassthroughVideoTrack(source.subscribe(), payloads=PayloadCache())
    dtls = FakeDtls()
    sender = RTCRtpSender(track, dtls)  # type: ignore[arg-type]
    install(sender, track.packer())
    assert isinstance(sender, LeanRtpSender)
    await sender.send(parameters)
    return source, sender, dtls


def test_the_guard_passes_on_this_aiortc() -> None:
    check_aiortc()  # also ran at import


def test_the_guard_fails_when_aioice_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def send_data(self: Any, data: bytes, addr: Any) -> None:
        return None  # a protocol that no longer sends with self.transport

    monkeypatch.setattr(StunProtocol, "send_data", send_data)
    with pytest.raises(AiortcChanged, match="StunProtocol"):
        check_aiortc()


def test_the_guard_fails_when_pylibsrtp_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    def __init__(self: Any, policy: Any) -> None:
        self.context = None  # a session that keeps its srtp_t elsewhere

    monkeypatch.setattr(Session, "__init__", __init__)
    with pytest.raises(AiortcChanged, match="pylibsrtp"):
        check_aiortc()


def test_the_guard_fails_when_the_sender_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def _run_rtcp(self: Any) -> None:
        return None  # a sender whose reports no longer read the counters we keep

    monkeypatch.setattr(RTCRtpSender, "_run_rtcp", _run_rtcp)
    with pytest.raises(AiortcChanged, match="_run_rtcp"):
        check_aiortc()


@pytest.mark.parametrize(
    "profile", [Policy.SRTP_PROFILE_AEAD_AES_128_GCM, Policy.SRTP_PROFILE_AES128_CM_SHA1_80]
)
def test_protect_at_is_pylibsrtps_protect(profile: int) -> None:
    key = bytes(range(28 if profile == Policy.SRTP_PROFILE_AEAD_AES_128_GCM else 30))
    ours, theirs = (
        Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        for _ in range(2)
    )
    offset = 0
    sizes = (1, 100, 1300, SRTP_BUFFER_BYTES - SRTP_MAX_TRAILER_BYTES - 12)
    for seq, size in enumerate(sizes):
        packet = bytes([0x80, 102]) + seq.to_bytes(2, "big") + bytes(8) + bytes([seq]) * size
        SRTP_BATCH_VIEW[offset : offset + len(packet)] = packet
        protected = protect_at(ours._srtp[0], offset, len(packet))
        assert bytes(SRTP_BATCH_VIEW[offset : offset + protected]) == theirs.protect(packet)
        offset += protected  # packets one after the other, as a GSO run


def test_protect_at_refuses_what_does_not_fit() -> None:
    session = Session(
        Policy(
            key=bytes(28),
            ssrc_type=Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
        )
    )
    for offset, length in ((-1, 100), (0, 11), (SRTP_BATCH_BYTES - 100, 100)):
        with pytest.raises(ValueError, match="no room"):
            protect_at(session._srtp[0], offset, length)


def test_other_transports_take_aiortcs_path() -> None:
    assert _route(FakeDtls()) is None


async def test_counters_and_a_retransmission_without_rtx() -> None:
    parameters = without_rtx(send_parameters("video"))
    source, sender, dtls = await started_sender(parameters)
    units = [video(1000, access_unit(seed=1)), video(1033, access_unit(seed=2, big=3000))]
    for unit in units:
        source.push(unit)
    payloads = [p for u in units for p in packetize_h264(u.data)]
    ext_map = HeaderExtensionsMap()
    ext_map.configure(parameters)
    try:
        await wait_for(lambda: len(dtls.rtp(ext_map)) >= len(payloads), dtls)
        sent = dtls.rtp(ext_map)
        assert [p.payload for p in sent] == payloads
        assert sender.lean_packets == 0  # a stand-in transport: all through _send_rtp
        stats = [s for s in (await sender.getStats()).values() if s.type == "outbound-rtp"]
        assert stats[0].packetsSent == len(payloads)
        assert stats[0].bytesSent == sum(len(p) for p in payloads)

        lost = sent[5]
        before = len(dtls.sent)
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=sender._ssrc)
        nack.lost = [lost.sequence_number, (lost.sequence_number + 5000) % 65536]
        await sender._handle_rtcp_packet(nack)
        assert len(dtls.sent) == before + 1  # the unknown sequence number is ignored
        again = RtpPacket.parse(dtls.sent[before], ext_map)
        assert (again.payload_type, again.ssrc) == (lost.payload_type, lost.ssrc)
        assert (again.sequence_number, again.timestamp) == (lost.sequence_number, lost.timestamp)
        assert (again.marker, again.payload) == (lost.marker, lost.payload)
        assert again.extensions.mid == "0"
    finally:
        await sender.stop()


async def test_the_history_keeps_the_last_history_packets_packets() -> None:
    parameters = without_rtx(send_parameters("video"))
    source, sender, dtls = await started_sender(parameters)
    count = HISTORY_PACKETS + 2
    for i in range(count):  # one small packet per unit
        source.push(video(1000 + 33 * i, b"\x00\x00\x00\x01\x65" + bytes([i % 250 + 1]) * 50))
    ext_map = HeaderExtensionsMap()
    ext_map.configure(parameters)
    try:
        await wait_for(lambda: len(dtls.rtp(ext_map)) >= count, dtls)
        sent = dtls.rtp(ext_map)
        before = len(dtls.sent)
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=sender._ssrc)
        nack.lost = [sent[1].sequence_number, sent[2].sequence_number, sent[-1].sequence_number]
        await sender._handle_rtcp_packet(nack)
        # the oldest two units are forgotten, the newest is resent (with its marker)
        assert len(dtls.sent) == before + 2
        resent = [RtpPacket.parse(p, ext_map) for p in dtls.sent[before:]]
        assert [p.sequence_number for p in resent] == [
            sent[2].sequence_number,
            sent[-1].sequence_number,
        ]
        assert resent[1].payload == sent[-1].payload
        assert resent[1].marker == 1
    finally:
        await sender.stop()


def test_send_history_finds_packets_by_sequence_number_across_the_wrap() -> None:
    history = SendHistory()
    history.append(65530, 1000, [b"a", b"b", b"c"])  # 65530-65532
    history.append(65533, 2000, [b"d", b"e", b"f", b"g", b"h"])  # 65533-65535, 0, 1
    assert history.find(65530) == (1000, b"a", 0)
    assert history.find(65532) == (1000, b"c", 0x80)  # the last of its unit: the marker
    assert history.find(0) == (2000, b"g", 0)
    assert history.find(1) == (2000, b"h", 0x80)
    assert history.find(2) is None  # not sent yet
    assert history.find(65529) is None  # before the history
    assert history.find(30000) is None


def test_send_history_keeps_whole_units_up_to_its_bound() -> None:
    history = SendHistory()
    seq = 0
    for i in range(200):  # one packet a unit (audio)
        history.append(seq, i, [bytes([i])])
        seq += 1
    assert history.find(seq - HISTORY_PACKETS) == (
        200 - HISTORY_PACKETS,
        bytes([200 - HISTORY_PACKETS]),
        0x80,
    )
    assert history.find(seq - HISTORY_PACKETS - 1) is None
    keyframe = [bytes([7])] * (2 * HISTORY_PACKETS)  # one unit larger than the bound: kept whole
    history.append(seq, 999, keyframe)
    assert history.find(seq) == (999, bytes([7]), 0)
    assert history.find(seq - 1) is None  # the older units went
    history.append(seq + len(keyframe), 1000, [b"p"])
    assert history.find(seq) == (999, bytes([7]), 0)  # still: the others hold fewer than the bound


async def test_retransmissions_are_capped_per_second() -> None:
    parameters = without_rtx(send_parameters("video"))
    source, sender, dtls = await started_sender(parameters)
    source.push(video(1000, b"\x00\x00\x00\x01\x65" + b"\x01" * 50))
    ext_map = HeaderExtensionsMap()
    ext_map.configure(parameters)
    try:
        await wait_for(lambda: len(dtls.rtp(ext_map)) >= 1, dtls)
        [sent] = dtls.rtp(ext_map)
        before = len(dtls.sent)
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=sender._ssrc)
        nack.lost = [sent.sequence_number] * (RETRANSMIT_MAX_PER_S + 100)  # a NACK storm
        await sender._handle_rtcp_packet(nack)
        assert len(dtls.sent) - before == RETRANSMIT_MAX_PER_S
    finally:
        await sender.stop()


def test_ntp_now_is_aiortcs_clock_without_datetime(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt
    import time

    from aiortc import clock

    from ingest.webrtc.sending import ntp_now

    before = clock.current_ntp_time()
    ours = ntp_now()
    after = clock.current_ntp_time()
    assert before <= ours <= after + (1 << 32) // 1000  # the same clock (1 ms for the reads)
    for seconds, microseconds in ((1_795_000_000, 0), (1_795_000_000, 999_999), (0, 123_456)):
        at = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            seconds=seconds, microseconds=microseconds
        )
        ns = seconds * 1_000_000_000 + microseconds * 1000 + 999  # below a microsecond: dropped
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        assert ntp_now() == clock.datetime_to_ntp(at), (seconds, microseconds)
