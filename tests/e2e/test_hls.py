"""LL-HLS end to end: ffmpeg pushes RTMP, the call goes live with HLS, ffprobe reads it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import httpx
import pytest

from ingest.app import App
from ingest.calls import wire as w
from ingest.calls.tokens import create_token
from ingest.egress import HLS_LINGER_S
from ingest.hls.stream import MAX_MSN_AHEAD
from tests.conftest import API_SECRET
from tests.e2e.egress_helpers import CALL, CID, Api, ffprobe, open_api, wait_event
from tests.e2e.media import MEDIA_DIR, make_flv, push

pytestmark = pytest.mark.e2e


def playlist_segments(text: str) -> list[tuple[float, str]]:
    return [(float(d), uri) for d, uri in re.findall(r"#EXTINF:([\d.]+),\n(\S+)", text)]


async def test_ll_hls_plays_in_ffprobe_with_segments_matching_extinf(
    server: App, tmp_path: Path
) -> None:
    # 2 s GOP with B-frames: segments are one GOP, B-frames are carried as they are.
    src = make_flv(MEDIA_DIR / "hls-bf2-g60.flv", seconds=12, gop=60, bframes=2)
    async with open_api(server) as api:
        url = await api.setup()
        await hls_end_to_end(server, api, url, src, tmp_path)


async def hls_end_to_end(server: App, api: Api, url: str, src: Path, tmp_path: Path) -> None:
    with server.bus.subscribe(CID) as sub:
        await api.go_live(start_hls=True)
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
                too_far = want_msn + MAX_MSN_AHEAD + 1
                bad = await http.get(playlist_url, params={"_HLS_msn": too_far})
                assert bad.status_code == 400, bad.text
                bad = await http.get(playlist_url, params={"_HLS_part": 1})
                assert bad.status_code == 400, bad.text
                hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="part-(\d+)\.m4s"', r.text)
                assert hint is not None
                part = await http.get(f"{base}/part-{hint.group(1)}.m4s")
                assert part.status_code == 200
                assert part.content[4:8] == b"moof"
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await api.stop_live()
        await wait_event(sub, "call.hls_broadcasting_stopped")
        assert server.egress.hls_status(CID) == "stopped"
        # Viewers still get the end of the stream for a while.
        linger = server.egress._linger[CID].when() - asyncio.get_running_loop().time()
        assert HLS_LINGER_S - 5 < linger <= HLS_LINGER_S
        async with httpx.AsyncClient(timeout=30) as http:
            ended = await http.get(playlist_url)
            assert ended.text.endswith("#EXT-X-ENDLIST\n")


async def test_nothing_runs_without_hls_or_recording(server: App) -> None:
    src = make_flv(MEDIA_DIR / "hls-bf2-g60.flv", seconds=12, gop=60, bframes=2)
    async with open_api(server) as api:
        url = await api.setup()
        await api.go_live()
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


async def test_a_call_type_can_require_a_token_for_hls(server: App) -> None:
    src = make_flv(MEDIA_DIR / "hls-bf2-g60.flv", seconds=12, gop=60, bframes=2)
    assert server.egress is not None
    async with open_api(server) as api:
        hls = w.HLSSettingsRequest(require_token=True)
        changed = await api.client.update_call_type(
            "livestream",
            w.UpdateCallTypeRequest(
                settings=w.CallSettingsRequest(broadcasting=w.BroadcastSettingsRequest(hls=hls))
            ),
        )
        assert changed.settings.broadcasting.hls.require_token is True
        url = await api.setup()
        with server.bus.subscribe(CID) as sub:
            await api.go_live(start_hls=True)
            proc = await push(url, src, realtime=True)
            try:
                await wait_event(sub, "call.hls_broadcasting_started")
                playlist_url = server.egress.playlist_url(CID)
                async with httpx.AsyncClient(timeout=30) as http:
                    refused = await http.get(playlist_url)
                    assert refused.status_code == 401, refused.text
                    assert "token" in refused.json()["message"]
                    token = create_token(API_SECRET, "viewer")
                    r = await http.get(playlist_url, params={"token": token})
                    assert r.status_code == 200, r.text
                    uris = re.findall(r"(seg-\d+\.m4s\S*)", r.text)
                    assert uris
                    assert all(u.endswith(f"?token={token}") for u in uris)
                    base = playlist_url.rsplit("/", 1)[0]
                    assert (await http.get(f"{base}/{uris[0]}")).status_code == 200
                    bare = uris[0].split("?", 1)[0]
                    assert (await http.get(f"{base}/{bare}")).status_code == 401
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
