"""HTTP for egress: LL-HLS playlists and media, and recording downloads.

* ``GET /hls/{type}/{id}/index.m3u8`` — the media playlist; ``?_HLS_msn=M[&_HLS_part=P]``
  blocks until segment M (part P) is listed (RFC 8216bis 6.2.5.2), at most 3 target durations.
* ``GET /hls/{type}/{id}/init-<n>.mp4``, ``seg-<msn>.m4s``, ``part-<n>.m4s`` — media; asking for
  the part named by ``EXT-X-PRELOAD-HINT`` waits until it is cut.

HLS needs no token by default: it is the path for viewers who cannot use WebRTC, whose players
(smart TVs, ``<video>`` in Safari, a CDN in front) cannot add headers, and Stream's HLS URLs are
public too. A call type that sets ``settings.broadcasting.hls.require_token`` to true makes every
HLS request need ``?token=<JWT>`` of a user who may read the call; the playlist then carries the
token in its URIs.

* ``GET /recordings/{type}/{id}/{session}/{filename}`` — download a recording; needs a token
  (``Authorization`` header or ``?token=``) of a user who may read the call, or a server token.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from ingest.calls.service import CallService
from ingest.egress import Egress
from ingest.errors import AuthenticationError, InputError, NotFoundError
from ingest.hls.stream import MAX_MSN_AHEAD

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MEDIA_TYPE = "video/mp4"
_MEDIA_NAME = re.compile(r"^(init|seg|part)-(\d{1,12})\.(mp4|m4s)$")
_CORS = {"Access-Control-Allow-Origin": "*"}
_NO_CACHE = {**_CORS, "Cache-Control": "no-cache"}
_IMMUTABLE = {**_CORS, "Cache-Control": "max-age=60"}


def _token(request: Request) -> str | None:
    token = request.query_params.get("token") or request.headers.get("authorization", "")
    if token.lower().startswith("bearer "):
        token = token[7:]
    return token or None


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise InputError(f"{name} must be a non-negative integer, not '{raw[:20]}'")
    return int(raw)


def build_egress_router(svc: CallService, egress: Egress) -> APIRouter:
    router = APIRouter()

    async def may_read(token: str | None, call_type: str, call_id: str) -> None:
        if token is None:
            raise AuthenticationError(
                "a token is required: add ?token=<JWT> (or an Authorization header) of a user "
                "who may read the call"
            )
        caller = await svc.authenticate(token)
        await svc.get_call(caller, call_type, call_id)  # checks read-call

    async def hls_token(request: Request, call_type: str, call_id: str) -> str:
        """The query to append to URIs ('' unless the call type requires a token)."""
        call, ct = await svc.load_call(call_type, call_id)
        settings = svc.effective_settings(call, ct)
        hls_settings = (settings.get("broadcasting") or {}).get("hls") or {}
        if not hls_settings.get("require_token"):
            return ""
        token = _token(request)
        await may_read(token, call_type, call_id)
        return f"?token={quote(token or '', safe='')}"

    def stream_of(call_type: str, call_id: str) -> Any:
        stream = egress.hls_stream(f"{call_type}:{call_id}")
        if stream is None:
            raise NotFoundError(
                f"call {call_type}:{call_id} is not broadcasting HLS: start it with go_live "
                "(start_hls) or start_broadcasting"
            )
        return stream

    @router.get("/hls/{call_type}/{call_id}/index.m3u8", include_in_schema=False)
    async def playlist(request: Request, call_type: str, call_id: str) -> Response:
        query = await hls_token(request, call_type, call_id)
        stream = stream_of(call_type, call_id)
        if not await stream.wait_media(stream.block_timeout):
            # A playlist without a segment makes players give up (hls.js: levelEmptyError);
            # 404 is retried.
            raise NotFoundError(
                f"HLS of {call_type}:{call_id} has no media yet: no host publishes video"
            )
        msn = _int_param(request, "_HLS_msn")
        part = _int_param(request, "_HLS_part")
        if part is not None and msn is None:
            raise InputError("_HLS_part needs _HLS_msn")
        if msn is not None:
            last = stream.last_position()
            newest = last[0] if last else -1
            if msn > newest + MAX_MSN_AHEAD:
                raise InputError(
                    f"_HLS_msn={msn} is too far ahead of the playlist (newest segment {newest})"
                )
            await stream.wait_ready(msn, part, stream.block_timeout)
        return Response(stream.playlist(query), media_type=PLAYLIST_TYPE, headers=_NO_CACHE)

    @router.get("/hls/{call_type}/{call_id}/{name}", include_in_schema=False)
    async def media(request: Request, call_type: str, call_id: str, name: str) -> Response:
        match = _MEDIA_NAME.match(name)
        if match is None:
            raise NotFoundError(f"no HLS file '{name[:80]}': use the URIs of the playlist")
        await hls_token(request, call_type, call_id)
        stream = stream_of(call_type, call_id)
        kind, number = match.group(1), int(match.group(2))
        data: bytes | None = None
        if kind == "init":
            init = stream.inits.get(number)
            data = init.data if init is not None else None
        elif kind == "seg":
            seg = stream.segment(number)
            data = seg.data if seg is not None else None
        else:
            found = await stream.wait_part(number, stream.block_timeout)
            data = found.data if found is not None else None
        if data is None:
            raise NotFoundError(f"HLS file '{name}' is not (or no longer) in the window")
        return Response(data, media_type=MEDIA_TYPE, headers=_IMMUTABLE)

    @router.get(
        "/recordings/{call_type}/{call_id}/{session_id}/{filename}", include_in_schema=False
    )
    async def download(
        request: Request, call_type: str, call_id: str, session_id: str, filename: str
    ) -> Response:
        await may_read(_token(request), call_type, call_id)
        path = await egress.recording_path(f"{call_type}:{call_id}", session_id, filename)
        if path is None:
            raise NotFoundError(
                f"recording {session_id}/{filename} of {call_type}:{call_id} does not exist: "
                "list them with GET .../recordings"
            )
        return FileResponse(path, media_type=MEDIA_TYPE, filename=filename)

    return router
