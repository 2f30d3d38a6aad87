"""The call-level WebSocket end to end: the full App, ffmpeg RTMP hosts, a `websockets` client
with one aiortc peer connection per subscribed participant (the server offers).

The client decodes what it receives; every wait is on a message or a frame, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ingest.app import App
from ingest.calls import events as ev
from ingest.calls import wire as w
from ingest.calls.service import SERVER
from ingest.calls.tokens import create_token
from ingest.webrtc import signaling as sig
from tests.conftest import API_KEY, API_SECRET, api
from tests.e2e.media import MEDIA_DIR, make_flv, push
from tests.unit.webrtc.synth import chrome_like_h264

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0
CALL_TYPE, CALL_ID = "livestream", "show"
HOSTS = ("alice", "bob", "carol")

Message = dict[str, Any]


@pytest.fixture(scope="session")
def clip() -> Path:
    MEDIA_DIR.mkdir(exist_ok=True)
    return make_flv(MEDIA_DIR / "signaling-320x240.flv", seconds=2.0, size="320x240")


@pytest.fixture
async def app(server: App, monkeypatch: pytest.MonkeyPatch) -> App:
    """The server with a livestream call (in backstage) whose hosts are alice, bob, carol."""
    chrome_like_h264(monkeypatch)  # the client's aiortc accepts H.264 High, like Chrome
    users = {u: w.UserRequest(id=u) for u in (*HOSTS, "viewer")}
    await server.calls.upsert_users(SERVER, w.UpdateUsersRequest(users=users))
    hosts = [w.MemberRequest(user_id=u, role="host") for u in HOSTS]
    await server.calls.get_or_create_call(
        SERVER,
        CALL_TYPE,
        CALL_ID,
        w.GetOrCreateCallRequest(data=w.CallRequest(created_by_id="alice", members=hosts)),
    )
    return server


def token(user_id: str) -> str:
    return create_token(API_SECRET, user_id)


def ws_url(app: App, *, user: str | None = None, **query: str) -> str:
    params = {"api_key": API_KEY, "call_type": CALL_TYPE, "call_id": CALL_ID, **query}
    if user is not None:
        params["token"] = token(user)
    return f"ws://127.0.0.1:{app.http_port}/video/connect?" + "&".join(
        f"{k}={v}" for k, v in params.items()
    )


def rtmp_url(app: App, user: str) -> str:
    return f"rtmp://127.0.0.1:{app.rtmp_port}/{API_KEY}.{CALL_TYPE}.{CALL_ID}/{token(user)}"


class Client:
    """A WebSocket client that answers every offer with a fresh aiortc peer connection and
    counts the video frames it decodes per participant."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[Message] = []
        self.frames: dict[str, int] = {}
        self.peers: dict[str, RTCPeerConnection] = {}
        self._taken: set[int] = set()
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._reader = asyncio.create_task(self._read())

    async def send(self, **msg: Any) -> None:
        await self.ws.send(json.dumps(msg))

    async def expect(self, want: Callable[[Message], bool], what: str = "") -> Message:
        """The first message not taken yet that ``want``s (waits up to TIMEOUT)."""

        def find() -> Message | None:
            for i, msg in enumerate(self.messages):
                if i not in self._taken and want(msg):
                    self._taken.add(i)
                    return msg
            return None

        found: Message | None = None

        def ready() -> bool:
            nonlocal found
            found = find()
            return found is not None or self._reader.done()

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(ready), TIMEOUT)
        except TimeoutError:
            kinds = [m.get("type") for m in self.messages]
            raise AssertionError(f"no message {what} within {TIMEOUT} s; got {kinds}") from None
        assert found is not None, f"the socket closed before {what}: {self.messages[-3:]}"
        return found

    async def until_frames(self, usid: str, count: int) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self.frames.get(usid, 0) >= count), TIMEOUT
            )

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(self._reader, *self._tasks, return_exceptions=True)
        for pc in self.peers.values():
            await pc.close()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg["type"] == "offer":
                    await self._answer(msg)
                self.messages.append(msg)
                await self._notify()
        except ConnectionClosed:
            pass
        finally:
            await self._notify()

    async def _answer(self, offer: Message) -> None:
        usid = offer["user_session_id"]
        old = self.peers.pop(usid, None)
        if old is not None:
            await old.close()
        pc = self.peers[usid] = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._tasks.append(asyncio.create_task(self._count(usid, track)))

        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send(
            type="answer",
            user_session_id=usid,
            offer_id=offer["offer_id"],
            sdp=pc.localDescription.sdp,
        )

    async def _count(self, usid: str, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame: Any = await track.recv()
            except MediaStreamError:
                return
            assert (frame.width, frame.height) == (320, 240)
            self.frames[usid] = self.frames.get(usid, 0) + 1
            await self._notify()


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Client]:
    async with connect(url, open_timeout=TIMEOUT) as ws:
        c = Client(ws)
        try:
            yield c
        finally:
            await c.close()


