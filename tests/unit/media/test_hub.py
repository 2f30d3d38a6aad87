"""The media hub: publishing, lookup, events, fan-out, GOP cache, slow readers, end."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random

import pytest

from ingest.errors import ConflictError
from ingest.media import hub as hub_module
from ingest.media.hub import (
    AUDIO_TAIL_MS,
    GOP_CACHE_MAX_BYTES,
    GOP_CACHE_MAX_UNITS,
    READER_QUEUE_DEFAULT,
    Hub,
    Track,
    TrackAdded,
    TrackEndedError,
    TrackRemoved,
    WatchClosedError,
)
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig

VCFG = VideoConfig(codec="h264", record=b"\x01avcc", width=1280, height=720)
ACFG = AudioConfig(codec="aac", record=b"\x12\x10", sample_rate=44100, channels=2)


def video(ts: int, key: bool = False, size: int = 10) -> MediaUnit:
    return MediaUnit(Kind.VIDEO, "h264", ts, ts, bytes(size), keyframe=key)


def audio(ts: int) -> MediaUnit:
    return MediaUnit(Kind.AUDIO, "aac", ts, ts, b"\x21\x00")


def video_track() -> Track:
    return Track("default:c1", "p1", "u1", Kind.VIDEO, VCFG)


def audio_track() -> Track:
    return Track("default:c1", "p1", "u1", Kind.AUDIO, ACFG)


def drain(reader: hub_module.Reader) -> list[MediaUnit]:
    out = []
    while (unit := reader.get_nowait()) is not None:
        out.append(unit)
    return out


def test_limits() -> None:
    assert GOP_CACHE_MAX_UNITS == 600
    assert GOP_CACHE_MAX_BYTES == 32 * 1024 * 1024
    assert AUDIO_TAIL_MS == 500
    assert READER_QUEUE_DEFAULT == 1024
    assert GOP_CACHE_MAX_UNITS < READER_QUEUE_DEFAULT  # a cached GOP fits a default reader


# -- hub: participants, lookup, events ---------------------------------------------------------


def test_publish_lookup_unpublish() -> None:
    hub = Hub()
    v = hub.publish("default:c1", "p1", "u1", Kind.VIDEO, VCFG)
    a = hub.publish("default:c1", "p1", "u1", Kind.AUDIO, ACFG)
    assert hub.track("default:c1", "p1", Kind.VIDEO) is v
    participant = hub.participant("default:c1", "p1")
    assert participant is not None
    assert (participant.video, participant.audio, participant.user_id) == (v, a, "u1")
    assert hub.participants("default:c1") == [participant]
    assert hub.tracks("default:c1") == [v, a]
    assert hub.track("default:other", "p1", Kind.VIDEO) is None

    hub.unpublish("default:c1", "p1", Kind.VIDEO)
    assert v.ended
    assert not a.ended
    assert hub.track("default:c1", "p1", Kind.VIDEO) is None
    a.end()  # the publisher may end its track directly
    assert hub.participant("default:c1", "p1") is None
    assert hub.participants("default:c1") == []
    hub.unpublish("default:c1", "p1")  # absent: no-op


def test_second_publisher_policy() -> None:
    hub = Hub()
    old = hub.publish("c", "p1", "u1", Kind.VIDEO, VCFG)
    with pytest.raises(ConflictError):
        hub.publish("c", "p1", "u1", Kind.VIDEO, VCFG)
    with pytest.raises(ConflictError):
        hub.publish("c", "p1", "someone-else", Kind.AUDIO, ACFG)
    watch = hub.watch("c", existing=False)
    new = hub.publish("c", "p1", "u1", Kind.VIDEO, VCFG, replace=True)
    assert old.ended
    assert not new.ended
    assert hub.track("c", "p1", Kind.VIDEO) is new
    events = [watch.get_nowait(), watch.get_nowait()]
    assert [type(e) for e in events] == [TrackRemoved, TrackAdded]
    assert [e.track for e in events if e is not None] == [old, new]


def test_config_must_match_kind() -> None:
    hub = Hub()
    with pytest.raises(TypeError):
        hub.publish("c", "p1", "u1", Kind.VIDEO, ACFG)
    track = hub.publish("c", "p1", "u1", Kind.AUDIO, ACFG)
    with pytest.raises(TypeError):
        track.config = VCFG
    with pytest.raises(ValueError, match="video unit"):
        track.push(video(0, key=True))


async def test_watch_sees_existing_then_changes() -> None:
    hub = Hub()
    v = hub.publish("c1", "p1", "u1", Kind.VIDEO, VCFG)
    hub.publish("c2", "p9", "u9", Kind.AUDIO, ACFG)
    watch = hub.watch("c1")
    everything = hub.watch()
    first = await watch.get()
    assert first == TrackAdded("c1", "p1", "u1", Kind.VIDEO, v)

    waiting = asyncio.create_task(watch.get())
    await asyncio.sleep(0)
    a = hub.publish("c1", "p1", "u1", Kind.AUDIO, ACFG)
    assert await waiting == TrackAdded("c1", "p1", "u1", Kind.AUDIO, a)

    hub.unpublish("c1", "p1")
    removed = [await watch.get(), await watch.get()]
    assert all(isinstance(e, TrackRemoved) for e in removed)
    assert {e.track for e in removed} == {v, a}
    assert watch.get_nowait() is None

    hub.close()
    kinds = [type(e).__name__ async for e in everything]  # ends once the hub closed
    assert kinds == ["TrackAdded"] * 3 + ["TrackRemoved"] * 3
    with pytest.raises(WatchClosedError):
        await watch.get()


async def test_closing_a_watch_wakes_its_getter() -> None:
    hub = Hub()
    watch = hub.watch()
    waiting = asyncio.create_task(watch.get())
    await asyncio.sleep(0)
    watch.close()
    with pytest.raises(WatchClosedError):
        await waiting
    hub.publish("c", "p", "u", Kind.VIDEO, VCFG)  # a closed watch gets nothing
    assert hub._watches == []


def test_events_are_frozen() -> None:
    track = video_track()
    event = TrackAdded("c", "p", "u", Kind.VIDEO, track)
    with pytest.raises(AttributeError):
        event.kind = Kind.AUDIO  # type: ignore[misc]


# -- track and readers -------------------------------------------------------------------------


async def test_reader_waits_and_wakes() -> None:
    track = audio_track()
    reader = track.subscribe()
    assert reader.get_nowait() is None
    waiting = asyncio.create_task(reader.get())
    await asyncio.sleep(0)
    assert reader._waiter is not None
    track.push(audio(0))
    assert (await waiting).dts == 0
    track.push(audio(23))
    track.push(audio(46))
    assert [u.dts for u in drain(reader)] == [23, 46]


async def test_cancelled_get_leaves_reader_usable() -> None:
    track = audio_track()
    reader = track.subscribe()
    waiting = asyncio.create_task(reader.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    track.push(audio(0))
    assert (await reader.get()).dts == 0


async def test_late_joiner_gets_gop_then_live_without_gap_or_duplicate() -> None:
    track = video_track()
    track.push(video(0))  # before any keyframe: not cached
    track.push(video(33, key=True))
    track.push(video(66))
    track.push(video(100, key=True))
    track.push(video(133))
    track.push(video(166))
    assert track.cache_start == 100
    reader = track.subscribe()
    track.push(video(200))
    assert [u.dts for u in drain(reader)] == [100, 133, 166, 200]
    assert reader.dropped == 0


def test_video_reader_without_gop_starts_at_next_keyframe() -> None:
    track = video_track()
    track.push(video(0, key=True))
    track.push(video(33))
    reader = track.subscribe(from_gop=False)
    fresh = video_track().subscribe()  # nothing cached yet
    track.push(video(66))
    track.push(video(100, key=True))
    track.push(video(133))
    assert [u.dts for u in drain(reader)] == [100, 133]
    assert (reader.dropped, reader.drops) == (0, 0)  # waiting to start is not dropping
    assert fresh.get_nowait() is None


def test_gop_cache_dropped_when_too_many_units() -> None:
    track = video_track()
    track.push(video(0, key=True))
    for i in range(1, GOP_CACHE_MAX_UNITS):
        track.push(video(i))
    assert track.cache_start == 0  # exactly at the bound: still cached
    track.push(video(GOP_CACHE_MAX_UNITS))
    assert track.cache_start is None
    reader = track.subscribe()
    track.push(video(GOP_CACHE_MAX_UNITS + 1))
    assert reader.get_nowait() is None  # no cache: waits for a keyframe
    track.push(video(GOP_CACHE_MAX_UNITS + 2, key=True))
    assert track.cache_start == GOP_CACHE_MAX_UNITS + 2
    assert [u.keyframe for u in drain(reader)] == [True]


def test_gop_cache_dropped_when_too_many_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "GOP_CACHE_MAX_BYTES", 100)
    track = video_track()
    track.push(video(0, key=True, size=60))
    track.push(video(33, size=40))
    assert track.cache_start == 0
    track.push(video(66, size=1))
    assert track.cache_start is None
    assert drain(track.subscribe()) == []


def test_gop_larger_than_reader_queue_is_not_given() -> None:
    track = video_track()
    track.push(video(0, key=True))
    track.push(video(33))
    track.push(video(66))
    assert drain(track.subscribe(max_queue=3)) == []
    assert len(drain(track.subscribe(max_queue=4))) == 3


def test_since_filters_cache() -> None:
    v, a = video_track(), audio_track()
    v.push(video(100, key=True))
    v.push(video(133))
    for ts in range(0, 400, 20):
        a.push(audio(ts))
    start = v.cache_start
    assert start == 100
    assert [u.pts for u in drain(a.subscribe(since=start))][:2] == [100, 120]
    assert len(drain(v.subscribe(since=100))) == 2
    assert drain(v.subscribe(since=101)) == []  # the GOP is whole or nothing


def test_audio_tail_keeps_last_half_second() -> None:
    track = audio_track()
    for ts in range(0, 2000, 20):
        track.push(audio(ts))
    got = [u.dts for u in drain(track.subscribe())]
    assert got[0] == 1980 - AUDIO_TAIL_MS
    assert got[-1] == 1980
    assert drain(track.subscribe(from_gop=False)) == []


def test_slow_video_reader_drops_to_next_keyframe(caplog: pytest.LogCaptureFixture) -> None:
    track = video_track()
    fast = track.subscribe(max_queue=100)
    slow = track.subscribe(max_queue=4, name="viewer-7")
    with caplog.at_level(logging.WARNING, logger="ingest.media"):
        track.push(video(0, key=True))
        for i in range(1, 11):
            track.push(video(i))
        assert (slow.dropped, slow.drops) == (11, 1)  # 4 queued + 1, then 6 more until a key
        assert slow.get_nowait() is None
        assert caplog.records == []  # the episode goes on: not logged yet
        track.push(video(11, key=True))
        track.push(video(12))
    assert [(u.dts, u.keyframe) for u in drain(slow)] == [(11, True), (12, False)]
    assert (slow.dropped, slow.drops) == (11, 1)
    assert len(caplog.records) == 1
    assert "viewer-7" in caplog.messages[0]
    assert "dropped 11 video units" in caplog.messages[0]
    assert [u.dts for u in drain(fast)] == list(range(13))
    assert (fast.dropped, fast.drops) == (0, 0)


def test_full_video_queue_resumes_at_an_arriving_keyframe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    track = video_track()
    reader = track.subscribe(max_queue=2)
    with caplog.at_level(logging.WARNING, logger="ingest.media"):
        track.push(video(0, key=True))
        track.push(video(1))
        track.push(video(2, key=True))  # full: the stale GOP goes, the reader resumes here
    assert [u.dts for u in drain(reader)] == [2]
    assert (reader.dropped, reader.drops, len(caplog.records)) == (2, 1, 1)


def test_slow_audio_reader_drops_oldest(caplog: pytest.LogCaptureFixture) -> None:
    track = audio_track()
    reader = track.subscribe(max_queue=3)
    with caplog.at_level(logging.WARNING, logger="ingest.media"):
        for ts in range(0, 100, 10):
            track.push(audio(ts))
        assert [u.dts for u in drain(reader)] == [70, 80, 90]
        assert (reader.dropped, reader.drops) == (7, 1)
        track.push(audio(100))  # room again: the episode ends with one summary line
        assert len(caplog.records) == 1
        assert "dropped 7 audio units" in caplog.messages[0]
        for ts in range(110, 160, 10):
            track.push(audio(ts))
    assert (reader.dropped, reader.drops) == (10, 2)
    reader.close()  # an open episode is summarised at close
    assert len(caplog.records) == 2


def test_config_change_reaches_readers_in_order() -> None:
    track = video_track()
    reader = track.subscribe()
    track.push(video(0, key=True))
    track.push(video(33))
    new = VideoConfig(codec="h264", record=b"\x01new", width=1920, height=1080)
    track.config = new
    assert track.generation == 1
    assert track.cache_start is None  # the old GOP is useless with the new config
    track.push(video(66, key=True))
    late = track.subscribe()
    assert (late.config, late.generation) == (new, 1)

    assert (reader.config, reader.generation) == (VCFG, 0)
    reader.get_nowait()
    reader.get_nowait()
    assert reader.config == VCFG  # still before the change
    unit = reader.get_nowait()
    assert unit is not None
    assert unit.dts == 66
    assert (reader.config, reader.generation) == (new, 1)

    track.config = new  # the same config again is no change
    assert track.generation == 1


async def test_end_drains_then_raises() -> None:
    hub = Hub()
    track = hub.publish("c", "p", "u", Kind.AUDIO, ACFG)
    queued = track.subscribe()
    waiting_reader = track.subscribe()
    track.push(audio(0))
    waiting_reader.get_nowait()
    waiting = asyncio.create_task(waiting_reader.get())
    await asyncio.sleep(0)
    track.end()
    track.end()  # idempotent
    with pytest.raises(TrackEndedError):
        await waiting
    assert (await queued.get()).dts == 0  # what was queued is still delivered
    with pytest.raises(TrackEndedError):
        await queued.get()
    with pytest.raises(TrackEndedError):
        queued.get_nowait()
    with pytest.raises(TrackEndedError):
        track.push(audio(20))
    with pytest.raises(TrackEndedError):
        await track.subscribe().get()
    assert hub.tracks("c") == []


async def test_async_iteration_stops_at_end() -> None:
    track = audio_track()
    reader = track.subscribe()
    for ts in (0, 20, 40):
        track.push(audio(ts))
    track.end()
    assert [u.dts async for u in reader] == [0, 20, 40]


async def test_close_detaches_and_wakes() -> None:
    track = audio_track()
    with track.subscribe() as reader:
        assert track.readers == 1
        waiting = asyncio.create_task(reader.get())
        await asyncio.sleep(0)
    assert track.readers == 0
    with pytest.raises(TrackEndedError, match="closed"):
        await waiting
    track.push(audio(0))
    with pytest.raises(TrackEndedError):
        reader.get_nowait()
    with pytest.raises(ValueError, match="max_queue"):
        track.subscribe(max_queue=0)


def test_video_reader_never_resumes_mid_gop() -> None:
    """Random pushes and reads: what a slow video reader gets is in order, and after any gap
    it restarts at a keyframe."""
    rnd = random.Random(7)
    track = video_track()
    readers = [track.subscribe(max_queue=rnd.randint(1, 30)) for _ in range(8)]
    got: list[list[MediaUnit]] = [[] for _ in readers]
    for ts in range(5000):
        track.push(video(ts, key=ts % 25 == 0))
        for reader, out in zip(readers, got, strict=True):
            if rnd.random() < 0.3:
                for _ in range(rnd.randint(0, 5)):
                    unit = reader.get_nowait()
                    if unit is not None:
                        out.append(unit)
    for reader, out in zip(readers, got, strict=True):
        out.extend(drain(reader))
        assert out[0].keyframe
        for prev, unit in itertools.pairwise(out):
            assert unit.dts > prev.dts
            if unit.dts != prev.dts + 1:
                assert unit.keyframe
        assert len(out) + reader.dropped <= 5000


async def test_fan_out_10k_units_to_50_readers() -> None:
    track = video_track()
    readers = [track.subscribe() for _ in range(50)]

    async def consume(reader: hub_module.Reader) -> list[int]:
        return [unit.dts async for unit in reader]

    tasks = [asyncio.create_task(consume(r)) for r in readers]
    for ts in range(10_000):
        track.push(video(ts, key=ts % 60 == 0))
        if ts % 100 == 99:
            await asyncio.sleep(0)  # let the readers run
    track.end()
    results = await asyncio.gather(*tasks)
    expected = list(range(10_000))
    assert all(r == expected for r in results)
    assert all(r.dropped == 0 for r in readers)
