"""Forwarding a WebRTC publisher's media without decoding it: RTP packets in, hub units out.

A WHIP publisher's RTP packets (after aiortc's SRTP, statistics, NACK and RTX handling; see
:func:`~ingest.webrtc.aiortc_compat.forward_receiver`) become :class:`~ingest.media.units.
MediaUnit` s that keep the packets' payloads exactly as received (``unit.payloads``). Every
subscriber's sender sends those payloads again with its own RTP header (sequence number,
timestamp, SSRC) and SRTP: no depacketizer-packetizer round trip, no decoder, no encoder.

* :class:`FrameAssembler` groups video packets into frames: one RTP timestamp, in sequence order,
  ending with the marker bit. Packets may arrive out of order or twice; a frame with a hole is
  waited for (NACK / RTX repair it) up to :data:`ASSEMBLY_MAX_WAIT_S` or
  :data:`ASSEMBLY_MAX_PENDING` packets, then dropped (counted in :attr:`FrameAssembler.dropped`),
  and the publisher's caller waits for the next keyframe (and asks for one).
* :class:`AudioSequencer` passes audio packets on at once, dropping late and repeated ones.
* :class:`RtpClock` turns 32-bit RTP timestamps into participant milliseconds.
* :func:`vp8_keyframe` / :func:`h264_keyframe` tell keyframes from the payloads.
* :class:`KeyframeRequests` merges the keyframe requests of every subscriber (a join, a PLI or
  FIR) into at most one request to the publisher per :data:`KEYFRAME_REQUEST_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc.codecs import get_capabilities
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

KEYFRAME_REQUEST_INTERVAL_S = 0.5
"""At most one keyframe request (PLI) a track sends its publisher per this many seconds;
requests in between are merged into one sent when the interval is over."""
ASSEMBLY_MAX_WAIT_S = 0.5
"""How long a video frame with a missing packet is waited for (NACK / RTX) before it is dropped."""
ASSEMBLY_MAX_PENDING = 1024
"""Video packets held while waiting for a missing one, before the incomplete frame is dropped."""
MAX_FRAME_PACKETS = 2048
"""Packets of one video frame (~2.6 MB): a longer "frame" is dropped."""


@dataclass(frozen=True, slots=True)
class RtpIn:
    """One received RTP packet, as forwarding needs it."""

    seq: int
    timestamp: int
    marker: bool
    payload: bytes
    """As the publisher sent it (RTX unwrapped)."""
    data: bytes
    """The depacketized part (aiortc's ``depayload``): Annex B NALs for H.264, VP8 data."""


class FrameAssembler:
    """Video RTP packets (any order, duplicates) → complete frames, in sequence order."""

    def __init__(
        self,
        starts_frame: Callable[[bytes], bool],
        *,
        max_wait: float = ASSEMBLY_MAX_WAIT_S,
        max_pending: int = ASSEMBLY_MAX_PENDING,
    ) -> None:
        self.starts_frame = starts_frame
        self.max_wait = max_wait
        self.max_pending = max_pending
        self._pending: dict[int, RtpIn] = {}  # by extended sequence number
        self._highest: int | None = None  # extended
        self._expect: int | None = None  # extended seq of the next frame's first packet
        self._stuck_since: float | None = None
        self.frames = 0
        self.dropped = 0
        """Frames given up (a packet never came)."""
        self.gaps = 0
        """Times frames were dropped: the caller must wait for a keyframe after each."""

    def _extend(self, seq: int) -> int:
        if self._highest is None:
            self._highest = seq
            return seq
        delta = (seq - self._highest) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        ext = self._highest + delta
        self._highest = max(self._highest, ext)
        return ext

    def add(self, packet: RtpIn, now: float) -> tuple[list[list[RtpIn]], bool]:
        """Frames completed by ``packet`` and whether frames were dropped before them."""
        ext = self._extend(packet.seq)
        if self._expect is None:
            if not self.starts_frame(packet.payload):
                return [], False
            self._expect = ext
        if ext < self._expect or ext in self._pending:
            return [], False  # late or repeated
        self._pending[ext] = packet
        frames = self._complete()
        dropped = False
        if not self._has_hole():
            self._stuck_since = None
            return frames, False
        if self._stuck_since is None:
            self._stuck_since = now
        if now - self._stuck_since > self.max_wait or len(self._pending) > self.max_pending:
            dropped = self._resync()
            frames += self._complete()
            self._stuck_since = now if self._has_hole() else None
        return frames, dropped

    def _has_hole(self) -> bool:
        """Whether a packet is missing before the newest one (a frame in progress is not)."""
        pending = self._pending
        if not pending or self._expect is None or self._highest is None:
            return bool(pending)
        return len(pending) != self._highest - self._expect + 1

    def _complete(self) -> list[list[RtpIn]]:
        frames: list[list[RtpIn]] = []
        pending = self._pending
        while self._expect is not None and self._expect in pending:
            start = self._expect
            timestamp = pending[start].timestamp
            end: int | None = None
            i = start
            while i in pending and i - start < MAX_FRAME_PACKETS:
                p = pending[i]
                if p.timestamp != timestamp:  # the marker was lost: the frame ended before
                    end = i - 1
                    break
                if p.marker:
                    end = i
                    break
                i += 1
            if end is None:
                if i - start >= MAX_FRAME_PACKETS:
                    self._drop_through(i)
                    self.dropped += 1
                    self.gaps += 1
                    continue
                break
            frames.append([pending.pop(k) for k in range(start, end + 1)])
            self._expect = end + 1
            self.frames += 1
        return frames

    def _drop_through(self, last: int) -> None:
        for k in [k for k in self._pending if k <= last]:
            del self._pending[k]
        self._expect = None
        for k in sorted(self._pending):
            before = self._pending.get(k - 1)
            starts = self.starts_frame(self._pending[k].payload)
            if starts or (before is not None and before.marker):
                self._expect = k
                break
        if self._expect is None:
            self._pending.clear()

    def _resync(self) -> bool:
        """Give up the frame at the head: resume at the first later frame start."""
        expect = self._expect
        if expect is None:
            return False
        head_ts = self._pending[expect].timestamp if expect in self._pending else None
        for k in sorted(self._pending):
            if k <= expect:
                continue
            p = self._pending[k]
            before = self._pending.get(k - 1)
            if p.timestamp != head_ts and (
                self.starts_frame(p.payload) or (before is not None and before.marker)
            ):
                for old in [j for j in self._pending if j < k]:
                    del self._pending[old]
                self._expect = k
                self.dropped += 1
                self.gaps += 1
                return True
        # no later frame start seen yet: drop everything, resume at the next frame start
        self._pending.clear()
        self._expect = None
        self.dropped += 1
        self.gaps += 1
        return True


class AudioSequencer:
    """Audio packets on at once, in order: late (already passed) and repeated ones dropped."""

    def __init__(self) -> None:
        self._last: int | None = None
        self.dropped = 0

    def add(self, seq: int) -> bool:
        """Whether to forward the packet with this sequence number."""
        last = self._last
        if last is not None:
            delta = (seq - last) & 0xFFFF
            if delta == 0 or delta >= 0x8000:
                self.dropped += 1
                return False
        self._last = seq
        return True


class RtpClock:
    """32-bit RTP timestamps → milliseconds on the participant timeline (from ``start_ms``)."""

    def __init__(self, clock_rate: int, start_ms: int) -> None:
        self.clock_rate = clock_rate
        self.start_ms = start_ms
        self._first: int | None = None
        self._last = 0  # extended

    def ms(self, timestamp: int) -> int:
        if self._first is None:
            self._first = self._last = timestamp
        else:
            delta = (timestamp - self._last) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            self._last += delta
        return self.start_ms + (self._last - self._first) * 1000 // self.clock_rate


def _vp8_header_offset(payload: bytes) -> int | None:
    """Offset of the VP8 payload header after the payload descriptor (RFC 7741 4.2)."""
    if not payload:
        return None
    i = 1
    if payload[0] & 0x80:  # X: extension byte
        if len(payload) < 2:
            return None
        ext = payload[1]
        i = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= i:
                return None
            i += 2 if payload[i] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            i += 1
        if ext & 0x30:  # T or K: TID/KEYIDX
            i += 1
    return i if i < len(payload) else None


def vp8_starts_frame(payload: bytes) -> bool:
    """The first packet of a VP8 frame: S bit set, partition 0."""
    return bool(payload) and payload[0] & 0x10 != 0 and payload[0] & 0x07 == 0


def vp8_keyframe(payload: bytes) -> tuple[bool, int, int]:
    """(keyframe, width, height) from a frame's first payload; sizes 0 unless a keyframe."""
    if not vp8_starts_frame(payload):
        return False, 0, 0
    i = _vp8_header_offset(payload)
    if i is None or payload[i] & 0x01:  # P bit: 0 = key frame
        return False, 0, 0
    head = payload[i : i + 10]
    if len(head) == 10 and head[3:6] == b"\x9d\x01\x2a":
        width = int.from_bytes(head[6:8], "little") & 0x3FFF
        height = int.from_bytes(head[8:10], "little") & 0x3FFF
        return True, width, height
    return True, 0, 0


H264_IDR = 5
H264_SPS = 7
_STAP_A = 24
_FU_A = 28


def h264_nal_types(payload: bytes) -> list[int]:
    """NAL unit types a payload starts (RFC 6184: single NAL, STAP-A, FU-A start)."""
    if not payload:
        return []
    kind = payload[0] & 0x1F
    if kind == _STAP_A:
        types = []
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            types.append(payload[pos + 2] & 0x1F)
            pos += 2 + size
        return types
    if kind == _FU_A:
        if len(payload) >= 2 and payload[1] & 0x80:
            return [payload[1] & 0x1F]
        return []
    return [kind]


def h264_starts_frame(payload: bytes) -> bool:
    """Whether a payload can begin an access unit (not a middle or end FU-A fragment)."""
    if not payload:
        return False
    return payload[0] & 0x1F != _FU_A or (len(payload) >= 2 and payload[1] & 0x80 != 0)


def h264_keyframe(payloads: list[bytes] | tuple[bytes, ...]) -> bool:
    """Whether an access unit's payloads hold an IDR slice."""
    return any(H264_IDR in h264_nal_types(p) for p in payloads)


class KeyframeRequests:
    """Merges keyframe requests into at most one ``send()`` per ``interval`` seconds.

    The first request is sent at once; one arriving within the interval after it is sent when
    the interval is over, and any more until then are merged into that one."""

    def __init__(
        self,
        send: Callable[[], None],
        *,
        interval: float = KEYFRAME_REQUEST_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.requested = 0
        """Requests received."""
        self.sent = 0
        """Requests sent to the publisher."""

    def request(self) -> None:
        self.requested += 1
        if self._timer is not None:
            return  # merged into the one already due
        now = self._clock()
        if self._last is None or now - self._last >= self.interval:
            self._fire()
            return
        delay = self._last + self.interval - now
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._last = self._clock()
        self.sent += 1
        self._send()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def codec_preferences(kind: str, codec: str) -> list[RTCRtpCodecCapability]:
    """aiortc codec preferences naming only a forwarded track's codec (``"vp8"``, ``"h264"``,
    ``"opus"``: every aiortc entry of it, H.264's profiles included, which the SFU then narrows
    to the stream's) and, for video, RTX: what WHEP answers and the call WebSocket offers."""
    caps = get_capabilities(kind).codecs
    mime = f"{kind}/{codec}".lower()
    same = [c for c in caps if c.mimeType.lower() == mime]
    rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"] if kind == "video" else []
    return same + rtx
