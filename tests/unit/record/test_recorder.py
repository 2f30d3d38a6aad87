"""Recordings: the local storage and the recorder, with a real full device (/dev/full)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.errors import InputError
from ingest.hls.segmenter import Init, Part
from ingest.record.recorder import Recorder
from ingest.record.storage import LocalStorage, RecordingInfo, RecordingWriter

CID = "livestream:show"
INIT = Init(1, b"INIT", None, None)


def part(number: int, *, independent: bool = False, init: Init = INIT) -> Part:
    return Part(number, 0, number, 0.25, independent, b"part%d" % number, init)


class Events:
    def __init__(self) -> None:
        self.started: list[RecordingInfo] = []
        self.ready: list[RecordingInfo] = []
        self.failed: list[str] = []
        self.changed = asyncio.Event()

    def recorder(self, storage: LocalStorage, **kw: int) -> Recorder:
        def note(box: list[object]) -> object:
            def add(item: object) -> None:
                box.append(item)
                self.changed.set()

            return add

        return Recorder(
            storage, CID, "sess1", where="the test dir",
            on_started=note(self.started), on_ready=note(self.ready),  # type: ignore[arg-type]
            on_failed=note(self.failed), **kw,  # type: ignore[arg-type]
        )  # fmt: skip


def test_storage_lists_and_deletes_and_keeps_ids_inside_its_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "rec")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    info = RecordingInfo("livestream:..", "sess1", "rec_a.mp4", start, None)
    writer = storage.create(info)
    writer.write(b"abc")
    writer.close()
    path = storage.local_path("livestream:..", "sess1", "rec_a.mp4")
    assert path is not None
    assert path.resolve().is_relative_to((tmp_path / "rec").resolve())
    assert path.parent.parent.name == "%2E%2E"
    # Killed before the end: no end time in the sidecar, the file's time stands in.
    listed = storage.list("livestream:..")
    assert [(r.filename, r.start_time, r.size) for r in listed] == [("rec_a.mp4", start, 3)]
    assert listed[0].end_time is not None
    end = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    storage.finish(RecordingInfo("livestream:..", "sess1", "rec_a.mp4", start, end))
    assert storage.list("livestream:..")[0].end_time == end
    with pytest.raises(InputError, match="file name"):
        storage.local_path("livestream:..", "sess1", "../../etc/passwd")
    with pytest.raises(InputError, match="session"):
        storage.delete("livestream:..", "..", "rec_a.mp4")
    assert storage.delete("livestream:..", "sess1", "rec_a.mp4")
    assert not storage.delete("livestream:..", "sess1", "rec_a.mp4")
    assert storage.list("livestream:..") == []


async def test_recorder_writes_from_a_keyframe_and_rotates_on_a_new_init(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    events = Events()
    rec = events.recorder(storage)
    rec.on_part(part(0))  # not independent: skipped
    rec.on_part(part(1, independent=True))
    rec.on_part(part(2))
    other = Init(2, b"INIT2", None, None)
    rec.on_part(part(3, independent=True, init=other))
    await rec.stop()
    assert len(events.started) == 2
    assert [r.filename for r in events.ready] == [r.filename for r in events.started]
    first, second = (storage.local_path(CID, "sess1", r.filename) for r in events.ready)
    assert first is not None
    assert second is not None
    assert first.read_bytes() == b"INITpart1part2"
    assert second.read_bytes() == b"INIT2part3"
    assert events.ready[0].size == len(b"INITpart1part2")
    assert events.failed == []
    rec.on_part(part(4, independent=True))  # after stop: ignored
    assert len(storage.list(CID)) == 2


class FullDisk(LocalStorage):
    """Files that land on /dev/full: every write fails with ENOSPC, as on a full disk."""

    def create(self, info: RecordingInfo) -> RecordingWriter:
        super().create(info).close()
        from ingest.record.storage import _FileWriter

        return _FileWriter(open("/dev/full", "wb"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_a_full_disk_fails_the_recording_with_what_to_fix(tmp_path: Path) -> None:
    events = Events()
    rec = events.recorder(FullDisk(tmp_path))
    rec.on_part(part(0, independent=True))
    await asyncio.wait_for(events.changed.wait(), 10)
    await rec.stop()
    assert len(events.failed) == 1
    assert "full" in events.failed[0]
    assert "free space" in events.failed[0]
    assert not rec.active
    assert events.ready == []


async def test_a_backlog_over_the_limit_fails_instead_of_growing(tmp_path: Path) -> None:
    events = Events()
    rec = events.recorder(LocalStorage(tmp_path), max_backlog=10)
    rec.on_part(part(0, independent=True))  # INIT + part0 = 9 bytes: fits
    rec.on_part(part(1))  # over the limit before the writer ran
    assert len(events.failed) == 1
    assert "too slow" in events.failed[0]
    await rec.stop()
