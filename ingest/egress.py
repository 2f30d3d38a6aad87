"""Egress: what a call produces beyond WebRTC, i.e. LL-HLS and recordings, fed from the hub.

The call service asks for HLS and recording through the :class:`Egress` interface (go_live,
start/stop broadcasting and recording, stop_live); the API reads the status, the playlist URL and
the recordings through it too. :class:`EgressManager` implements it:

* per call with HLS or recording on there is one :class:`Program`: one reader pair on the hub
  (video with its GOP cache, so output starts at once; audio of the same participant), one
  :class:`~ingest.hls.segmenter.Segmenter` (a remux: the source is never decoded), and the sinks
  (an :class:`~ingest.hls.stream.HlsStream` and/or a :class:`~ingest.record.recorder.Recorder`)
  sharing its parts: the recording holds exactly what HLS shows;
* with neither on there is no program: nothing is read, remuxed or written;
* the source is the first participant publishing video; when it leaves, the next one (if any)
  takes over, continuing the same timeline (no new playlist, no time jump). Several hosts in one
  picture (a composite) is not built yet: the others are not shown.

Events fire when things happen, not when asked: ``call.hls_broadcasting_started`` when the first
segment is playable, ``call.recording_started`` when the file exists with its first bytes,
``call.recording_ready`` when a file is closed, ``*_failed`` with the reason (and a log line).
A failing sink never touches the publisher or WebRTC viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import quote

from ingest.calls import events as ev
from ingest.errors import ConflictError, MediaError
from ingest.hls.composite import Compositor
from ingest.hls.segmenter import SUPPORTED_AUDIO, SUPPORTED_VIDEO, Init, Part, Segmenter
from ingest.hls.stream import HlsStream
from ingest.media.hub import (
    GOP_CACHE_MAX_UNITS,
    Hub,
    Reader,
    Track,
    TrackAdded,
    TrackEndedError,
)
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig
from ingest.record.recorder import Recorder
from ingest.record.storage import RecordingInfo, RecordingStorage

log = logging.getLogger("ingest.egress")

HLS_LINGER_S = 30.0
"""How long a stopped HLS stream stays downloadable (with ``EXT-X-ENDLIST``) for its viewers."""
FINISH_TIMEOUT_S = 2.0
"""At shutdown, how long the remux may take to cut its last part after the publishers left."""
AUDIO_QUEUE = 256
COMPOSITE_HOLD_FRAMES = 15
"""Composite video frames held back waiting for the mixed audio to reach them (0.5 s at 30 fps);
past that the picture goes on without it (audio stopped, or far behind)."""
"""The egress's audio reader queue (about 6 s of AAC)."""

HLS_STOPPED = "stopped"
HLS_STARTING = "starting"
"""Asked for; waiting for a publisher's video and the first complete segment."""
HLS_RUNNING = "running"
HLS_FAILED = "failed"


class Egress(Protocol):
    """What the call service and the API need from the egress (one implementation below)."""

    def start_hls(self, call_cid: str) -> None: ...
    async def stop_hls(self, call_cid: str) -> None: ...
    def hls_status(self, call_cid: str) -> str: ...
    def playlist_url(self, call_cid: str) -> str: ...
    def hls_stream(self, call_cid: str) -> HlsStream | None: ...
    def start_recording(self, call_cid: str, session_id: str) -> None: ...
    async def stop_recording(self, call_cid: str) -> None: ...
    def is_recording(self, call_cid: str) -> bool: ...
    async def recordings(self, call_cid: str) -> list[RecordingInfo]: ...
    def recording_url(self, info: RecordingInfo) -> str: ...
    def recording_json(self, info: RecordingInfo) -> dict[str, Any]: ...
    async def delete_recording(self, call_cid: str, session_id: str, filename: str) -> bool: ...
    async def recording_path(self, call_cid: str, session_id: str, filename: str) -> Any: ...
    async def stop(self) -> None: ...


def call_path(call_cid: str) -> str:
    call_type, _, call_id = call_cid.partition(":")
    return f"{quote(call_type, safe='')}/{quote(call_id, safe='')}"


