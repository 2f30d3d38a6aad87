"""The REST control plane under ``/api/v2`` (FastAPI), typed end to end by :mod:`.wire`.

Every request carries ``?api_key=`` and ``Authorization: <JWT>`` (``Bearer `` accepted). Errors
come back as :class:`~.wire.ErrorResponse` (``{"code", "message", "StatusCode", "duration",
"retryable"}``) with a message that says what to fix; a body field of the wrong type, or one the
API does not know, is a 400 that names it.

(No ``from __future__ import annotations`` here: FastAPI evaluates the handlers' annotations, and
they name aliases local to :func:`build_router`.)
"""

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import AuthenticationError, IngestError, InputError, NotFoundError
from . import responses as R
from . import wire as w
from .models import Call, CallType
from .service import Caller, CallService

log = logging.getLogger("ingest.api")

API_PREFIX = "/api/v2"
MAX_BODY_BYTES = 1024 * 1024  # request bodies of /api/v2, checked while they stream in
CORS_MAX_AGE = 600  # seconds a browser may cache a preflight answer

M = TypeVar("M", bound=w.Response)


def _duration(request: Request | None) -> str:
    started = getattr(request.state, "started", None) if request is not None else None
    ms = (time.perf_counter() - started) * 1000 if started else 0.0
    return f"{ms:.2f}ms"


def done(request: Request, model: M) -> M:
    """Stamp a response model with the time the request took."""
    model.duration = _duration(request)
    return model


def error_response(request: Request | None, err: IngestError) -> JSONResponse:
    body = w.ErrorResponse(
        code=err.code,
        message=err.message,
        StatusCode=err.status,
        duration=_duration(request),
        retryable=err.retryable,
    )
    return JSONResponse(body.model_dump(mode="json"), err.status)


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": w.ErrorResponse, "description": what}
    for status, what in (
        (400, "The request is malformed: the message names the field and what to send."),
        (401, "The token is missing, invalid, expired or revoked."),
        (403, "The caller may not do this in this call."),
        (404, "No such call, call type or user."),
        (413, f"The body is larger than {MAX_BODY_BYTES} bytes."),
    )
}


