"""Chromium plays a call's RTMP publisher over WHEP, through samples/whep-player.html.

The whole path with real programs: ingest.client creates the call and goes live, ffmpeg
pushes an OBS-like stream (H.264 High level 4.0 = ``640028``, no B-frames, AAC) with the host's
token as the stream key, and headless Chromium (Debian's, driven by Playwright) opens the sample
player on another origin, fills in the form with a viewer's token and plays. Asserted in the
page: the decoded picture size, frames advancing, the negotiated codecs in ``getStats()``, audio
arriving as Opus; and the server's error message shown when the call is not live yet.

About the H.264 profile: Chromium advertises High (``64xxxx``) only when a hardware decoder
offers it. Without one (headless, ``--disable-gpu``, as here) its WebRTC H.264 decoder is
libwebrtc's software one (FFmpeg), which advertises ``42001f``, ``42e01f``, ``4d001f`` and
``f4001f``. ingest then answers the offer's Constrained Baseline entry (see
``ingest.webrtc.negotiation``) and sends the High stream unchanged; these tests prove Chromium
decodes it. When the browser does offer High, the answer must name the stream's own profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Page

from ingest.app import App
from ingest.calls.tokens import create_token
from ingest.media.hub import TrackAdded
from ingest.media.units import Kind, VideoConfig
from tests.conftest import API_SECRET
from tests.e2e.browser import chromium, fmtp, offered_h264, picture, play, stats
from tests.e2e.calls import Call, livestream
from tests.e2e.media import MEDIA_DIR, finish, make_flv, push

pytestmark = pytest.mark.e2e

CALL_TYPE, CALL_ID = "livestream", "chromium"
CID = f"{CALL_TYPE}:{CALL_ID}"
FPS = 30
TIMEOUT_MS = 20_000
"""Playwright waits (ms): generous, the machine is shared with other tests."""


def obs_like_flv(width: int, height: int, *, bframes: int = 0, seconds: int = 3) -> Path:
    """H.264 High level 4.0 (``640028``, OBS's default), 1 s GOP, and a 48 kHz AAC tone."""
    return make_flv(
        MEDIA_DIR / f"chromium-{width}x{height}-bf{bframes}-{seconds}s.flv",
        seconds=seconds,
        size=f"{width}x{height}",
        fps=FPS,
        gop=FPS,
        bframes=bframes,
        level="4.0",
        audio="sine=frequency=440:sample_rate=48000",
    )


@dataclass
class Publishing:
    video: TrackAdded
    proc: asyncio.subprocess.Process

    @property
    def config(self) -> VideoConfig:
        config = self.video.track.config
        assert isinstance(config, VideoConfig)
        return config


@pytest.fixture
async def call(server: App) -> AsyncIterator[Call]:
    async with livestream(server, CALL_TYPE, CALL_ID) as c:
        yield c


@contextlib.asynccontextmanager
async def publishing(call: Call, src: Path) -> AsyncIterator[Publishing]:
    """ffmpeg pushes ``src`` (looped, real time) as alice until the block ends; yields once the
    call's hub has both of alice's tracks."""
    key = create_token(API_SECRET, "alice")
    with call.app.hub.watch(CID) as watch:
        proc = await push(f"{call.address}/{key}", src, realtime=True, loop=True)
        try:
            added: dict[Kind, TrackAdded] = {}
            while len(added) < 2:
                event = await asyncio.wait_for(watch.get(), 15)
                if isinstance(event, TrackAdded):
                    added[event.track.kind] = event
            yield Publishing(added[Kind.VIDEO], proc)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await finish(proc)


async def start_playing(page: Page, call: Call) -> None:
    await play(
        page,
        server=call.base,
        call_type=CALL_TYPE,
        call_id=CALL_ID,
        user="alice",
        token=create_token(API_SECRET, "viewer"),
    )


async def wait_frames(page: Page, more: int) -> float:
    """Wait until the page has presented ``more`` frames more; the frame rate seen meanwhile."""
    start = await page.evaluate("() => window.player.frames")
    t0 = time.monotonic()
    await page.wait_for_function(
        f"() => window.player.frames >= {start + more}", timeout=TIMEOUT_MS
    )
    return more / (time.monotonic() - t0)


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720)], ids=["360p", "720p"])
async def test_chromium_plays_high_profile_and_opus(call: Call, width: int, height: int) -> None:
    await call.go_live()
    src = obs_like_flv(width, height)
    async with publishing(call, src) as pub, chromium() as browser:
        assert pub.config.profile_level_id == "640028"  # what OBS sends by default
        page = await browser.open_player()
        await start_playing(page, call)
        await page.wait_for_function(
            "() => window.player.video.videoWidth > 0 || window.player.state === 'error'",
            timeout=TIMEOUT_MS,
        )
        error = await page.evaluate("() => window.player.error")
        assert error is None, error
        size = await page.evaluate("() => [player.video.videoWidth, player.video.videoHeight]")
        assert size == [width, height]

        before, shot1 = await stats(page), await picture(page)
        fps = await wait_frames(page, 2 * FPS)  # ~2 s of video presented
        after, shot2 = await stats(page), await picture(page)
        assert after["video"]["framesDecoded"] >= before["video"]["framesDecoded"] + FPS
        assert (after["video"]["frameWidth"], after["video"]["frameHeight"]) == (width, height)
        # a real picture (testsrc2: colour bars, gradients, a moving box), and it moves
        assert statistics.pstdev(shot2) > 20, "the picture is flat (black?)"
        assert sum(abs(a - b) for a, b in zip(shot1, shot2, strict=True)) > len(shot1)

        # the codec Chromium negotiated and decodes with
        offer = await page.evaluate("() => window.player.offer")
        video = after["video"]
        assert video["mimeType"] == "video/H264"
        answered = fmtp(video["sdpFmtpLine"])["profile-level-id"].lower()
        if any(p.startswith("64") for p in offered_h264(offer)):
            assert answered == "640028"  # a browser able to decode High is told High
        else:
            assert answered == "42e01f"  # the offer's Constrained Baseline entry, unchanged
        # passed through untouched: what Chromium decoded is the High stream itself
        assert not call.app.sfu.transcoding(CID, pub.video.track.participant_id)
        (session,) = call.app.sfu.sessions.values()
        assert session.video_profile_level_id == answered

        await page.wait_for_function(
            "() => (window.player.summary?.audio?.packetsReceived ?? 0) > 25", timeout=TIMEOUT_MS
        )
        audio = (await stats(page))["audio"]
        assert audio["mimeType"] == "audio/opus"
        assert audio["clockRate"] == 48_000

        first_frame_ms = await page.evaluate("() => window.player.firstFrameMs")
        timings = await page.evaluate("() => window.player.timings")
        print(
            f"\n{width}x{height}: offered H.264 {offered_h264(offer)}, answered {answered}, "
            f"first frame {first_frame_ms:.0f} ms "
            f"({', '.join(f'{k} {v:.0f}' for k, v in timings.items())}), "
            f"{fps:.1f} fps presented, {after['video']['framesDecoded']} decoded, "
            f"dropped {before['video']['framesDropped']} by the first picture, "
            f"{after['video']['framesDropped']} in all, audio {audio['packetsReceived']} packets"
        )


