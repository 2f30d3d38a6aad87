"""Where recordings are kept: one interface, a local-directory implementation.

A recording is one fragmented MP4 file, identified by (call cid, session id, file name). The
storage is called from a worker thread (its methods block), never on the event loop. An object
storage (S3 multipart upload of the fragments) would implement the same :class:`RecordingStorage`.

Local layout: ``<root>/<call type>/<call id>/<session id>/<file>.mp4`` with a JSON sidecar
``<file>.mp4.json`` holding the start and end time (written at start, rewritten at the end; a
recording whose process was killed has no end time there and reports its file's mtime).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote

from ingest.errors import InputError

FILENAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+\.mp4$")
SESSION_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    call_cid: str
    session_id: str
    filename: str
    start_time: datetime
    end_time: datetime | None  # None while it is being written
    size: int = 0


class RecordingWriter(Protocol):
    def write(self, data: bytes) -> None:
        """Append and flush (so that a killed process leaves everything written so far)."""

    def close(self) -> None: ...


class RecordingStorage(Protocol):
    def create(self, info: RecordingInfo) -> RecordingWriter: ...

    def finish(self, info: RecordingInfo) -> None:
        """Record the end time of a recording whose writer is closed."""

    def list(self, call_cid: str) -> list[RecordingInfo]: ...

    def local_path(self, call_cid: str, session_id: str, filename: str) -> Path | None:
        """The file to serve for a download, or ``None`` if there is no such recording."""

    def delete(self, call_cid: str, session_id: str, filename: str) -> bool: ...


def check_names(session_id: str, filename: str) -> None:
    if not SESSION_PATTERN.match(session_id):
        raise InputError(f"recording session '{session_id[:80]}' is not a valid session id")
    if not FILENAME_PATTERN.match(filename):
        raise InputError(
            f"recording file name '{filename[:80]}' is not valid: use a filename from "
            "GET .../recordings"
        )


def _safe(part: str) -> str:
    """A path component for an id (call ids may hold '.', '%', ...: never a traversal)."""
    return quote(part, safe="").replace(".", "%2E")


class _FileWriter:
    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class LocalStorage:
    """Recordings under one directory (the data directory's ``recordings``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, call_cid: str) -> Path:
        call_type, _, call_id = call_cid.partition(":")
        return self.root / _safe(call_type) / _safe(call_id)

    def _path(self, call_cid: str, session_id: str, filename: str) -> Path:
        check_names(session_id, filename)
        return self._dir(call_cid) / session_id / filename

    def create(self, info: RecordingInfo) -> RecordingWriter:
        path = self._path(info.call_cid, info.session_id, info.filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("xb")
        self._write_sidecar(path, info)
        return _FileWriter(f)

    def finish(self, info: RecordingInfo) -> None:
        self._write_sidecar(self._path(info.call_cid, info.session_id, info.filename), info)

    def _write_sidecar(self, path: Path, info: RecordingInfo) -> None:
        meta = {
            "start_time": info.start_time.isoformat(),
            "end_time": info.end_time.isoformat() if info.end_time else None,
        }
        side = path.with_name(path.name + SIDECAR_SUFFIX)
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, side)

    def list(self, call_cid: str) -> list[RecordingInfo]:
        base = self._dir(call_cid)
        out: list[RecordingInfo] = []
        if not base.is_dir():
            return out
        for path in sorted(base.glob("*/*.mp4")):
            session_id = path.parent.name
            if not SESSION_PATTERN.match(session_id) or not FILENAME_PATTERN.match(path.name):
                continue
            stat = path.stat()
            mtime = datetime.fromtimestamp(stat.st_mtime, UTC)
            start, end = mtime, mtime
            try:
                meta = json.loads(path.with_name(path.name + SIDECAR_SUFFIX).read_text())
                start = datetime.fromisoformat(meta["start_time"])
                end = datetime.fromisoformat(meta["end_time"]) if meta.get("end_time") else mtime
            except (OSError, ValueError, KeyError, TypeError):
                pass  # no readable sidecar: the file's time is the best we know
            out.append(RecordingInfo(call_cid, session_id, path.name, start, end, stat.st_size))
        out.sort(key=lambda r: r.start_time)
        return out

    def local_path(self, call_cid: str, session_id: str, filename: str) -> Path | None:
        path = self._path(call_cid, session_id, filename)
        return path if path.is_file() else None

    def delete(self, call_cid: str, session_id: str, filename: str) -> bool:
        path = self._path(call_cid, session_id, filename)
        if not path.is_file():
            return False
        path.unlink()
        path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
        return True