class Program:
    """One call's remux and its sinks (see module doc)."""

    def __init__(self, manager: EgressManager, call_cid: str) -> None:
        self.manager = manager
        self.call_cid = call_cid
        self.segmenter = Segmenter(self)
        self.hls: HlsStream | None = None
        self.hls_announced = False
        self.recorder: Recorder | None = None
        self.failed: str | None = None
        self.source: str | None = None
        self._video: Reader | None = None
        self._audio: Reader | None = None
        self._current: list[Part] = []  # parts of the segment being built
        self._media: asyncio.Task[None] | None = None
        self.composite: CompositeFeed | None = None
        self.closed = False
        self._watcher = asyncio.create_task(self._watch(), name=f"egress {call_cid}")

    @property
    def needed(self) -> bool:
        return self.hls is not None or (self.recorder is not None and self.recorder.active)

    # -- sinks ---------------------------------------------------------------------------------

    def add_hls(self) -> HlsStream:
        hls = HlsStream()
        self.hls = hls
        self.hls_announced = False
        self._catch_up(hls.on_init, hls.on_part)
        return hls

    def add_recorder(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._catch_up(None, recorder.on_part)

    def _catch_up(
        self, on_init: Callable[[Init], None] | None, on_part: Callable[[Part], None]
    ) -> None:
        """A sink added mid-stream starts with the segment being built (from its keyframe)."""
        init = self.segmenter.init
        if init is not None and on_init is not None:
            on_init(init)
        for part in self._current:
            on_part(part)

    # -- segmenter sink ------------------------------------------------------------------------

    def on_init(self, init: Init) -> None:
        if self.hls is not None:
            self.hls.on_init(init)

    def on_part(self, part: Part) -> None:
        if part.index == 0:
            self._current = []
        self._current.append(part)
        if self.hls is not None:
            self.hls.on_part(part)
        if self.recorder is not None:
            self.recorder.on_part(part)

    def on_segment_end(self, msn: int, duration: float) -> None:
        self._current = []
        hls = self.hls
        if hls is not None:
            hls.on_segment_end(msn, duration)
            if not self.hls_announced and hls.has_segment:
                self.hls_announced = True
                self.manager.emit(
                    ev.HLS_STARTED,
                    self.call_cid,
                    hls_playlist_url=self.manager.playlist_url(self.call_cid),
                )

    # -- media ---------------------------------------------------------------------------------

    async def _watch(self) -> None:
        hub = self.manager.hub
        with hub.watch(self.call_cid) as watch:
            async for event in watch:
                if not isinstance(event, TrackAdded) or self.failed is not None:
                    continue
                if self.composite is not None:
                    self.composite.track_added(event.participant_id, event.kind, event.track)
                elif self.source is None and event.kind is Kind.VIDEO:
                    self._attach(event.participant_id)
                elif event.kind is Kind.VIDEO and self.manager.composite:
                    self._start_composite()
                elif event.participant_id == self.source and event.kind is Kind.AUDIO:
                    if self._audio is not None and self._audio.track is event.track:
                        continue  # read since _attach (the watch announces existing tracks too)
                    if self._audio is not None:
                        self._audio.close()
                    self._audio = event.track.subscribe(
                        max_queue=AUDIO_QUEUE, name=f"egress {self.call_cid}"
                    )

    def _attach(self, participant_id: str) -> None:
        hub = self.manager.hub
        video = hub.track(self.call_cid, participant_id, Kind.VIDEO)
        if video is None or video.ended:
            return
        audio_track = hub.track(self.call_cid, participant_id, Kind.AUDIO)
        remuxable = video.config.codec in SUPPORTED_VIDEO and (
            audio_track is None or audio_track.config.codec in SUPPORTED_AUDIO
        )
        if self.manager.composite and (len(self._video_publishers()) > 1 or not remuxable):
            self._start_composite()  # several hosts, or media HLS cannot carry as it is
            return
        self.source = participant_id
        self._video = video.subscribe(
            max_queue=GOP_CACHE_MAX_UNITS + 1, name=f"egress {self.call_cid}"
        )
        audio = hub.track(self.call_cid, participant_id, Kind.AUDIO)
        self._audio = (
            audio.subscribe(max_queue=AUDIO_QUEUE, name=f"egress {self.call_cid}")
            if audio is not None and not audio.ended
            else None
        )
        log.info("egress of %s follows participant %s", self.call_cid, participant_id)
        self._media = asyncio.create_task(self._pump(self._video), name=f"remux {self.call_cid}")

    async def _pump(self, video: Reader) -> None:
        seg = self.segmenter
        try:
            while True:
                try:
                    unit = await video.get()
                except TrackEndedError:
                    break
                audio = self._audio
                if audio is not None:
                    with contextlib.suppress(TrackEndedError):
                        while (a := audio.get_nowait()) is not None:
                            self._configure(video, audio)
                            seg.push_audio(a)
                self._configure(video, audio)
                seg.push_video(unit)
        except MediaError as e:
            self.fail(e.message)
        except Exception as e:  # a remux bug must not take the server down
            log.exception("egress of %s failed", self.call_cid)
            self.fail(f"internal error in the remux ({type(e).__name__}); see the server log")
        finally:
            video.close()
            audio = self._audio
            if audio is not None:
                if self.failed is None:  # what came before the end still belongs in
                    with contextlib.suppress(TrackEndedError, MediaError):
                        while (a := audio.get_nowait()) is not None:
                            seg.push_audio(a)
                audio.close()
                self._audio = None
            self.source = None
            if self.failed is None:
                seg.restart()
                if not self.closed and self.composite is None:
                    self._next_source()

    def _configure(self, video: Reader, audio: Reader | None) -> None:
        vconfig = video.config
        assert isinstance(vconfig, VideoConfig)
        aconfig: AudioConfig | None
        if audio is not None and not audio.closed:
            config = audio.config
            assert isinstance(config, AudioConfig)
            aconfig = config
        else:  # no audio (yet, or any more): keep what the segmenter has
            init = self.segmenter.init
            aconfig = init.audio if init is not None else None
        self.segmenter.configure(vconfig, aconfig)

    def _video_publishers(self) -> list[str]:
        return [
            p.participant_id
            for p in self.manager.hub.participants(self.call_cid)
            if p.video is not None and not p.video.ended
        ]

    def _start_composite(self) -> None:
        """More than one host publishes video: from now on this call's output is a composite
        (also when hosts leave again, so that the stream never changes codec settings twice)."""
        log.info("egress of %s composites its hosts from now on", self.call_cid)
        self.composite = CompositeFeed(self)
        media, self._media = self._media, None
        if media is not None:
            media.cancel()  # its cleanup cuts what the segmenter holds
        for p in self.manager.hub.participants(self.call_cid):
            for kind, track in p.tracks.items():
                self.composite.track_added(p.participant_id, kind, track)

    def _next_source(self) -> None:
        for p in self.manager.hub.participants(self.call_cid):
            if p.video is not None and not p.video.ended:
                self._attach(p.participant_id)
                return

    def fail(self, message: str) -> None:
        if self.failed is not None:
            return
        self.failed = message
        log.error("egress of %s failed: %s", self.call_cid, message)
        if self.hls is not None:
            self.hls.end()
            self.manager.emit(ev.HLS_FAILED, self.call_cid, error=message)
        if self.recorder is not None and self.recorder.active:
            self.recorder._fail(message)

    async def finish(self, within: float) -> None:
        """Let the remux cut what it holds once the source's tracks ended (server stopping)."""
        if (
            self._media is not None
            and self.manager.hub.track(self.call_cid, self.source or "", Kind.VIDEO) is None
        ):
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._media), within)

    async def close(self) -> None:
        self.closed = True
        self._watcher.cancel()
        if self.composite is not None:
            await self.composite.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher
        if self._media is not None:
            self._media.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._media
        for reader in (self._video, self._audio):
            if reader is not None:
                reader.close()


