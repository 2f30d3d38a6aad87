"""``samples/viewer.html`` in headless Chromium plays what hosts really send, over the call
WebSocket (``/video/connect``): an OBS push with its default settings (H.264 High *with*
B-frames), an OBS push as ``samples/OBS.md`` configures it (High, no B-frames), and a WHIP host
(aiortc: VP8 + Opus), all three in one call, frames advancing in each tile.

Chromium without a GPU lists no H.264 High among its receive codecs. The server's offer must be
one Chromium accepts as it is: the page's client (``ingest.js``) rewrites profiles the browser
does not list, so this test hides Chromium's H.264 entries from ``RTCRtpReceiver.
getCapabilities`` (the client then leaves the offer untouched; Chromium's own negotiation does
not use that function) and what is negotiated is the server's offer, as WHEP negotiates the
browser's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Page

from ingest.app import App
from ingest.calls import wire as w
from ingest.calls.tokens import create_token
from tests.conftest import API_KEY, API_SECRET, api
from tests.e2e.media import MEDIA_DIR, make_flv, push
from tests.e2e.test_apps import browser, diagnosis, wait_playing
from tests.e2e.test_whip import Publisher

pytestmark = pytest.mark.e2e

CALL_TYPE, CALL_ID = "livestream", "viewerpage"
SETUP_MS = 60_000
"""Generous: ICE + DTLS for three peers on a busy shared 2-core machine."""

NO_CLIENT_REWRITE = """
(() => {
  const original = RTCRtpReceiver.getCapabilities.bind(RTCRtpReceiver);
  RTCRtpReceiver.getCapabilities = (kind) => {
    const caps = original(kind);
    if (!caps || kind !== "video") return caps;
    const codecs = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== "video/h264");
    return { ...caps, codecs };
  };
})();
"""
"""Hides H.264 from the page's capability query: ingest.js's ``decodableOffer`` then passes the
server's offer to Chromium unchanged."""


def token(user: str) -> str:
    return create_token(API_SECRET, user, ttl=3600)


@contextlib.asynccontextmanager
async def obs_pushes(server: App) -> AsyncIterator[None]:
    """alice pushes OBS's default (High, 2 B-frames), bob OBS as samples/OBS.md sets it up
    (High, no B-frames); both 640x360 at 30 fps, 1 s GOP, 48 kHz AAC."""
    procs = []
    try:
        async with api(server) as client:
            state = await client.get_call(CALL_TYPE, CALL_ID)
        address = state.call.ingress.rtmp.address
        for user, bframes in (("alice", 2), ("bob", 0)):
            flv = make_flv(
                MEDIA_DIR / f"viewer-page-bf{bframes}.flv",
                seconds=4,
                size="640x360",
                gop=30,
                bframes=bframes,
                level="4.0",
                audio="sine=frequency=440:sample_rate=48000",
            )
            procs.append(await push(f"{address}/{token(user)}", flv, realtime=True, loop=True))
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def open_viewer(page: Page, server: App) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    page.on("pageerror", lambda e: print(f"[viewer] page error: {e}"))
    await page.add_init_script(NO_CLIENT_REWRITE)
    await page.goto(f"{base}/samples/viewer.html?id={CALL_ID}&user=vera")
    await page.fill("#apiKey", API_KEY)
    await page.fill("#token", token("vera"))
    await page.click("#join")
    await page.wait_for_function("() => window.viewer.call !== null", timeout=SETUP_MS)


async def test_viewer_page_plays_obs_defaults_obs_md_and_a_whip_host(server: App) -> None:
    async with api(server) as client:
        users = ("alice", "bob", "carol", "vera")
        await client.upsert_users(*(w.UserRequest(id=u) for u in users))
        hosts = [w.MemberRequest(user_id=u, role="host") for u in users[:3]]
        await client.get_or_create_call(
            CALL_TYPE, CALL_ID, w.CallRequest(created_by_id="alice", members=hosts)
        )
        await client.go_live(CALL_TYPE, CALL_ID)
    carol = Publisher(token("carol"), "VP8")
    whip = f"http://127.0.0.1:{server.http_port}/whip/{CALL_TYPE}/{CALL_ID}"
    try:
        async with obs_pushes(server), browser() as context:
            assert (await carol.publish(whip)).status_code == 201
            page = await context.new_page()
            await open_viewer(page, server)
            await page.wait_for_function(
                "() => window.viewer.call.participants.size === 3", timeout=SETUP_MS
            )
            counts = await wait_playing(page, "#grid video", 3)
            tiles = await page.eval_on_selector_all(
                "#grid figure", "figs => figs.map(f => f.dataset.user).sort()"
            )
            assert tiles == ["alice", "bob", "carol"], tiles
            assert all(c > 15 for c in counts), counts
            state: Any = await diagnosis(page)
            assert state["errors"] == [], state
            # what Chromium negotiated per host, from the page's own peer connections
            codecs = await page.evaluate(
                """async () => { const out = {};
                   for (const [usid, pc] of window.viewer.call.peers) {
                     const user = window.viewer.call.participants.get(usid).user.id;
                     const stats = await pc.getStats();
                     for (const s of stats.values())
                       if (s.type === 'inbound-rtp' && s.kind === 'video')
                         out[user] = stats.get(s.codecId).mimeType;
                   }
                   return out; }"""
            )
            assert codecs == {"alice": "video/H264", "bob": "video/H264", "carol": "video/VP8"}
            # OBS's default has its B-frames removed; OBS.md's settings pass through untouched
            usids = await page.evaluate(
                """() => Object.fromEntries([...window.viewer.call.participants.values()]
                                              .map(p => [p.user.id, p.user_session_id]))"""
            )
            cid = f"{CALL_TYPE}:{CALL_ID}"
            assert server.sfu.transcoding(cid, usids["alice"])
            assert not server.sfu.transcoding(cid, usids["bob"])
            # one roster: the hub's publishers are the roster's entries, by their session id
            roster = server.calls.participants[cid]
            assert {p.participant_id for p in server.hub.participants(cid)} == set(roster)
            assert {roster[u].user_id for u in usids.values()} == {"alice", "bob", "carol"}
    finally:
        await carol.close()
