"""A livestream call with a host (alice) and a viewer, set up through ``ingest.client``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ingest.app import App
from ingest.calls import wire as w
from ingest.client import AsyncClient
from tests.conftest import api


@dataclass
class Call:
    app: App
    client: AsyncClient
    address: str  # call.ingress.rtmp.address
    call_type: str
    call_id: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    def whep(self, publisher: str = "alice") -> str:
        return f"{self.base}/whep/{self.call_type}/{self.call_id}/{publisher}"

    async def go_live(self) -> None:
        await self.client.go_live(self.call_type, self.call_id)


@asynccontextmanager
async def livestream(server: App, call_type: str, call_id: str) -> AsyncIterator[Call]:
    """Users alice (host) and viewer; the call in backstage."""
    async with api(server) as client:
        await client.upsert_users(w.UserRequest(id="alice"), w.UserRequest(id="viewer"))
        resp = await client.get_or_create_call(
            call_type,
            call_id,
            w.CallRequest(
                created_by_id="alice", members=[w.MemberRequest(user_id="alice", role="host")]
            ),
        )
        yield Call(server, client, resp.call.ingress.rtmp.address, call_type, call_id)
