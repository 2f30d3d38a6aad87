"""Forwarding a WebRTC publisher's RTP: frame assembly, keyframes, rate-limited requests."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from ingest.media.units import AudioConfig, Kind, MediaUnit
from ingest.webrtc.forwarding import (
    ASSEMBLY_MAX_PENDING,
    ASSEMBLY_MAX_WAIT_S,
    KEYFRAME_REQUEST_INTERVAL_S,
    MAX_FRAME_PACKETS,
    AudioSequencer,
    FrameAssembler,
    KeyframeRequests,
    RtpClock,
    RtpIn,
    h264_keyframe,
    h264_nal_types,
    h264_starts_frame,
    vp8_keyframe,
    vp8_starts_frame,
)
from ingest.webrtc.packing import ForwardPacker, UnitPacket

# A VP8 key frame's first bytes: frame tag (P bit 0), start code, 320 x 240.
VP8_KEY = bytes([0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + b"\x00" * 20
VP8_DELTA = bytes([0x51, 0x42, 0x00]) + b"\x11" * 20


def vp8_payloads(frame: bytes, picture_id: int = 5) -> list[bytes]:
    """A frame of ~7 KB in RTP payloads, as aiortc's VP8 packetizer cuts it (6 packets)."""
    return Vp8Encoder._packetize(frame * (7000 // len(frame)), picture_id)


def packets(payloads: list[bytes], seq: int, ts: int) -> list[RtpIn]:
    last = len(payloads) - 1
    return [RtpIn((seq + i) & 0xFFFF, ts, i == last, p, p[4:]) for i, p in enumerate(payloads)]


def feed(assembler: FrameAssembler, items: list[RtpIn], now: float = 0.0) -> list[list[RtpIn]]:
    out: list[list[RtpIn]] = []
    for item in items:
        out += assembler.add(item, now)[0]
    return out


def test_vp8_keyframe_and_size_from_the_payload_descriptor() -> None:
    key = vp8_payloads(VP8_KEY)
    assert len(key) > 1
    assert vp8_starts_frame(key[0])
    assert not vp8_starts_frame(key[1])
    assert vp8_keyframe(key[0]) == (True, 320, 240)
    assert vp8_keyframe(key[1]) == (False, 0, 0)  # not the frame's first packet
    assert vp8_keyframe(vp8_payloads(VP8_DELTA)[0]) == (False, 0, 0)
    # a descriptor without the extension byte (X = 0): S bit, then the VP8 header
    assert vp8_keyframe(b"\x10" + VP8_KEY) == (True, 320, 240)
    assert vp8_keyframe(b"") == (False, 0, 0)


def test_h264_keyframes_from_nal_types() -> None:
    sps, pps = b"\x67\x42\x00\x1f", b"\x68\xce"
    idr = b"\x65" + b"\x88" * 3000
    payloads = H264Encoder._packetize([sps, pps, idr])
    assert h264_nal_types(payloads[0]) == [7, 8]  # STAP-A of SPS and PPS
    assert h264_nal_types(payloads[1]) == [5]  # FU-A start of the IDR
    assert h264_nal_types(payloads[2]) == []  # FU-A middle
    assert h264_keyframe(payloads)
    assert h264_starts_frame(payloads[1])
    assert not h264_starts_frame(payloads[2])
    assert not h264_keyframe(H264Encoder._packetize([b"\x41" + b"\x22" * 3000]))


def test_frames_in_order_out_of_order_and_repeated() -> None:
    a = packets(vp8_payloads(VP8_KEY), 65530, 1000)  # wraps the sequence number
    b = packets(vp8_payloads(VP8_DELTA), a[-1].seq + 1, 4000)
    assembler = FrameAssembler(vp8_starts_frame)
    assert feed(assembler, a) == [a]
    shuffled = [b[2], b[0], b[2], b[1], *b[3:]]
    assert feed(assembler, shuffled) == [b]
    assert feed(assembler, [a[0], b[1]]) == []  # late repeats
    assert assembler.frames == 2
    assert assembler.dropped == 0


def test_a_lost_packet_drops_its_frame_after_the_wait() -> None:
    a = packets(vp8_payloads(VP8_KEY), 100, 1000)
    b = packets(vp8_payloads(VP8_DELTA), a[-1].seq + 1, 4000)
    c = packets(vp8_payloads(VP8_DELTA, 6), b[-1].seq + 1, 7000)
    assembler = FrameAssembler(vp8_starts_frame)
    assert feed(assembler, a) == [a]
    assert feed(assembler, [b[0], *b[2:]], now=1.0) == []  # b[1] lost: b waits
    frames, dropped = assembler.add(c[0], 1.0 + ASSEMBLY_MAX_WAIT_S / 2)
    assert (frames, dropped) == ([], False)  # still waiting for a retransmission
    out: list[list[RtpIn]] = []
    for item in c[1:]:
        frames, dropped = assembler.add(item, 1.0 + ASSEMBLY_MAX_WAIT_S * 2)
        out += frames
        if dropped:
            break
    assert dropped
    out += feed(assembler, c[1 + len(out) :], now=2.0)
    assert out == [c]
    assert assembler.dropped == 1


def test_too_many_pending_packets_give_up_at_once() -> None:
    assembler = FrameAssembler(vp8_starts_frame, max_pending=4)
    a = packets(vp8_payloads(VP8_KEY), 0, 1000)
    assert feed(assembler, a) == [a]
    lost_start = a[-1].seq + 1
    later = packets(vp8_payloads(VP8_DELTA), lost_start, 4000)[1:]  # its first packet lost
    nxt = packets(vp8_payloads(VP8_KEY), later[-1].seq + 1, 7000)
    got = feed(assembler, [*later, *nxt])
    assert got == [nxt]
    assert assembler.dropped >= 1
    assert ASSEMBLY_MAX_PENDING > 4


def test_a_lost_marker_ends_the_frame_at_the_next_timestamp() -> None:
    a = packets(vp8_payloads(VP8_KEY), 10, 1000)
    a[-1] = RtpIn(a[-1].seq, a[-1].timestamp, False, a[-1].payload, a[-1].data)
    b = packets(vp8_payloads(VP8_DELTA), a[-1].seq + 1, 4000)
    assembler = FrameAssembler(vp8_starts_frame)
    assert feed(assembler, [*a, *b]) == [a, b]


def test_the_first_frame_starts_at_a_frame_start() -> None:
    a = packets(vp8_payloads(VP8_KEY), 10, 1000)
    b = packets(vp8_payloads(VP8_DELTA), a[-1].seq + 1, 4000)
    assembler = FrameAssembler(vp8_starts_frame)
    assert feed(assembler, [*a[1:], *b]) == [b]  # joined mid-frame: that frame is skipped


def test_an_endless_frame_is_dropped() -> None:
    assembler = FrameAssembler(vp8_starts_frame, max_pending=10 * MAX_FRAME_PACKETS)
    start = RtpIn(0, 1, False, b"\x10" + VP8_DELTA, b"")
    body = [RtpIn(i, 1, False, b"\x00\x00", b"") for i in range(1, MAX_FRAME_PACKETS + 2)]
    assert feed(assembler, [start, *body]) == []
    assert assembler.dropped == 1


def test_audio_sequencer_drops_late_and_repeated_packets() -> None:
    seq = AudioSequencer()
    assert [seq.add(s) for s in (65534, 65535, 0, 65535, 0, 2, 1, 3)] == [
        True,
        True,
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    assert seq.dropped == 3


def test_rtp_clock_unwraps_32_bits() -> None:
    clock = RtpClock(90_000, 500)
    assert clock.ms(0xFFFFFF00) == 500
    assert clock.ms(0xFFFFFF00 + 90_000 - 0x100000000) == 1500  # wrapped
    assert clock.ms(0xFFFFFF00 + 45_000) == 1000  # a late frame before the wrap
    audio = RtpClock(48_000, 0)
    assert [audio.ms(t) for t in (7, 967, 1927)] == [0, 20, 40]


async def test_keyframe_requests_are_merged_and_rate_limited() -> None:
    now = [100.0]
    sent: list[float] = []
    fired = asyncio.Event()

    def send() -> None:
        sent.append(now[0])
        fired.set()

    requests = KeyframeRequests(send, clock=lambda: now[0])
    requests.request()
    assert sent == [100.0]  # the first at once
    now[0] = 100.1
    fired.clear()
    for _ in range(5):
        requests.request()  # merged into one, due at 100.5
    assert sent == [100.0]
    now[0] = 100.0 + KEYFRAME_REQUEST_INTERVAL_S
    await asyncio.wait_for(fired.wait(), 2)
    assert sent == [100.0, 100.5]
    assert (requests.requested, requests.sent) == (6, 2)
    now[0] = 101.5
    requests.request()  # past the interval: at once
    assert len(sent) == 3
    requests.close()


async def test_closed_requests_send_nothing_more() -> None:
    now = [0.0]
    sent: list[float] = []
    requests = KeyframeRequests(lambda: sent.append(now[0]), interval=0.05, clock=lambda: now[0])
    requests.request()
    requests.request()  # due later
    requests.close()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_later(0.1, done.set_result, None)
    await done
    assert sent == [0.0]


def test_forward_packer_sends_the_payloads_as_received() -> None:
    payloads = (b"\x90\x80\x05abc", b"\x80\x80\x05def")
    unit = MediaUnit(Kind.VIDEO, "vp8", 40, 40, b"abcdef", True, payloads=payloads)
    packer = ForwardPacker(Fraction(1, 90_000))
    out, pts = packer.pack(UnitPacket(unit, 3600, Fraction(1, 90_000)))
    assert out == list(payloads)
    assert all(a is b for a, b in zip(out, payloads, strict=True))  # not copied
    assert pts == 3600
    with pytest.raises(TypeError, match="no RTP payloads"):
        packer.pack(UnitPacket(MediaUnit(Kind.VIDEO, "h264", 0, 0, b"x"), 0, Fraction(1, 90_000)))


def test_a_video_reader_waiting_for_a_keyframe_asks_the_publisher() -> None:
    from ingest.media.hub import Track
    from ingest.media.units import VideoConfig

    asked: list[str] = []
    track = Track("t:c", "p", "u", Kind.VIDEO, VideoConfig("vp8", b"", forwarded=True))
    track.keyframe_requester = lambda: asked.append("key")
    track.subscribe(max_queue=4)  # nothing cached: it waits for a keyframe
    assert asked == ["key"]
    track.push(MediaUnit(Kind.VIDEO, "vp8", 0, 0, b"k", True, payloads=(b"k",)))
    track.subscribe(max_queue=4)  # starts at the cached keyframe: no request
    assert asked == ["key"]
    slow = track.subscribe(max_queue=2)
    for i in range(1, 4):  # the slow reader overflows on a delta frame: drops to a keyframe
        track.push(MediaUnit(Kind.VIDEO, "vp8", i, i, b"d", False, payloads=(b"d",)))
    assert slow.dropped > 0
    assert asked == ["key", "key"]
    audio = Track("t:c", "p", "u", Kind.AUDIO, AudioConfig("opus", b"", forwarded=True))
    audio.keyframe_requester = lambda: asked.append("audio")
    audio.subscribe()
    assert asked == ["key", "key"]  # audio never waits for a keyframe
