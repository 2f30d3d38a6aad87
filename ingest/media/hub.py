"""The media hub: per call, participants publish tracks; sinks read them through bounded readers.

Any source (an RTMP publisher, later a WHIP browser host) connects to any sink (WebRTC viewers,
HLS, recorder) through a :class:`Track`. Everything runs on one asyncio loop, without threads:

* :meth:`Track.push` never blocks and never awaits. It costs O(readers): one deque append per
  reader, and a future is resolved only for a reader that is waiting in :meth:`Reader.get`.
* Each :class:`Reader` has a bounded queue. A slow reader drops, never stalls the publisher or
  other readers: video drops everything up to the next keyframe (the reader resumes at a keyframe,
  never at a P frame whose references were dropped); audio drops the oldest unit. Each drop
  episode is counted (:attr:`Reader.drops`, :attr:`Reader.dropped`) and logged once, on the
  ``ingest.media`` logger, when it ends (the reader resumes, closes, or the track ends).
* A video track caches the current GOP (every unit since the last keyframe) and an audio track a
  short tail, so a late joiner starts at a keyframe immediately, with audio beside it.
* Codec config changes travel in order with the units: a reader's :attr:`Reader.config` and
  :attr:`Reader.generation` change when it reaches the first unit pushed after the change.
* :meth:`Track.end` lets readers drain what is queued; then :meth:`Reader.get` raises
  :class:`TrackEndedError`.

Policy for a second publisher: publishing a kind a participant already publishes raises
:class:`~ingest.errors.ConflictError` unless ``replace=True``, which ends the old track first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType

from ingest.errors import ConflictError
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig

log = logging.getLogger("ingest.media")

READER_QUEUE_DEFAULT = 1024
"""Units a reader may have queued (shared references, not copies) before it drops."""
GOP_CACHE_MAX_UNITS = 600
"""A cached GOP longer than this (10 s at 60 fps) is dropped until the next keyframe."""
GOP_CACHE_MAX_BYTES = 32 * 1024 * 1024
"""A cached GOP larger than this (10 s at ~25 Mbit/s) is dropped until the next keyframe."""
AUDIO_TAIL_MS = 500
"""How much audio (by dts) a track keeps for late joiners."""
AUDIO_TAIL_MAX_UNITS = 64
"""Hard bound of the audio tail, should timestamps be bogus (500 ms of AAC is ~22 units)."""

TrackConfig = VideoConfig | AudioConfig


class TrackEndedError(Exception):
    """The track ended (publisher left) or the reader was closed; nothing more will come."""


class WatchClosedError(Exception):
    """The :class:`Watch` was closed (or the hub closed)."""


@dataclass(frozen=True, slots=True)
class TrackAdded:
    """A participant started publishing ``track`` in a call."""

    call_cid: str
    participant_id: str
    user_id: str
    kind: Kind
    track: Track


@dataclass(frozen=True, slots=True)
class TrackRemoved:
    """``track`` ended: its publisher left, unpublished or was replaced."""

    call_cid: str
    participant_id: str
    user_id: str
    kind: Kind
    track: Track


TrackEvent = TrackAdded | TrackRemoved


@dataclass(frozen=True, slots=True)
class _ConfigState:
    """A codec config and its generation; every queued unit points at the one it was pushed with."""

    generation: int
    config: TrackConfig


_Entry = tuple[MediaUnit, _ConfigState]


class Reader:
    """One consumer's bounded view of a :class:`Track`. Create with :meth:`Track.subscribe`."""

    __slots__ = (
        "_ended",
        "_episode",
        "_max",
        "_need_key",
        "_q",
        "_state",
        "_track",
        "_video",
        "_waiter",
        "closed",
        "dropped",
        "drops",
        "name",
    )

    def __init__(self, track: Track, max_queue: int, name: str) -> None:
        self._track = track
        self._max = max_queue
        self._video = track.kind is Kind.VIDEO
        self._q: deque[_Entry] = deque()
        self._state = track._state
        self._waiter: asyncio.Future[None] | None = None
        self._need_key = self._video  # video starts at a keyframe
        self._episode = 0  # units dropped in the current drop episode; 0 = not dropping
        self._ended = False
        self.name = name
        self.closed = False
        self.dropped = 0
        """Units this reader lost because its queue was full."""
        self.drops = 0
        """Drop episodes (each is logged once, with its count)."""

    # -- consumer side ------------------------------------------------------------------------

    @property
    def track(self) -> Track:
        return self._track

    @property
    def config(self) -> TrackConfig:
        """The codec config of the unit last returned (the track's config before the first)."""
        return self._state.config

    @property
    def generation(self) -> int:
        """Bumped each time :attr:`config` changes; compare to notice a new config."""
        return self._state.generation

    @property
    def queued(self) -> int:
        return len(self._q)

    async def get(self) -> MediaUnit:
        """The next unit; raises :class:`TrackEndedError` once the track ended and the queue is
        drained, or at once when the reader is closed."""
        while True:
            if self._q:
                return self._pop()
            if self._ended or self.closed:
                raise TrackEndedError(self._end_reason())
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def get_nowait(self) -> MediaUnit | None:
        """The next unit if one is queued, else ``None``; raises :class:`TrackEndedError` like
        :meth:`get`."""
        if self._q:
            return self._pop()
        if self._ended or self.closed:
            raise TrackEndedError(self._end_reason())
        return None

    def close(self) -> None:
        """Stop reading: drop the queue, detach from the track, wake a pending :meth:`get`."""
        if self.closed:
            return
        self.closed = True
        self._finish_episode("reader closed")
        self._q.clear()
        self._track._detach(self)
        self._wake()

    def __aiter__(self) -> AsyncIterator[MediaUnit]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[MediaUnit]:
        while True:
            try:
                unit = await self.get()
            except TrackEndedError:
                return
            yield unit

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Reader {self.name or hex(id(self))} of {self._track!r}>"

    def _pop(self) -> MediaUnit:
        unit, state = self._q.popleft()
        if state is not self._state:
            self._state = state
        return unit

    def _end_reason(self) -> str:
        return "reader closed" if self.closed else f"{self._track!r} ended"

    # -- publisher side (called by Track) -----------------------------------------------------

    def _offer(self, entry: _Entry, keyframe: bool) -> None:
        """Queue ``entry``, dropping by the kind's policy if the queue is full. Never blocks."""
        q = self._q
        if self._need_key:
            if not keyframe:
                if self._episode:
                    self.dropped += 1
                    self._episode += 1
                return
            self._need_key = False
            if self._episode:
                self._finish_episode("resumed at a keyframe")
        elif len(q) >= self._max:
            if not self._episode:
                self.drops += 1
            if self._video:
                lost = len(q) + (0 if keyframe else 1)
                q.clear()
                self.dropped += lost
                self._episode += lost
                if not keyframe:
                    self._need_key = True
                    self._track.request_keyframe()  # a publisher that can make one soon
                    return
                self._finish_episode("resumed at a keyframe")
            else:
                q.popleft()
                self.dropped += 1
                self._episode += 1
        elif self._episode:  # audio: room again, the episode is over
            self._finish_episode("caught up")
        q.append(entry)
        waiter = self._waiter
        if waiter is not None:  # (_wake, inline: this runs per unit and reader)
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _end(self) -> None:
        self._ended = True
        self._finish_episode("track ended")
        self._wake()

    def _finish_episode(self, how: str) -> None:
        if not self._episode:
            return
        log.warning(
            "slow reader %s on %r dropped %d %s units (queue of %d full); %s",
            self.name or hex(id(self)),
            self._track,
            self._episode,
            self._track.kind.value,
            self._max,
            how,
        )
        self._episode = 0


