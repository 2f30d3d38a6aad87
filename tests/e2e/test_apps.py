"""The sample host and viewer apps (samples/host.html, samples/viewer.html on samples/ingest.js),
served by the server and driven in headless Chromium with a fake camera and microphone: two host
pages publish over WHIP and go live, an ffmpeg RTMP push joins them, the viewer page plays all
three over WebRTC (frames advancing in each), then switches to HLS; a reaction from the viewer
reaches the hosts. Screenshots go to ``$INGEST_TEST_ARTIFACTS`` (default: the test's tmp dir).
The glass-to-glass bench (``ingest bench glass``) runs once, briefly, with generous bounds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from ingest import glass
from ingest.app import App
from ingest.calls.tokens import verify_token
from ingest.pages import DEV_TOKEN_TTL
from tests.e2e.browser import CHROMIUM_ARGS, chromium_path
from tests.e2e.media import MEDIA_DIR, make_flv, push

pytestmark = pytest.mark.e2e

FAKE_MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SETUP_MS = 60_000
"""Generous: ICE + DTLS for several peers and hls.js start on a busy shared 2-core machine."""
FRAMES_ADVANCING = 15
"""Frames each video must present after the first check to count as playing."""


def artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("INGEST_TEST_ARTIFACTS") or tmp_path / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[BrowserContext]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=[*CHROMIUM_ARGS, *FAKE_MEDIA]
        )
        try:
            context = await b.new_context(viewport={"width": 1280, "height": 900})
            yield context
        finally:
            await b.close()


async def frames(page: Page, selector: str) -> list[int]:
    """Frames presented so far by each video matching ``selector``."""
    counts: list[int] = await page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].map(
               v => v.getVideoPlaybackQuality().totalVideoFrames)""",
        selector,
    )
    return counts


async def diagnosis(page: Page) -> Any:
    """What the viewer page sees, for a failure message."""
    return await page.evaluate(
        """() => { const v = window.viewer; if (!v) return null;
             const c = v.call;
             return {errors: v.errors, mode: v.mode, tiles: [...v.tiles.keys()],
               subscribed: [...v.subscribed],
               participants: c ? [...c.participants.values()].map(p => [p.user.id, p.tracks]) : [],
               peers: c ? [...c.peers.entries()].map(([k, pc]) => [k, pc.connectionState]) : [],
               hls: v.hlsPlayer ? {errors: v.hlsPlayer.errors.slice(-5),
                 time: document.querySelector('#hlsVideo').currentTime} : null,
               frames: [...document.querySelectorAll('video')].map(
                 x => [x.id, x.getVideoPlaybackQuality().totalVideoFrames, x.readyState])}; }"""
    )


async def wait_playing(page: Page, selector: str, count: int) -> list[int]:
    """``count`` videos present frames, and keep presenting them (each advances)."""
    try:
        return await _wait_playing(page, selector, count)
    except PlaywrightTimeoutError:
        raise AssertionError(f"not all playing: {await diagnosis(page)}") from None


async def _wait_playing(page: Page, selector: str, count: int) -> list[int]:
    await page.wait_for_function(
        """([sel, n]) => { const vs = [...document.querySelectorAll(sel)];
             return vs.length === n
               && vs.every(v => v.getVideoPlaybackQuality().totalVideoFrames > 5); }""",
        arg=[selector, count],
        timeout=SETUP_MS,
    )
    first = await frames(page, selector)
    await page.wait_for_function(
        """([sel, first, more]) => [...document.querySelectorAll(sel)].every(
             (v, i) => v.getVideoPlaybackQuality().totalVideoFrames >= first[i] + more)""",
        arg=[selector, first, FRAMES_ADVANCING],
        timeout=SETUP_MS,
    )
    return await frames(page, selector)


async def open_host(context: BrowserContext, base: str, call_id: str, user: str) -> Page:
    page = await context.new_page()
    page.on("pageerror", lambda e: print(f"[{user}] page error: {e}"))
    await page.goto(f"{base}/samples/host.html?id={call_id}&user={user}")
    await page.click("#join")
    await page.wait_for_function("() => window.host.call !== null", timeout=SETUP_MS)
    await page.wait_for_function(
        "() => document.querySelector('#preview').srcObject !== null", timeout=SETUP_MS
    )
    await page.click("#publish")
    await page.wait_for_function(
        "() => window.host.publication && window.host.publication.state === 'connected'",
        timeout=SETUP_MS,
    )
    return page


