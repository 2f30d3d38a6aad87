"""``ingest.client``: the typed Python client of this server's REST API (sync and async).

::

    from ingest.client import Client, create_token
    from ingest.calls.wire import CallRequest, MemberRequest, UserRequest

    api = Client("http://127.0.0.1:8080", api_key, secret=api_secret)  # a server client
    api.upsert_users(UserRequest(id="alice", name="Alice"))
    call = api.get_or_create_call(
        "livestream", "show", CallRequest(created_by_id="alice",
                                          members=[MemberRequest(user_id="alice", role="host")])
    ).call
    stream_key = create_token(api_secret, "alice", ttl=3600)  # paste with call.ingress.rtmp.address
    api.go_live("livestream", "show", start_hls=True, start_recording=True)

``AsyncClient`` has the same methods as coroutines. A client made with ``token=`` instead of
``secret=`` acts as that user (what a browser app does). Requests and responses are the models of
:mod:`ingest.calls.wire`; every non-2xx answer raises :class:`ApiError` with the server's code,
status and message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from .calls import wire as w
from .calls.tokens import create_server_token, create_token

__all__ = ["ApiError", "AsyncClient", "Client", "create_server_token", "create_token"]

DEFAULT_TIMEOUT = 10.0  # seconds for one request

T = TypeVar("T", bound=BaseModel)


class ApiError(Exception):
    """The server refused a request (or could not be reached: ``status`` 0)."""

    def __init__(self, status: int, code: int, message: str, retryable: bool = False) -> None:
        super().__init__(f"{status} (code {code}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    """One request: where it goes, what it sends, and the model its answer parses into."""

    method: str
    path: str
    model: type[T]
    body: BaseModel | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        content = (
            self.body.model_dump_json(exclude_unset=True).encode()
            if self.body is not None
            else None
        )
        headers = {"Content-Type": "application/json"} if content is not None else {}
        return http.build_request(
            self.method, self.path, content=content, params=self.params, headers=headers
        )

    def parse(self, resp: httpx.Response) -> T:
        if resp.status_code >= 300:
            raise _error(resp)
        try:
            return self.model.model_validate_json(resp.content)
        except ValidationError as e:
            raise ApiError(resp.status_code, -1, f"unexpected response shape: {e}") from None


def _error(resp: httpx.Response) -> ApiError:
    try:
        err = w.ErrorResponse.model_validate_json(resp.content)
    except ValidationError:
        return ApiError(resp.status_code, -1, resp.text[:500] or resp.reason_phrase)
    return ApiError(resp.status_code, err.code, err.message, err.retryable)


def _unreachable(base_url: str, e: httpx.HTTPError) -> ApiError:
    return ApiError(0, -1, f"cannot reach {base_url} ({type(e).__name__}: {e})", retryable=True)


def _call(call_type: str, call_id: str, suffix: str = "") -> str:
    return f"/api/v2/video/call/{quote(call_type, safe='')}/{quote(call_id, safe='')}{suffix}"


class _Ops:
    """Every operation of the API, as an :class:`Op`; both clients send these."""

    @staticmethod
    def upsert_users(users: tuple[w.UserRequest, ...]) -> Op[w.UpdateUsersResponse]:
        body = w.UpdateUsersRequest(users={u.id: u for u in users})
        return Op("POST", "/api/v2/users", w.UpdateUsersResponse, body)

    @staticmethod
    def update_users_partial(
        updates: tuple[w.UserPartialUpdate, ...],
    ) -> Op[w.UpdateUsersResponse]:
        body = w.UpdateUsersPartialRequest(users=list(updates))
        return Op("PATCH", "/api/v2/users", w.UpdateUsersResponse, body)

    @staticmethod
    def revoke_tokens(user_id: str, before: datetime) -> Op[w.UpdateUsersResponse]:
        update = w.UserPartialUpdate(
            id=user_id, set={"revoke_tokens_issued_before": before.isoformat()}
        )
        return _Ops.update_users_partial((update,))

    @staticmethod
    def list_call_types() -> Op[w.ListCallTypesResponse]:
        return Op("GET", "/api/v2/video/calltypes", w.ListCallTypesResponse)

    @staticmethod
    def create_call_type(body: w.CreateCallTypeRequest) -> Op[w.CallTypeResponse]:
        return Op("POST", "/api/v2/video/calltypes", w.CallTypeResponse, body)

    @staticmethod
    def get_call_type(name: str) -> Op[w.CallTypeResponse]:
        return Op("GET", f"/api/v2/video/calltypes/{quote(name, safe='')}", w.CallTypeResponse)

    @staticmethod
    def update_call_type(name: str, body: w.UpdateCallTypeRequest) -> Op[w.CallTypeResponse]:
        path = f"/api/v2/video/calltypes/{quote(name, safe='')}"
        return Op("PUT", path, w.CallTypeResponse, body)

    @staticmethod
    def delete_call_type(name: str) -> Op[w.EmptyResponse]:
        path = f"/api/v2/video/calltypes/{quote(name, safe='')}"
        return Op("DELETE", path, w.EmptyResponse)

    @staticmethod
    def get_call(call_type: str, call_id: str, members_limit: int | None) -> Op[w.GetCallResponse]:
        params = {} if members_limit is None else {"members_limit": members_limit}
        return Op("GET", _call(call_type, call_id), w.GetCallResponse, params=params)

    @staticmethod
    def get_or_create_call(
        call_type: str, call_id: str, data: w.CallRequest | None
    ) -> Op[w.GetOrCreateCallResponse]:
        body = w.GetOrCreateCallRequest(data=data or w.CallRequest())
        return Op("POST", _call(call_type, call_id), w.GetOrCreateCallResponse, body)

    @staticmethod
    def update_call(
        call_type: str, call_id: str, body: w.UpdateCallRequest
    ) -> Op[w.GetCallResponse]:
        return Op("PATCH", _call(call_type, call_id), w.GetCallResponse, body)

    @staticmethod
    def go_live(
        call_type: str, call_id: str, start_hls: bool, start_recording: bool
    ) -> Op[w.CallStateResponse]:
        body = w.GoLiveRequest(start_hls=start_hls, start_recording=start_recording)
        return Op("POST", _call(call_type, call_id, "/go_live"), w.CallStateResponse, body)

    @staticmethod
    def stop_live(
        call_type: str, call_id: str, continue_hls: bool, continue_recording: bool
    ) -> Op[w.CallStateResponse]:
        body = w.StopLiveRequest(continue_hls=continue_hls, continue_recording=continue_recording)
        return Op("POST", _call(call_type, call_id, "/stop_live"), w.CallStateResponse, body)

    @staticmethod
    def end_call(call_type: str, call_id: str) -> Op[w.EmptyResponse]:
        return Op("POST", _call(call_type, call_id, "/mark_ended"), w.EmptyResponse)

    @staticmethod
    def update_call_members(
        call_type: str,
        call_id: str,
        update: list[w.MemberRequest] | None,
        remove: list[str] | None,
    ) -> Op[w.MembersResponse]:
        body = w.UpdateCallMembersRequest(update_members=update or [], remove_members=remove or [])
        return Op("POST", _call(call_type, call_id, "/members"), w.MembersResponse, body)

    @staticmethod
    def query_call_members(
        call_type: str, call_id: str, limit: int | None
    ) -> Op[w.MembersResponse]:
        body = w.QueryCallMembersRequest(type=call_type, id=call_id, limit=limit)
        return Op("POST", "/api/v2/video/call/members", w.MembersResponse, body)

    @staticmethod
    def participants(call_type: str, call_id: str) -> Op[w.ParticipantsResponse]:
        return Op("GET", _call(call_type, call_id, "/participants"), w.ParticipantsResponse)

    @staticmethod
    def send_event(
        call_type: str, call_id: str, custom: dict[str, Any], user_id: str | None
    ) -> Op[w.SendCallEventResponse]:
        body = w.SendCallEventRequest(custom=custom, user_id=user_id)
        return Op("POST", _call(call_type, call_id, "/event"), w.SendCallEventResponse, body)

    @staticmethod
    def send_reaction(
        call_type: str, call_id: str, body: w.SendReactionRequest
    ) -> Op[w.SendReactionResponse]:
        return Op("POST", _call(call_type, call_id, "/reaction"), w.SendReactionResponse, body)

    @staticmethod
    def kick_user(call_type: str, call_id: str, user_id: str) -> Op[w.KickUserResponse]:
        body = w.KickUserRequest(user_id=user_id)
        return Op("POST", _call(call_type, call_id, "/kick"), w.KickUserResponse, body)

    @staticmethod
    def start_broadcasting(call_type: str, call_id: str) -> Op[w.StartBroadcastingResponse]:
        path = _call(call_type, call_id, "/start_broadcasting")
        return Op("POST", path, w.StartBroadcastingResponse)

    @staticmethod
    def stop_broadcasting(call_type: str, call_id: str) -> Op[w.EmptyResponse]:
        return Op("POST", _call(call_type, call_id, "/stop_broadcasting"), w.EmptyResponse)

    @staticmethod
    def recording(
        call_type: str, call_id: str, recording_type: str, action: str
    ) -> Op[w.EmptyResponse]:
        path = _call(call_type, call_id, f"/recordings/{quote(recording_type, safe='')}/{action}")
        return Op("POST", path, w.EmptyResponse)

    @staticmethod
    def list_recordings(call_type: str, call_id: str) -> Op[w.ListRecordingsResponse]:
        return Op("GET", _call(call_type, call_id, "/recordings"), w.ListRecordingsResponse)

    @staticmethod
    def delete_recording(
        call_type: str, call_id: str, session_id: str, filename: str
    ) -> Op[w.EmptyResponse]:
        suffix = f"/recordings/{quote(session_id, safe='')}/{quote(filename, safe='')}"
        return Op("DELETE", _call(call_type, call_id, suffix), w.EmptyResponse)


class _Base:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        secret: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        if (secret is None) == (token is None):
            raise ValueError("give either secret= (a server client) or token= (a user client)")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.token = token if token is not None else create_server_token(secret or "")
        self._timeout = timeout
        self._verify = verify  # an SSLContext with your CA for a server with a private cert

    def _http_args(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "params": {"api_key": self.api_key},
            "headers": {"Authorization": f"Bearer {self.token}"},
            "timeout": self._timeout,
            "verify": self._verify,
        }


class Client(_Base):
    """Blocking client; use it as a context manager or call :meth:`close`."""

    def __init__(self, base_url: str, api_key: str, **kwargs: Any) -> None:
        super().__init__(base_url, api_key, **kwargs)
        self._http = httpx.Client(**self._http_args())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, op: Op[T]) -> T:
        try:
            resp = self._http.send(op.request(self._http))
        except httpx.HTTPError as e:
            raise _unreachable(self.base_url, e) from None
        return op.parse(resp)

    # users
    def upsert_users(self, *users: w.UserRequest) -> w.UpdateUsersResponse:
        return self.send(_Ops.upsert_users(users))

    def update_users_partial(self, *updates: w.UserPartialUpdate) -> w.UpdateUsersResponse:
        return self.send(_Ops.update_users_partial(updates))

    def revoke_tokens(self, user_id: str, before: datetime) -> w.UpdateUsersResponse:
        """Tokens of ``user_id`` issued before ``before`` stop working; their sessions end."""
        return self.send(_Ops.revoke_tokens(user_id, before))

    # call types
    def list_call_types(self) -> w.ListCallTypesResponse:
        return self.send(_Ops.list_call_types())

    def create_call_type(self, body: w.CreateCallTypeRequest) -> w.CallTypeResponse:
        return self.send(_Ops.create_call_type(body))

    def get_call_type(self, name: str) -> w.CallTypeResponse:
        return self.send(_Ops.get_call_type(name))

    def update_call_type(self, name: str, body: w.UpdateCallTypeRequest) -> w.CallTypeResponse:
        return self.send(_Ops.update_call_type(name, body))

    def delete_call_type(self, name: str) -> w.EmptyResponse:
        return self.send(_Ops.delete_call_type(name))

    # calls
    def get_call(
        self, call_type: str, call_id: str, members_limit: int | None = None
    ) -> w.GetCallResponse:
        return self.send(_Ops.get_call(call_type, call_id, members_limit))

    def get_or_create_call(
        self, call_type: str, call_id: str, data: w.CallRequest | None = None
    ) -> w.GetOrCreateCallResponse:
        return self.send(_Ops.get_or_create_call(call_type, call_id, data))

    def update_call(
        self, call_type: str, call_id: str, body: w.UpdateCallRequest
    ) -> w.GetCallResponse:
        return self.send(_Ops.update_call(call_type, call_id, body))

    def go_live(
        self,
        call_type: str,
        call_id: str,
        *,
        start_hls: bool = False,
        start_recording: bool = False,
    ) -> w.CallStateResponse:
        return self.send(_Ops.go_live(call_type, call_id, start_hls, start_recording))

    def stop_live(
        self,
        call_type: str,
        call_id: str,
        *,
        continue_hls: bool = False,
        continue_recording: bool = False,
    ) -> w.CallStateResponse:
        return self.send(_Ops.stop_live(call_type, call_id, continue_hls, continue_recording))

    def end_call(self, call_type: str, call_id: str) -> w.EmptyResponse:
        return self.send(_Ops.end_call(call_type, call_id))

    # members
    def update_call_members(
        self,
        call_type: str,
        call_id: str,
        update: list[w.MemberRequest] | None = None,
        remove: list[str] | None = None,
    ) -> w.MembersResponse:
        return self.send(_Ops.update_call_members(call_type, call_id, update, remove))

    def query_call_members(
        self, call_type: str, call_id: str, limit: int | None = None
    ) -> w.MembersResponse:
        return self.send(_Ops.query_call_members(call_type, call_id, limit))

    # participants, events, reactions, kick
    def participants(self, call_type: str, call_id: str) -> w.ParticipantsResponse:
        return self.send(_Ops.participants(call_type, call_id))

    def send_event(
        self, call_type: str, call_id: str, custom: dict[str, Any], user_id: str | None = None
    ) -> w.SendCallEventResponse:
        return self.send(_Ops.send_event(call_type, call_id, custom, user_id))

    def send_reaction(
        self, call_type: str, call_id: str, body: w.SendReactionRequest
    ) -> w.SendReactionResponse:
        return self.send(_Ops.send_reaction(call_type, call_id, body))

    def kick_user(self, call_type: str, call_id: str, user_id: str) -> w.KickUserResponse:
        return self.send(_Ops.kick_user(call_type, call_id, user_id))

    # broadcasting and recordings
    def start_broadcasting(self, call_type: str, call_id: str) -> w.StartBroadcastingResponse:
        return self.send(_Ops.start_broadcasting(call_type, call_id))

    def stop_broadcasting(self, call_type: str, call_id: str) -> w.EmptyResponse:
        return self.send(_Ops.stop_broadcasting(call_type, call_id))

    def start_recording(
        self, call_type: str, call_id: str, recording_type: str = "composite"
    ) -> w.EmptyResponse:
        return self.send(_Ops.recording(call_type, call_id, recording_type, "start"))

    def stop_recording(
        self, call_type: str, call_id: str, recording_type: str = "composite"
    ) -> w.EmptyResponse:
        return self.send(_Ops.recording(call_type, call_id, recording_type, "stop"))

    def list_recordings(self, call_type: str, call_id: str) -> w.ListRecordingsResponse:
        return self.send(_Ops.list_recordings(call_type, call_id))

    def delete_recording(
        self, call_type: str, call_id: str, session_id: str, filename: str
    ) -> w.EmptyResponse:
        return self.send(_Ops.delete_recording(call_type, call_id, session_id, filename))


class AsyncClient(_Base):
    """The same methods as :class:`Client`, as coroutines; ``async with`` or :meth:`aclose`."""

    def __init__(self, base_url: str, api_key: str, **kwargs: Any) -> None:
        super().__init__(base_url, api_key, **kwargs)
        self._http = httpx.AsyncClient(**self._http_args())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, op: Op[T]) -> T:
        try:
            resp = await self._http.send(op.request(self._http))
        except httpx.HTTPError as e:
            raise _unreachable(self.base_url, e) from None
        return op.parse(resp)

    # users
    async def upsert_users(self, *users: w.UserRequest) -> w.UpdateUsersResponse:
        return await self.send(_Ops.upsert_users(users))

    async def update_users_partial(self, *updates: w.UserPartialUpdate) -> w.UpdateUsersResponse:
        return await self.send(_Ops.update_users_partial(updates))

    async def revoke_tokens(self, user_id: str, before: datetime) -> w.UpdateUsersResponse:
        """Tokens of ``user_id`` issued before ``before`` stop working; their sessions end."""
        return await self.send(_Ops.revoke_tokens(user_id, before))

    # call types
    async def list_call_types(self) -> w.ListCallTypesResponse:
        return await self.send(_Ops.list_call_types())

    async def create_call_type(self, body: w.CreateCallTypeRequest) -> w.CallTypeResponse:
        return await self.send(_Ops.create_call_type(body))

    async def get_call_type(self, name: str) -> w.CallTypeResponse:
        return await self.send(_Ops.get_call_type(name))

    async def update_call_type(
        self, name: str, body: w.UpdateCallTypeRequest
    ) -> w.CallTypeResponse:
        return await self.send(_Ops.update_call_type(name, body))

    async def delete_call_type(self, name: str) -> w.EmptyResponse:
        return await self.send(_Ops.delete_call_type(name))

    # calls
    async def get_call(
        self, call_type: str, call_id: str, members_limit: int | None = None
    ) -> w.GetCallResponse:
        return await self.send(_Ops.get_call(call_type, call_id, members_limit))

    async def get_or_create_call(
        self, call_type: str, call_id: str, data: w.CallRequest | None = None
    ) -> w.GetOrCreateCallResponse:
        return await self.send(_Ops.get_or_create_call(call_type, call_id, data))

    async def update_call(
        self, call_type: str, call_id: str, body: w.UpdateCallRequest
    ) -> w.GetCallResponse:
        return await self.send(_Ops.update_call(call_type, call_id, body))

    async def go_live(
        self,
        call_type: str,
        call_id: str,
        *,
        start_hls: bool = False,
        start_recording: bool = False,
    ) -> w.CallStateResponse:
        return await self.send(_Ops.go_live(call_type, call_id, start_hls, start_recording))

    async def stop_live(
        self,
        call_type: str,
        call_id: str,
        *,
        continue_hls: bool = False,
        continue_recording: bool = False,
    ) -> w.CallStateResponse:
        return await self.send(_Ops.stop_live(call_type, call_id, continue_hls, continue_recording))

    async def end_call(self, call_type: str, call_id: str) -> w.EmptyResponse:
        return await self.send(_Ops.end_call(call_type, call_id))

    # members
    async def update_call_members(
        self,
        call_type: str,
        call_id: str,
        update: list[w.MemberRequest] | None = None,
        remove: list[str] | None = None,
    ) -> w.MembersResponse:
        return await self.send(_Ops.update_call_members(call_type, call_id, update, remove))

    async def query_call_members(
        self, call_type: str, call_id: str, limit: int | None = None
    ) -> w.MembersResponse:
        return await self.send(_Ops.query_call_members(call_type, call_id, limit))

    # participants, events, reactions, kick
    async def participants(self, call_type: str, call_id: str) -> w.ParticipantsResponse:
        return await self.send(_Ops.participants(call_type, call_id))

    async def send_event(
        self, call_type: str, call_id: str, custom: dict[str, Any], user_id: str | None = None
    ) -> w.SendCallEventResponse:
        return await self.send(_Ops.send_event(call_type, call_id, custom, user_id))

    async def send_reaction(
        self, call_type: str, call_id: str, body: w.SendReactionRequest
    ) -> w.SendReactionResponse:
        return await self.send(_Ops.send_reaction(call_type, call_id, body))

    async def kick_user(self, call_type: str, call_id: str, user_id: str) -> w.KickUserResponse:
        return await self.send(_Ops.kick_user(call_type, call_id, user_id))

    # broadcasting and recordings
    async def start_broadcasting(self, call_type: str, call_id: str) -> w.StartBroadcastingResponse:
        return await self.send(_Ops.start_broadcasting(call_type, call_id))

    async def stop_broadcasting(self, call_type: str, call_id: str) -> w.EmptyResponse:
        return await self.send(_Ops.stop_broadcasting(call_type, call_id))

    async def start_recording(
        self, call_type: str, call_id: str, recording_type: str = "composite"
    ) -> w.EmptyResponse:
        return await self.send(_Ops.recording(call_type, call_id, recording_type, "start"))

    async def stop_recording(
        self, call_type: str, call_id: str, recording_type: str = "composite"
    ) -> w.EmptyResponse:
        return await self.send(_Ops.recording(call_type, call_id, recording_type, "stop"))

    async def list_recordings(self, call_type: str, call_id: str) -> w.ListRecordingsResponse:
        return await self.send(_Ops.list_recordings(call_type, call_id))

    async def delete_recording(
        self, call_type: str, call_id: str, session_id: str, filename: str
    ) -> w.EmptyResponse:
        return await self.send(_Ops.delete_recording(call_type, call_id, session_id, filename))