class Track:
    """One participant's audio or video: the publisher pushes units, readers receive them."""

    __slots__ = (
        "_audio_tail",
        "_ended",
        "_gop",
        "_gop_bytes",
        "_gop_valid",
        "_on_end",
        "_readers",
        "_state",
        "call_cid",
        "keyframe_requester",
        "kind",
        "participant_id",
        "units_pushed",
        "user_id",
    )

    def __init__(
        self,
        call_cid: str,
        participant_id: str,
        user_id: str,
        kind: Kind,
        config: TrackConfig,
        *,
        on_end: Callable[[Track], None] | None = None,
    ) -> None:
        _check_config(kind, config)
        self.call_cid = call_cid
        self.participant_id = participant_id
        self.user_id = user_id
        self.kind = kind
        self.units_pushed = 0
        self._state = _ConfigState(0, config)
        self._readers: list[Reader] = []  # replaced, never mutated: push may iterate safely
        self._ended = False
        self._on_end = on_end
        self._gop: list[_Entry] = []
        self._gop_bytes = 0
        self._gop_valid = False  # False until a keyframe, and after the cache overflowed
        self._audio_tail: deque[_Entry] = deque()
        self.keyframe_requester: Callable[[], None] | None = None
        """Set by a publisher that can make a keyframe on demand (WHIP: a PLI to the sender);
        :meth:`request_keyframe` calls it. The publisher merges and rate-limits requests."""

    def __repr__(self) -> str:
        return f"<Track {self.call_cid}/{self.participant_id}/{self.kind.value}>"

    # -- config -------------------------------------------------------------------------------

    @property
    def config(self) -> TrackConfig:
        """The current codec config. Assigning a different one starts a new generation: readers
        see it with the first unit pushed after it; the caches restart (GOP: at the next
        keyframe)."""
        return self._state.config

    @config.setter
    def config(self, config: TrackConfig) -> None:
        _check_config(self.kind, config)
        if config == self._state.config:
            return
        self._state = _ConfigState(self._state.generation + 1, config)
        self._gop.clear()
        self._gop_bytes = 0
        self._gop_valid = False
        self._audio_tail.clear()

    @property
    def generation(self) -> int:
        return self._state.generation

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def readers(self) -> int:
        return len(self._readers)

    @property
    def cache_start(self) -> int | None:
        """pts (ms) of the first cached unit (the GOP's keyframe for video), or ``None``."""
        if self.kind is Kind.VIDEO:
            return self._gop[0][0].pts if self._gop_valid and self._gop else None
        return self._audio_tail[0][0].pts if self._audio_tail else None

    # -- publisher side -----------------------------------------------------------------------

    def push(self, unit: MediaUnit) -> None:
        """Hand ``unit`` to every reader and to the cache. Never blocks, never awaits."""
        if self._ended:
            raise TrackEndedError(f"{self!r} ended")
        if unit.kind is not self.kind:
            raise ValueError(f"{unit.kind.value} unit pushed to {self!r}")
        self.units_pushed += 1
        entry = (unit, self._state)
        keyframe = unit.keyframe
        if self.kind is Kind.VIDEO:
            if keyframe:
                self._gop = [entry]
                self._gop_bytes = len(unit.data)
                self._gop_valid = True
            elif self._gop_valid:
                self._cache_video(entry, unit)
        else:  # the audio tail: the last AUDIO_TAIL_MS (the unit just added is never dropped)
            tail = self._audio_tail
            tail.append(entry)
            oldest = unit.dts - AUDIO_TAIL_MS
            while tail[0][0].dts < oldest or len(tail) > AUDIO_TAIL_MAX_UNITS:
                tail.popleft()
        for reader in self._readers:
            reader._offer(entry, keyframe)

    def request_keyframe(self) -> None:
        """A consumer needs a keyframe now (a new viewer, a viewer's PLI/FIR); no-op if the
        publisher cannot make one on demand (RTMP)."""
        requester = self.keyframe_requester
        if requester is not None and not self._ended:
            requester()

    def end(self) -> None:
        """End the track: readers drain their queues, then get :class:`TrackEndedError`.
        Idempotent; the hub removes the track and announces :class:`TrackRemoved`."""
        if self._ended:
            return
        self._ended = True
        readers, self._readers = self._readers, []
        for reader in readers:
            reader._end()
        self._gop.clear()
        self._audio_tail.clear()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self)

    def _cache_video(self, entry: _Entry, unit: MediaUnit) -> None:
        """Add a unit after the cached GOP's keyframe."""
        gop = self._gop
        gop.append(entry)
        self._gop_bytes += len(unit.data)
        if len(gop) > GOP_CACHE_MAX_UNITS or self._gop_bytes > GOP_CACHE_MAX_BYTES:
            log.info(
                "%r: GOP over %d units / %d bytes, not cached until the next keyframe",
                self,
                GOP_CACHE_MAX_UNITS,
                GOP_CACHE_MAX_BYTES,
            )
            self._gop = []
            self._gop_bytes = 0
            self._gop_valid = False

    # -- reader side --------------------------------------------------------------------------

    def subscribe(
        self,
        *,
        max_queue: int = READER_QUEUE_DEFAULT,
        from_gop: bool = True,
        since: int | None = None,
        name: str = "",
    ) -> Reader:
        """A new reader with a queue of ``max_queue`` units.

        With ``from_gop`` the reader first gets the cache (video: the current GOP, from its
        keyframe; audio: the last :data:`AUDIO_TAIL_MS`), then live units, with no gap or
        duplicate. ``since`` (ms) skips cached units with a pts before it; for video the GOP is
        given whole or not at all. A cached GOP that would not fit in ``max_queue`` is not given.
        A video reader without a cached GOP starts at the next keyframe (asked for through
        :meth:`request_keyframe`, as when a slow reader drops to the next keyframe). On an ended
        track the reader raises :class:`TrackEndedError` at once.
        """
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        reader = Reader(self, max_queue, name)
        if self._ended:
            reader._ended = True
            return reader
        if from_gop:
            cached: list[_Entry] | deque[_Entry]
            if self.kind is Kind.VIDEO:
                gop = self._gop if self._gop_valid else []
                fits = 0 < len(gop) < max_queue
                cached = gop if fits and (since is None or gop[0][0].pts >= since) else []
                if cached:
                    reader._need_key = False
            else:
                cached = self._audio_tail
                if since is not None:
                    cached = [e for e in cached if e[0].pts >= since]
            reader._q.extend(list(cached)[-max_queue:])
        self._readers = [*self._readers, reader]
        if reader._need_key:
            self.request_keyframe()  # it starts at the next keyframe: ask for one now
        return reader

    def _detach(self, reader: Reader) -> None:
        self._readers = [r for r in self._readers if r is not reader]


