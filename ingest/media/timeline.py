"""RTMP timestamps (32-bit ms, wrapping) → the participant's timeline (64-bit ms).

One :class:`Timeline` per publisher connection, shared by its audio and video so that their
relative offsets are kept exactly. Integer arithmetic only: no drift.

* **Unwrap**: each timestamp is placed at the 64-bit value nearest to the latest one seen
  (signed 32-bit difference), so a step across ``2**32`` continues forward while audio/video
  interleaving that goes slightly back stays slightly back.
* **Discontinuities**: a step back of more than :data:`MAX_BACKWARD_JUMP_MS` or forward of more
  than :data:`MAX_FORWARD_JUMP_MS` (an encoder that restarted its clock) is not a wrap: the
  timeline continues ``gap`` ms after the furthest point reached instead.
* **Rebase**: a connection that continues a previous one (``previous_end``) maps its first
  timestamp to ``previous_end + gap`` and never goes back before ``previous_end + 1``.
"""

from __future__ import annotations

WRAP = 1 << 32
HALF = 1 << 31
MAX_BACKWARD_JUMP_MS = 10_000  # more than any A/V interleaving jitter seen from encoders
MAX_FORWARD_JUMP_MS = 60_000  # an RTMP publisher never pauses for a minute between messages
RECONNECT_GAP_MS = 1


class Timeline:
    """Maps RTMP message timestamps of one connection to participant milliseconds."""

    def __init__(self, previous_end: int | None = None, gap: int = RECONNECT_GAP_MS) -> None:
        """``previous_end``: the last dts of the participant's previous connection, if any."""
        self._gap = gap
        self._anchor: int | None = None
        self._floor = 0
        self._ref: int | None = None  # furthest unwrapped timestamp seen (64-bit)
        self._offset = 0
        self._end: int | None = None
        self.discontinuities = 0
        if previous_end is not None:
            self.continue_from(previous_end, gap)

    def continue_from(self, previous_end: int, gap: int = RECONNECT_GAP_MS) -> None:
        """Make the next timestamp map to ``previous_end + gap`` (a reconnecting publisher).

        Later timestamps keep their distance to that one; none maps before
        ``previous_end + 1``.
        """
        if gap < 1:
            raise ValueError(f"gap must be at least 1 ms, got {gap}")
        self._gap = gap
        self._anchor = previous_end + gap
        self._floor = previous_end + 1
        self._ref = None
        if self._end is not None:
            self._end = max(self._end, previous_end)
        else:
            self._end = previous_end

    @property
    def end(self) -> int | None:
        """The furthest participant time mapped so far (what the next connection continues
        from), or the ``previous_end`` given, or ``None``."""
        return self._end

    @property
    def started(self) -> bool:
        return self._ref is not None

    def map(self, timestamp: int) -> int:
        """The participant time of an RTMP timestamp (taken mod ``2**32``)."""
        raw = timestamp % WRAP
        if self._ref is None:
            ext = raw
            self._ref = ext
            self._offset = (self._anchor - ext) if self._anchor is not None else 0
        else:
            delta = ((raw - self._ref) + HALF) % WRAP - HALF
            ext = self._ref + delta
            if delta < -MAX_BACKWARD_JUMP_MS or delta > MAX_FORWARD_JUMP_MS:
                end = self._end if self._end is not None else self._ref + self._offset
                self._offset = end + self._gap - ext
                self._ref = ext
                self.discontinuities += 1
            elif delta > 0:
                self._ref = ext
        out = max(ext + self._offset, self._floor)
        if self._end is None or out > self._end:
            self._end = out
        return out

    __call__ = map
