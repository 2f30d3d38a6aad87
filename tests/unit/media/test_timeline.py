"""RTMP 32-bit timestamps → participant timeline: unwrap, jitter, discontinuities, rebase."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.media.timeline import MAX_BACKWARD_JUMP_MS, WRAP, Timeline


def test_fresh_timeline_is_identity() -> None:
    tl = Timeline()
    assert tl.end is None
    assert [tl.map(t) for t in (0, 23, 33, 46, 66)] == [0, 23, 33, 46, 66]
    assert tl.end == 66


def test_wrap_crossing() -> None:
    tl = Timeline()
    assert tl.map(WRAP - 20) == WRAP - 20
    assert tl.map(WRAP - 1) == WRAP - 1
    assert tl.map(5) == WRAP + 5
    assert tl.map(WRAP - 3) == WRAP - 3  # interleaved track still before the wrap
    assert tl.map(40) == WRAP + 40
    assert tl.map(WRAP + 60) == WRAP + 60  # callers may pass unmasked values


def test_many_wraps_are_exact() -> None:
    tl = Timeline()
    t = 0
    step = 59_999  # below MAX_FORWARD_JUMP_MS
    for _ in range(3 * WRAP // step):
        t += step
        assert tl.map(t % WRAP) == t


@given(
    st.lists(st.integers(min_value=0, max_value=5_000), min_size=1, max_size=200),
    st.integers(min_value=0, max_value=WRAP - 1),
)
def test_unwrap_matches_running_sum(steps: list[int], start: int) -> None:
    tl = Timeline()
    t = start
    assert tl.map(t) == t
    for step in steps:
        t += step
        assert tl.map(t % WRAP) == t


def test_small_backwards_jitter_stays_put() -> None:
    tl = Timeline()
    assert tl.map(1000) == 1000
    assert tl.map(990) == 990  # audio slightly behind video
    assert tl.map(1033) == 1033
    assert tl.map(1010) == 1010
    assert tl.discontinuities == 0


def test_jitter_before_zero_is_clamped_not_wrapped() -> None:
    tl = Timeline()
    assert tl.map(10) == 10
    assert tl.map(WRAP - 5) == 0  # 15 ms back, i.e. "-5": never negative
    assert tl.map(20) == 20


def test_encoder_clock_reset_is_a_discontinuity() -> None:
    tl = Timeline()
    for t in range(0, 600_000, 1000):
        tl.map(t)
    assert tl.map(598_500) == 598_500  # jitter
    assert tl.map(0) == 599_000 + 1  # restarted clock: continue after the furthest point
    assert tl.map(40) == 599_041
    assert tl.discontinuities == 1


def test_forward_jump_is_a_discontinuity() -> None:
    tl = Timeline()
    tl.map(1000)
    assert tl.map(1000 + 3_600_000) == 1001
    assert tl.map(1000 + 3_600_033) == 1034


def test_backward_limit() -> None:
    tl = Timeline()
    tl.map(100_000)
    assert tl.map(100_000 - MAX_BACKWARD_JUMP_MS) == 100_000 - MAX_BACKWARD_JUMP_MS
    assert tl.discontinuities == 0


def test_reconnect_continues_after_previous_end() -> None:
    first = Timeline()
    for t in (0, 33, 66, 100):
        first.map(t)
    assert first.end == 100
    second = Timeline(previous_end=first.end)
    assert second.map(0) == 101  # new encoder starts again at 0
    assert second.map(33) == 134
    third = Timeline()
    third.continue_from(5000, gap=20)
    assert third.map(1_000_000) == 5020  # arbitrary encoder origin
    assert third.map(1_000_023) == 5043


def test_reconnect_keeps_audio_video_offsets_and_never_overlaps() -> None:
    tl = Timeline(previous_end=10_000)
    video = tl.map(500)  # first message: video at 500
    audio = tl.map(480)  # audio 20 ms earlier: would overlap the previous connection
    assert video == 10_001
    assert audio == 10_001  # clamped to previous_end + 1
    assert tl.map(523) - tl.map(533) == -10  # later offsets are exact
    assert tl.map(533) == 10_034


def test_continue_from_mid_connection() -> None:
    tl = Timeline()
    tl.map(1000)
    tl.continue_from(50_000)
    assert tl.map(7) == 50_001
    assert tl.end == 50_001
    with pytest.raises(ValueError, match="gap"):
        tl.continue_from(1, gap=0)


def test_call_alias() -> None:
    tl = Timeline()
    assert tl(42) == 42
    assert tl.started
