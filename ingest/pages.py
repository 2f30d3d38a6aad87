"""The sample apps, served by the server: ``/ingest.js`` and ``/samples/<page>``, plus a
development-only token endpoint so the pages work against ``scripts/serve`` with no setup.

Only the files named in :data:`PAGES` (all in ``samples/``) are served, by name: no path from a
request ever reaches the file system. hls.js is served from ``samples/node_modules`` (installed by
``npm ci`` in ``samples/``, which ``scripts/test`` runs) at :data:`HLS_JS_ROUTE`; the pages never
load it from a CDN.

``POST /api/v2/dev/token`` with ``{"user_id", "call_type"?, "call_id"?, "role"?}`` answers a user
token and the API key, in development mode only (no ``api_key`` / ``api_secret`` configured):
it creates the user and, for ``role`` ``host`` (the default) with a call named, the call (if
new) with that user as a host member; ``role`` ``user`` is a plain viewer. With configured
credentials it is a 403 that says so: tokens then come from your backend
(``ingest.client.create_token``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .calls import wire as w
from .calls.service import SERVER, CallService
from .calls.tokens import create_token
from .errors import InputError, NotFoundError, PermissionDeniedError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PAGES: dict[str, tuple[str, str]] = {
    "/ingest.js": ("ingest.js", "text/javascript; charset=utf-8"),
    "/ingest.d.ts": ("ingest.d.ts", "application/typescript; charset=utf-8"),
    "/samples/ingest.js": ("ingest.js", "text/javascript; charset=utf-8"),
    "/samples/host.html": ("host.html", "text/html; charset=utf-8"),
    "/samples/viewer.html": ("viewer.html", "text/html; charset=utf-8"),
    "/samples/whep-player.html": ("whep-player.html", "text/html; charset=utf-8"),
    "/samples/latency.html": ("latency.html", "text/html; charset=utf-8"),
}
"""Route -> (file in samples/, content type). Nothing else is served."""
HLS_JS_ROUTE = "/vendor/hls.min.js"
HLS_JS_FILE = Path("node_modules") / "hls.js" / "dist" / "hls.min.js"
DEV_TOKEN_TTL = 24 * 3600
"""Seconds a development token is valid (like the stream key ``ingest call create`` prints)."""
DEV_ROLES = ("host", "user")


class DevTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=255, description="Who the token is for.")
    call_type: str | None = Field(None, max_length=255)
    call_id: str | None = Field(None, max_length=255)
    role: str = Field("host", description="The user's role in the call: 'host' or 'user'.")


class DevTokenResponse(BaseModel):
    token: str
    api_key: str
    user_id: str
    expires_in: int


def build_pages_router(
    svc: Callable[[], CallService], development: bool, root: Path = SAMPLES
) -> APIRouter:
    """Static sample routes and, in development mode, token minting."""
    router = APIRouter(include_in_schema=False)

    def serve(name: str, media_type: str) -> Callable[[], Response]:
        def handler() -> Response:
            path = root / name
            if not path.is_file():
                raise NotFoundError(f"samples/{name} is not installed next to the server")
            return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

        return handler

    for route, (name, media_type) in PAGES.items():
        router.add_api_route(route, serve(name, media_type), methods=["GET"])

    @router.get(HLS_JS_ROUTE)
    def hls_js() -> Response:
        path = root / HLS_JS_FILE
        if not path.is_file():
            raise NotFoundError(
                "hls.js is not installed: run `npm ci` in samples/ (scripts/test does it)"
            )
        return FileResponse(path, media_type="text/javascript; charset=utf-8")

    @router.get("/api/v2/dev")
    def dev_status() -> JSONResponse:
        """Whether the dev token endpoint works (the pages say so)."""
        return JSONResponse({"development": development})

    @router.post("/api/v2/dev/token")
    async def dev_token(body: DevTokenRequest) -> JSONResponse:
        if not development:
            raise PermissionDeniedError(
                "the dev token endpoint works only in development mode (no api_key/api_secret "
                "configured): mint user tokens in your backend (ingest.client.create_token) "
                "or with `ingest token <user_id>`"
            )
        if body.role not in DEV_ROLES:
            raise InputError(f"role must be one of {', '.join(DEV_ROLES)}, not '{body.role}'")
        calls = svc()
        await calls.upsert_users(
            SERVER, w.UpdateUsersRequest(users={body.user_id: w.UserRequest(id=body.user_id)})
        )
        if body.call_type and body.call_id and body.role == "host":
            member = w.MemberRequest(user_id=body.user_id, role=body.role)
            call, _, created = await calls.get_or_create_call(
                SERVER,
                body.call_type,
                body.call_id,
                w.GetOrCreateCallRequest(
                    data=w.CallRequest(created_by_id=body.user_id, members=[member])
                ),
            )
            if not created:
                await calls.update_members(
                    SERVER,
                    call.type,
                    call.id,
                    w.UpdateCallMembersRequest(update_members=[member]),
                )
        token = create_token(calls.api_secret, body.user_id, ttl=DEV_TOKEN_TTL)
        out = DevTokenResponse(
            token=token, api_key=calls.api_key, user_id=body.user_id, expires_in=DEV_TOKEN_TTL
        )
        return JSONResponse(out.model_dump())

    return router