@contextlib.asynccontextmanager
async def hosts_pushing(app: App, clip: Path, *users: str) -> AsyncIterator[dict[str, Any]]:
    procs = {u: await push(rtmp_url(app, u), clip, realtime=True, loop=True) for u in users}
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.terminate()
        for proc in procs.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.communicate(), TIMEOUT)


def typed(type_: str, **fields: Any) -> Callable[[Message], bool]:
    return lambda m: m.get("type") == type_ and all(m.get(k) == v for k, v in fields.items())


def participant_event(type_: str, user_id: str) -> Callable[[Message], bool]:
    return lambda m: m.get("type") == type_ and m["participant"]["user"]["id"] == user_id


async def test_host_watches_two_rtmp_hosts(app: App, clip: Path) -> None:
    async with client(ws_url(app, user="carol")) as c:
        joined = await c.expect(typed("joined"), "joined")
        assert joined["call_cid"] == f"{CALL_TYPE}:{CALL_ID}"
        assert joined["user_id"] == "carol"
        assert joined["backstage"] is True
        assert joined["participants"] == []
        async with hosts_pushing(app, clip, "alice", "bob") as procs:
            sessions: dict[str, str] = {}
            for user in ("alice", "bob"):
                event = await c.expect(participant_event(ev.PARTICIPANT_JOINED, user), user)
                assert event["participant"]["role"] == "host"
                assert isinstance(event["participant"]["joined_at"], str)  # RFC 3339
                sessions[user] = event["participant"]["user_session_id"]
                await c.send(type="subscribe", user_session_id=sessions[user])
            for user in ("alice", "bob"):
                await c.expect(typed("subscribed", user_session_id=sessions[user]))
                offer = await c.expect(typed("offer", user_session_id=sessions[user]))
                assert offer["tracks"] == ["audio", "video"]
                assert "profile-level-id=64" in offer["sdp"]  # the stream's High profile
                assert "a=candidate:" in offer["sdp"]  # no trickle: every candidate in the SDP
            await c.until_frames(sessions["alice"], 15)
            await c.until_frames(sessions["bob"], 15)
            # one bridge per track, shared: two participants, two video bridges
            assert len({b for b in app.sfu._bridges.values() if b.kind.value == "video"}) == 2

            # bob stops: his participant leaves, his subscription ends, alice keeps flowing
            procs["bob"].terminate()
            left = await c.expect(participant_event(ev.PARTICIPANT_LEFT, "bob"), "bob left")
            assert left["participant"]["user_session_id"] == sessions["bob"]
            gone = await c.expect(typed("unsubscribed", user_session_id=sessions["bob"]))
            assert "left" in gone["reason"]
            seen = c.frames[sessions["alice"]]
            await c.until_frames(sessions["alice"], seen + 15)

            # bob starts again: a new participant (session), announced as joined
            async with hosts_pushing(app, clip, "bob"):
                again = await c.expect(participant_event(ev.PARTICIPANT_JOINED, "bob"))
                assert again["participant"]["user_session_id"] != sessions["bob"]

                # a viewer's reaction over REST reaches the WebSocket
                async with api(app, token=token("viewer")) as viewer:
                    await viewer.send_reaction(
                        CALL_TYPE,
                        CALL_ID,
                        w.SendReactionRequest(type="like", emoji_code=":thumbsup:"),
                    )
                reaction = await c.expect(typed(ev.REACTION_NEW), "reaction")
                assert reaction["reaction"]["type"] == "like"
                assert reaction["reaction"]["user"]["id"] == "viewer"
                assert reaction["call_cid"] == f"{CALL_TYPE}:{CALL_ID}"
    assert not app.signaling or not app.signaling.clients