class CompositeFeed:
    """Feeds a :class:`~ingest.hls.composite.Compositor` (on its own worker thread) from every
    host's tracks and pushes its output, paced by the clock, into the program's segmenter."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"composite {program.call_cid}")
        self.loop = asyncio.get_running_loop()
        self.compositor: Compositor | None = None
        self.readers: list[Reader] = []
        self._tracks: set[Track] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._ready = self._call(Compositor)
        self._spawn(self._tick(), "composite tick")

    def _call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run on the worker thread; calls run one at a time, in the order made."""
        return self.loop.run_in_executor(self.executor, fn, *args)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"{name} {self.program.call_cid}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def track_added(self, participant_id: str, kind: Kind, track: Track) -> None:
        if track in self._tracks or track.ended:
            return  # already read (the watch also announces tracks the feed started with)
        self._tracks.add(track)
        reader = track.subscribe(
            max_queue=GOP_CACHE_MAX_UNITS + 1 if kind is Kind.VIDEO else AUDIO_QUEUE,
            name=f"composite {self.program.call_cid}",
        )
        self.readers.append(reader)
        self._spawn(self._read(participant_id, kind, reader), "composite read")

    async def _read(self, participant_id: str, kind: Kind, reader: Reader) -> None:
        compositor: Compositor = await self._ready
        if kind is Kind.VIDEO:
            await self._call(compositor.add_host, participant_id)
        try:
            async for unit in reader:
                if kind is Kind.VIDEO:
                    await self._call(compositor.video_in, participant_id, unit)
                else:
                    await self._call(compositor.audio_in, participant_id, unit, reader.config)
        finally:
            reader.close()
            self._tracks.discard(reader.track)
            if kind is Kind.VIDEO:
                self._call(compositor.remove_host, participant_id)

    async def _tick(self) -> None:
        program = self.program
        try:
            compositor: Compositor = await self._ready
            self.compositor = compositor
            seg = program.segmenter
            start = self.loop.time()
            frame = 0
            idle = True
            # The mix comes out behind the picture (its jitter buffer): a video frame waits here
            # until the audio has reached it, so that a part is never cut before its audio.
            held: deque[MediaUnit] = deque()
            audio_until: int | None = None
            while True:
                frame += 1
                await asyncio.sleep(max(0.0, start + frame / compositor.fps - self.loop.time()))
                if not compositor.hosts:
                    if not idle:
                        held.clear()
                        seg.restart()  # nobody left: end the segment, wait for hosts
                        idle = True
                    continue
                idle = False
                t_ms = int((self.loop.time() - start) * 1000)
                units = await self._call(compositor.render, t_ms)
                if compositor.video_config is not None:
                    seg.configure(compositor.video_config, compositor.audio_config)
                for unit in units:
                    if unit.kind is Kind.VIDEO:
                        held.append(unit)
                        continue
                    audio_until = unit.dts
                    if seg.init is not None:
                        seg.push_audio(unit)
                while held and (
                    compositor.audio_config is None
                    or (audio_until is not None and held[0].dts <= audio_until)
                    or len(held) > COMPOSITE_HOLD_FRAMES
                ):
                    seg.push_video(held.popleft())
        except MediaError as e:
            program.fail(e.message)
        except Exception as e:
            log.exception("composite of %s failed", program.call_cid)
            program.fail(f"internal error in the composite ({type(e).__name__}); see the log")

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for reader in self.readers:
            reader.close()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)


