"""Helpers of the HLS and recording tests: the REST API over httpx, events, ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ingest.app import App
from ingest.calls.events import Subscription
from ingest.calls.tokens import create_server_token, create_token
from tests.conftest import API_KEY, API_SECRET

CALL = "livestream/hlsshow"
CID = "livestream:hlsshow"


class Api:
    """The REST API with a server token, over plain httpx."""

    def __init__(self, port: int, secret: str = API_SECRET, key: str = API_KEY) -> None:
        self.secret = secret
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": create_server_token(secret)},
            params={"api_key": key},
            timeout=30,
        )

    async def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await self.http.post(f"/api/v2/video/call/{CALL}{path}", json=body or {})
        assert r.status_code == 201 or r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def get(self, path: str = "") -> dict[str, Any]:
        r = await self.http.get(f"/api/v2/video/call/{CALL}{path}")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def setup(self) -> str:
        """Users, the call with alice as host; returns alice's RTMP URL."""
        r = await self.http.post(
            "/api/v2/users", json={"users": {u: {"id": u} for u in ("alice", "viewer")}}
        )
        assert r.status_code == 201 or r.status_code == 200, r.text
        got = await self.post(
            "",
            {"data": {"created_by_id": "alice", "members": [{"user_id": "alice", "role": "host"}]}},
        )
        address = got["call"]["ingress"]["rtmp"]["address"]
        return f"{address}/{create_token(self.secret, 'alice')}"


@contextlib.asynccontextmanager
async def open_api(app: App) -> AsyncIterator[Api]:
    client = Api(app.http_port)
    try:
        yield client
    finally:
        await client.http.aclose()


async def wait_event(sub: Subscription, type_: str, within: float = 20) -> dict[str, Any]:
    async def loop() -> dict[str, Any]:
        while True:
            event = await sub.get()
            if event["type"] == type_:
                return event

    return await asyncio.wait_for(loop(), within)


async def ffprobe(*args: str) -> dict[str, Any]:
    """ffprobe's JSON (run without blocking the loop: the server under test is on it)."""
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-of", "json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, err.decode(errors="replace")
    data: dict[str, Any] = json.loads(out)
    return data
