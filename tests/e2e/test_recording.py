"""Recording end to end: ffmpeg pushes RTMP, the call is recorded to a fragmented MP4 that
ffprobe reads to the end, also after ``kill -9`` of the server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from ingest.app import App
from ingest.calls.tokens import create_token
from tests.conftest import API_SECRET
from tests.e2e.egress_helpers import CID, Api, ffprobe, open_api, wait_event
from tests.e2e.media import MEDIA_DIR, finish, make_flv, push

pytestmark = pytest.mark.e2e

PUSHED_S = 6.0


async def decode_errors(path: Path) -> tuple[int, str]:
    """Decode every frame (``-xerror``: stop at the first error); (exit code, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


async def test_recording_matches_the_pushed_duration_and_downloads(
    server: App, tmp_path: Path
) -> None:
    src = make_flv(MEDIA_DIR / "rec-bf2-g30-6s.flv", seconds=PUSHED_S, gop=30, bframes=2)
    assert server.egress is not None
    async with open_api(server) as api:
        url = await api.setup()
        with server.bus.subscribe(CID) as sub:
            await api.go_live(start_recording=True)
            assert not (server.settings.data_dir / "recordings").exists()  # nothing yet
            proc = await push(url, src, realtime=True)
            await wait_event(sub, "call.recording_started")
            assert server.egress.is_recording(CID)
            code, err = await finish(proc)
            assert code == 0, err
            await api.stop_live()
            await wait_event(sub, "call.recording_stopped")
            ready = await wait_event(sub, "call.recording_ready")
        rec = ready["call_recording"]
        assert set(rec) >= {"filename", "url", "start_time", "end_time"}
        listed = await server.egress.recordings(CID)
        assert [r.filename for r in listed] == [rec["filename"]]
        assert listed[0].end_time is not None

        async with httpx.AsyncClient(timeout=30) as http:
            refused = await http.get(rec["url"])
            assert refused.status_code == 401, refused.text
            token = create_token(API_SECRET, "viewer")
            got = await http.get(rec["url"], headers={"Authorization": token})
            assert got.status_code == 200, got.text
        path = tmp_path / rec["filename"]
        path.write_bytes(got.content)
        info = await ffprobe("-show_streams", "-show_format", str(path))
        assert sorted(s["codec_name"] for s in info["streams"]) == ["aac", "h264"]
        duration = float(info["format"]["duration"])
        assert abs(duration - PUSHED_S) <= 0.05 * PUSHED_S, duration
        code, err = await decode_errors(path)
        assert code == 0, err
        assert err == "", err
        packets = await ffprobe(
            "-select_streams", "v", "-count_packets",
            "-show_entries", "stream=nb_read_packets", str(path),
        )  # fmt: skip
        assert int(packets["streams"][0]["nb_read_packets"]) == round(PUSHED_S * 30)
        audio = await ffprobe(
            "-select_streams", "a", "-count_packets",
            "-show_entries", "stream=nb_read_packets", str(path),
        )  # fmt: skip
        pushed = await ffprobe(
            "-select_streams", "a", "-count_packets",
            "-show_entries", "stream=nb_read_packets", str(src),
        )  # fmt: skip
        n_rec = int(audio["streams"][0]["nb_read_packets"])
        n_src = int(pushed["streams"][0]["nb_read_packets"])
        assert n_src - 3 <= n_rec <= n_src, (n_rec, n_src)  # each once; a tail after the video

        # The API lists it and deletes it.
        via_api = await api.recordings()
        assert [(r.filename, r.url) for r in via_api] == [(rec["filename"], rec["url"])]
        await api.delete_recording(listed[0].session_id, listed[0].filename)
        assert await server.egress.recordings(CID) == []
        assert await api.recordings() == []


async def test_unwritable_recordings_dir_fails_the_recording_not_the_stream(
    server: App,
) -> None:
    src = make_flv(MEDIA_DIR / "rec-bf2-g30-6s.flv", seconds=PUSHED_S, gop=30, bframes=2)
    assert server.egress is not None
    # A file where the recordings directory should be: nothing can be created under it.
    (server.settings.data_dir / "recordings").write_text("in the way")
    async with open_api(server) as api:
        url = await api.setup()
        with server.bus.subscribe(CID) as sub:
            await api.go_live(start_recording=True, start_hls=True)
            proc = await push(url, src, realtime=True)
            failed = await wait_event(sub, "call.recording_failed")
            assert "recordings" in failed["error"]
            assert not server.egress.is_recording(CID)
            # HLS and the publisher go on.
            await wait_event(sub, "call.hls_broadcasting_started")
            code, err = await finish(proc)
            assert code == 0, err


async def test_kill_9_mid_recording_leaves_a_playable_file(tmp_path: Path) -> None:
    src = make_flv(MEDIA_DIR / "rec-loop-g30.flv", seconds=4, gop=30, bframes=2)
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env |= {"INGEST_API_KEY": "killkey", "INGEST_API_SECRET": API_SECRET}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest.cli", "serve", "--host", "127.0.0.1",
        "--http-port", "0", "--rtmp-port", "0", "--data-dir", str(data),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    pusher: asyncio.subprocess.Process | None = None
    try:
        assert server.stdout is not None
        banner = ""
        while "API key" not in banner:
            line = await asyncio.wait_for(server.stdout.readline(), 30)
            assert line, "server exited before printing its banner"
            banner += line.decode()
        match = re.search(r"API\s+http://[^:]+:(\d+)", banner)
        assert match is not None
        api = Api(int(match.group(1)), key="killkey")
        try:
            url = await api.setup()
            await api.go_live(start_recording=True, start_hls=True)
            pusher = await push(url, src, realtime=True, loop=True)
            # Wait (blocking playlist reload, no polling) until 3 segments are cut: the recording
            # holds the same parts.
            playlist = f"http://127.0.0.1:{match.group(1)}/hls/livestream/hlsshow/index.m3u8"
            for msn in range(4):
                r = await api.http.get(playlist, params={"_HLS_msn": msn}, timeout=30)
                assert r.status_code == 200, r.text
        finally:
            await api.aclose()
        server.send_signal(signal.SIGKILL)
        await server.wait()
    finally:
        if pusher is not None:
            with contextlib.suppress(ProcessLookupError):
                pusher.kill()
            await pusher.wait()
        if server.returncode is None:
            server.kill()
            await server.wait()
    files = list((data / "recordings").rglob("*.mp4"))
    assert len(files) == 1, files
    info = await ffprobe("-show_streams", "-show_format", str(files[0]))
    assert sorted(s["codec_name"] for s in info["streams"]) == ["aac", "h264"]
    assert float(info["format"]["duration"]) >= 3.5  # at least the segments seen cut
    code, err = await decode_errors(files[0])
    assert code == 0, err


async def test_ending_the_call_finishes_the_recording(server: App) -> None:
    src = make_flv(MEDIA_DIR / "rec-bf2-g30-6s.flv", seconds=PUSHED_S, gop=30, bframes=2)
    assert server.egress is not None
    async with open_api(server) as api:
        url = await api.setup()
        with server.bus.subscribe(CID) as sub:
            await api.go_live(start_recording=True, start_hls=True)
            proc = await push(url, src, realtime=True)
            try:
                await wait_event(sub, "call.recording_started")
                await api.end_call()
                ready = await wait_event(sub, "call.recording_ready")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        assert not server.egress.is_recording(CID)
        assert server.egress.hls_status(CID) == "stopped"
        assert server.egress.programs == {}
        listed = await server.egress.recordings(CID)
        assert [r.filename for r in listed] == [ready["call_recording"]["filename"]]