async def host_token(base: str, user: str, call_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            f"{base}/api/v2/dev/token",
            json={"user_id": user, "call_type": "livestream", "call_id": call_id},
        )
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body


async def test_hosts_publish_go_live_and_the_viewer_plays_them_all(
    app_factory: Callable[..., Any], tmp_path: Path
) -> None:
    server: App = await app_factory(api_key=None, api_secret=None)  # development mode
    assert server.development
    base = f"http://127.0.0.1:{server.http_port}"
    call_id = "apps"
    out = artifacts(tmp_path)
    flv = make_flv(MEDIA_DIR / "apps-720p-g30.flv", seconds=10, size="1280x720", gop=30)
    proc = None
    async with browser() as context:
        try:
            alice = await open_host(context, base, call_id, "alice")
            await alice.wait_for_function(
                "() => document.querySelector('#dev').textContent.includes('Development mode')",
                timeout=SETUP_MS,
            )
            viewer = await context.new_page()
            viewer.on("pageerror", lambda e: print(f"[viewer] page error: {e}"))
            await viewer.goto(f"{base}/samples/viewer.html?id={call_id}&user=vera")
            await viewer.click("#join")
            # backstage: the viewer waits on the waiting screen, no tiles
            await viewer.wait_for_function("() => window.viewer.call !== null", timeout=SETUP_MS)
            assert await viewer.is_visible("#waiting")
            assert await frames(viewer, "#grid video") == []

            bob = await open_host(context, base, call_id, "bob")
            # device choice: another microphone replaces the published track in place
            options = "#microphone option"
            mics = await bob.eval_on_selector_all(options, "os => os.map(o => o.value)")
            assert len(mics) > 1, mics  # Chromium's fake devices: several microphones
            await bob.select_option("#microphone", mics[-1])
            await bob.wait_for_function(
                """(id) => { const pc = window.host.publication.pc;
                     const a = pc.getSenders().find(s => s.track && s.track.kind === 'audio');
                     return a.track.getSettings().deviceId === id
                       && pc.connectionState === 'connected'; }""",
                arg=mics[-1],
                timeout=SETUP_MS,
            )
            carol = await host_token(base, "carol", call_id)
            state = await alice.evaluate("() => window.host.state.call.ingress.rtmp.address")
            proc = await push(f"{state}/{carol['token']}", flv, realtime=True, loop=True)
            await alice.wait_for_function(
                "() => window.host.participants.length === 3", timeout=SETUP_MS
            )
            await alice.wait_for_function(
                """() => window.host.participants.some(p => p.source === 'rtmp'
                          && p.health && p.health.bitrate_kbps > 0)""",
                timeout=SETUP_MS,
            )

            # go live from a host page, with HLS
            assert await alice.is_checked("#hls")
            await alice.click("#goLive")
            await alice.wait_for_function("() => window.host.live", timeout=SETUP_MS)
            await viewer.wait_for_function(
                "() => !document.querySelector('#stage').classList.contains('backstage')",
                timeout=SETUP_MS,
            )
            counts = await wait_playing(viewer, "#grid video", 3)
            users = await viewer.eval_on_selector_all(
                "#grid figure", "figs => figs.map(f => f.dataset.user).sort()"
            )
            assert users == ["alice", "bob", "carol"], users
            assert all(c > FRAMES_ADVANCING for c in counts), counts
            await viewer.screenshot(path=str(out / "viewer.png"))

            # a reaction from the viewer reaches both host pages
            await viewer.click(".react[data-type=like]")
            for host in (alice, bob):
                await host.wait_for_function(
                    "() => window.host.feed.some(f => f.kind === 'reaction' && f.user === 'vera')",
                    timeout=SETUP_MS,
                )
            # a message from a host reaches the viewer
            await bob.fill("#message", "hi from bob")
            await bob.click("#send")
            await viewer.wait_for_function(
                "() => window.viewer.feed.some(f => f.text === 'hi from bob' && f.user === 'bob')",
                timeout=SETUP_MS,
            )
            await alice.screenshot(path=str(out / "host.png"), full_page=True)

            # tokens are never shown in clear
            for page, state in ((alice, "host"), (bob, "host"), (viewer, "viewer")):
                token = await page.evaluate(f"() => window.{state}.client.token")
                assert token not in await page.inner_text("body")
                assert await page.get_attribute("#token", "type") == "password"

            # the client's errors carry the server's code and message: a viewer may not go live
            refused = await viewer.evaluate(
                """async () => { try { await window.viewer.client.goLive('livestream', 'apps'); }
                                 catch (e) { return [e.name, e.code, e.status, e.message]; } }"""
            )
            assert refused[:3] == ["IngestError", 17, 403], refused
            assert "may not update call" in refused[3]

            # ingest.js watches one publisher over WHEP too
            whep_frames = await viewer.evaluate(
                """async () => {
                    const client = window.viewer.client;
                    const playback = await client.watch('livestream', 'apps', 'carol');
                    const video = document.createElement('video');
                    video.muted = true; video.autoplay = true; video.srcObject = playback.stream;
                    document.body.append(video);
                    await new Promise((resolve) => {
                        const tick = () => video.getVideoPlaybackQuality().totalVideoFrames > 10
                            ? resolve() : video.requestVideoFrameCallback(tick);
                        video.requestVideoFrameCallback(tick);
                    });
                    const n = video.getVideoPlaybackQuality().totalVideoFrames;
                    await playback.stop();
                    video.remove();
                    return n;
                }"""
            )
            assert whep_frames > 10

            # hosts leaving: the viewer's grid follows
            for host in (alice, bob):
                await host.click("#unpublish")
            await viewer.wait_for_function(
                "() => document.querySelectorAll('#grid figure').length === 1", timeout=SETUP_MS
            )
            # a host joining the live show appears in the grid, and goes again
            await alice.click("#publish")
            await wait_playing(viewer, "#grid video", 2)
            await alice.click("#unpublish")
            await viewer.wait_for_function(
                "() => document.querySelectorAll('#grid figure').length === 1", timeout=SETUP_MS
            )
            # back to backstage: the waiting screen; live again: the show (HLS restarts with
            # the one RTMP host: a remux, see test_hls_browser for hls.js on it)
            await alice.click("#stopLive")
            await viewer.wait_for_function(
                "() => document.querySelector('#stage').classList.contains('backstage')",
                timeout=SETUP_MS,
            )
            assert await viewer.is_visible("#waiting")
            await alice.click("#goLive")
            await wait_playing(viewer, "#grid video", 1)

            # switch to HLS: hls.js plays the call
            await viewer.click("#hlsMode")
            await wait_playing(viewer, "#hlsVideo", 1)
            assert await frames(viewer, "#grid video") == []  # WebRTC tiles closed
            await viewer.screenshot(path=str(out / "viewer-hls.png"))
            # and back to WebRTC
            await viewer.click("#webrtc")
            await wait_playing(viewer, "#grid video", 1)
            assert await viewer.evaluate("() => window.viewer.hlsPlayer") is None
            assert await viewer.evaluate("() => window.viewer.errors") == []
            for host in (alice, bob):
                assert await host.evaluate("() => window.host.errors") == []
        finally:
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def test_dev_token_is_refused_with_configured_credentials(server: App) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{base}/api/v2/dev/token", json={"user_id": "alice"})
        assert resp.status_code == 403
        body = resp.json()
        assert body["code"] == 17
        assert "development mode" in body["message"]
        assert (await http.get(f"{base}/api/v2/dev")).json() == {"development": False}


