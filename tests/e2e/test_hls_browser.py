"""hls.js (from npm, installed by scripts/test) plays the LL-HLS stream in headless Chromium."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from ingest.app import App
from tests.e2e.browser import CHROMIUM_ARGS, chromium_path, static_page
from tests.e2e.egress_helpers import CID, open_api
from tests.e2e.media import MEDIA_DIR, make_flv, push

pytestmark = pytest.mark.e2e

HLS_JS = Path(__file__).parent / "hlsjs" / "node_modules" / "hls.js" / "dist" / "hls.min.js"

PAGE = """<!doctype html><meta charset="utf-8"><title>hls.js</title>
<video id="v" muted autoplay playsinline></video>
<script>%(hlsjs)s</script>
<script>
const src = new URLSearchParams(location.search).get("src");
const video = document.getElementById("v");
window.state = {errors: [], parts: 0, fragments: 0, blocking: 0, supported: Hls.isSupported()};
const hls = new Hls({lowLatencyMode: true});
hls.on(Hls.Events.ERROR, (e, d) => window.state.errors.push(`${d.details} fatal=${d.fatal}`));
hls.on(Hls.Events.FRAG_LOADED, (e, d) => {
  if (d.part) window.state.parts++; else window.state.fragments++;
});
hls.on(Hls.Events.LEVEL_LOADED, (e, d) => {
  const url = (d.networkDetails && d.networkDetails.responseURL) || "";
  if (/_HLS_msn=/.test(url)) window.state.blocking++;
});
window.info = () => ({...window.state, time: video.currentTime, latency: hls.latency,
  frames: video.getVideoPlaybackQuality().totalVideoFrames, paused: video.paused});
hls.loadSource(src);
hls.attachMedia(video);
video.play().catch(err => window.state.errors.push(String(err)));
</script>
"""


async def test_hls_js_plays_the_ll_hls_stream_with_frames_advancing(server: App) -> None:
    if not HLS_JS.exists():
        pytest.fail(f"{HLS_JS} is missing: run scripts/test (it installs hls.js with npm)")
    from playwright.async_api import async_playwright

    src = make_flv(MEDIA_DIR / "hls-bf2-g60.flv", seconds=12, gop=60, bframes=2)
    assert server.egress is not None
    async with open_api(server) as api:
        url = await api.setup()
        await api.go_live(start_hls=True)
    playlist = server.egress.playlist_url(CID)
    proc = await push(url, src, realtime=True, loop=True)
    body = (PAGE % {"hlsjs": HLS_JS.read_text()}).encode()
    try:
        async with static_page(body, "/hls.html") as page_url, async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{page_url}?src={playlist}")
                await page.wait_for_function(
                    "() => window.info().time > 2 && window.info().frames > 30", timeout=30_000
                )
                first: dict[str, Any] = await page.evaluate("() => window.info()")
                await page.wait_for_function(
                    f"() => window.info().frames > {first['frames'] + 45}", timeout=20_000
                )
                last: dict[str, Any] = await page.evaluate("() => window.info()")
            finally:
                await browser.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    report = json.dumps({"first": first, "last": last})
    print("hls.js:", report)
    assert last["supported"], report
    assert last["time"] > first["time"], report
    # Non-fatal stalls may happen on a busy machine; an empty playlist or a fatal error may not.
    assert not [e for e in last["errors"] if "fatal=true" in e or "levelEmpty" in e], report
    assert last["parts"] > 0, report  # LL mode: parts were loaded, not only segments
    assert last["blocking"] > 0, report  # and the playlist was reloaded with _HLS_msn
    assert last["latency"] < 5.0, report  # generous: the target (<= 2 s) belongs in ingest bench
