"""HTTP under attack, against the running server: slow heads, idle keep-alive connections,
oversized heads and huge WHEP bodies are cut off early, and the API keeps answering meanwhile.

Clients are raw asyncio streams, so the test controls every byte and its timing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from ingest.app import App
from ingest.http import MAX_HEADER_BYTES
from ingest.webrtc.sfu import MAX_OFFER_BYTES
from tests.conftest import API_KEY, API_SECRET

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT = 1.0  # the server's deadline in these tests (default 10 s)
KEEP_ALIVE = 1  # seconds (default 5)
MARGIN = 8.0  # what a busy 2-core machine may add before the server's timer runs
SLOW_CLIENTS = 200
TRICKLE_EVERY = 0.2  # a slow client sends a header line this often: faster than any deadline


async def start(app_factory: Callable[..., Any]) -> App:
    app: App = await app_factory(
        http_request_timeout=REQUEST_TIMEOUT, http_keep_alive_timeout=KEEP_ALIVE
    )
    return app


async def closed_after(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_slow_heads_are_cut_at_the_deadline_however_they_trickle(
    app_factory: Callable[..., Any],
) -> None:
    app = await start(app_factory)

    async def slow_client() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
        began = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed = asyncio.ensure_future(closed_after(reader))
        try:
            n = 0
            while not closed.done():  # one header line every TRICKLE_EVERY, never the end
                with contextlib.suppress(ConnectionError):
                    writer.write(b"X-Slow-%d: 1\r\n" % n)
                    await writer.drain()
                n += 1
                await asyncio.wait([closed], timeout=TRICKLE_EVERY)
            return time.monotonic() - began, closed.result()
        finally:
            writer.close()

    async def silent_client() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
        began = time.monotonic()
        try:
            data = await asyncio.wait_for(closed_after(reader), REQUEST_TIMEOUT + MARGIN)
            return time.monotonic() - began, data
        finally:
            writer.close()

    slow = [asyncio.ensure_future(slow_client()) for _ in range(SLOW_CLIENTS)]
    silent = asyncio.ensure_future(silent_client())
    # meanwhile the API answers a well-behaved client at once
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as http:
        resp = await http.get("/healthz")
    assert resp.status_code == 200
    results = await asyncio.wait_for(asyncio.gather(*slow), REQUEST_TIMEOUT + MARGIN * 2)
    for took, data in results:
        assert REQUEST_TIMEOUT * 0.9 <= took < REQUEST_TIMEOUT + MARGIN, took
        assert data.startswith(b"HTTP/1.1 408 "), data[:80]
    took, data = await silent
    assert took >= REQUEST_TIMEOUT * 0.9
    assert data == b""  # it never said anything, so it gets no answer either


async def test_idle_keep_alive_connections_are_closed(app_factory: Callable[..., Any]) -> None:
    app = await start(app_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), MARGIN)
        assert head.startswith(b"HTTP/1.1 200 ")
        idle_since = time.monotonic()
        rest = await asyncio.wait_for(closed_after(reader), KEEP_ALIVE + MARGIN)
        assert time.monotonic() - idle_since >= KEEP_ALIVE * 0.9
        assert b"HTTP/1.1" not in rest  # just the body of the answer, then the close
    finally:
        writer.close()


async def test_a_second_request_on_a_keep_alive_connection_has_its_own_deadline(
    app_factory: Callable[..., Any],
) -> None:
    app = await start(app_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), MARGIN)
        assert head.startswith(b"HTTP/1.1 200 ")
        began = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # the next request starts, never ends
        rest = await asyncio.wait_for(closed_after(reader), REQUEST_TIMEOUT + MARGIN)
        assert time.monotonic() - began >= REQUEST_TIMEOUT * 0.9
        assert b"HTTP/1.1 408 " in rest
    finally:
        writer.close()


async def test_a_head_over_the_limit_is_refused(app_factory: Callable[..., Any]) -> None:
    app = await start(app_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        data = await asyncio.wait_for(closed_after(reader), MARGIN)
        assert data.startswith(b"HTTP/1.1 400 "), data[:80]
    finally:
        writer.close()


async def test_a_websocket_outlives_the_request_deadline(app_factory: Callable[..., Any]) -> None:
    """The deadline covers the upgrade request only: the WebSocket itself stays."""
    from websockets.asyncio.client import connect

    app = await start(app_factory)
    key = app.creds.api_key
    url = f"ws://127.0.0.1:{app.http_port}/video/connect?api_key={key}&call_type=a&call_id=b"
    async with connect(url) as ws:
        # wait past the HTTP deadline on purpose: the time passing is what is tested
        await asyncio.sleep(REQUEST_TIMEOUT * 2)
        # still open: the server still reads and answers (here: refuses the token)
        await ws.send('{"type": "auth", "token": "not-a-jwt"}')
        reply = await asyncio.wait_for(ws.recv(), MARGIN)
    assert "not a valid JWT" in str(reply)


async def test_whep_refuses_a_huge_body_by_its_length_without_reading_it(
    app_factory: Callable[..., Any],
) -> None:
    app = await start(app_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        writer.write(
            b"POST /whep/livestream/show/alice HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer not-even-a-token\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: %d\r\n\r\n" % (300 * 1024 * 1024)
        )
        data = await asyncio.wait_for(closed_after(reader), MARGIN)
        assert data.startswith(b"HTTP/1.1 413 "), data[:80]
        assert b"larger than %d bytes" % MAX_OFFER_BYTES in data
    finally:
        writer.close()


async def test_whep_stops_reading_a_huge_streamed_body(app_factory: Callable[..., Any]) -> None:
    """300 MiB sent chunked (no length) without a valid token: the server answers 413 and hangs
    up after the first ~64 KiB; its memory does not follow the upload."""
    app = await start(app_factory)
    total = 300 * 1024 * 1024
    chunk = b"a" * (1024 * 1024)
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    before = rss_bytes()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    sent = 0
    try:
        writer.write(
            b"POST /whep/livestream/show/alice HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer not-even-a-token\r\nContent-Type: application/sdp\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = asyncio.ensure_future(closed_after(reader))
        with contextlib.suppress(ConnectionError):
            while sent < total and not answer.done():
                writer.write(frame)
                await asyncio.wait_for(writer.drain(), MARGIN)
                sent += len(chunk)
        data = await asyncio.wait_for(answer, MARGIN)
    finally:
        writer.close()
    grown = rss_bytes() - before
    print(
        f"huge WHEP body: {sent >> 20} MiB sent before the server hung up, RSS +{grown >> 20} MiB"
    )
    assert sent < total // 4  # the server hung up long before the end
    # the answer may be lost to the reset when the server closes with our bytes unread
    assert data == b"" or data.startswith(b"HTTP/1.1 413 "), data[:80]
    assert grown < 64 * 1024 * 1024


def signed(payload: dict[str, Any]) -> str:
    """An HS256 JWT of any JSON payload, signed with the test server's secret."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = b64(hmac.digest(API_SECRET.encode(), head + b"." + body, "sha256"))
    return (head + b"." + body + b"." + sig).decode()


