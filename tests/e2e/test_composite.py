"""Two RTMP hosts, one composited HLS stream and recording showing both, audio from both."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import httpx
import pytest

from ingest.app import App
from ingest.media.hub import TrackAdded
from ingest.media.units import Kind
from tests.e2e.egress_helpers import CID, analyse, ffprobe, open_api, wait_event
from tests.e2e.media import MEDIA_DIR, make_flv, push

pytestmark = pytest.mark.e2e


async def test_two_hosts_make_one_composite_with_both_pictures_and_both_voices(
    server: App, tmp_path: Path
) -> None:
    colour = make_flv(MEDIA_DIR / "comp-colour-440.flv", seconds=12, gop=60, tone=440)
    grey = make_flv(
        MEDIA_DIR / "comp-grey-880.flv", seconds=12, gop=60, tone=880, video_filter="hue=s=0"
    )
    assert server.egress is not None
    procs = []
    try:
        async with open_api(server) as api:
            await api.setup(("alice", "bob"))
            with server.hub.watch(CID) as watch:
                procs.append(await push(api.rtmp_url("alice"), colour, realtime=True))
                seen = 0
                while seen < 1:  # alice first: she is the left cell
                    event = await asyncio.wait_for(watch.get(), 20)
                    seen += isinstance(event, TrackAdded) and event.kind is Kind.VIDEO
                procs.append(await push(api.rtmp_url("bob"), grey, realtime=True))
                while seen < 2:
                    event = await asyncio.wait_for(watch.get(), 20)
                    seen += isinstance(event, TrackAdded) and event.kind is Kind.VIDEO
            with server.bus.subscribe(CID) as sub:
                await api.post("/go_live", {"start_hls": True, "start_recording": True})
                await wait_event(sub, "call.hls_broadcasting_started", within=30)
                program = server.egress.programs[CID]
                assert program.composite is not None
                playlist_url = server.egress.playlist_url(CID)
                async with httpx.AsyncClient(timeout=30) as http:
                    text = ""
                    for msn in range(1, 3):
                        text = (await http.get(playlist_url, params={"_HLS_msn": msn})).text
                    base = playlist_url.rsplit("/", 1)[0]
                    init_uri = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)[-1]
                    last_seg = re.findall(r"(seg-\d+\.m4s)", text)[-1]
                    init = (await http.get(f"{base}/{init_uri}")).content
                    seg = (await http.get(f"{base}/{last_seg}")).content
                path = tmp_path / "composite.mp4"
                path.write_bytes(init + seg)
                info = await ffprobe("-show_streams", str(path))
                video = next(s for s in info["streams"] if s["codec_type"] == "video")
                assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1280, 720)
                assert any(s["codec_name"] == "aac" for s in info["streams"])
                left, right, peaks = await asyncio.to_thread(analyse, init + seg)
                assert left > 20, (left, right)  # alice's colour pattern
                assert right < 5, (left, right)  # bob's grey picture (and black bars)
                # Both voices are mixed (within 5 %: live mixing on a busy machine smears them).
                assert abs(peaks[0] - 440) < 22, peaks
                assert abs(peaks[1] - 880) < 44, peaks
                await api.post("/stop_live")
                ready = await wait_event(sub, "call.recording_ready", within=30)
        listed = await server.egress.recordings(CID)
        assert [r.filename for r in listed] == [ready["call_recording"]["filename"]]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