def build_router(svc: CallService) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, responses=ERRORS)

    async def caller_of(
        api_key: Annotated[
            str | None, Query(description="This server's API key (printed at start).")
        ] = None,
        authorization: Annotated[
            str | None,
            Header(description="A JWT: a server token, or a user token ('Bearer ' accepted)."),
        ] = None,
    ) -> Caller:
        if not api_key:
            raise AuthenticationError("api_key query parameter is missing: add ?api_key=<your key>")
        if api_key != svc.api_key:
            raise AuthenticationError(
                f"api_key '{api_key[:64]}' is not this server's key: use the key printed at start"
            )
        token = authorization or ""
        if token.lower().startswith("bearer "):
            token = token[7:]
        return await svc.authenticate(token)

    Auth = Annotated[Caller, Depends(caller_of)]
    CallType_ = Annotated[str, Path(description="The call type, e.g. livestream.")]
    CallId = Annotated[str, Path(description="The call id.")]
    MembersLimit = Annotated[
        int | None,
        Query(ge=1, le=w.MAX_QUERY_LIMIT, description="At most this many members."),
    ]

    async def full_call(
        request: Request, caller: Caller, call: Call, ct: CallType, limit: int | None = None
    ) -> w.GetCallResponse:
        members = await svc.store.list_members(call.cid, limit)
        return done(
            request,
            w.GetCallResponse(
                call=await R.call(svc, call, ct),
                members=await R.members(svc, members),
                own_capabilities=await svc.capabilities_of(caller, call, ct),
            ),
        )

    # --- users -----------------------------------------------------------------------------

    @router.post("/users")
    async def update_users(
        request: Request, body: w.UpdateUsersRequest, caller: Auth
    ) -> w.UpdateUsersResponse:
        """Create or replace users."""
        users = await svc.upsert_users(caller, body)
        return done(request, w.UpdateUsersResponse(users={i: R.user(u) for i, u in users.items()}))

    @router.patch("/users")
    async def update_users_partial(
        request: Request, body: w.UpdateUsersPartialRequest, caller: Auth
    ) -> w.UpdateUsersResponse:
        """Set / unset fields of users, including revoke_tokens_issued_before."""
        users = await svc.update_users_partial(caller, body)
        return done(request, w.UpdateUsersResponse(users={i: R.user(u) for i, u in users.items()}))

    # --- call types ------------------------------------------------------------------------

    @router.get("/video/calltypes")
    async def list_call_types(request: Request, caller: Auth) -> w.ListCallTypesResponse:
        """All call types with their grants and settings."""
        types = await svc.store.list_call_types()
        return done(
            request, w.ListCallTypesResponse(call_types={t.name: R.call_type(t) for t in types})
        )

    @router.post("/video/calltypes", status_code=201)
    async def create_call_type(
        request: Request, body: w.CreateCallTypeRequest, caller: Auth
    ) -> w.CallTypeResponse:
        """Create a call type with role grants."""
        ct = await svc.save_call_type(caller, body.name, body.grants, body.settings, create=True)
        return done(request, R.call_type(ct))

    @router.get("/video/calltypes/{name}")
    async def get_call_type(request: Request, name: str, caller: Auth) -> w.CallTypeResponse:
        """One call type."""
        return done(request, R.call_type(await svc.get_call_type(name)))

    @router.put("/video/calltypes/{name}")
    async def update_call_type(
        request: Request, name: str, body: w.UpdateCallTypeRequest, caller: Auth
    ) -> w.CallTypeResponse:
        """Change a call type's grants or settings."""
        ct = await svc.save_call_type(caller, name, body.grants, body.settings, create=False)
        return done(request, R.call_type(ct))

    @router.delete("/video/calltypes/{name}")
    async def delete_call_type(request: Request, name: str, caller: Auth) -> w.EmptyResponse:
        """Delete a custom call type that has no calls."""
        await svc.delete_call_type(caller, name)
        return done(request, w.EmptyResponse())

    # --- calls -----------------------------------------------------------------------------

    @router.get("/video/call/{call_type}/{call_id}")
    async def get_call(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        caller: Auth,
        members_limit: MembersLimit = None,
    ) -> w.GetCallResponse:
        """A call with its members and the caller's capabilities."""
        call, ct = await svc.get_call(caller, call_type, call_id)
        return await full_call(request, caller, call, ct, members_limit)

    @router.post("/video/call/{call_type}/{call_id}")
    async def get_or_create_call(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        caller: Auth,
        body: w.GetOrCreateCallRequest | None = None,
    ) -> w.GetOrCreateCallResponse:
        """Get a call, creating it (with members and settings_override) when it is new."""
        body = body or w.GetOrCreateCallRequest()
        call, ct, created = await svc.get_or_create_call(caller, call_type, call_id, body)
        full = await full_call(request, caller, call, ct, body.members_limit)
        return w.GetOrCreateCallResponse(**dict(full), created=created)

    @router.patch("/video/call/{call_type}/{call_id}")
    async def update_call(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        body: w.UpdateCallRequest,
        caller: Auth,
    ) -> w.GetCallResponse:
        """Update custom data, starts_at or settings_override."""
        call, ct = await svc.update_call(caller, call_type, call_id, body)
        return await full_call(request, caller, call, ct)

    @router.post("/video/call/{call_type}/{call_id}/go_live")
    async def go_live(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        caller: Auth,
        body: w.GoLiveRequest | None = None,
    ) -> w.CallStateResponse:
        """Leave backstage: viewers may join; optionally start HLS and recording."""
        call, ct = await svc.go_live(caller, call_type, call_id, body or w.GoLiveRequest())
        return done(request, w.CallStateResponse(call=await R.call(svc, call, ct)))

    @router.post("/video/call/{call_type}/{call_id}/stop_live")
    async def stop_live(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        caller: Auth,
        body: w.StopLiveRequest | None = None,
    ) -> w.CallStateResponse:
        """Back to backstage; HLS and recording stop unless asked to continue."""
        call, ct = await svc.stop_live(caller, call_type, call_id, body or w.StopLiveRequest())
        return done(request, w.CallStateResponse(call=await R.call(svc, call, ct)))

    @router.post("/video/call/{call_type}/{call_id}/mark_ended")
    async def end_call(
        request: Request, call_type: CallType_, call_id: CallId, caller: Auth
    ) -> w.EmptyResponse:
        """End the call's session: every participant is disconnected."""
        await svc.end_call(caller, call_type, call_id)
        return done(request, w.EmptyResponse())

    @router.post("/video/call/{call_type}/{call_id}/members")
    async def update_call_members(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        body: w.UpdateCallMembersRequest,
        caller: Auth,
    ) -> w.MembersResponse:
        """Add, change or remove members."""
        changed = await svc.update_members(caller, call_type, call_id, body)
        return done(request, w.MembersResponse(members=await R.members(svc, changed)))

    @router.post("/video/call/members")
    async def query_call_members(
        request: Request, body: w.QueryCallMembersRequest, caller: Auth
    ) -> w.MembersResponse:
        """Members of the call named by ``type`` and ``id`` in the body."""
        call, _ = await svc.get_call(caller, body.type, body.id)
        members = await svc.store.list_members(call.cid, body.limit)
        return done(request, w.MembersResponse(members=await R.members(svc, members)))

    @router.post("/video/call/{call_type}/{call_id}/event", status_code=201)
    async def send_call_event(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        body: w.SendCallEventRequest,
        caller: Auth,
    ) -> w.SendCallEventResponse:
        """A custom event to everyone in the call (and the webhook)."""
        event = await svc.send_event(caller, call_type, call_id, body)
        return done(
            request,
            w.SendCallEventResponse(event=w.CustomEventResponse.model_validate(event)),
        )

    @router.post("/video/call/{call_type}/{call_id}/reaction", status_code=201)
    async def send_video_reaction(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        body: w.SendReactionRequest,
        caller: Auth,
    ) -> w.SendReactionResponse:
        """A reaction (like, fireworks, ...) to everyone in the call."""
        reaction = await svc.send_reaction(caller, call_type, call_id, body)
        return done(
            request, w.SendReactionResponse(reaction=w.ReactionResponse.model_validate(reaction))
        )

    @router.post("/video/call/{call_type}/{call_id}/kick")
    async def kick_user(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        body: w.KickUserRequest,
        caller: Auth,
    ) -> w.KickUserResponse:
        """End every session of a user in the call (publishing and watching)."""
        kicked = await svc.kick(caller, call_type, call_id, body)
        return done(request, w.KickUserResponse(kicked=kicked))

    async def participants(
        request: Request, caller: Caller, call_type: str, call_id: str
    ) -> w.ParticipantsResponse:
        call, ct = await svc.get_call(caller, call_type, call_id)
        parts = await R.participants(svc, call.cid, health=True)
        full = await full_call(request, caller, call, ct)
        return w.ParticipantsResponse(
            **dict(full), participants=parts, total_participants=len(parts)
        )

    @router.get("/video/call/{call_type}/{call_id}/participants")
    async def get_call_participants(
        request: Request, call_type: CallType_, call_id: CallId, caller: Auth
    ) -> w.ParticipantsResponse:
        """Live participants of every protocol, with their health."""
        return await participants(request, caller, call_type, call_id)

    @router.post("/video/call/{call_type}/{call_id}/participants")
    async def query_call_participants(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        caller: Auth,
        body: w.QueryParticipantsRequest | None = None,
    ) -> w.ParticipantsResponse:
        """The same as GET (for clients that query with a body)."""
        return await participants(request, caller, call_type, call_id)

    @router.post("/video/call/{call_type}/{call_id}/start_broadcasting")
    async def start_hls_broadcasting(
        request: Request, call_type: CallType_, call_id: CallId, caller: Auth
    ) -> w.StartBroadcastingResponse:
        """Start HLS."""
        call, ct = await svc.set_intent(caller, call_type, call_id, "hls", True)
        resp = await R.call(svc, call, ct)
        return done(request, w.StartBroadcastingResponse(playlist_url=resp.egress.hls.playlist_url))

    @router.post("/video/call/{call_type}/{call_id}/stop_broadcasting")
    async def stop_hls_broadcasting(
        request: Request, call_type: CallType_, call_id: CallId, caller: Auth
    ) -> w.EmptyResponse:
        """Stop HLS."""
        await svc.set_intent(caller, call_type, call_id, "hls", False)
        return done(request, w.EmptyResponse())

    @router.post("/video/call/{call_type}/{call_id}/recordings/{recording_type}/start")
    async def start_recording(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        recording_type: str,
        caller: Auth,
        body: w.StartRecordingRequest | None = None,
    ) -> w.EmptyResponse:
        """Start recording the call (``recording_type``: composite)."""
        await svc.set_intent(caller, call_type, call_id, "recording", True)
        return done(request, w.EmptyResponse())

    @router.post("/video/call/{call_type}/{call_id}/recordings/{recording_type}/stop")
    async def stop_recording(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        recording_type: str,
        caller: Auth,
    ) -> w.EmptyResponse:
        """Stop recording."""
        await svc.set_intent(caller, call_type, call_id, "recording", False)
        return done(request, w.EmptyResponse())

    @router.get("/video/call/{call_type}/{call_id}/recordings")
    async def list_recordings(
        request: Request, call_type: CallType_, call_id: CallId, caller: Auth
    ) -> w.ListRecordingsResponse:
        """Recordings of the call: one fragmented MP4 file each, downloadable at ``url``."""
        call, _ = await svc.get_call(caller, call_type, call_id)
        return done(request, w.ListRecordingsResponse(recordings=await R.recordings(svc, call.cid)))

    @router.delete("/video/call/{call_type}/{call_id}/recordings/{session}/{filename}")
    async def delete_recording(
        request: Request,
        call_type: CallType_,
        call_id: CallId,
        session: str,
        filename: str,
        caller: Auth,
    ) -> w.EmptyResponse:
        """Delete one recording (needs the capability to stop recordings)."""
        await svc.delete_recording(caller, call_type, call_id, session, filename)
        return done(request, w.EmptyResponse())

    return router


