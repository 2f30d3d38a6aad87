"""LL-HLS end to end: ffmpeg pushes RTMP, the call goes live with HLS, ffprobe reads it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.app import App
from ingest.calls.events import Subscription
from ingest.calls.tokens import create_server_token, create_token
from tests.conftest import API_KEY, API_SECRET
from tests.e2e.media import MEDIA_DIR, make_flv, push

pytestmark = pytest.mark.e2e

CALL = "livestream/hlsshow"
CID = "livestream:hlsshow"


class Api:
    """The REST API with a server token, over plain httpx."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{app.http_port}",
            headers={"Authorization": create_server_token(API_SECRET)},
            params={"api_key": API_KEY},
            timeout=30,
        )

    async def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await self.http.post(f"/api/v2/video/call/{CALL}{path}", json=body or {})
        assert r.status_code == 201 or r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def get(self, path: str = "") -> dict[str, Any]:
        r = await self.http.get(f"/api/v2/video/call/{CALL}{path}")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def setup(self) -> str:
        """Users, the call with alice as host; returns alice's RTMP URL."""
        r = await self.http.post(
            "/api/v2/users", json={"users": {u: {"id": u} for u in ("alice", "viewer")}}
        )
        assert r.status_code == 201 or r.status_code == 200, r.text
        got = await self.post(
            "",
            {"data": {"created_by_id": "alice", "members": [{"user_id": "alice", "role": "host"}]}},
        )
        address = got["call"]["ingress"]["rtmp"]["address"]
        return f"{address}/{create_token(API_SECRET, 'alice')}"


@pytest.fixture
async def api(server: App) -> AsyncIterator[Api]:
    client = Api(server)
    yield client
    await client.http.aclose()


@pytest.fixture(scope="session")
def media() -> Path:
    MEDIA_DIR.mkdir(exist_ok=True)
    return MEDIA_DIR


async def wait_event(sub: Subscription, type_: str, within: float = 20) -> dict[str, Any]:
    async def loop() -> dict[str, Any]:
        while True:
            event = await sub.get()
            if event["type"] == type_:
                return event

    return await asyncio.wait_for(loop(), within)


async def ffprobe(*args: str) -> dict[str, Any]:
    """ffprobe's JSON (run without blocking the loop: the server under test is on it)."""
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-of", "json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, err.decode(errors="replace")
    data: dict[str, Any] = json.loads(out)
    return data


def playlist_segments(text: str) -> list[tuple[float, str]]:
    return [(float(d), uri) for d, uri in re.findall(r"#EXTINF:([\d.]+),\n(\S+)", text)]


async def test_ll_hls_plays_in_ffprobe_with_segments_matching_extinf(
    server: App, api: Api, media: Path, tmp_path: Path
) -> None:
    # 2 s GOP with B-frames: segments are one GOP, B-frames are carried as they are.
    src = make_flv(media / "hls-bf2-g60.flv", seconds=12, gop=60, bframes=2)
    url = await api.setup()
    with server.bus.subscribe(CID) as sub:
        await api.post("/go_live", {"start_hls": True})
        assert server.egress is not None
        playlist_url = server.egress.playlist_url(CID)
        assert playlist_url == f"http://127.0.0.1:{server.http_port}/hls/{CALL}/index.m3u8"
        assert server.egress.hls_status(CID) == "starting"
        proc = await push(url, src, realtime=True)
        try:
            started = await wait_event(sub, "call.hls_broadcasting_started")
            assert started["hls_playlist_url"] == playlist_url
            assert server.egress.hls_status(CID) == "running"
            async with httpx.AsyncClient(timeout=30) as http:
                text = (await http.get(playlist_url)).text
                assert "#EXT-X-PART-INF:PART-TARGET=0.334" in text
                assert "CAN-BLOCK-RELOAD=YES" in text
                assert "#EXT-X-PRELOAD-HINT:TYPE=PART" in text
                for msn in (1, 2, 3):  # as a client follows the stream, one segment at a time
                    r = await http.get(playlist_url, params={"_HLS_msn": msn})
                    assert r.status_code == 200, r.text
                text = r.text
                segments = playlist_segments(text)
                assert len(segments) >= 4, text
                parts = re.findall(r"#EXT-X-PART:DURATION=([\d.]+),URI=\"(part-\d+\.m4s)\"", text)
                assert parts
                assert all(0.0 < float(d) <= 0.334 for d, _ in parts), parts
                init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
                assert init_uri is not None
                base = playlist_url.rsplit("/", 1)[0]
                init = (await http.get(f"{base}/{init_uri.group(1)}")).content
                for extinf, uri in segments[:4]:
                    seg = (await http.get(f"{base}/{uri}")).content
                    path = tmp_path / uri.replace(".m4s", ".mp4")
                    path.write_bytes(init + seg)
                    info = await ffprobe("-show_streams", "-show_format", str(path))
                    codecs = sorted(s["codec_name"] for s in info["streams"])
                    assert codecs == ["aac", "h264"], codecs
                    video = next(s for s in info["streams"] if s["codec_type"] == "video")
                    assert int(video.get("has_b_frames", 0)) > 0
                    frames = await ffprobe(
                        "-select_streams", "v", "-count_packets",
                        "-show_entries", "stream=nb_read_packets", str(path),
                    )  # fmt: skip
                    count = int(frames["streams"][0]["nb_read_packets"])
                    assert abs(count / 30 - extinf) < 0.05, (uri, count, extinf)
                    assert abs(extinf - 2.0) < 0.05, (uri, extinf)
                # The whole playlist, as a plain HLS client reads it.
                info = await ffprobe("-show_streams", playlist_url)
                assert sorted(s["codec_name"] for s in info["streams"]) == ["aac", "h264"]

                # Blocking reload for the next part: answered when that part is cut.
                last = re.findall(r'URI="part-(\d+)\.m4s"', text)
                stream = server.egress.hls_stream(CID)
                assert stream is not None
                position = stream.last_position()
                assert position is not None
                want_msn, want_part = position[0], position[1] + 1
                t0 = time.monotonic()
                r = await http.get(
                    playlist_url, params={"_HLS_msn": want_msn, "_HLS_part": want_part}
                )
                waited = time.monotonic() - t0
                assert stream.ready(want_msn, want_part)
                assert waited < 2.0, waited
                assert last
                hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="part-(\d+)\.m4s"', r.text)
                assert hint is not None
                part = await http.get(f"{base}/part-{hint.group(1)}.m4s")
                assert part.status_code == 200
                assert part.content[4:8] == b"moof"
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await api.post("/stop_live")
        await wait_event(sub, "call.hls_broadcasting_stopped")
        assert server.egress.hls_status(CID) == "stopped"


async def test_nothing_runs_without_hls_or_recording(server: App, api: Api, media: Path) -> None:
    src = make_flv(media / "hls-bf2-g60.flv", seconds=12, gop=60, bframes=2)
    url = await api.setup()
    await api.post("/go_live", {})
    with server.hub.watch(CID) as watch:
        proc = await push(url, src, realtime=True)
        await asyncio.wait_for(watch.get(), 20)
    try:
        assert server.egress is not None
        assert server.egress.programs == {}
        for track in server.hub.tracks(CID):
            assert track.readers == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
