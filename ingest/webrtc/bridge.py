"""Shared per-track preparation of hub media for WebRTC viewers.

One :class:`TrackBridge` per hub :class:`~ingest.media.hub.Track`, shared by every viewer of it:
it subscribes *once* to the source track, makes the media fit WebRTC and pushes the result into an
internal :class:`~ingest.media.hub.Track` (:attr:`TrackBridge.output`, never announced by the
hub). Viewers subscribe to that output, so they get the hub's semantics for free: a bounded queue
per viewer (a slow viewer drops to the next keyframe for itself only), the GOP cache for late
joiners, config changes in order with the units.

* :class:`VideoBridge`: H.264 without B-frames passes through untouched. The first unit with
  ``pts != dts`` (a reordered stream) switches the bridge to :class:`BFrameRemover`, for good
  (:attr:`TrackBridge.transcoding` becomes ``True``); browsers cannot play B-frames.
* :class:`AudioBridge`: AAC goes through :class:`AacToOpus` (exact 20 ms packets, 48 kHz pts);
  Opus passes through.

A video bridge that starts transcoding on the source's cached GOP (the first viewer arrives
seconds into a long GOP of a B-frame stream) does not transcode the whole backlog before the live
frame: the GOP's keyframe is encoded alone and pushed at once, the rest of the backlog decoded
without encoding, and only its newest picture encoded (see
:meth:`~ingest.media.codecs.transcode.BFrameRemover.catch_up`).

The video transcoder (~10 ms a frame) runs in a worker thread (``asyncio.to_thread``), one batch
at a time per bridge, never on the event loop. AAC → Opus takes ~0.14 ms of CPU per 21 ms stereo
48 kHz frame (3/4 of it libopus's encode), less than handing each frame to a thread and back (two
context switches and a GIL hand-over per frame measured ~1.5 % of a core), so it runs on the event
loop while the moving average of its CPU per frame (two ``thread_time`` calls, ~0.5 µs) stays
under :data:`AUDIO_INLINE_BUDGET_S`; past it, that bridge's transcoder moves to the worker thread
for good (one log line). A bridge that cannot keep up drops on its own bounded source reader (to
the next keyframe), so neither the publisher nor other bridges ever wait for it.

Output units keep the source's participant timeline (ms). Opus units carry ``pts`` in ms too:
AacToOpus stamps packets at ``input ms x 48`` plus multiples of 960 samples (20 ms), so the
conversion back to 48 kHz (``ms x 48``) is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ingest.errors import MediaError
from ingest.media.codecs.opus import OPUS_CHANNELS, OPUS_SAMPLE_RATE, AacToOpus, OpusPacket
from ingest.media.codecs.transcode import BFrameRemover
from ingest.media.hub import GOP_CACHE_MAX_UNITS, Reader, Track, TrackEndedError
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig
from ingest.webrtc.packing import PayloadCache

log = logging.getLogger("ingest.webrtc")

SOURCE_QUEUE_VIDEO = GOP_CACHE_MAX_UNITS + 1
"""A bridge's video source reader: room for the largest cached GOP (the hub gives a GOP only if
it fits), and as much slack for a slow transcoder before it drops to the next keyframe."""
SOURCE_QUEUE_AUDIO = 256
"""A bridge's audio source reader: ~5 s of AAC before the oldest frames are dropped."""
TRANSCODE_BIT_RATE_MIN = 500_000
TRANSCODE_BIT_RATE_MAX = 8_000_000
TRANSCODE_BITS_PER_PIXEL = 3
"""Bit rate of the B-frame-free re-encode: width x height x this (1280x720 → ~2.8 Mbit/s)."""

AUDIO_INLINE_BUDGET_S = 0.002
"""When the moving average of the CPU time an AAC → Opus frame takes on the event loop exceeds
this (normally ~0.14 ms; CPU time, so a busy machine's preemption does not count), the bridge's
transcoding moves to the worker thread (the loop must stay free for every other stream)."""
AUDIO_INLINE_SMOOTHING = 0.2
"""Weight of the newest frame in that moving average (which starts at 0)."""
AUDIO_INLINE_SPIKE_CAP = 3.0
"""A frame's CPU counts at most this many budgets in the moving average. One slow frame (the
encoder's set-up, a garbage collection landing in it: 10-60 ms were seen with ten viewers) then
cannot move a track off the loop alone, which cost ~1.5 % of a core for good; two slow frames in
a row, or a steady cost over the budget, do."""

OPUS_CONFIG = AudioConfig(
    codec="opus", record=b"", sample_rate=OPUS_SAMPLE_RATE, channels=OPUS_CHANNELS
)
"""The config of every Opus output track."""

