"""WHEP endpoints over ASGI: 201 + Location + answer, errors as JSON with their status, CORS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI

from ingest.calls.service import CUT_KICKED, CUT_REVOKED, Disconnect, WatchGrant
from ingest.errors import NotFoundError, PermissionDeniedError
from ingest.media.hub import Hub
from ingest.media.units import AudioConfig, Kind, VideoConfig
from ingest.webrtc.sfu import MAX_OFFER_BYTES, SFU
from ingest.webrtc.whep import bearer_token, build_whep_router
from tests.unit.webrtc.offers import CHROME

HIGH = VideoConfig(codec="h264", record=b"", width=1280, height=720, profile=100, level=40)
AAC = AudioConfig(codec="aac", record=b"\x11\x90", sample_rate=48_000, channels=2)
SDP = {"Content-Type": "application/sdp", "Authorization": "Bearer tok-123"}

calls: list[tuple[str, str, str, str]] = []
held: list[tuple[str, Disconnect, list[bool]]] = []  # (user, how to cut it, released?)


async def authorize(token: str, call_type: str, call_id: str, user_id: str) -> WatchGrant:
    calls.append((token, call_type, call_id, user_id))
    if user_id == "eve":
        raise PermissionDeniedError("eve may not watch this call while it is backstage")
    if user_id == "ghost":
        raise NotFoundError("ghost is not publishing in livestream:show")

    def hold(disconnect: Disconnect) -> Callable[[], None]:
        released: list[bool] = []
        held.append((user_id, disconnect, released))
        if token == "cut-at-once":  # kicked while the answer is being made
            disconnect(CUT_KICKED, "kicked by the host")
        return lambda: released.append(True)

    return WatchGrant(f"{call_type}:{call_id}", f"{user_id}-rtmp", hold)


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, SFU]]:
    hub = Hub()
    hub.publish("livestream:show", "alice-rtmp", "alice", Kind.VIDEO, HIGH)
    hub.publish("livestream:show", "alice-rtmp", "alice", Kind.AUDIO, AAC)
    sfu = SFU(hub)
    app = FastAPI()
    app.include_router(build_whep_router(sfu, authorize), prefix="/api")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http, sfu
    await sfu.stop()
    calls.clear()
    held.clear()


async def test_offer_gets_201_with_answer_and_location(
    client: tuple[httpx.AsyncClient, SFU],
) -> None:
    http, sfu = client
    resp = await http.post("/api/whep/livestream/show/alice", content=CHROME, headers=SDP)
    assert resp.status_code == 201, resp.text
    assert resp.headers["content-type"] == "application/sdp"
    assert "profile-level-id=640028" in resp.text
    assert resp.text.startswith("v=0")
    assert calls == [("tok-123", "livestream", "show", "alice")]
    location = resp.headers["location"]
    session_id = location.rsplit("/", 1)[1]
    assert location == f"/api/whep/session/{session_id}"
    assert session_id in sfu.sessions
    assert resp.headers["access-control-allow-origin"] == "*"
    assert "Location" in resp.headers["access-control-expose-headers"]

    resp = await http.delete(location)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "*"
    assert not sfu.sessions
    resp = await http.delete(location)
    assert resp.status_code == 404
    assert resp.json()["StatusCode"] == 404


@pytest.mark.parametrize(
    ("user", "headers", "body", "status", "code"),
    [
        ("alice", {"Content-Type": "application/sdp"}, CHROME, 401, 5),
        ("alice", {**SDP, "Authorization": "Basic abc"}, CHROME, 401, 5),
        ("alice", {**SDP, "Authorization": "Bearer "}, CHROME, 401, 5),
        ("eve", SDP, CHROME, 403, 17),
        ("ghost", SDP, CHROME, 404, 16),
        ("bob", SDP, CHROME, 404, 16),  # authorized, but bob-rtmp publishes nothing
        ("alice", {**SDP, "Content-Type": "application/json"}, CHROME, 415, 4),
        ("alice", SDP, "not sdp", 400, 4),
        ("alice", SDP, "v=0\n" + "x" * MAX_OFFER_BYTES, 413, 4),
    ],
)
async def test_errors_are_json_with_their_status(
    client: tuple[httpx.AsyncClient, SFU],
    user: str,
    headers: dict[str, str],
    body: str,
    status: int,
    code: int,
) -> None:
    http, sfu = client
    resp = await http.post(f"/api/whep/livestream/show/{user}", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    data = resp.json()
    assert data["StatusCode"] == status
    assert data["code"] == code
    assert data["message"]
    assert resp.headers["access-control-allow-origin"] == "*"
    assert not sfu.sessions


async def test_cors_preflight_and_no_trickle(client: tuple[httpx.AsyncClient, SFU]) -> None:
    http, _ = client
    resp = await http.options("/api/whep/livestream/show/alice")
    assert resp.status_code == 204
    assert resp.headers["access-control-allow-origin"] == "*"
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "Authorization" in resp.headers["access-control-allow-headers"]
    assert resp.headers["accept-post"] == "application/sdp"
    resp = await http.options("/api/whep/session/abc")
    assert "DELETE" in resp.headers["access-control-allow-methods"]
    resp = await http.patch("/api/whep/session/abc", content="a=candidate:...")
    assert resp.status_code == 405
    assert resp.json()["StatusCode"] == 405


def test_bearer_token_parsing() -> None:
    from starlette.requests import Request

    def request(value: str) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", value.encode())]})

    assert bearer_token(request("Bearer abc.def")) == "abc.def"
    assert bearer_token(request("bearer  abc ")) == "abc"


async def test_a_cut_closes_the_session_and_releases_the_roster(
    client: tuple[httpx.AsyncClient, SFU],
) -> None:
    """Kick / revocation reach a WHEP viewer: its peer connection closes, media stops."""
    http, sfu = client
    resp = await http.post("/api/whep/livestream/show/alice", content=CHROME, headers=SDP)
    assert resp.status_code == 201, resp.text
    ((_, disconnect, released),) = held
    (session,) = sfu.sessions.values()
    assert released == []
    disconnect(CUT_REVOKED, "the tokens of user 'viewer' were revoked")
    await asyncio.wait_for(session.closed.wait(), 10)
    assert session.pc.connectionState == "closed"
    assert not sfu.sessions
    assert released == [True]  # off the roster
    resp = await http.delete(resp.headers["location"])
    assert resp.status_code == 404


async def test_a_cut_before_the_answer_refuses_the_offer(
    client: tuple[httpx.AsyncClient, SFU],
) -> None:
    http, sfu = client
    headers = {**SDP, "Authorization": "Bearer cut-at-once"}
    resp = await http.post("/api/whep/livestream/show/alice", content=CHROME, headers=headers)
    assert resp.status_code == 403, resp.text
    assert "kicked by the host" in resp.json()["message"]
    assert not sfu.sessions
    assert held[0][2] == [True]


async def test_an_offer_over_the_limit_is_refused_by_its_length(
    client: tuple[httpx.AsyncClient, SFU],
) -> None:
    http, _ = client
    headers = {**SDP, "Content-Length": str(MAX_OFFER_BYTES + 1)}

    async def body() -> AsyncIterator[bytes]:
        yield b"v=0"  # never the whole declared length: the server must not wait for it

    resp = await http.post("/api/whep/livestream/show/alice", content=body(), headers=headers)
    assert resp.status_code == 413
    assert resp.headers["connection"] == "close"
    assert calls == []  # refused before anyone looked at the token