class EgressManager:
    """The :class:`Egress` of the server: programs per call, storage, events."""

    def __init__(
        self,
        hub: Hub,
        bus: ev.EventBus,
        storage: RecordingStorage,
        *,
        base_url: Callable[[], str],
        storage_label: str = "the recordings directory",
        composite: bool = True,
    ) -> None:
        self.hub = hub
        self.bus = bus
        self.storage = storage
        self.base_url = base_url
        self.storage_label = storage_label
        self.composite = composite
        """Composite several video hosts into one picture (else only the first is shown)."""
        self.programs: dict[str, Program] = {}
        self._stopped_hls: dict[str, HlsStream] = {}
        self._linger: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def emit(self, type_: str, call_cid: str, **fields: Any) -> None:
        self.bus.emit(type_, call_cid, **fields)

    def _program(self, call_cid: str) -> Program:
        program = self.programs.get(call_cid)
        if program is None or program.failed is not None:
            if program is not None:
                self._close_later(program)
            program = Program(self, call_cid)
            self.programs[call_cid] = program
        return program

    def _close_later(self, program: Program) -> None:
        task = asyncio.create_task(program.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _release(self, call_cid: str) -> None:
        program = self.programs.get(call_cid)
        if program is not None and not program.needed:
            del self.programs[call_cid]
            await program.close()

    # -- HLS -----------------------------------------------------------------------------------

    def start_hls(self, call_cid: str) -> None:
        program = self._program(call_cid)
        if program.hls is not None and not program.hls.ended:
            return
        handle = self._linger.pop(call_cid, None)
        if handle is not None:
            handle.cancel()
        self._stopped_hls.pop(call_cid, None)
        program.add_hls()
        log.info("HLS of %s requested", call_cid)

    async def stop_hls(self, call_cid: str) -> None:
        program = self.programs.get(call_cid)
        if program is None or program.hls is None:
            return
        hls = program.hls
        program.hls = None
        hls.end()
        self._stopped_hls[call_cid] = hls
        loop = asyncio.get_running_loop()
        self._linger[call_cid] = loop.call_later(HLS_LINGER_S, self._forget_hls, call_cid, hls)
        await self._release(call_cid)
        self.emit(ev.HLS_STOPPED, call_cid)

    def _forget_hls(self, call_cid: str, hls: HlsStream) -> None:
        if self._stopped_hls.get(call_cid) is hls:
            del self._stopped_hls[call_cid]
        self._linger.pop(call_cid, None)

    def hls_stream(self, call_cid: str) -> HlsStream | None:
        program = self.programs.get(call_cid)
        if program is not None and program.hls is not None:
            return program.hls
        return self._stopped_hls.get(call_cid)

    def hls_status(self, call_cid: str) -> str:
        program = self.programs.get(call_cid)
        if program is None or program.hls is None:
            return HLS_STOPPED
        if program.failed is not None:
            return HLS_FAILED
        return HLS_RUNNING if program.hls_announced else HLS_STARTING

    def playlist_url(self, call_cid: str) -> str:
        return f"{self.base_url().rstrip('/')}/hls/{call_path(call_cid)}/index.m3u8"

    # -- recording -----------------------------------------------------------------------------

    def start_recording(self, call_cid: str, session_id: str) -> None:
        program = self._program(call_cid)
        if program.recorder is not None and program.recorder.active:
            return
        session = session_id or "nosession"

        def ready(info: RecordingInfo) -> None:
            self.emit(ev.RECORDING_READY, call_cid, call_recording=self.recording_json(info))

        def failed(message: str) -> None:
            self.emit(ev.RECORDING_FAILED, call_cid, call_session_id=session, error=message)

        announced = False

        def started(info: RecordingInfo) -> None:
            nonlocal announced
            if not announced:  # once per recording, not per file
                announced = True
                self.emit(ev.RECORDING_STARTED, call_cid, call_session_id=session)

        recorder = Recorder(
            self.storage,
            call_cid,
            session,
            where=self.storage_label,
            on_started=started,
            on_ready=ready,
            on_failed=failed,
        )
        program.add_recorder(recorder)
        log.info("recording of %s requested", call_cid)

    async def stop_recording(self, call_cid: str) -> None:
        program = self.programs.get(call_cid)
        if program is None or program.recorder is None:
            return
        recorder = program.recorder
        program.recorder = None
        was_active = recorder.active
        stopping = recorder.stop()  # takes no more parts from here on
        if was_active:  # stopped, then ready once the file is closed
            self.emit(ev.RECORDING_STOPPED, call_cid, call_session_id=recorder.session_id)
        await stopping
        await self._release(call_cid)

    def is_recording(self, call_cid: str) -> bool:
        program = self.programs.get(call_cid)
        return program is not None and program.recorder is not None and program.recorder.active

    async def recordings(self, call_cid: str) -> list[RecordingInfo]:
        found = await asyncio.to_thread(self.storage.list, call_cid)
        program = self.programs.get(call_cid)
        current = program.recorder.current if program and program.recorder else None
        if current is None:
            return found
        return [current if r.filename == current.filename else r for r in found]

    def recording_url(self, info: RecordingInfo) -> str:
        return (
            f"{self.base_url().rstrip('/')}/recordings/{call_path(info.call_cid)}/"
            f"{info.session_id}/{info.filename}"
        )

    def recording_json(self, info: RecordingInfo) -> dict[str, Any]:
        return {
            "filename": info.filename,
            "url": self.recording_url(info),
            "start_time": info.start_time,
            "end_time": info.end_time,
            "session_id": info.session_id,
        }

    async def delete_recording(self, call_cid: str, session_id: str, filename: str) -> bool:
        program = self.programs.get(call_cid)
        recorder = program.recorder if program else None
        if recorder is not None and recorder.current and recorder.current.filename == filename:
            raise ConflictError(
                f"recording {filename} is still being written: stop the recording first"
            )
        return await asyncio.to_thread(self.storage.delete, call_cid, session_id, filename)

    async def recording_path(self, call_cid: str, session_id: str, filename: str) -> Any:
        return await asyncio.to_thread(self.storage.local_path, call_cid, session_id, filename)

    # -- shutdown ------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Close every program; recordings are finished (closed files, ``ready`` events)."""
        for call_cid, program in list(self.programs.items()):
            await program.finish(FINISH_TIMEOUT_S)
            if program.recorder is not None:
                await program.recorder.stop()
            if program.hls is not None:
                program.hls.end()
            await program.close()
            del self.programs[call_cid]
        for handle in self._linger.values():
            handle.cancel()
        self._linger.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
