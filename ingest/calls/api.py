"""Stream Video's server REST API (livestream subset) over FastAPI.

Every request carries ``?api_key=`` and ``Authorization: <JWT>`` (no ``Bearer``; accepted too).
Errors come back in Stream's shape: ``{"code", "message", "StatusCode", "duration", ...}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import AuthenticationError, IngestError, InputError, NotFoundError
from . import responses as R
from .service import Caller, CallService

log = logging.getLogger("ingest.api")

MAX_BODY_BYTES = 1024 * 1024
PYTHON_SDK_CLIENT_PREFIX = "stream-python-client"


def _duration(request: Request) -> str:
    started = getattr(request.state, "started", None)
    ms = (time.perf_counter() - started) * 1000 if started else 0.0
    return f"{ms:.2f}ms"


def _encoder(ns_times: bool) -> Callable[[Any], Any]:
    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            if ns_times:
                return int(o.timestamp() * 1_000_000) * 1000
            return o.isoformat().replace("+00:00", "Z")
        raise TypeError(f"cannot encode {type(o).__name__}")

    return default


class StreamJSONResponse(JSONResponse):
    """JSON with times in the form the client reads (see module docstring of responses)."""

    ns_times = False

    def __init__(self, content: Any, status_code: int = 200, *, ns_times: bool = False) -> None:
        self.ns_times = ns_times
        super().__init__(content, status_code)

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_encoder(self.ns_times), separators=(",", ":")).encode()


def reply(request: Request, body: dict[str, Any], status: int = 200) -> StreamJSONResponse:
    body.setdefault("duration", _duration(request))
    client = request.headers.get("x-stream-client", "")
    return StreamJSONResponse(body, status, ns_times=client.startswith(PYTHON_SDK_CLIENT_PREFIX))


def error_body(request: Request, err: IngestError) -> dict[str, Any]:
    return {
        "code": err.code,
        "message": err.message,
        "StatusCode": err.status,
        "duration": _duration(request),
        "more_info": "",
        "exception_fields": {},
        "details": [],
        "unrecoverable": not err.retryable,
    }


async def _json_body(request: Request) -> dict[str, Any]:
    too_big = InputError(f"request body is larger than {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # never buffer more than the limit
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InputError("request body must be a JSON object")
    return data


def build_router(svc: CallService) -> APIRouter:
    router = APIRouter(prefix="/api/v2")

    async def caller_of(request: Request) -> Caller:
        key = request.query_params.get("api_key")
        if not key:
            raise AuthenticationError("api_key query parameter is missing: add ?api_key=<your key>")
        if key != svc.api_key:
            raise AuthenticationError(
                f"api_key '{key}' is not this server's key: use the key printed at start"
            )
        token = request.headers.get("authorization", "")
        if token.lower().startswith("bearer "):
            token = token[7:]
        auth_type = request.headers.get("stream-auth-type", "jwt")
        if auth_type != "jwt":
            raise AuthenticationError(
                f"stream-auth-type '{auth_type}' is not supported: send a JWT with "
                "'stream-auth-type: jwt'"
            )
        return await svc.authenticate(token)

    Handler = Callable[[Request, Caller], Awaitable[dict[str, Any]]]

    def route(method: str, path: str, status: int = 200) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                caller = await caller_of(request)
                return reply(request, await fn(request, caller), status)

            endpoint.__name__ = fn.__name__
            endpoint.__doc__ = fn.__doc__
            router.add_api_route(path, endpoint, methods=[method], name=fn.__name__)
            return fn

        return deco

    # --- users -----------------------------------------------------------------------------

    @route("POST", "/users")
    async def update_users(request: Request, caller: Caller) -> dict[str, Any]:
        """Create or replace users (UpdateUsersRequest)."""
        users = await svc.upsert_users(caller, await _json_body(request))
        return {
            "users": {uid: R.user_json(u) for uid, u in users.items()},
            "membership_deletion_task_id": "",
        }

    @route("PATCH", "/users")
    async def update_users_partial(request: Request, caller: Caller) -> dict[str, Any]:
        """Set / unset fields of users, including revoke_tokens_issued_before."""
        users = await svc.update_users_partial(caller, await _json_body(request))
        return {"users": {uid: R.user_json(u) for uid, u in users.items()}}

    # --- call types ------------------------------------------------------------------------

    @route("GET", "/video/calltypes")
    async def list_call_types(request: Request, caller: Caller) -> dict[str, Any]:
        """All call types with their grants and settings."""
        types = await svc.store.list_call_types()
        return {"call_types": {t.name: R.call_type_json(t) for t in types}}

    @route("POST", "/video/calltypes")
    async def create_call_type(request: Request, caller: Caller) -> dict[str, Any]:
        """Create a call type with role grants."""
        ct = await svc.save_call_type(caller, await _json_body(request), create=True)
        return R.call_type_json(ct)

    @route("GET", "/video/calltypes/{name}")
    async def get_call_type(request: Request, caller: Caller) -> dict[str, Any]:
        """One call type."""
        return R.call_type_json(await svc.get_call_type(request.path_params["name"]))

    @route("PUT", "/video/calltypes/{name}")
    async def update_call_type(request: Request, caller: Caller) -> dict[str, Any]:
        """Change a call type's grants or settings."""
        ct = await svc.save_call_type(
            caller, await _json_body(request), request.path_params["name"], create=False
        )
        return R.call_type_json(ct)

    @route("DELETE", "/video/calltypes/{name}")
    async def delete_call_type(request: Request, caller: Caller) -> dict[str, Any]:
        """Delete a custom call type that has no calls."""
        await svc.delete_call_type(caller, request.path_params["name"])
        return {}

    # --- calls -----------------------------------------------------------------------------

    async def full_call(
        caller: Caller, call: Any, ct: Any, limit: int | None = None
    ) -> dict[str, Any]:
        members = await svc.store.list_members(call.cid, limit)
        return {
            "call": await R.call_json(svc, call, ct),
            "members": await R.members_json(svc, members),
            "own_capabilities": await svc.capabilities_of(caller, call, ct),
            "blocked_users": [],
        }

    def path_call(request: Request) -> tuple[str, str]:
        return request.path_params["type"], request.path_params["id"]

    @route("GET", "/video/call/{type}/{id}")
    async def get_call(request: Request, caller: Caller) -> dict[str, Any]:
        """A call with its members and the caller's capabilities."""
        call, ct = await svc.get_call(caller, *path_call(request))
        limit = request.query_params.get("members_limit")
        return await full_call(caller, call, ct, int(limit) if limit and limit.isdigit() else None)

    @route("POST", "/video/call/{type}/{id}")
    async def get_or_create_call(request: Request, caller: Caller) -> dict[str, Any]:
        """Get a call, creating it (with members and settings_override) when it is new."""
        body = await _json_body(request)
        call, ct, created = await svc.get_or_create_call(caller, *path_call(request), body)
        limit = body.get("members_limit")
        out = await full_call(caller, call, ct, limit if isinstance(limit, int) else None)
        out["created"] = created
        return out

    @route("PATCH", "/video/call/{type}/{id}")
    async def update_call(request: Request, caller: Caller) -> dict[str, Any]:
        """Update custom data, starts_at or settings_override."""
        call, ct = await svc.update_call(caller, *path_call(request), await _json_body(request))
        return await full_call(caller, call, ct)

    @route("POST", "/video/call/{type}/{id}/go_live")
    async def go_live(request: Request, caller: Caller) -> dict[str, Any]:
        """Leave backstage: viewers may join; HLS / recording flags are recorded."""
        call, ct = await svc.go_live(caller, *path_call(request), await _json_body(request))
        return {"call": await R.call_json(svc, call, ct)}

    @route("POST", "/video/call/{type}/{id}/stop_live")
    async def stop_live(request: Request, caller: Caller) -> dict[str, Any]:
        """Back to backstage."""
        call, ct = await svc.stop_live(caller, *path_call(request), await _json_body(request))
        return {"call": await R.call_json(svc, call, ct)}

    @route("POST", "/video/call/{type}/{id}/mark_ended")
    async def end_call(request: Request, caller: Caller) -> dict[str, Any]:
        """End the call's session: every participant is disconnected."""
        await svc.end_call(caller, *path_call(request))
        return {}

    @route("POST", "/video/call/{type}/{id}/members")
    async def update_call_members(request: Request, caller: Caller) -> dict[str, Any]:
        """Add, change or remove members."""
        changed = await svc.update_members(caller, *path_call(request), await _json_body(request))
        return {"members": await R.members_json(svc, changed)}

    @route("POST", "/video/call/members")
    async def query_call_members(request: Request, caller: Caller) -> dict[str, Any]:
        """Members of the call named by ``type`` and ``id`` in the body (no filters yet)."""
        body = await _json_body(request)
        call_type, call_id = body.get("type"), body.get("id")
        if not isinstance(call_type, str) or not isinstance(call_id, str):
            raise InputError('give the call as {"type": "<call type>", "id": "<call id>"}')
        if body.get("filter_conditions"):
            raise InputError("filter_conditions are not supported: leave them out")
        call, _ = await svc.get_call(caller, call_type, call_id)
        members = await svc.store.list_members(call.cid, body.get("limit") or None)
        return {"members": await R.members_json(svc, members)}

    @route("POST", "/video/call/{type}/{id}/event")
    async def send_call_event(request: Request, caller: Caller) -> dict[str, Any]:
        """A custom event to everyone in the call (and the webhook)."""
        event = await svc.send_event(caller, *path_call(request), await _json_body(request))
        return {"event": event}

    @route("POST", "/video/call/{type}/{id}/reaction")
    async def send_video_reaction(request: Request, caller: Caller) -> dict[str, Any]:
        """A reaction (like, fireworks, ...) to everyone in the call."""
        reaction = await svc.send_reaction(caller, *path_call(request), await _json_body(request))
        return {"reaction": reaction}

    @route("POST", "/video/call/{type}/{id}/kick")
    async def kick_user(request: Request, caller: Caller) -> dict[str, Any]:
        """Disconnect a participant (an RTMP publisher's connection is closed)."""
        await svc.kick(caller, *path_call(request), await _json_body(request))
        return {}

    async def participants(request: Request, caller: Caller) -> dict[str, Any]:
        call, ct = await svc.get_call(caller, *path_call(request))
        live = svc.list_participants(call.cid)
        users = await svc.store.get_users(sorted({p.user_id for p in live}))
        parts = [R.participant_json(p, users.get(p.user_id)) for p in live]
        for p, j in zip(live, parts, strict=True):
            if p.health is not None:
                j["health"] = p.health()
        out = await full_call(caller, call, ct)
        out.update({"participants": parts, "total_participants": len(parts)})
        return out

    route("POST", "/video/call/{type}/{id}/participants")(participants)
    route("GET", "/video/call/{type}/{id}/participants")(participants)

    @route("POST", "/video/call/{type}/{id}/start_broadcasting")
    async def start_hls_broadcasting(request: Request, caller: Caller) -> dict[str, Any]:
        """Ask for HLS (recorded as intent until the HLS sink exists)."""
        await svc.set_intent(caller, *path_call(request), "hls", True)
        return {"playlist_url": ""}

    @route("POST", "/video/call/{type}/{id}/stop_broadcasting")
    async def stop_hls_broadcasting(request: Request, caller: Caller) -> dict[str, Any]:
        """Stop HLS."""
        await svc.set_intent(caller, *path_call(request), "hls", False)
        return {}

    async def start_rec(request: Request, caller: Caller) -> dict[str, Any]:
        await svc.set_intent(caller, *path_call(request), "recording", True)
        return {}

    async def stop_rec(request: Request, caller: Caller) -> dict[str, Any]:
        await svc.set_intent(caller, *path_call(request), "recording", False)
        return {}

    route("POST", "/video/call/{type}/{id}/recordings/{rtype}/start")(start_rec)
    route("POST", "/video/call/{type}/{id}/recordings/{rtype}/stop")(stop_rec)

    @route("GET", "/video/call/{type}/{id}/recordings")
    async def list_recordings(request: Request, caller: Caller) -> dict[str, Any]:
        """Recordings of the call (none until the recording sink is built)."""
        await svc.get_call(caller, *path_call(request))
        return {"recordings": []}

    return router


def install_error_handlers(app: FastAPI) -> None:
    @app.middleware("http")
    async def timing(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.started = time.perf_counter()
        return await call_next(request)

    @app.exception_handler(IngestError)
    async def ingest_error(request: Request, exc: IngestError) -> Response:
        return reply(request, error_body(request, exc), exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err: IngestError = NotFoundError(
                f"no endpoint {request.method} {request.url.path}: see /openapi.json for the API"
            )
        elif exc.status_code == 405:
            err = InputError(f"method {request.method} is not allowed on {request.url.path}")
            err.status = 405
        else:
            err = InputError(str(exc.detail))
            err.status = exc.status_code
        return reply(request, error_body(request, err), err.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        err = IngestError(f"internal error ({type(exc).__name__}); the server log has details")
        return reply(request, error_body(request, err), 500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        err = InputError(f"invalid request: {exc.errors()[0].get('msg', exc)}")
        return reply(request, error_body(request, err), err.status)