async def test_viewer_waits_for_live_and_loses_media_in_backstage(app: App, clip: Path) -> None:
    async with client(ws_url(app, user="viewer")) as c:
        joined = await c.expect(typed("joined"))
        assert joined["backstage"] is True
        assert "join-backstage" not in joined["own_capabilities"]
        async with hosts_pushing(app, clip, "alice"):
            event = await c.expect(participant_event(ev.PARTICIPANT_JOINED, "alice"))
            usid = event["participant"]["user_session_id"]
            await c.send(type="subscribe", user_session_id=usid)
            refused = await c.expect(typed("error"), "error")
            assert refused["code"] == sig.ERR_NOT_ALLOWED
            assert "not live yet" in refused["message"]

            await app.calls.go_live(SERVER, CALL_TYPE, CALL_ID, w.GoLiveRequest())
            await c.expect(typed(ev.CALL_LIVE_STARTED), "call.live_started")
            await c.send(type="subscribe", user_session_id=usid)
            await c.expect(typed("offer", user_session_id=usid))
            await c.until_frames(usid, 10)

            await app.calls.stop_live(SERVER, CALL_TYPE, CALL_ID, w.StopLiveRequest())
            updated = await c.expect(typed(ev.CALL_UPDATED, backstage=True))
            assert updated["call_cid"] == f"{CALL_TYPE}:{CALL_ID}"
            gone = await c.expect(typed("unsubscribed", user_session_id=usid))
            assert "backstage" in gone["reason"]


async def test_protocol_errors_and_auth(app: App) -> None:
    # a bad token: an error message, then close 4401 with a reason
    async with connect(ws_url(app, token="not-a-jwt")) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert error["type"] == "error"
        assert error["code"] == sig.ERR_UNAUTHORIZED
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == sig.CLOSE_UNAUTHORIZED
        assert ws.close_reason
    # the token in the first message instead of the URL
    async with client(ws_url(app)) as c:
        await c.send(type="auth", token=token("viewer"))
        joined = await c.expect(typed("joined"))
        assert joined["user_id"] == "viewer"
        await c.send(type="ping")
        await c.expect(typed("pong"))
        await c.ws.send("{not json")
        assert (await c.expect(typed("error")))["code"] == sig.ERR_BAD_JSON
        await c.send(type="dance")
        assert (await c.expect(typed("error")))["code"] == sig.ERR_UNKNOWN_TYPE
        await c.send(type="subscribe", user_session_id="nobody")
        error = await c.expect(typed("error"))
        # in backstage a viewer is refused before the participant is looked up
        assert error["code"] in (sig.ERR_NOT_ALLOWED, sig.ERR_UNKNOWN_PARTICIPANT)
        await c.send(type="unsubscribe", user_session_id="nobody")
        assert (await c.expect(typed("error")))["code"] == sig.ERR_NOT_SUBSCRIBED
    # a host may subscribe in backstage, but not to someone who is not there
    async with client(ws_url(app, user="carol")) as c:
        await c.expect(typed("joined"))
        await c.send(type="subscribe", user_session_id="nobody")
        assert (await c.expect(typed("error")))["code"] == sig.ERR_UNKNOWN_PARTICIPANT
    # the sample viewer page is served
    async with httpx.AsyncClient() as http:
        page = await http.get(f"http://127.0.0.1:{app.http_port}/samples/viewer.html")
    assert page.status_code == 200
    assert "/video/connect" in page.text
    # an unknown call
    async with connect(ws_url(app, user="carol", call_id="nope")) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert error["code"] == sig.ERR_NOT_FOUND
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == sig.CLOSE_NOT_FOUND


async def test_websocket_frames_over_the_server_limit_close_the_socket(server: App) -> None:
    """WS_MAX_FRAME_BYTES bounds what uvicorn buffers before signaling sees a message."""
    from ingest.app import WS_MAX_FRAME_BYTES

    url = (
        f"ws://127.0.0.1:{server.http_port}/video/connect"
        f"?api_key={API_KEY}&call_type=livestream&call_id=nope"
    )
    async with connect(url, max_size=None) as ws:
        await ws.send("x" * (WS_MAX_FRAME_BYTES + 1))
        await asyncio.wait_for(ws.wait_closed(), 10)
    assert ws.close_code == 1009  # message too big, closed by uvicorn before signaling sees it
