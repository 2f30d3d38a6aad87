"""One call's LL-HLS rendition in memory: a sliding window of segments and parts, the media
playlist (RFC 8216bis with LL-HLS tags), and blocking waits for playlist reloads and parts.

Plain HLS players read the ``#EXTINF`` segments and ignore the ``EXT-X-PART`` /
``EXT-X-PRELOAD-HINT`` lines; LL-HLS players (hls.js, AVPlayer) use the parts and block on
``_HLS_msn`` / ``_HLS_part``. URIs are relative (``init-<id>.mp4``, ``seg-<msn>.m4s``,
``part-<number>.m4s``): a part's number counts parts across segments, so a preload hint names the
right URI even when the next part turns out to start a new segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest.hls.segmenter import PART_TARGET_MS, Init, Part

WINDOW_SEGMENTS = 6
"""Complete segments kept in the playlist (and in memory) behind the one being built."""
PART_SEGMENTS = 3
"""Complete segments whose parts are still listed (RFC 8216bis: parts of the last three target
durations at least)."""
SEGMENT_TARGET_S = 2
"""Smallest ``EXT-X-TARGETDURATION``; longer GOPs raise it (never lowered while streaming)."""
BLOCK_TIMEOUT_FACTOR = 3
"""A blocking request waits up to this many target durations (RFC 8216bis: 3x)."""
MAX_MSN_AHEAD = 2
"""A blocking request for a segment further ahead than this is refused (400, RFC 8216bis)."""
PART_HOLD_BACK_PARTS = 3
"""``PART-HOLD-BACK`` in part targets (at least 2, 3 recommended)."""


@dataclass(eq=False, slots=True)
class Segment:
    msn: int
    init: Init
    discontinuity: bool
    started_at: datetime
    parts: list[Part] = field(default_factory=list)
    duration: float | None = None  # None while it is being built
    _data: bytes | None = None

    @property
    def complete(self) -> bool:
        return self.duration is not None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = b"".join(p.data for p in self.parts)
        return self._data


class HlsStream:
    """The window of one call's HLS output; fed by the egress through the segmenter's sink
    calls (:meth:`on_init`, :meth:`on_part`, :meth:`on_segment_end`) and read by HTTP."""

    def __init__(
        self,
        *,
        window: int = WINDOW_SEGMENTS,
        part_target_ms: int = PART_TARGET_MS,
        segment_target_s: int = SEGMENT_TARGET_S,
    ) -> None:
        self.window = window
        self.part_target = part_target_ms / 1000
        self.target_duration = segment_target_s
        self.segments: deque[Segment] = deque()
        self.inits: dict[int, Init] = {}
        self.ended = False
        self.discontinuity_sequence = 0
        self.created = time.monotonic()
        self.part_times: dict[int, float] = {}  # part number -> monotonic time it became ready
        self._init: Init | None = None
        self._discontinuity = False
        self._next_part = 0  # the number the next part will have (the preload hint)
        self._changed = asyncio.Event()

    # -- input (segmenter sink) ----------------------------------------------------------------

    def on_init(self, init: Init) -> None:
        if self._init is not None and init.id != self._init.id:
            self._discontinuity = True
        self._init = init
        self.inits[init.id] = init

    def on_part(self, part: Part) -> None:
        if self.ended:
            return
        seg = self.segments[-1] if self.segments else None
        if seg is None or seg.complete or seg.msn != part.msn:
            if not part.independent:
                return  # joined mid-segment: start at the next segment
            if part.init.id not in self.inits:
                self.on_init(part.init)
            seg = Segment(part.msn, part.init, self._discontinuity, datetime.now(UTC))
            self._discontinuity = False
            self.segments.append(seg)
        seg.parts.append(part)
        self._next_part = part.number + 1
        self.part_times[part.number] = time.monotonic()
        self._notify()

    def on_segment_end(self, msn: int, duration: float) -> None:
        seg = self.segments[-1] if self.segments else None
        if seg is None or seg.msn != msn or seg.complete:
            return
        seg.duration = duration
        self.target_duration = max(self.target_duration, math.floor(duration + 0.5))
        self._trim()
        self._notify()

    def end(self) -> None:
        """No more media: the playlist gets ``EXT-X-ENDLIST``; an open segment is dropped."""
        if self.ended:
            return
        if self.segments and not self.segments[-1].complete:
            self.segments.pop()
        self.ended = True
        self._notify()

    def _trim(self) -> None:
        complete = [s for s in self.segments if s.complete]
        while len(complete) > self.window:
            old = self.segments.popleft()
            complete.pop(0)
            for p in old.parts:
                self.part_times.pop(p.number, None)
            if old.discontinuity:
                self.discontinuity_sequence += 1
        live = {s.init.id for s in self.segments} | ({self._init.id} if self._init else set())
        for stale in [i for i in self.inits if i not in live]:
            del self.inits[stale]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- queries -------------------------------------------------------------------------------

    @property
    def has_segment(self) -> bool:
        return any(s.complete for s in self.segments)

    def last_position(self) -> tuple[int, int] | None:
        """(msn, part index) of the newest part, or ``None``."""
        for seg in reversed(self.segments):
            if seg.parts:
                return seg.msn, len(seg.parts) - 1
        return None

    def ready(self, msn: int, part: int | None) -> bool:
        """Whether the playlist holds segment ``msn`` (complete) or, with ``part``, that part of
        it, or anything later (RFC 8216bis 6.2.5.2)."""
        if self.ended:
            return True
        for seg in reversed(self.segments):
            if seg.msn > msn and seg.parts:
                return True
            if seg.msn == msn:
                return seg.complete if part is None else len(seg.parts) > part or seg.complete
        return False

    async def wait_ready(self, msn: int, part: int | None, within: float) -> bool:
        deadline = time.monotonic() + within
        while not self.ready(msn, part):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        return True

    async def wait_media(self, within: float) -> bool:
        """Wait until the playlist lists a complete segment (players, hls.js included, give up
        on a playlist without one), or it ended."""
        deadline = time.monotonic() + within
        while not self.has_segment and not self.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        return True

    def find_part(self, number: int) -> Part | None:
        for seg in reversed(self.segments):
            if seg.parts and seg.parts[0].number <= number <= seg.parts[-1].number:
                return seg.parts[number - seg.parts[0].number]
        return None

    async def wait_part(self, number: int, within: float) -> Part | None:
        """The part, waiting for it if it is the next one (the preload hint)."""
        deadline = time.monotonic() + within
        while True:
            found = self.find_part(number)
            if found is not None or self.ended or number > self._next_part:
                return found
            if number < self._next_part:
                return None  # gone from the window (or never kept)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    def segment(self, msn: int) -> Segment | None:
        for seg in self.segments:
            if seg.msn == msn and seg.complete:
                return seg
        return None

    @property
    def block_timeout(self) -> float:
        return BLOCK_TIMEOUT_FACTOR * self.target_duration

    # -- playlist ------------------------------------------------------------------------------

    def playlist(self, query: str = "") -> str:
        """The media playlist; ``query`` (e.g. ``?token=...``) is appended to every URI."""
        target = self.part_target
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{self.target_duration}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"PART-HOLD-BACK={PART_HOLD_BACK_PARTS * target:.3f}",
            f"#EXT-X-PART-INF:PART-TARGET={target:.3f}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.segments[0].msn if self.segments else 0}",
        ]
        if self.discontinuity_sequence:
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}")
        complete = [s for s in self.segments if s.complete]
        with_parts = {s.msn for s in complete[-PART_SEGMENTS:]}
        current_init: int | None = None
        for seg in self.segments:
            if seg.discontinuity and current_init is not None:
                lines.append("#EXT-X-DISCONTINUITY")
            if seg.init.id != current_init:
                lines.append(f'#EXT-X-MAP:URI="init-{seg.init.id}.mp4{query}"')
                current_init = seg.init.id
            stamp = seg.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{stamp}")
            if not seg.complete or seg.msn in with_parts:
                for p in seg.parts:
                    independent = ",INDEPENDENT=YES" if p.independent else ""
                    lines.append(
                        f'#EXT-X-PART:DURATION={p.duration:.3f},URI="part-{p.number}.m4s{query}"'
                        + independent
                    )
            if seg.complete:
                assert seg.duration is not None
                lines.append(f"#EXTINF:{seg.duration:.3f},")
                lines.append(f"seg-{seg.msn}.m4s{query}")
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        elif self.segments:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part-{self._next_part}.m4s{query}"')
        return "\n".join(lines) + "\n"
