"""Two RTMP hosts, one composited HLS stream and recording showing both, audio from both."""

from __future__ import annotations

import asyncio
import contextlib
import re
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from ingest.app import App
from ingest.calls.events import EventBus
from ingest.egress import EgressManager
from ingest.media.hub import Hub, TrackAdded
from ingest.media.units import Kind, MediaUnit, VideoConfig
from ingest.record.storage import LocalStorage
from tests.e2e.egress_helpers import CID, analyse, ffprobe, open_api, wait_event
from tests.e2e.media import MEDIA_DIR, make_flv, push
from tests.unit.webrtc.synth import Publisher, aac_clip

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
                await api.go_live(start_hls=True, start_recording=True)
                await wait_event(sub, "call.hls_broadcasting_started", within=30)
                program = server.egress.programs[CID]
                assert program.composite is not None
                assert len(program.composite.readers) == 4  # each track read once
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
                assert program.composite.compositor is not None
                assert program.composite.compositor.decode_errors == 0
                # the mix comes out behind the picture: no audio may miss its part (a hole
                # makes hls.js stall for good)
                assert program.segmenter.late_audio == 0
                left, right, peaks = await asyncio.to_thread(analyse, init + seg)
                assert left > 20, (left, right)  # alice's colour pattern
                assert right < 5, (left, right)  # bob's grey picture (and black bars)
                # Both voices are mixed (within 5 %: live mixing on a busy machine smears them).
                assert abs(peaks[0] - 440) < 22, peaks
                assert abs(peaks[1] - 880) < 44, peaks
                await api.stop_live()
                ready = await wait_event(sub, "call.recording_ready", within=30)
        listed = await server.egress.recordings(CID)
        assert [r.filename for r in listed] == [ready["call_recording"]["filename"]]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def vp8_clip(frames: int) -> tuple[VideoConfig, tuple[MediaUnit, ...]]:
    """VP8 like a WebRTC host sends (libvpx), in memory."""
    encoder = av.CodecContext.create("libvpx", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height = 320, 240
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 1000)
    encoder.framerate = Fraction(30)
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "g": "30"}
    units = []
    for i in range(frames):
        image = np.full((240, 320, 3), (i * 4) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 1000 // 30
        for p in encoder.encode(frame):
            units.append(
                MediaUnit(Kind.VIDEO, "vp8", p.pts or 0, p.pts or 0, bytes(p), p.is_keyframe)
            )
    return VideoConfig("vp8", b"", width=320, height=240), tuple(units)


async def test_a_host_hls_cannot_carry_as_is_is_transcoded(tmp_path: Path) -> None:
    """A WebRTC host's VP8 goes through the composite path (H.264 out), not refused."""
    hub = Hub()
    bus = EventBus()
    egress = EgressManager(hub, bus, LocalStorage(tmp_path), base_url=lambda: "http://x")
    publisher = Publisher(hub, vp8_clip(60), aac_clip(2.0), call_cid=CID)
    try:
        egress.start_hls(CID)
        publisher.start()
        stream = egress.hls_stream(CID)
        assert stream is not None
        assert await stream.wait_media(30)
        init = stream.segments[0].init
        assert init.video is not None
        assert (init.video.codec, init.video.width, init.video.height) == ("h264", 1280, 720)
        assert egress.hls_status(CID) == "running"
    finally:
        await publisher.stop()
        await egress.stop()