async def test_pages_are_served_by_name_only(server: App) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    async with httpx.AsyncClient() as http:
        js = await http.get(f"{base}/ingest.js")
        assert js.status_code == 200
        assert js.headers["content-type"].startswith("text/javascript")
        assert "export class IngestClient" in js.text
        for page in ("host.html", "viewer.html"):
            resp = await http.get(f"{base}/samples/{page}")
            assert resp.status_code == 200
            assert "/ingest.js" in resp.text
        for path in ("/samples/ingest.toml", "/samples/..%2Fpyproject.toml", "/samples/OBS.md"):
            assert (await http.get(f"{base}{path}")).status_code == 404, path


async def test_dev_token_makes_a_host_in_development_mode(
    app_factory: Callable[..., Any],
) -> None:
    server: App = await app_factory(api_key=None, api_secret=None)
    base = f"http://127.0.0.1:{server.http_port}"
    body = await host_token(base, "alice", "devcall")
    assert body["api_key"] == server.creds.api_key
    claims = verify_token(body["token"], server.creds.api_secret)
    assert claims.user_id == "alice"
    assert claims.expires_at is not None
    assert body["expires_in"] == DEV_TOKEN_TTL
    assert abs(claims.expires_at - time.time() - DEV_TOKEN_TTL) < 60
    async with httpx.AsyncClient() as http:
        call = await http.get(
            f"{base}/api/v2/video/call/livestream/devcall",
            params={"api_key": body["api_key"]},
            headers={"Authorization": body["token"]},
        )
        assert call.status_code == 200
        assert "update-call" in call.json()["own_capabilities"]  # a host: may go live
        bad = await http.post(f"{base}/api/v2/dev/token", json={"user_id": "x", "role": "admin"})
        assert bad.status_code == 400
        assert "role must be one of" in bad.json()["message"]


