"""Webhooks reach a real local HTTP receiver, signed, retried, never blocking the API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.calls import wire as w
from tests.conftest import API_SECRET, api

pytestmark = pytest.mark.e2e


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.received: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
        self.fail_first = fail_first
        self.attempts = 0

    async def handle(self, request: Request) -> Response:
        self.attempts += 1
        body = await request.body()
        if self.attempts <= self.fail_first:
            return Response("try again", status_code=503)
        await self.received.put((dict(request.headers), body))
        return Response("ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    rec = Receiver(fail_first=1)
    app = Starlette(routes=[Route("/hook", rec.handle, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield rec, sock.getsockname()[1]
    server.should_exit = True
    await task
    sock.close()


async def next_event(rec: Receiver, type_: str) -> tuple[dict[str, str], bytes, dict[str, Any]]:
    while True:
        headers, body = await asyncio.wait_for(rec.received.get(), 10)
        event = json.loads(body)
        if event["type"] == type_:
            return headers, body, event


async def test_webhooks_are_signed_and_retried(
    app_factory: Any, receiver: tuple[Receiver, int]
) -> None:
    rec, port = receiver
    app = await app_factory(webhook_url=f"http://127.0.0.1:{port}/hook")
    async with api(app) as client:
        await client.upsert_users(w.UserRequest(id="alice"))
        await client.get_or_create_call(
            "livestream",
            "hooked",
            w.CallRequest(
                created_by_id="alice", members=[w.MemberRequest(user_id="alice", role="host")]
            ),
        )
        await client.go_live("livestream", "hooked")

    headers, body, created = await next_event(rec, "call.created")
    expected = hmac.new(API_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-signature"] == expected
    assert created["call_cid"] == "livestream:hooked"
    assert headers["x-webhook-attempt"] == "2"  # the receiver refused the first attempt

    headers, body, live = await next_event(rec, "call.live_started")
    assert headers["x-signature"] == hmac.new(API_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert live["call_cid"] == "livestream:hooked"
    assert app.webhooks is not None
    assert app.webhooks.failed == 0
    await app.stop()


async def test_unreachable_webhook_does_not_block_the_api(app_factory: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead_port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    app = await app_factory(
        webhook_url=f"http://127.0.0.1:{dead_port}/hook", webhook_max_attempts=2
    )
    async with api(app) as client:
        await client.upsert_users(w.UserRequest(id="alice"))
        resp = await client.get_or_create_call(
            "livestream", "x", w.CallRequest(created_by_id="alice")
        )
    assert resp.created is True
    assert app.webhooks is not None
    await app.stop()
