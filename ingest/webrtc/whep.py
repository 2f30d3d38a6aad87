"""WHEP (WebRTC-HTTP Egress Protocol, draft-ietf-wish-whep) endpoints for viewers.

``POST /whep/{type}/{id}/{user_id}`` with ``Content-Type: application/sdp`` and
``Authorization: Bearer <token>`` answers ``201 Created`` with the SDP answer and
``Location: /whep/session/{session_id}``; ``DELETE`` on that location ends the session. No trickle
ICE (the answer holds every candidate): ``PATCH`` answers 405. ``OPTIONS`` answers CORS
preflights; every response carries ``Access-Control-Allow-Origin: *`` and exposes ``Location``.

Who may watch is the app's business: ``authorize(token, call_type, call_id, user_id)`` checks the
token and backstage rules and returns a :class:`~ingest.calls.service.WatchGrant`: the call cid,
the participant id user_id publishes as, and ``hold``, which keeps the viewer on the call's
roster so that a kick, a revocation or removal from the call closes its peer connection (media
stops at once). It raises :class:`~ingest.errors.IngestError` subclasses, returned as
``{"code", "message", "StatusCode"}`` with the error's status (401, 403, 404, ...).

The offer is read under :data:`~ingest.webrtc.sfu.MAX_OFFER_BYTES` while it streams in
(:func:`ingest.http.read_body`); a larger one is refused with 413 and the connection closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ingest.calls.service import CUT_REVOKED, WatchGrant
from ingest.errors import AuthenticationError, IngestError, InputError, PermissionDeniedError
from ingest.http import PayloadTooLargeError, read_body
from ingest.webrtc.ice import IcePolicy
from ingest.webrtc.sfu import MAX_OFFER_BYTES, SFU

Authorize = Callable[[str, str, str, str], Awaitable[WatchGrant]]
"""``(token, call_type, call_id, user_id) -> WatchGrant``."""

SDP_MEDIA_TYPE = "application/sdp"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
    "Access-Control-Max-Age": "600",
}


class UnsupportedMediaTypeError(InputError):
    """The offer was not sent as ``application/sdp``."""

    status = 415


def error_response(exc: IngestError) -> JSONResponse:
    """An error as Stream's JSON shape, with CORS headers."""
    return JSONResponse(
        {"code": exc.code, "message": exc.message, "StatusCode": exc.status},
        status_code=exc.status,
        headers=CORS_HEADERS,
    )


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("send the user token as 'Authorization: Bearer <token>'")
    return token


async def read_offer(request: Request, limit: int) -> tuple[str, str]:
    """The bearer token and the SDP offer of a WHIP or WHEP POST (RFC 9725): the offer must be
    ``application/sdp`` UTF-8 text, read while it streams in (a huge body costs at most
    ``limit`` bytes)."""
    token = bearer_token(request)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != SDP_MEDIA_TYPE:
        raise UnsupportedMediaTypeError(
            f"send the SDP offer as Content-Type: {SDP_MEDIA_TYPE}, not {content_type!r}"
        )
    body = await read_body(request, limit, "the SDP offer")
    try:
        return token, body.decode()
    except UnicodeDecodeError as exc:
        raise InputError("the SDP offer is not UTF-8 text") from exc


def refused(exc: IngestError) -> Response:
    """A refused offer POST (a too large body also closes the connection)."""
    response = error_response(exc)
    if isinstance(exc, PayloadTooLargeError):
        response.headers["Connection"] = "close"  # the rest of the body is not wanted
    return response


def _with_links(headers: dict[str, str], ice: IcePolicy, user: str) -> dict[str, str]:
    links = ice.link_headers(user)  # STUN/TURN servers (RFC 9725 4.6)
    if links:
        headers["Link"] = ", ".join(links)
    return headers