_OPUS_TICKS_PER_MS = OPUS_SAMPLE_RATE // 1000
_AUDIO_INLINE_SPIKE_S = AUDIO_INLINE_SPIKE_CAP * AUDIO_INLINE_BUDGET_S

RemoverFactory = Callable[[VideoConfig], BFrameRemover]
OpusFactory = Callable[[AudioConfig], AacToOpus]
_Batch = list[tuple[MediaUnit, Any]]  # (unit, the source config it was pushed with)


def default_remover(config: VideoConfig) -> BFrameRemover:
    """A :class:`BFrameRemover` with a bit rate scaled to the picture size."""
    pixels = (config.width or 1280) * (config.height or 720)
    bit_rate = min(
        TRANSCODE_BIT_RATE_MAX, max(TRANSCODE_BIT_RATE_MIN, pixels * TRANSCODE_BITS_PER_PIXEL)
    )
    return BFrameRemover(config, bit_rate=bit_rate)


class TrackBridge:
    """Base of the per-track bridges: one source reader, one output track, one task."""

    kind: Kind
    source_queue: int
    """Queue length of the bridge's reader on the source track."""

    def __init__(self, source: Track, output_config: VideoConfig | AudioConfig) -> None:
        self.source = source
        self.output = Track(
            source.call_cid, source.participant_id, source.user_id, source.kind, output_config
        )
        """The internal track viewers subscribe to."""
        self.transcoding = False
        """Whether the media is re-encoded (B-frames removed, AAC → Opus) or passed through."""
        self.last_pts: int | None = None
        """pts (ms) of the newest unit pushed to :attr:`output` (the live edge)."""
        self.units_out = 0
        self._reader: Reader | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        mode = "transcoding" if self.transcoding else "passthrough"
        return f"<{type(self).__name__} {self.source!r} {mode}>"

    @property
    def ended(self) -> bool:
        return self.output.ended

    def start(self) -> None:
        """Subscribe to the source (from its cache, so late joiners start at once) and run."""
        if self._task is not None:
            raise RuntimeError(f"{self!r} already started")
        reader = self._reader = self.source.subscribe(
            max_queue=self.source_queue, from_gop=True, name=f"webrtc-bridge-{self.kind.value}"
        )
        cached = _queued(reader)  # the source's cache, taken now so the mode is known at once
        self._prepare(cached)
        self._task = asyncio.get_running_loop().create_task(
            self._run(reader, cached), name=f"{self!r}"
        )

    async def stop(self) -> None:
        """Stop reading the source and end :attr:`output` (its viewers drain, then end)."""
        if self._reader is not None:
            self._reader.close()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.output.end()

    def _prepare(self, cached: _Batch) -> None:
        """Look at the source's cached units before any viewer subscribes."""

    async def _run(self, reader: Reader, cached: _Batch) -> None:
        try:
            if cached:
                await self._handle(cached)
            while True:
                try:
                    batch = await _next_batch(reader)
                except TrackEndedError:
                    break
                await self._handle(batch)
            if not reader.closed:
                await self._finish()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%r failed; its viewers end", self)
        finally:
            reader.close()
            self.output.end()

    async def _handle(self, batch: _Batch) -> None:
        raise NotImplementedError

    async def _finish(self) -> None:
        """The source ended: flush what the transcoder holds."""

    def _push(self, units: Sequence[MediaUnit]) -> None:
        for unit in units:
            self.output.push(unit)
            self.last_pts = unit.pts if self.last_pts is None else max(self.last_pts, unit.pts)
            self.units_out += 1


async def _next_batch(reader: Reader) -> _Batch:
    """Wait for one unit, then take every unit already queued (one thread hop per batch)."""
    first = await reader.get()
    return [(first, reader.config), *_queued(reader)]


def _queued(reader: Reader) -> _Batch:
    """Every unit already queued (none if the track ended: the next ``get`` says so)."""
    batch: _Batch = []
    try:
        while (unit := reader.get_nowait()) is not None:
            batch.append((unit, reader.config))
    except TrackEndedError:
        pass
    return batch