def _field_path(loc: Sequence[Any]) -> str:
    """``("body", "data", "members", 0, "role")`` → ``data.members[0].role``."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_message(errors: Sequence[Any]) -> str:
    """Each problem with the field it concerns, in words a developer can act on."""
    parts: list[str] = []
    for e in errors[:5]:
        loc = e.get("loc") or ()
        where = loc[0] if loc else "body"
        field = _field_path(loc)
        kind = e.get("type", "")
        if kind == "extra_forbidden":
            parts.append(f"unknown field '{field}': remove it (see /openapi.json)")
        elif kind == "missing":
            parts.append(f"'{field}' is required")
        elif kind in ("json_invalid", "model_attributes_type") or not field:
            parts.append(f"{where}: {e.get('msg')}")
        else:
            got = e.get("input")
            shown = json.dumps(got)[:40] if _jsonable(got) else type(got).__name__
            parts.append(f"'{field}' ({where}): {e.get('msg')} (got {shown})")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


class BodyLimit:
    """Refuse an ``/api/v2`` body over ``limit`` bytes by its Content-Length, else as soon as
    that many bytes have streamed in: never buffer more than the limit."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        too_big = InputError(f"request body is larger than {self.limit} bytes: send less")
        too_big.status = 413
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await error_response(None, too_big)(scope, receive, send)
                return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Answer now and tell the app the client left: nothing more is read.
                    refused = True
                    await error_response(None, too_big)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise


class ApiCors:
    """CORS for ``/api/v2`` only (WHIP/WHEP answer their own preflights)."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=CORS_MAX_AGE,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI, *, cors_origins: list[str] | None = None) -> None:
    """Error shapes, request timing, the body limit and CORS for the API."""
    app.add_middleware(BodyLimit)
    if cors_origins:
        app.add_middleware(ApiCors, origins=cors_origins)

    @app.middleware("http")
    async def timing(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.started = time.perf_counter()
        return await call_next(request)

    @app.exception_handler(IngestError)
    async def ingest_error(request: Request, exc: IngestError) -> Response:
        return error_response(request, exc)

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
        return error_response(request, err)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        err = IngestError(f"internal error ({type(exc).__name__}); the server log has details")
        return error_response(request, err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, InputError(validation_message(exc.errors())))
