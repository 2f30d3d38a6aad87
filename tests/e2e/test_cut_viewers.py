"""Kick, revocation and removal from the call reach every session of the user, not only RTMP:
a WHEP viewer's peer connection closes and its media stops, a call WebSocket is closed with the
reason, within CUT_DEADLINE, against the running server with a real ffmpeg publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ingest.app import App
from ingest.calls import wire as w
from ingest.calls.tokens import create_token
from ingest.client import AsyncClient
from ingest.webrtc import signaling as sig
from tests.conftest import API_KEY, API_SECRET, api
from tests.e2e.media import MEDIA_DIR, make_flv, push
from tests.e2e.webrtc_viewer import Viewer
from tests.unit.webrtc.synth import chrome_like_h264

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0
CUT_DEADLINE = 5.0  # the promise: the session ends within this after the API call returns
QUIET = 1.0  # seconds a cut viewer is watched to see that no media follows
IN_FLIGHT = 0.3  # packets sent before the close may still be arriving this long after it


def media_after(viewer: Viewer, closed_at: float) -> list[float]:
    """Arrival times of video packets later than what was in flight at the close."""
    return [p.t for p in viewer.packets["video"] if p.t > closed_at + IN_FLIGHT]


@pytest.fixture(scope="session")
def clip() -> Path:
    MEDIA_DIR.mkdir(exist_ok=True)
    return make_flv(MEDIA_DIR / "cut-320x240.flv", seconds=2.0, size="320x240")


class Live:
    def __init__(self, app: App, client: AsyncClient) -> None:
        self.app = app
        self.client = client  # ingest.client with a server token

    def ws_url(self, token: str) -> str:
        return (
            f"ws://127.0.0.1:{self.app.http_port}/video/connect?api_key={API_KEY}"
            f"&call_type=livestream&call_id=show&token={token}"
        )


@pytest.fixture
async def live(server: App, clip: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    """A live call whose host alice publishes with ffmpeg; 'viewer' is a member (role user)."""
    chrome_like_h264(monkeypatch)
    async with api(server) as client:
        live = Live(server, client)
        await client.upsert_users(w.UserRequest(id="alice"), w.UserRequest(id="viewer"))
        members = [
            w.MemberRequest(user_id="alice", role="host"),
            w.MemberRequest(user_id="viewer", role="user"),
        ]
        await client.get_or_create_call(
            "livestream", "show", w.CallRequest(created_by_id="alice", members=members)
        )
        await client.go_live("livestream", "show")
        rtmp = f"rtmp://127.0.0.1:{server.rtmp_port}/{API_KEY}.livestream.show/"
        publisher = await push(
            rtmp + create_token(API_SECRET, "alice"), clip, realtime=True, loop=True
        )
        try:
            yield live
        finally:
            with contextlib.suppress(ProcessLookupError):
                publisher.kill()
            await publisher.wait()


async def closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None, str]:
    """The messages until the server closes, and its close code and reason."""
    got: list[dict[str, Any]] = []
    try:
        while True:
            got.append(json.loads(await ws.recv()))
    except ConnectionClosed as exc:
        frame = exc.rcvd
    if frame is None:
        raise AssertionError("closed without a close frame from the server")
    return got, frame.code, frame.reason


async def until_joined_with_tracks(ws: ClientConnection) -> None:
    """Until alice is in the call with tracks (a subscribe gets an offer)."""
    joined = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert joined["type"] == "joined"
    usids = [p["user_session_id"] for p in joined["participants"]]
    while not usids:
        msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if msg["type"] == "call.session_participant_joined":
            usids.append(msg["participant"]["user_session_id"])
    await ws.send(json.dumps({"type": "subscribe", "user_session_id": usids[0]}))
    while json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] != "offer":
        pass


@pytest.mark.parametrize(
    ("how", "code", "says"),
    [
        ("kick", sig.CLOSE_KICKED, "kicked"),
        ("revoke", sig.CLOSE_UNAUTHORIZED, "revoked"),
        ("remove", sig.CLOSE_FORBIDDEN, "removed from the call"),
    ],
)
async def test_every_session_of_the_user_ends(live: Live, how: str, code: int, says: str) -> None:
    token = create_token(API_SECRET, "viewer")
    async with connect(live.ws_url(token)) as ws:
        await until_joined_with_tracks(ws)  # alice publishes: WHEP can play her
        viewer = Viewer(token=token)
        try:
            await viewer.connect(
                f"http://127.0.0.1:{live.app.http_port}/whep/livestream/show/alice"
            )
            await viewer.until("video", 5)
            (session,) = live.app.sfu.sessions.values()

            if how == "kick":
                await live.client.kick_user("livestream", "show", "viewer")
            elif how == "revoke":
                await live.client.revoke_tokens("viewer", datetime.now(UTC))
            else:
                await live.client.update_call_members("livestream", "show", remove=["viewer"])
            cut_at = time.monotonic()

            # the WebSocket: an error with the reason, then the close with it
            messages, close_code, reason = await asyncio.wait_for(closed(ws), CUT_DEADLINE)
            assert close_code == code
            assert says in reason
            errors = [m for m in messages if m["type"] == "error"]
            assert errors
            assert says in errors[-1]["message"]
            # WHEP: the server closed the peer connection; no media follows
            await asyncio.wait_for(
                session.closed.wait(), CUT_DEADLINE - (time.monotonic() - cut_at)
            )
            assert session.pc.connectionState == "closed"
            assert not live.app.sfu.sessions
            print(f"{how}: both sessions ended {1000 * (time.monotonic() - cut_at):.0f} ms after")
            closed_at = time.perf_counter()  # the viewer's clock
            await asyncio.sleep(QUIET)  # watch on purpose: the absence of media is the point
            assert media_after(viewer, closed_at) == []
        finally:
            await viewer.close()
    assert not live.app.calls.watchers  # nobody left on the roster


async def test_back_to_backstage_ends_a_whep_viewer_without_join_backstage(live: Live) -> None:
    url = f"http://127.0.0.1:{live.app.http_port}/whep/livestream/show/alice"
    async with connect(live.ws_url(create_token(API_SECRET, "viewer"))) as ws:
        await until_joined_with_tracks(ws)  # alice publishes
    viewer = Viewer(token=create_token(API_SECRET, "viewer"))
    host = Viewer(token=create_token(API_SECRET, "alice"))
    try:
        await viewer.connect(url)
        (viewer_session,) = live.app.sfu.sessions.values()
        await host.connect(url)
        await viewer.until("video", 5)
        await host.until("video", 5)
        await live.client.stop_live("livestream", "show")
        await asyncio.wait_for(viewer_session.closed.wait(), CUT_DEADLINE)
        assert viewer_session.pc.connectionState == "closed"
        assert len(live.app.sfu.sessions) == 1  # the host may watch backstage: still there
        closed_at = time.perf_counter()
        await host.until("video", len(host.frames) + 30)  # the host's media goes on meanwhile
        assert media_after(viewer, closed_at) == []
        assert [p.t for p in host.packets["video"] if p.t > closed_at + IN_FLIGHT]
    finally:
        await viewer.close()
        await host.close()