class VideoBridge(TrackBridge):
    """H.264 for WebRTC: passthrough, or B-frames removed once a reordered unit shows up."""

    kind = Kind.VIDEO
    source_queue = SOURCE_QUEUE_VIDEO

    def __init__(self, source: Track, *, remover_factory: RemoverFactory | None = None) -> None:
        config = source.config
        if not isinstance(config, VideoConfig) or config.codec != "h264":
            raise MediaError(f"WebRTC viewers need H.264 video, {source!r} is {config.codec}")
        super().__init__(source, config)
        self.payloads = PayloadCache()
        """RTP payloads of the output units, cut once for every viewer (``packing``)."""
        self._factory = remover_factory or default_remover
        self._remover: BFrameRemover | None = None
        self._gop_pushed = 0  # units of the current source GOP already pushed (passthrough)
        self._await_key = False  # transcoding began mid-GOP: feed from the next keyframe
        self._backlog = False  # transcoding began on the source's cached GOP: catch up first

    @property
    def profile_level_id(self) -> str:
        """What viewers will receive: the source's, or the re-encode's (Constrained Baseline)."""
        config = self.output.config
        assert isinstance(config, VideoConfig)
        remover = self._remover
        if remover is not None and remover.config is None:
            return f"42e0{config.level or 0x1F:02x}"  # x264's baseline; its level not known yet
        return config.profile_level_id

    def _prepare(self, cached: _Batch) -> None:
        # the cache starts at a keyframe: if its GOP is reordered, transcode all of it
        first = next((u for u, _ in cached if u.pts != u.dts), None)
        if first is not None:
            self._switch(cached[0][1], first)
            self._backlog = cached[0][0].keyframe

    async def _handle(self, batch: _Batch) -> None:
        if not self.transcoding:
            batch = self._passthrough(batch)
            if not batch:
                return
        if self._await_key:
            while batch and not batch[0][0].keyframe:
                batch.pop(0)
            if not batch:
                return
            self._await_key = False
        remover = self._remover
        assert remover is not None
        units = [unit for unit, _ in batch]
        if self._backlog:
            self._backlog = False
            if units[0].keyframe and len(units) > 1:
                # the GOP's first picture now, then straight to the live edge
                self._publish(remover, await asyncio.to_thread(remover.first_picture, units[0]))
                self._publish(remover, await asyncio.to_thread(remover.catch_up, units))
                return
        out = await asyncio.to_thread(_feed_all, remover, units)
        self._publish(remover, out)

    async def _finish(self) -> None:
        remover = self._remover
        if remover is not None:
            out = await asyncio.to_thread(remover.flush)
            self._publish(remover, out)

    def _publish(self, remover: BFrameRemover, out: list[MediaUnit]) -> None:
        if remover.config is not None:
            self.output.config = remover.config
        self._push(out)

    def _passthrough(self, batch: _Batch) -> _Batch:
        """Push units until the first reordered one; return what the transcoder must take."""
        bad = next((i for i, (u, _) in enumerate(batch) if u.pts != u.dts), None)
        end = len(batch) if bad is None else bad
        # the reordered unit's GOP goes to the transcoder whole, if none of it was pushed yet
        if bad is not None:
            key = next((i for i in range(bad, -1, -1) if batch[i][0].keyframe), None)
            if key is not None:
                end = key
        for unit, config in batch[:end]:
            if unit.keyframe:
                self._gop_pushed = 0
            if config != self.output.config:
                self.output.config = config
            self._push([unit])
            self._gop_pushed += 1
        if bad is None:
            return []
        rest = batch[end:]
        self._await_key = not rest[0][0].keyframe and self._gop_pushed > 0
        self._switch(rest[0][1], batch[bad][0])
        return rest

    def _switch(self, config: Any, reordered: MediaUnit) -> None:
        """From now on, re-encode without B-frames."""
        assert isinstance(config, VideoConfig)
        self._remover = self._factory(config)
        self.transcoding = True
        log.info(
            "%s: H.264 with B-frames (pts %d != dts %d); re-encoding without them for WebRTC%s",
            self.source,
            reordered.pts,
            reordered.dts,
            " from the next keyframe" if self._await_key else "",
        )


def _feed_all(remover: BFrameRemover, units: list[MediaUnit]) -> list[MediaUnit]:
    """Worker thread: feed a batch to the remover."""
    out: list[MediaUnit] = []
    for unit in units:
        out += remover.feed(unit)
    return out