@pytest.mark.parametrize(
    ("payload", "claim"),
    [
        ({"user_id": "alice", "aud": "elsewhere"}, "'aud'"),
        ({"user_id": "alice", "sub": 42}, "'sub'"),
        ({"user_id": 42}, "'user_id'"),
        ({"user_id": "alice", "iat": 1e300}, "'iat'"),
        ({"user_id": "alice", "exp": float("nan")}, "'exp'"),
        ({"user_id": "alice", "exp": "tomorrow"}, "'exp'"),
    ],
)
async def test_odd_claims_of_a_signed_token_are_a_401_everywhere(
    server: App, payload: dict[str, Any], claim: str
) -> None:
    """REST, WHEP and the call WebSocket: a 401 (4401) naming the claim, never a 500."""
    from websockets.asyncio.client import connect

    token = signed(payload)
    base = f"http://127.0.0.1:{server.http_port}"
    async with httpx.AsyncClient(base_url=base) as http:
        rest = await http.get(
            f"/api/v2/video/call/livestream/show?api_key={API_KEY}",
            headers={"Authorization": token},
        )
        whep = await http.post(
            "/whep/livestream/show/alice",
            content="v=0\r\n",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
        )
    for resp in (rest, whep):
        assert resp.status_code == 401, resp.text
        assert claim in resp.json()["message"]
    url = (
        f"ws://127.0.0.1:{server.http_port}/video/connect?api_key={API_KEY}"
        f"&call_type=livestream&call_id=show&token={token}"
    )
    async with connect(url) as ws:
        refusal = json.loads(await asyncio.wait_for(ws.recv(), MARGIN))
        assert claim in refusal["message"]
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), MARGIN)
    assert ws.close_code == 4401


async def test_a_body_nobody_reads_is_not_kept_and_its_connection_ends(
    app_factory: Callable[..., Any],
) -> None:
    """A POST to an endpoint that takes no body (here a 404), whose body never ends: the server
    answers, keeps none of it, and hangs up at the request deadline."""
    app = await start(app_factory)
    chunk = b"a" * (1024 * 1024)
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    before = rss_bytes()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    began = time.monotonic()
    try:
        writer.write(
            b"POST /nothing-here HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        answer = asyncio.ensure_future(closed_after(reader))
        with contextlib.suppress(ConnectionError):
            while not answer.done() and time.monotonic() - began < REQUEST_TIMEOUT + MARGIN:
                writer.write(frame)
                await asyncio.wait_for(writer.drain(), MARGIN)
        data = await asyncio.wait_for(answer, MARGIN)
    finally:
        writer.close()
    assert time.monotonic() - began < REQUEST_TIMEOUT + MARGIN
    assert data.startswith(b"HTTP/1.1 404 "), data[:80]
    assert rss_bytes() - before < 64 * 1024 * 1024