async def test_chromium_plays_b_frames_transcoded(call: Call) -> None:
    await call.go_live()
    src = obs_like_flv(640, 360, bframes=2)
    async with publishing(call, src) as pub, chromium() as browser:
        page = await browser.open_player()
        await start_playing(page, call)
        await page.wait_for_function(
            "() => window.player.video.videoWidth > 0 || window.player.state === 'error'",
            timeout=TIMEOUT_MS,
        )
        assert await page.evaluate("() => window.player.error") is None
        size = await page.evaluate("() => [player.video.videoWidth, player.video.videoHeight]")
        assert size == [640, 360]
        before = await stats(page)
        await wait_frames(page, FPS)
        after = await stats(page)
        assert after["video"]["framesDecoded"] > before["video"]["framesDecoded"]
        assert after["video"]["mimeType"] == "video/H264"
        answered = fmtp(after["video"]["sdpFmtpLine"])["profile-level-id"].lower()
        assert answered.startswith("42e0")  # the re-encode: Constrained Baseline
        assert call.app.sfu.transcoding(CID, pub.video.track.participant_id)


async def test_chromium_shows_not_live_yet(call: Call) -> None:
    """A viewer before go_live: the page shows the server's 403 message."""
    src = obs_like_flv(640, 360)
    async with publishing(call, src), chromium() as browser:  # the host streams in backstage
        page = await browser.open_player()
        await start_playing(page, call)
        await page.wait_for_function("() => window.player.state === 'error'", timeout=TIMEOUT_MS)
        error = await page.evaluate("() => window.player.error")
        assert error["status"] == 403
        assert "not live yet" in error["message"]
        shown = await page.inner_text("#error")
        assert "403" in shown
        assert error["message"] in shown
        assert not call.app.sfu.sessions