class AudioBridge(TrackBridge):
    """Opus for WebRTC: AAC transcoded to 20 ms Opus packets, Opus passed through."""

    kind = Kind.AUDIO
    source_queue = SOURCE_QUEUE_AUDIO

    def __init__(
        self,
        source: Track,
        *,
        opus_factory: OpusFactory | None = None,
        clock: Callable[[], float] = time.thread_time,
    ) -> None:
        config = source.config
        if not isinstance(config, AudioConfig) or config.codec not in ("aac", "opus"):
            raise MediaError(f"WebRTC viewers need AAC or Opus audio, {source!r} is {config.codec}")
        super().__init__(source, OPUS_CONFIG)
        self._factory = opus_factory or AacToOpus
        self._opus: AacToOpus | None = None
        self._opus_source: AudioConfig | None = None
        self._clock = clock
        self.inline = True
        """Whether AAC → Opus runs on the event loop (see :data:`AUDIO_INLINE_BUDGET_S`)."""
        self.inline_cost = 0.0
        """Moving average of the CPU seconds per inline frame."""
        if config.codec == "aac":
            self._opus, self._opus_source = self._factory(config), config
            self.transcoding = True

    async def _handle(self, batch: _Batch) -> None:
        config = batch[0][1]
        if len(batch) == 1:  # the usual case on a live stream: one frame per wake-up
            await self._handle_run(config, [batch[0][0]])
            return
        # split where the source config changes: each config gets its own transcoder
        start = 0
        for i in range(1, len(batch) + 1):
            if i == len(batch) or batch[i][1] != batch[start][1]:
                await self._handle_run(batch[start][1], [u for u, _ in batch[start:i]])
                start = i

    async def _handle_run(self, config: AudioConfig, units: list[MediaUnit]) -> None:
        if config.codec == "opus":
            await self._finish()
            self.transcoding = False
            self._push(units)
            return
        opus = self._opus
        if opus is None or (config is not self._opus_source and config != self._opus_source):
            await self._finish()
            opus = self._opus = self._factory(config)
            self._opus_source = config
            self.transcoding = True
        if not self.inline:
            self._push(await asyncio.to_thread(_transcode_all, opus, units))
            return
        clock = self._clock
        for i, unit in enumerate(units):  # one frame per call, each call measured
            started = clock()
            packets = opus.feed(unit)
            spent = clock() - started
            cost = self.inline_cost
            cost += AUDIO_INLINE_SMOOTHING * (min(spent, _AUDIO_INLINE_SPIKE_S) - cost)
            self.inline_cost = cost
            if packets:
                self._push([_opus_unit(p) for p in packets])
            if cost > AUDIO_INLINE_BUDGET_S:
                self.inline = False
                log.info(
                    "%s: AAC → Opus takes %.1f ms of CPU a frame (budget %.1f ms on the event "
                    "loop); transcoding in a worker thread from now on",
                    self.source,
                    cost * 1000,
                    AUDIO_INLINE_BUDGET_S * 1000,
                )
                rest = units[i + 1 :]
                if rest:
                    self._push(await asyncio.to_thread(_transcode_all, opus, rest))
                return

    async def _finish(self) -> None:
        opus, self._opus = self._opus, None
        if opus is not None:
            self._push(_flush(opus) if self.inline else await asyncio.to_thread(_flush, opus))


def _opus_unit(packet: OpusPacket) -> MediaUnit:
    ms = packet.pts // _OPUS_TICKS_PER_MS
    return MediaUnit(Kind.AUDIO, "opus", ms, ms, packet.data, keyframe=True)


def _transcode_all(opus: AacToOpus, units: list[MediaUnit]) -> list[MediaUnit]:
    """Worker thread: AAC units → Opus units."""
    return [_opus_unit(p) for unit in units for p in opus.feed(unit)]


def _flush(opus: AacToOpus) -> list[MediaUnit]:
    return [_opus_unit(p) for p in opus.flush()]


class ForwardBridge(TrackBridge):
    """Media of a WebRTC publisher (``config.forwarded``: units carry RTP payloads): passed on
    untouched, whatever the codec; viewers send the payloads as received."""

    def __init__(self, source: Track) -> None:
        super().__init__(source, source.config)
        self.kind = source.kind
        self.source_queue = SOURCE_QUEUE_VIDEO if source.kind is Kind.VIDEO else SOURCE_QUEUE_AUDIO
        # a viewer that needs a keyframe (it joined, or dropped) asks the publisher
        self.output.keyframe_requester = source.request_keyframe

    @property
    def codec(self) -> str:
        return self.output.config.codec

    async def _handle(self, batch: _Batch) -> None:
        for unit, config in batch:
            if config != self.output.config:
                self.output.config = config
            self._push([unit])


def bridge_for(
    track: Track,
    *,
    remover_factory: RemoverFactory | None = None,
    opus_factory: OpusFactory | None = None,
) -> TrackBridge:
    """The right (not yet started) bridge for ``track``."""
    if track.config.forwarded:
        return ForwardBridge(track)
    if track.kind is Kind.VIDEO:
        return VideoBridge(track, remover_factory=remover_factory)
    return AudioBridge(track, opus_factory=opus_factory)