def created(
    request: Request, route: str, session_id: str, answer: str, ice: IcePolicy, user: str
) -> Response:
    """``201 Created``: the answer, the session's ``Location`` and the ICE servers."""
    location = request.url_for(route, session_id=session_id).path
    headers = _with_links({**CORS_HEADERS, "Location": location}, ice, user)
    return Response(answer, status_code=201, media_type=SDP_MEDIA_TYPE, headers=headers)


def offer_preflight(ice: IcePolicy, user: str) -> Response:
    """CORS preflight of the offer POST; also announces the ICE servers, so a client that
    gathers before it offers (no trickle) can use TURN from its first offer."""
    headers = _with_links({**CORS_HEADERS, "Accept-Post": SDP_MEDIA_TYPE}, ice, user)
    return Response(status_code=204, headers=headers)


def no_trickle() -> Response:
    """PATCH (trickle ICE, ICE restart): not supported, the answer carries every candidate."""
    exc = InputError("trickle ICE is not supported: the answer has every candidate")
    exc.status = 405
    response = error_response(exc)
    response.headers["Allow"] = "DELETE, OPTIONS"
    return response


def build_whep_router(sfu: SFU, authorize: Authorize) -> APIRouter:
    """The WHEP endpoints, serving viewers from ``sfu``."""
    router = APIRouter(tags=["whep"])

    @router.post("/whep/{call_type}/{call_id}/{user_id}", status_code=201)
    async def whep_subscribe(
        request: Request, call_type: str, call_id: str, user_id: str
    ) -> Response:
        """Answer a viewer's SDP offer with the media user_id publishes in the call."""
        try:
            token, offer = await read_offer(request, MAX_OFFER_BYTES)
            grant = await authorize(token, call_type, call_id, user_id)
            answer, session_id = await _subscribe(sfu, grant, offer)
        except IngestError as exc:
            return refused(exc)
        return created(
            request, "whep_session", session_id, answer, sfu.ice, f"whep-{session_id[:8]}"
        )

    @router.delete("/whep/session/{session_id}", name="whep_session")
    async def whep_delete(session_id: str) -> Response:
        """End a viewer session."""
        try:
            await sfu.close(session_id)
        except IngestError as exc:
            return error_response(exc)
        return Response(status_code=200, headers=CORS_HEADERS)

    @router.patch("/whep/session/{session_id}")
    async def whep_patch(session_id: str) -> Response:
        """Trickle ICE / ICE restart: not supported (the answer carries every candidate)."""
        return no_trickle()

    @router.options("/whep/{call_type}/{call_id}/{user_id}")
    async def whep_preflight(call_type: str, call_id: str, user_id: str) -> Response:
        """CORS preflight of the offer POST (with the ICE servers)."""
        return offer_preflight(sfu.ice, f"whep-{call_type}-{call_id}")

    @router.options("/whep/session/{session_id}")
    async def whep_session_preflight(session_id: str) -> Response:
        """CORS preflight of DELETE / PATCH."""
        return Response(status_code=204, headers=CORS_HEADERS)

    return router


@dataclass
class _Cut:
    """A viewer's session as its roster entry sees it: cut before or after it exists."""

    sfu: SFU
    session_id: str | None = None
    cause: str | None = None
    reason: str = ""

    def __call__(self, cause: str, reason: str) -> None:
        self.cause, self.reason = cause, reason
        if self.session_id is not None:
            self.sfu.end(self.session_id, reason)


async def _subscribe(sfu: SFU, grant: WatchGrant, offer: str) -> tuple[str, str]:
    """A viewer session held on the call's roster from before the answer until it closes."""
    cut = _Cut(sfu)
    release = grant.hold(cut)  # raises if the token was revoked since it was checked
    answer, session_id = await sfu.subscribe(
        offer, grant.call_cid, grant.participant_id, on_close=release
    )
    cut.session_id = session_id
    if cut.cause is not None:  # kicked or revoked while the answer was being made
        await sfu.close(session_id)
        error = AuthenticationError if cut.cause == CUT_REVOKED else PermissionDeniedError
        raise error(f"this viewer's session was ended: {cut.reason}")
    return answer, session_id