def _check_config(kind: Kind, config: TrackConfig) -> None:
    expected = VideoConfig if kind is Kind.VIDEO else AudioConfig
    if not isinstance(config, expected):
        raise TypeError(f"a {kind.value} track needs a {expected.__name__}, not {config!r}")


class Participant:
    """A publisher in a call (an RTMP encoder or a browser host) and its live tracks. Who it is
    lives on the call's roster (``CallService.participants``): ``participant_id`` is that entry's
    ``session_id``, and the hub keeps only the tracks (and the user id they carry)."""

    __slots__ = ("call_cid", "participant_id", "tracks", "user_id")

    def __init__(self, call_cid: str, participant_id: str, user_id: str) -> None:
        self.call_cid = call_cid
        self.participant_id = participant_id
        self.user_id = user_id
        self.tracks: dict[Kind, Track] = {}

    @property
    def audio(self) -> Track | None:
        return self.tracks.get(Kind.AUDIO)

    @property
    def video(self) -> Track | None:
        return self.tracks.get(Kind.VIDEO)

    def __repr__(self) -> str:
        return f"<Participant {self.call_cid}/{self.participant_id} user={self.user_id}>"


class Watch:
    """An async iterator of :data:`TrackEvent` for one call (or all). Create with
    :meth:`Hub.watch`. Events are rare, so the queue is unbounded."""

    __slots__ = ("_events", "_hub", "_waiter", "call_cid", "closed")

    def __init__(self, hub: Hub, call_cid: str | None) -> None:
        self._hub = hub
        self.call_cid = call_cid
        self.closed = False
        self._events: deque[TrackEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None

    async def get(self) -> TrackEvent:
        """The next event; raises :class:`WatchClosedError` once closed (queued events are
        still delivered after the hub closes, not after :meth:`close`)."""
        while True:
            if self._events:
                return self._events.popleft()
            if self.closed:
                raise WatchClosedError("watch closed")
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def get_nowait(self) -> TrackEvent | None:
        if self._events:
            return self._events.popleft()
        if self.closed:
            raise WatchClosedError("watch closed")
        return None

    def close(self) -> None:
        if self.closed:
            return
        self._events.clear()
        self._stop()
        self._hub._watches = [w for w in self._hub._watches if w is not self]

    def __aiter__(self) -> AsyncIterator[TrackEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TrackEvent]:
        while True:
            try:
                event = await self.get()
            except WatchClosedError:
                return
            yield event

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _put(self, event: TrackEvent) -> None:
        self._events.append(event)
        self._wake()

    def _stop(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)


class Hub:
    """All calls' publishing participants and their tracks; sinks find and watch them here."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[str, Participant]] = {}
        self._watches: list[Watch] = []

    def publish(
        self,
        call_cid: str,
        participant_id: str,
        user_id: str,
        kind: Kind,
        config: TrackConfig,
        *,
        replace: bool = False,
    ) -> Track:
        """Start a track of ``kind`` for the participant (created on its first track) and
        announce :class:`TrackAdded`. If the participant already publishes ``kind``: with
        ``replace`` the old track ends first (:class:`TrackRemoved`), else ``ConflictError``."""
        participants = self._calls.setdefault(call_cid, {})
        participant = participants.get(participant_id)
        if participant is None:
            participant = Participant(call_cid, participant_id, user_id)
            participants[participant_id] = participant
        elif participant.user_id != user_id:
            raise ConflictError(
                f"participant {participant_id} of call {call_cid} belongs to another user"
            )
        old = participant.tracks.get(kind)
        if old is not None:
            if not replace:
                raise ConflictError(
                    f"participant {participant_id} already publishes {kind.value} "
                    f"in call {call_cid}"
                )
            old.end()  # removes it (and the participant, if it was its last track)
            participants = self._calls.setdefault(call_cid, {})
            participant = participants.setdefault(participant_id, participant)
        track = Track(call_cid, participant_id, user_id, kind, config, on_end=self._removed)
        participant.tracks[kind] = track
        self._emit(TrackAdded(call_cid, participant_id, user_id, kind, track))
        return track

    def unpublish(self, call_cid: str, participant_id: str, kind: Kind | None = None) -> None:
        """End the participant's track of ``kind``, or all its tracks (it left). No-op if absent."""
        participant = self.participant(call_cid, participant_id)
        if participant is None:
            return
        for track_kind, track in list(participant.tracks.items()):
            if kind is None or track_kind is kind:
                track.end()

    def track(self, call_cid: str, participant_id: str, kind: Kind) -> Track | None:
        participant = self.participant(call_cid, participant_id)
        return None if participant is None else participant.tracks.get(kind)

    def participant(self, call_cid: str, participant_id: str) -> Participant | None:
        return self._calls.get(call_cid, {}).get(participant_id)

    def participants(self, call_cid: str) -> list[Participant]:
        return list(self._calls.get(call_cid, {}).values())

    def tracks(self, call_cid: str) -> list[Track]:
        return [t for p in self.participants(call_cid) for t in p.tracks.values()]

    def watch(self, call_cid: str | None = None, *, existing: bool = True) -> Watch:
        """Follow :class:`TrackAdded` / :class:`TrackRemoved` of one call (``None``: all calls).
        With ``existing`` the watch starts with a :class:`TrackAdded` per live track, so a sink
        created late misses nothing."""
        watch = Watch(self, call_cid)
        if existing:
            calls = self._calls if call_cid is None else {call_cid: self._calls.get(call_cid, {})}
            for participants in calls.values():
                for p in participants.values():
                    for kind, track in p.tracks.items():
                        watch._put(TrackAdded(p.call_cid, p.participant_id, p.user_id, kind, track))
        self._watches = [*self._watches, watch]
        return watch

    def close(self) -> None:
        """End every track and close every watch (after their pending events)."""
        for call_cid in list(self._calls):
            for participant_id in list(self._calls.get(call_cid, {})):
                self.unpublish(call_cid, participant_id)
        watches, self._watches = self._watches, []
        for watch in watches:
            watch._stop()

    def _removed(self, track: Track) -> None:
        participants = self._calls.get(track.call_cid, {})
        participant = participants.get(track.participant_id)
        if participant is None or participant.tracks.get(track.kind) is not track:
            return
        del participant.tracks[track.kind]
        if not participant.tracks:
            del participants[track.participant_id]
            if not participants:
                del self._calls[track.call_cid]
        self._emit(
            TrackRemoved(track.call_cid, track.participant_id, track.user_id, track.kind, track)
        )

    def _emit(self, event: TrackEvent) -> None:
        for watch in self._watches:
            if watch.call_cid is None or watch.call_cid == event.call_cid:
                watch._put(event)