GLASS_MARGIN_MS = {"rtmp -> WebRTC": 2000.0, "whip -> WebRTC": 2000.0, "rtmp -> LL-HLS": 8000.0}
"""Generous bounds for a busy machine: the targets are judged by ``ingest bench glass``."""


async def test_glass_to_glass_is_measured_in_the_browser_for_every_path(tmp_path: Path) -> None:
    rows = await glass.measure(seconds=3, data_dir=tmp_path / "glass")
    assert [r.name for r in rows] == list(glass.TARGETS_MS)
    for row in rows:
        assert row.frames >= glass.MIN_SAMPLES, row
        assert row.p50_ms is not None, row
        assert row.p95_ms is not None, row
        assert 0 <= row.p50_ms <= row.p95_ms < GLASS_MARGIN_MS[row.name], row
    (artifacts(tmp_path) / "glass.md").write_text(glass.table(rows) + "\n")


TSC = Path(__file__).parents[2] / "samples" / "node_modules" / ".bin" / "tsc"


async def test_ingest_js_type_checks_with_its_jsdoc(tmp_path: Path) -> None:
    """ingest.js is typed by its JSDoc: tsc --checkJs --strict finds nothing to say, and
    samples/ingest.d.ts is what tsc makes of it now (for TypeScript apps)."""
    if not TSC.exists():
        pytest.fail(f"{TSC} is missing: run scripts/test (npm ci in samples/ installs it)")
    samples = TSC.parents[2]
    proc = await asyncio.create_subprocess_exec(
        str(TSC),
        *("--allowJs", "--checkJs", "--strict", "--declaration", "--emitDeclarationOnly"),
        *("--target", "es2022", "--module", "es2022", "--lib", "es2022,dom"),
        *("--outDir", str(tmp_path)),
        str(samples / "ingest.js"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()
    assert (tmp_path / "ingest.d.ts").read_text() == (samples / "ingest.d.ts").read_text(), (
        "samples/ingest.d.ts is stale: regenerate it with tsc --declaration (see this test)"
    )


async def test_host_page_on_a_production_server_says_tokens_come_from_the_backend(
    server: App,
) -> None:
    """With api_key/api_secret configured the page says so, and a sign-in without a token
    shows the server's refusal (code 17) instead of a token."""
    base = f"http://127.0.0.1:{server.http_port}"
    async with browser() as context:
        page = await context.new_page()
        await page.goto(f"{base}/samples/host.html?id=prod&user=mallory")
        await page.wait_for_function(
            "() => document.querySelector('#dev').textContent.includes('Production server')",
            timeout=SETUP_MS,
        )
        await page.click("#join")
        await page.wait_for_function("() => window.host.errors.length > 0", timeout=SETUP_MS)
        error = await page.inner_text("#error")
        assert error.startswith("403 17: the dev token endpoint works only in development mode")
        assert await page.evaluate("() => window.host.client") is None
