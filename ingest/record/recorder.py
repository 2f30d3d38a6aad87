"""A recording: the call's fMP4 parts (the same ones HLS serves) appended to one file.

The file is the init segment followed by moof+mdat fragments, each written and flushed as soon as
it is cut, so a process killed mid-show leaves a file that players read up to the last fragment.
Writes happen in a worker thread, in order, from a bounded backlog: a slow or full disk never
blocks the event loop (WebRTC, RTMP). Any storage error ends the recording as failed; the
egress turns that into ``call.recording_failed`` and a log line saying what to fix.

A recording starts at an independent part (a keyframe). A new init segment (the publisher
changed codec settings) cannot go into the same MP4 file: the file is finished and the
recording continues in a new file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from ingest.hls.segmenter import Init, Part
from ingest.record.storage import RecordingInfo, RecordingStorage, RecordingWriter

log = logging.getLogger("ingest.record")

MAX_BACKLOG_BYTES = 64 * 1024 * 1024
"""Bytes waiting to be written before the recording fails as too slow (~3 min at 3 Mbit/s)."""


def describe_os_error(e: OSError, where: str) -> str:
    """A storage error as a sentence that says what to fix."""
    if e.errno == errno.ENOSPC:
        return f"the disk holding {where} is full: free space or move data_dir to a larger disk"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {where} ({e.strerror}): make it writable for the server's user"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot create a directory in {where} ({e.strerror}): remove what is in the way"
    return f"cannot write to {where}: {e.strerror or e}"


class Recorder:
    """One running recording of a call session (possibly several files, see module doc)."""

    def __init__(
        self,
        storage: RecordingStorage,
        call_cid: str,
        session_id: str,
        *,
        where: str,
        on_started: Callable[[RecordingInfo], None],
        on_ready: Callable[[RecordingInfo], None],
        on_failed: Callable[[str], None],
        max_backlog: int = MAX_BACKLOG_BYTES,
    ) -> None:
        self.storage = storage
        self.call_cid = call_cid
        self.session_id = session_id
        self.where = where
        self.on_started = on_started
        self.on_ready = on_ready
        self.on_failed = on_failed
        self.max_backlog = max_backlog
        self.failed: str | None = None
        self.stopped = False
        self.current: RecordingInfo | None = None
        self.bytes_written = 0
        self._file_bytes = 0
        self._init: Init | None = None  # the init of the file being written
        self._queue: deque[Init | bytes | None] = deque()  # Init: new file; None: stop
        self._backlog = 0
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"record {call_cid}")

    @property
    def active(self) -> bool:
        return not self.stopped and self.failed is None

    # -- input (on the loop, never blocks) -----------------------------------------------------

    def on_part(self, part: Part) -> None:
        if not self.active:
            return
        if self._init is None or part.init.id != self._init.id:
            if not part.independent:
                return  # a file starts at a keyframe
            self._init = part.init
            self._put(part.init, len(part.init.data))
        self._put(part.data, len(part.data))

    def _put(self, item: Init | bytes, size: int) -> None:
        self._backlog += size
        if self._backlog > self.max_backlog:
            self._fail(
                f"the storage for {self.where} is too slow: {self._backlog} bytes waited to be "
                "written; use a faster disk"
            )
            return
        self._queue.append(item)
        self._wake.set()

    def stop(self) -> Awaitable[None]:
        """Take no more parts; the result, awaited, writes what is queued and closes the file
        (``on_ready`` fires for it)."""
        if not self.stopped:
            self.stopped = True
            self._queue.append(None)
            self._wake.set()
        return self._finished()

    async def _finished(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._task)

    async def cancel(self) -> None:
        self.stopped = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _fail(self, message: str) -> None:
        if self.failed is not None:
            return
        self.failed = message
        self._queue.clear()
        self._wake.set()
        log.error("recording of %s failed: %s", self.call_cid, message)
        self.on_failed(message)

    # -- writer --------------------------------------------------------------------------------

    async def _run(self) -> None:
        writer: RecordingWriter | None = None
        try:
            while True:
                while not self._queue:
                    if self.failed is not None:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                item = self._queue.popleft()
                if item is None:
                    return
                if isinstance(item, Init):
                    self._backlog -= len(item.data)
                    if writer is not None:
                        await self._close(writer)
                        writer = None
                    writer = await self._open(item)
                    if writer is None:
                        return
                    continue
                self._backlog -= len(item)
                if writer is None:
                    continue
                try:
                    await asyncio.to_thread(writer.write, item)
                except OSError as e:
                    self._fail(describe_os_error(e, self.where))
                    return
                self.bytes_written += len(item)
                self._file_bytes += len(item)
        finally:
            if writer is not None:
                await self._close(writer)

    async def _open(self, init: Init) -> RecordingWriter | None:
        now = datetime.now(UTC)
        name = f"rec_{now:%Y%m%dT%H%M%SZ}_{secrets.token_hex(3)}.mp4"
        info = RecordingInfo(self.call_cid, self.session_id, name, now, None)
        try:
            writer = await asyncio.to_thread(self.storage.create, info)
            await asyncio.to_thread(writer.write, init.data)
        except OSError as e:
            self._fail(describe_os_error(e, self.where))
            return None
        self.current = info
        self._file_bytes = len(init.data)
        self.bytes_written += len(init.data)
        log.info("recording %s to %s/%s", self.call_cid, self.session_id, name)
        self.on_started(info)
        return writer

    async def _close(self, writer: RecordingWriter) -> None:
        info = self.current
        self.current = None
        try:
            await asyncio.to_thread(writer.close)
            if info is not None:
                info = RecordingInfo(
                    info.call_cid,
                    info.session_id,
                    info.filename,
                    info.start_time,
                    datetime.now(UTC),
                    self._file_bytes,
                )
                await asyncio.to_thread(self.storage.finish, info)
        except OSError as e:
            self._fail(describe_os_error(e, self.where))
            return
        if info is not None and self.failed is None:
            self.on_ready(info)
