"""No token in any log line: a server run that passes tokens every way there is, with every
logger at DEBUG and uvicorn's access log switched on, then a scan of everything logged.

Ways in: ``Authorization`` on the REST API (server and user tokens, good, forged, expired),
``?token=`` on the call WebSocket and on a plain HTTP query, the WebSocket's ``auth`` message,
RTMP stream keys (accepted and refused), the WHEP bearer; then a revocation, which logs the
sessions it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingest.app import App
from ingest.calls.tokens import create_server_token, create_token
from tests.conftest import API_KEY, API_SECRET
from tests.e2e.media import MEDIA_DIR, finish, make_flv, push
from tests.unit.webrtc.offers import CHROME

pytestmark = pytest.mark.e2e

TIMEOUT = 20.0
CALL = "livestream/show"


class Capture(logging.Handler):
    """Every record, formatted with its traceback, as a handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    # every logger at DEBUG, whatever an earlier test set (uvicorn.Config(log_level=...) sets
    # uvicorn's loggers for the whole process)
    loggers = [
        root,
        *(x for x in root.manager.loggerDict.values() if isinstance(x, logging.Logger)),
    ]
    saved = [(x, x.level, x.propagate) for x in loggers]
    for x in loggers:  # and every record reaches the root (uvicorn's own config stops some)
        x.setLevel(logging.DEBUG)
        x.propagate = True
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for x, level, propagate in saved:
            x.setLevel(level)
            x.propagate = propagate
        logging.getLogger("uvicorn.access").removeHandler(handler)


@pytest.fixture(scope="session")
def clip() -> Path:
    MEDIA_DIR.mkdir(exist_ok=True)
    return make_flv(MEDIA_DIR / "redaction-320x240.flv", seconds=2.0, size="320x240")


def forged(user_id: str) -> str:
    return create_token("not-the-secret-" + "x" * 40, user_id)


async def test_no_token_reaches_a_log_line(
    app_factory: Callable[..., Any], capture: Capture, clip: Path
) -> None:
    app: App = await app_factory(log_level="DEBUG")
    # uvicorn writes access lines only when its access logger has a handler: give it ours
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.DEBUG)
    access.addHandler(capture)

    server = create_server_token(API_SECRET)
    alice, viewer = create_token(API_SECRET, "alice"), create_token(API_SECRET, "viewer")
    expired = create_token(API_SECRET, "viewer", ttl=1, now=1_700_000_000)
    bad_sig = viewer.rsplit(".", 1)[0] + "." + "A" * 43
    tokens = {
        "server": server,
        "alice": alice,
        "viewer": viewer,
        "expired": expired,
        "forged": forged("alice"),
        "forged-ws": forged("viewer"),
        "forged-key": forged("alice") + "x",
        "bad-sig": bad_sig,
    }
    base = f"http://127.0.0.1:{app.http_port}"
    q = f"?api_key={API_KEY}"

    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:

        async def api(method: str, path: str, tok: str, body: Any = None) -> httpx.Response:
            return await http.request(
                method, f"/api/v2{path}{q}", headers={"Authorization": tok}, json=body
            )

        # REST: Authorization header, good and bad
        users = {u: {"id": u} for u in ("alice", "viewer")}
        assert (await api("POST", "/users", server, {"users": users})).status_code == 200
        create = {
            "data": {"created_by_id": "alice", "members": [{"user_id": "alice", "role": "host"}]}
        }
        assert (await api("POST", f"/video/call/{CALL}", server, create)).status_code in (200, 201)
        assert (await api("POST", f"/video/call/{CALL}/go_live", alice, {})).status_code == 200
        assert (await api("GET", f"/video/call/{CALL}", viewer)).status_code in (200, 403)
        for bad in ("expired", "forged", "bad-sig"):
            assert (await api("GET", f"/video/call/{CALL}", tokens[bad])).status_code == 401
        # a token in a plain HTTP query string (uvicorn's access line)
        assert (await http.get(f"/healthz?token={viewer}")).status_code == 200

        ws_base = f"ws://127.0.0.1:{app.http_port}/video/connect{q}&call_type=livestream"
        # WebSocket: ?token= and the auth message; one of each refused
        async with (
            connect(f"{ws_base}&call_id=show&token={viewer}") as by_query,
            connect(f"{ws_base}&call_id=show") as by_message,
        ):
            await by_message.send(json.dumps({"type": "auth", "token": alice}))
            for ws in (by_query, by_message):
                assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "joined"
            async with connect(f"{ws_base}&call_id=show&token={tokens['forged-ws']}") as refused:
                assert "signature" in str(await asyncio.wait_for(refused.recv(), TIMEOUT))

            # RTMP: a refused key and an accepted one (alice goes live for real)
            rtmp = f"rtmp://127.0.0.1:{app.rtmp_port}/{API_KEY}.livestream.show/"
            code, _ = await finish(await push(rtmp + tokens["forged-key"], clip), TIMEOUT)
            assert code != 0
            code, _ = await finish(await push(rtmp + viewer, clip), TIMEOUT)
            assert code != 0
            publisher = await push(rtmp + alice, clip, realtime=True, loop=True)
            try:
                while True:  # until alice's participant has tracks: an offer on the viewer's socket
                    msg = json.loads(await asyncio.wait_for(by_query.recv(), TIMEOUT))
                    if msg["type"] == "call.session_participant_joined":
                        usid = msg["participant"]["user_session_id"]
                        subscribe = {"type": "subscribe", "user_session_id": usid}
                        await by_query.send(json.dumps(subscribe))
                    elif msg["type"] == "offer":
                        break
                # WHEP: the bearer token, accepted and refused
                sdp = {"Content-Type": "application/sdp"}
                resp = await http.post(
                    "/whep/livestream/show/alice",
                    content=CHROME,
                    headers={**sdp, "Authorization": f"Bearer {viewer}"},
                )
                assert resp.status_code == 201, resp.text
                refused_whep = await http.post(
                    "/whep/livestream/show/alice",
                    content=CHROME,
                    headers={**sdp, "Authorization": f"Bearer {tokens['forged']}"},
                )
                assert refused_whep.status_code == 401
                # revocation ends sessions, and says so in the log
                cutoff = datetime.now(UTC).isoformat()
                revoke = {
                    "users": [{"id": "alice", "set": {"revoke_tokens_issued_before": cutoff}}]
                }
                assert (await api("PATCH", "/users", server, revoke)).status_code == 200
                await http.delete(resp.headers["location"])
            finally:
                with contextlib.suppress(ProcessLookupError):
                    publisher.kill()
                await publisher.wait()
            with contextlib.suppress(ConnectionClosed):
                await by_query.send(json.dumps({"type": "ping"}))

    text = "\n".join(capture.lines)
    # the sources that used to leak were active: the scan saw their lines
    assert "WebSocket /video/connect" in text
    assert "/healthz?token=" in text
    assert any(line.startswith("DEBUG") for line in capture.lines)
    leaks = {
        name
        for name, tok in tokens.items()
        if tok in text or tok.rsplit(".", 1)[1] in text  # the whole token, or its signature
    }
    assert not leaks, f"tokens in the log: {sorted(leaks)}"
