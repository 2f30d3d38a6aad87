"""Call-level WebSocket signaling for full clients (browsers, SDK-like apps).

``GET /video/connect?api_key=<key>&call_type=<type>&call_id=<id>[&token=<user JWT>]`` opens a
WebSocket of JSON text messages, each with a ``type``. Browsers cannot set headers on a
WebSocket, so the user token comes as ``?token=`` or, to keep it out of URLs and logs, as the
first message ``{"type": "auth", "token": "..."}`` (within :data:`AUTH_TIMEOUT` seconds).
Refusals close the socket with a 44xx code (:data:`CLOSE_UNAUTHORIZED` 4401, ...) whose reason
says what is wrong; an ``error`` message with the full text comes first.

Server → client: ``joined`` (the call's participants, its backstage flag and our capabilities),
then every event of the call from the :class:`~ingest.calls.events.EventBus`, passed through in
Stream's shape (participants gain ``tracks``). Client → server: ``subscribe`` / ``unsubscribe``
(by ``user_session_id``), ``answer``, ``ping``.

Media: **one peer connection per subscribed participant** within the WebSocket, and the *server*
offers. A subscription is ``subscribed``, then ``offer`` (``user_session_id``, ``offer_id``, SDP
with every ICE candidate: no trickle), then the client's ``answer`` (echoing ``offer_id``).
When the participant's tracks change (a late track, a republish) the server sends a new
``offer`` for the same ``user_session_id``: it *replaces* the previous connection. When the
participant leaves, the call ends or goes back to backstage (for clients without
``join-backstage``), or the connection fails, the server sends ``unsubscribed`` with a reason.

We chose separate peer connections over one renegotiated connection: aiortc (1.16) re-filters
codecs from its global table on every ``createOffer``, BUNDLE forbids one payload type with two
H.264 profiles (two hosts with different encoders), and its renegotiation paths are little
used. A connection per participant needs neither, and a failure stays with one participant.

H.264 is never transcoded per client: media comes from the SFU's shared per-track bridges
(:meth:`SFU.acquire_bridge`), so any number of clients and WHEP viewers of one participant share
one bridge and one AAC → Opus transcoder. The peer connection is a
:class:`~ingest.webrtc.subscriber.Subscriber`, the one WHEP uses: it offers the stream's real
H.264 ``profile-level-id`` first and Constrained Baseline second, and picks the codec it sends
from the client's answer as WHEP picks it from a viewer's offer.

Bounds: events go through a per-client :class:`Outbox` that drops the oldest *events* (counted)
when the client does not read, so a slow client never slows the bus or other clients; replies
(offers, errors, ...) are never dropped, but a client with :data:`CONTROL_QUEUE` unsent replies
is disconnected. :data:`MAX_SUBSCRIPTIONS` per client, :data:`MAX_MESSAGE_BYTES` per message,
:data:`MAX_CLIENTS_DEFAULT` clients per process.

A WebSocket client is a *watcher*, not a call participant: it does not appear in
``participants`` nor cause ``call.session_participant_joined`` (it publishes nothing). It is on
the call's roster of watchers (:meth:`CallService.add_watcher`), so a kick (4409), a revocation
of the user's tokens (4401) or removal from the call (4403) ends it at once: an ``error`` message
with the reason, then the close with the same reason; its peer connections close with it, and
nothing it sends after the cut is acted on. A client that does not take the close within
:data:`CUT_GRACE` seconds is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection
from fastapi import APIRouter, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from ingest.calls import capabilities as caps
from ingest.calls import events as ev
from ingest.calls.service import (
    CUT_KICKED,
    CUT_REVOKED,
    WATCH_CAPABILITIES,
    Caller,
    CallService,
    Watcher,
)
from ingest.errors import (
    AuthenticationError,
    InputError,
    MediaError,
    NotFoundError,
    PermissionDeniedError,
)
from ingest.media.hub import Hub, Track, Watch, WatchClosedError
from ingest.media.units import Kind
from ingest.webrtc.sfu import MAX_OFFER_BYTES, SFU
from ingest.webrtc.subscriber import Subscriber

log = logging.getLogger("ingest.webrtc.signaling")

# --- limits ---------------------------------------------------------------------------------

MAX_MESSAGE_BYTES = MAX_OFFER_BYTES + 4096
"""A client message larger than this is refused (an SDP answer is ~2-6 KiB)."""
MAX_SUBSCRIPTIONS = 16
"""Participants one WebSocket client may subscribe to at once."""
MAX_CLIENTS_DEFAULT = 5000
"""WebSocket clients per process; the next one is closed with :data:`CLOSE_TOO_MANY_CLIENTS`."""
EVENT_QUEUE = 256
"""Events waiting for one client; beyond, the oldest event is dropped (and counted)."""
CONTROL_QUEUE = 64
"""Unsent replies (offers, errors, pongs) of one client; beyond, the client is disconnected."""
AUTH_TIMEOUT = 10.0
"""Seconds a client without ``?token=`` has to send ``{"type": "auth"}``."""
TRACK_SETTLE = 0.3
"""Seconds a new subscription waits for the participant's second track before offering one."""
MAX_ID_LENGTH = 255
"""Longest ``user_session_id`` accepted in a message."""
MAX_CLOSE_REASON_BYTES = 123
"""RFC 6455: a close reason fits in a control frame."""
CUT_GRACE = 2.0
"""Seconds a kicked / revoked / removed client has to take its close before it is dropped."""

# --- close codes and error codes ------------------------------------------------------------

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
"""The client does not read its messages (its reply queue is full)."""
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_KICKED = 4409
CLOSE_TOO_MANY_CLIENTS = 4429

ERR_BAD_JSON = "bad_json"
ERR_BAD_MESSAGE = "bad_message"
ERR_UNKNOWN_TYPE = "unknown_type"
ERR_TOO_LARGE = "message_too_large"
ERR_UNKNOWN_PARTICIPANT = "unknown_participant"
ERR_NOT_ALLOWED = "not_allowed"
ERR_TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
ERR_ALREADY_SUBSCRIBED = "already_subscribed"
ERR_NOT_SUBSCRIBED = "not_subscribed"
ERR_STALE_ANSWER = "stale_answer"
ERR_BAD_ANSWER = "bad_answer"
ERR_MEDIA = "media_unsupported"
ERR_UNAUTHORIZED = "unauthorized"
ERR_NOT_FOUND = "not_found"
ERR_INTERNAL = "internal"
ERR_KICKED = "kicked"

# --- client messages (sans-I/O) -------------------------------------------------------------


class ProtocolError(Exception):
    """A message we refuse; becomes ``{"type": "error", "code", "message"}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    user_session_id: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    user_session_id: str


@dataclass(frozen=True, slots=True)
class Answer:
    user_session_id: str
    sdp: str
    offer_id: int | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    pass


ClientMessage = Auth | Subscribe | Unsubscribe | Answer | Ping
MESSAGE_TYPES = ("auth", "subscribe", "unsubscribe", "answer", "ping")


def _string(data: Mapping[str, Any], key: str, type_: str, max_len: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(ERR_BAD_MESSAGE, f"'{type_}' needs '{key}' as a non-empty string")
    if len(value) > max_len:
        raise ProtocolError(ERR_BAD_MESSAGE, f"'{key}' is longer than {max_len} characters")
    return value


def parse_message(raw: str | bytes) -> ClientMessage:
    """One client message; raises :class:`ProtocolError` with a code and a message that helps."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            ERR_TOO_LARGE, f"the message has {size} bytes; the limit is {MAX_MESSAGE_BYTES}"
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ERR_BAD_JSON, f"the message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(ERR_BAD_MESSAGE, 'a message is a JSON object with a "type"')
    type_ = data.get("type")
    if not isinstance(type_, str):
        raise ProtocolError(ERR_BAD_MESSAGE, 'the message has no "type" string')
    if type_ == "ping":
        return Ping()
    if type_ == "auth":
        return Auth(_string(data, "token", type_, 8192))
    if type_ in ("subscribe", "unsubscribe", "answer"):
        usid = _string(data, "user_session_id", type_, MAX_ID_LENGTH)
        if type_ == "subscribe":
            return Subscribe(usid)
        if type_ == "unsubscribe":
            return Unsubscribe(usid)
        sdp = _string(data, "sdp", type_, MAX_OFFER_BYTES)
        offer_id = data.get("offer_id")
        if offer_id is not None and (not isinstance(offer_id, int) or isinstance(offer_id, bool)):
            raise ProtocolError(ERR_BAD_MESSAGE, "'offer_id' must be the integer of the offer")
        return Answer(usid, sdp, offer_id)
    raise ProtocolError(
        ERR_UNKNOWN_TYPE,
        f"unknown message type {type_[:40]!r}: send one of {', '.join(MESSAGE_TYPES)}",
    )


# --- server messages ------------------------------------------------------------------------


def error_message(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def event_message(event: Mapping[str, Any], tracks: list[str] | None = None) -> dict[str, Any]:
    """A bus event as sent to clients: Stream's shape, untouched, except that a ``participant``
    gains ``tracks`` (``tracks``, else ``[]``). Copies: the bus shares the dict."""
    msg = dict(event)
    participant = msg.get("participant")
    if isinstance(participant, dict) and "tracks" not in participant:
        msg["participant"] = {**participant, "tracks": list(tracks or [])}
    return msg


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return ev.iso(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def encode(msg: Mapping[str, Any]) -> str:
    """JSON text of a server message; times as RFC 3339 strings."""
    return json.dumps(msg, default=_json_default, separators=(",", ":"))


def close_reason(text: str) -> str:
    """``text`` cut to :data:`MAX_CLOSE_REASON_BYTES` of UTF-8."""
    data = text.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """Put in the outbox: close the socket once what comes before it is sent."""

    code: int
    reason: str


OutItem = dict[str, Any] | CloseRequest


class Outbox:
    """One client's messages in order: events may be dropped (oldest first, counted), replies
    are not (:meth:`put_control` says ``False`` when :attr:`max_control` are waiting)."""

    def __init__(self, max_events: int = EVENT_QUEUE, max_control: int = CONTROL_QUEUE) -> None:
        self.max_events = max_events
        self.max_control = max_control
        self.dropped = 0
        """Events lost because the client did not read them."""
        self._items: deque[tuple[OutItem, bool]] = deque()  # (item, droppable)
        self._events = 0
        self._control = 0
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put_event(self, msg: dict[str, Any]) -> None:
        """Queue an event; drops the oldest queued event if :attr:`max_events` are waiting."""
        if self._events >= self.max_events:
            for i, (_, droppable) in enumerate(self._items):
                if droppable:
                    del self._items[i]
                    break
            self._events -= 1
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("a signaling client falls behind: %d events dropped", self.dropped)
        self._items.append((msg, True))
        self._events += 1
        self._wake()

    def put_control(self, item: OutItem, *, force: bool = False) -> bool:
        """Queue a reply (never dropped); ``False`` if the client already has too many."""
        if self._control >= self.max_control and not force:
            return False
        self._items.append((item, False))
        self._control += 1
        self._wake()
        return True

    def get_nowait(self) -> OutItem | None:
        if not self._items:
            return None
        item, droppable = self._items.popleft()
        if droppable:
            self._events -= 1
        else:
            self._control -= 1
        return item

    async def get(self) -> OutItem:
        while (item := self.get_nowait()) is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return item

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


# --- per-client state -----------------------------------------------------------------------


@dataclass(eq=False)
class MediaSubscription:
    """One subscribed participant: its subscriber peer connection (``None`` while it has no
    tracks)."""

    user_session_id: str
    subscriber: Subscriber | None = None
    offer_id: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    settle: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None

    @property
    def pc(self) -> RTCPeerConnection | None:
        return None if self.subscriber is None else self.subscriber.pc

    @property
    def sources(self) -> dict[Kind, Track]:
        return {} if self.subscriber is None else self.subscriber.sources


class _Refusal(Exception):
    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error = error
        self.message = message


class SignalingClient:
    """One WebSocket client of one call."""

    def __init__(
        self,
        signaling: Signaling,
        ws: WebSocket,
        call_cid: str,
        caller: Caller,
        capabilities: list[str],
    ) -> None:
        self.signaling = signaling
        self.ws = ws
        self.call_cid = call_cid
        self.call_type, _, self.call_id = call_cid.partition(":")
        self.caller = caller
        self.user_id = caller.user_id
        self.capabilities = capabilities
        self.outbox = Outbox(signaling.event_queue, signaling.control_queue)
        self.subscriptions: dict[str, MediaSubscription] = {}
        self.finished = asyncio.Event()
        self._lock = asyncio.Lock()
        self._offers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._cleaned = False
        self._closing = False
        self.watcher: Watcher | None = None
        """Its entry on the call's roster (set once admitted)."""

    def __repr__(self) -> str:
        return f"<SignalingClient {self.caller.label} in {self.call_cid}>"

    @property
    def can_watch_backstage(self) -> bool:
        return self.caller.server or caps.JOIN_BACKSTAGE in self.capabilities

    # -- life cycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the client until it leaves, is closed, or stops reading."""
        events = self.signaling.calls.bus.subscribe(
            self.call_cid, maxsize=self.signaling.event_queue
        )
        watch = self.signaling.hub.watch(self.call_cid, existing=False)
        try:
            self._send(await self._joined())
            loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write(), name=f"{self!r} writer")
            workers = [
                self._writer,
                loop.create_task(self._read(), name=f"{self!r} reader"),
                loop.create_task(self._pump_events(events), name=f"{self!r} events"),
                loop.create_task(self._pump_tracks(watch), name=f"{self!r} tracks"),
            ]
            try:
                await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            events.close()
            watch.close()
            await self.cleanup()
            self.finished.set()

    async def cleanup(self) -> None:
        """Close every peer connection and release its bridges (idempotent)."""
        if self._cleaned:
            return
        self._cleaned = True
        for task in list(self._tasks):
            task.cancel()
        async with self._lock:
            for sub in list(self.subscriptions.values()):
                await self._teardown(sub)
            self.subscriptions.clear()
        if self.outbox.dropped:
            log.info(
                "%r: %d events dropped (the client read too slowly)", self, self.outbox.dropped
            )

    def close(self, code: int, reason: str) -> None:
        """Close the socket after what is already queued (the first close wins)."""
        if self._closing:
            return
        self._closing = True
        self.outbox.put_control(CloseRequest(code, close_reason(reason)), force=True)

    def cut(self, cause: str, reason: str) -> None:
        """The call's roster ends this client (kick, revocation, removal): the reason as an
        ``error`` and in the close; dropped if it does not take them within the grace."""
        if self._closing:
            return
        if cause == CUT_KICKED:
            code, error = CLOSE_KICKED, ERR_KICKED
        elif cause == CUT_REVOKED:
            code, error = CLOSE_UNAUTHORIZED, ERR_UNAUTHORIZED
        else:
            code, error = CLOSE_FORBIDDEN, ERR_NOT_ALLOWED
        self.outbox.put_control(error_message(error, reason), force=True)
        self.close(code, reason)
        asyncio.get_running_loop().call_later(self.signaling.cut_grace, self._drop_socket)

    def _drop_socket(self) -> None:
        if not self.finished.is_set() and self._writer is not None:
            log.warning("%r did not take its close in time; dropping it", self)
            self._writer.cancel()  # ends run(): its peer connections close

    # -- the socket ------------------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        """Queue a reply; a client that stopped reading them is disconnected."""
        if not self.outbox.put_control(msg):
            log.warning("%r does not read its messages; disconnecting it", self)
            if self._writer is not None:
                self._writer.cancel()

    async def _write(self) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            while True:
                item = await self.outbox.get()
                if isinstance(item, CloseRequest):
                    await self.ws.close(item.code, item.reason)
                    return
                await self.ws.send_text(encode(item))

    async def _read(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes")
            if raw is None:
                continue
            try:
                await self._dispatch(parse_message(raw))
            except ProtocolError as exc:
                self._send(error_message(exc.code, exc.message))

    async def _dispatch(self, msg: ClientMessage) -> None:
        if self._closing:
            return  # cut or closing: nothing it asks for any more
        if isinstance(msg, Ping):
            self._send({"type": "pong"})
        elif isinstance(msg, Subscribe):
            await self.subscribe(msg.user_session_id)
        elif isinstance(msg, Unsubscribe):
            await self.unsubscribe(msg.user_session_id)
        elif isinstance(msg, Answer):
            await self.answer(msg)
        else:
            raise ProtocolError(ERR_BAD_MESSAGE, "already authenticated: 'auth' comes only first")

    # -- what the call says ----------------------------------------------------------------

    def _tracks_of(self, user_session_id: str) -> list[str]:
        participant = self.signaling.hub.participant(self.call_cid, user_session_id)
        if participant is None:
            return []
        return [k.value for k in (Kind.AUDIO, Kind.VIDEO) if k in participant.tracks]

    def _sources(self, user_session_id: str) -> dict[Kind, Track]:
        participant = self.signaling.hub.participant(self.call_cid, user_session_id)
        return {} if participant is None else dict(participant.tracks)

    async def _joined(self) -> dict[str, Any]:
        calls = self.signaling.calls
        call, _ = await calls.load_call(self.call_type, self.call_id)
        participants = [
            {**calls.participant_json(p), "tracks": self._tracks_of(p.session_id)}
            for p in calls.list_participants(self.call_cid)
        ]
        return {
            "type": "joined",
            "call_cid": self.call_cid,
            "user_id": self.user_id,
            "backstage": call.backstage,
            "own_capabilities": self.capabilities,
            "participants": participants,
            # STUN/TURN servers for this client's peer connections (TURN credentials minted
            # for this user when the server has a shared secret).
            "ice_servers": [
                s.as_json() for s in self.signaling.sfu.ice.servers_for(self.user_id or "server")
            ],
            "limits": {
                "max_subscriptions": self.signaling.max_subscriptions,
                "max_message_bytes": MAX_MESSAGE_BYTES,
            },
        }

    async def _pump_events(self, events: ev.Subscription) -> None:
        while True:
            await self._on_event(await events.get())

    async def _on_event(self, event: dict[str, Any]) -> None:
        if self._closing:
            return
        type_ = event.get("type")
        participant = event.get("participant")
        usid = participant.get("user_session_id") if isinstance(participant, dict) else None
        msg = event_message(event, self._tracks_of(usid) if isinstance(usid, str) else None)
        if type_ == ev.KICKED_USER and (event.get("user") or {}).get("id") == self.user_id:
            self._send(msg)
            self.close(CLOSE_KICKED, "kicked from the call")
            return
        self.outbox.put_event(msg)
        if type_ == ev.PARTICIPANT_LEFT and isinstance(usid, str):
            async with self._lock:
                sub = self.subscriptions.get(usid)
                if sub is not None:
                    await self._drop(sub, "the participant left the call")
        elif type_ == ev.CALL_UPDATED and event.get("backstage") is True:
            if not self.can_watch_backstage:
                await self._drop_all("the call went back to backstage: wait for call.live_started")
        elif type_ == ev.CALL_ENDED:
            await self._drop_all("the call ended")

    async def _pump_tracks(self, watch: Watch) -> None:
        while True:
            try:
                first = await watch.get()
            except WatchClosedError:
                return
            changed = {first.participant_id}
            while (more := watch.get_nowait()) is not None:  # one offer for a burst of changes
                changed.add(more.participant_id)
            async with self._lock:
                for usid in changed:
                    sub = self.subscriptions.get(usid)
                    if sub is not None:
                        await self._sync(sub)

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, user_session_id: str) -> None:
        """Subscribe to a participant's media: ``subscribed``, then an ``offer`` once it has
        tracks."""
        calls = self.signaling.calls
        if user_session_id in self.subscriptions:
            raise ProtocolError(ERR_ALREADY_SUBSCRIBED, f"already subscribed to {user_session_id}")
        if len(self.subscriptions) >= self.signaling.max_subscriptions:
            raise ProtocolError(
                ERR_TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.signaling.max_subscriptions} subscriptions per connection: "
                "unsubscribe from one first",
            )
        try:
            call, ct = await calls.load_call(self.call_type, self.call_id)
            await calls.authorize_watch(self.caller, call, ct)
        except PermissionDeniedError as exc:
            raise ProtocolError(ERR_NOT_ALLOWED, exc.message) from None
        except NotFoundError as exc:
            raise ProtocolError(ERR_NOT_FOUND, exc.message) from None
        async with self._lock:
            if self._closing:  # cut while the call was being checked
                return
            if user_session_id in self.subscriptions:
                raise ProtocolError(
                    ERR_ALREADY_SUBSCRIBED, f"already subscribed to {user_session_id}"
                )
            if user_session_id not in calls.participants.get(self.call_cid, {}):
                raise ProtocolError(
                    ERR_UNKNOWN_PARTICIPANT,
                    f"no participant with user_session_id {user_session_id!r} in "
                    f"{self.call_cid} (see 'joined' and call.session_participant_joined)",
                )
            sub = MediaSubscription(user_session_id)
            self.subscriptions[user_session_id] = sub
            self._send(
                {
                    "type": "subscribed",
                    "user_session_id": user_session_id,
                    "tracks": self._tracks_of(user_session_id),
                }
            )
            await self._sync(sub)

    async def unsubscribe(self, user_session_id: str) -> None:
        """End a subscription (its peer connection closes)."""
        async with self._lock:
            sub = self.subscriptions.get(user_session_id)
            if sub is None:
                raise ProtocolError(
                    ERR_NOT_SUBSCRIBED, f"not subscribed to {user_session_id}: nothing to end"
                )
            await self._drop(sub, "unsubscribed")

    async def answer(self, msg: Answer) -> None:
        """Apply the client's answer to the pending offer of a subscription."""
        async with self._lock:
            sub = self.subscriptions.get(msg.user_session_id)
            if sub is None:
                raise ProtocolError(ERR_NOT_SUBSCRIBED, f"not subscribed to {msg.user_session_id}")
            subscriber = sub.subscriber
            if (
                subscriber is None
                or not subscriber.awaits_answer
                or (msg.offer_id is not None and msg.offer_id != sub.offer_id)
            ):
                raise ProtocolError(
                    ERR_STALE_ANSWER,
                    f"no offer of {msg.user_session_id} awaits this answer "
                    f"(the current offer_id is {sub.offer_id})",
                )
            try:
                await subscriber.accept(msg.sdp)
            except InputError as exc:
                log.warning(
                    "%r: answer for %s (offer %d) refused: %s",
                    self,
                    msg.user_session_id,
                    sub.offer_id,
                    exc.message,
                )
                self._send(
                    error_message(ERR_BAD_ANSWER, f"cannot use this SDP answer: {exc.message}")
                )
                await self._drop(sub, "the answer was refused")
                return
            log.info(
                "%r: answer for %s (H.264 answered as %s)",
                self,
                msg.user_session_id,
                subscriber.video_profile_level_id or "-",
            )

    async def _drop_all(self, reason: str) -> None:
        async with self._lock:
            for sub in list(self.subscriptions.values()):
                await self._drop(sub, reason)

    async def _drop(self, sub: MediaSubscription, reason: str) -> None:
        """End a subscription and tell the client (call with the lock held)."""
        if self.subscriptions.get(sub.user_session_id) is sub:
            del self.subscriptions[sub.user_session_id]
        await self._teardown(sub)
        self._send(
            {"type": "unsubscribed", "user_session_id": sub.user_session_id, "reason": reason}
        )

    async def _sync(self, sub: MediaSubscription, *, settled: bool = False) -> None:
        """Make the subscription's connection carry the participant's current tracks (lock
        held): nothing to do, close it (no tracks), wait for a second track, or offer anew."""
        sources = self._sources(sub.user_session_id)
        if sub.pc is not None and sources == sub.sources:
            return
        if not sources:
            await self._teardown(sub)  # tracks ended; the participant may publish again
            return
        if sub.pc is None and len(sources) < 2 and not settled:
            if sub.settle is None:
                sub.settle = self._spawn(self._settle(sub))
            return
        try:
            await self._offer(sub, sources)
        except MediaError as exc:
            self._send(error_message(ERR_MEDIA, exc.message))
            await self._drop(sub, "its media cannot be sent over WebRTC")
        except Exception as exc:  # aiortc: one participant's failure must not end the client
            log.exception("%r: cannot offer %s", self, sub.user_session_id)
            self._send(error_message(ERR_INTERNAL, f"cannot offer this participant: {exc}"))
            await self._drop(sub, "the server could not make an offer")

    async def _settle(self, sub: MediaSubscription) -> None:
        await asyncio.sleep(self.signaling.track_settle)  # a timer, not a wait for state
        async with self._lock:
            sub.settle = None
            if self.subscriptions.get(sub.user_session_id) is sub:
                await self._sync(sub, settled=True)

    async def _offer(self, sub: MediaSubscription, sources: dict[Kind, Track]) -> None:
        """A new peer connection with the participant's tracks, and its offer to the client."""
        await self._teardown(sub)
        self._offers += 1
        sub.offer_id = self._offers
        subscriber = Subscriber(self.signaling.sfu, sources)
        sub.subscriber = subscriber
        try:
            sdp = await subscriber.offer()
        except BaseException:
            await self._teardown(sub)
            raise
        pc = subscriber.pc
        self._watch(sub, pc)
        self._send(
            {
                "type": "offer",
                "user_session_id": sub.user_session_id,
                "offer_id": sub.offer_id,
                "tracks": [k.value for k in (Kind.AUDIO, Kind.VIDEO) if k in sources],
                "sdp": sdp,
            }
        )
        log.info(
            "%r: offer %d for %s: %s",
            self,
            sub.offer_id,
            sub.user_session_id,
            subscriber,
        )

    def _watch(self, sub: MediaSubscription, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        def _changed() -> None:
            if sub.pc is not pc:
                return
            if pc.connectionState == "connected":
                sub.connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self._spawn(self._lost(sub, pc, f"the connection {pc.connectionState}"))

        async def watchdog() -> None:
            try:
                await asyncio.wait_for(sub.connected.wait(), self.signaling.sfu.connect_timeout)
            except TimeoutError:
                await self._lost(sub, pc, "the connection was not made in time")

        sub.watchdog = self._spawn(watchdog())

    async def _lost(self, sub: MediaSubscription, pc: RTCPeerConnection, reason: str) -> None:
        async with self._lock:
            if sub.pc is pc and self.subscriptions.get(sub.user_session_id) is sub:
                unanswered = sub.subscriber is not None and sub.subscriber.awaits_answer
                log.warning(
                    "%r: subscription to %s ends: %s%s",
                    self,
                    sub.user_session_id,
                    reason,
                    f" (offer {sub.offer_id} was never answered: did the client refuse it?)"
                    if unanswered
                    else "",
                )
                await self._drop(sub, reason)

    async def _teardown(self, sub: MediaSubscription) -> None:
        """Close the subscription's connection and release its bridges (lock held)."""
        current = asyncio.current_task()
        for task in (sub.settle, sub.watchdog):
            if task is not None and task is not current:
                task.cancel()
        sub.settle = sub.watchdog = None
        subscriber, sub.subscriber = sub.subscriber, None
        sub.connected = asyncio.Event()
        if subscriber is not None:
            await subscriber.close()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


# --- the endpoint ---------------------------------------------------------------------------


class Signaling:
    """Every WebSocket client of every call; owns their peer connections."""

    def __init__(
        self,
        calls: CallService,
        hub: Hub,
        sfu: SFU,
        *,
        max_clients: int = MAX_CLIENTS_DEFAULT,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        event_queue: int = EVENT_QUEUE,
        control_queue: int = CONTROL_QUEUE,
        auth_timeout: float = AUTH_TIMEOUT,
        track_settle: float = TRACK_SETTLE,
        cut_grace: float = CUT_GRACE,
    ) -> None:
        self.calls = calls
        self.hub = hub
        self.sfu = sfu
        self.max_clients = max_clients
        self.max_subscriptions = max_subscriptions
        self.event_queue = event_queue
        self.control_queue = control_queue
        self.auth_timeout = auth_timeout
        self.track_settle = track_settle
        self.cut_grace = cut_grace
        self.clients: set[SignalingClient] = set()
        self._stopping = False

    async def serve(self, ws: WebSocket) -> None:
        """One WebSocket, from accept to close."""
        await ws.accept()
        try:
            if self._stopping:
                raise _Refusal(CLOSE_GOING_AWAY, ERR_INTERNAL, "the server is shutting down")
            if len(self.clients) >= self.max_clients:
                raise _Refusal(
                    CLOSE_TOO_MANY_CLIENTS,
                    ERR_NOT_ALLOWED,
                    f"this server already has {self.max_clients} clients: try again later",
                )
            client = await self._admit(ws)
        except _Refusal as refusal:
            log.info("signaling client refused (%d): %s", refusal.code, refusal.message)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await ws.send_text(encode(error_message(refusal.error, refusal.message)))
                await ws.close(refusal.code, close_reason(refusal.message))
            return
        except WebSocketDisconnect:
            return
        self.clients.add(client)
        log.info("%r connected", client)
        try:
            await client.run()
        finally:
            self.clients.discard(client)
            if client.watcher is not None:
                self.calls.remove_watcher(client.watcher)
            log.info("%r left", client)

    async def _admit(self, ws: WebSocket) -> SignalingClient:
        query = ws.query_params
        api_key = query.get("api_key")
        if api_key != self.calls.api_key:
            raise _Refusal(
                CLOSE_UNAUTHORIZED,
                ERR_UNAUTHORIZED,
                "api_key query parameter is missing"
                if not api_key
                else f"api_key '{api_key[:40]}' is not this server's key",
            )
        call_type, call_id = query.get("call_type"), query.get("call_id")
        if not call_type or not call_id:
            raise _Refusal(
                CLOSE_BAD_REQUEST,
                ERR_BAD_MESSAGE,
                "name the call: ?call_type=<type>&call_id=<id>",
            )
        token = query.get("token") or await self._auth_message(ws)
        try:
            caller = await self.calls.authenticate(token)
        except AuthenticationError as exc:
            raise _Refusal(CLOSE_UNAUTHORIZED, ERR_UNAUTHORIZED, exc.message) from None
        try:
            call, ct = await self.calls.load_call(call_type, call_id)
        except NotFoundError as exc:
            raise _Refusal(CLOSE_NOT_FOUND, ERR_NOT_FOUND, exc.message) from None
        have = await self.calls.capabilities_of(caller, call, ct)
        if not caller.server and caps.JOIN_CALL not in have and caps.JOIN_BACKSTAGE not in have:
            raise _Refusal(
                CLOSE_FORBIDDEN,
                ERR_NOT_ALLOWED,
                f"{caller.label} may not join {call.cid}: their role lacks 'join-call'",
            )
        client = SignalingClient(self, ws, call.cid, caller, have)
        try:  # on the roster before it sees anything: kick and revocation reach it from now
            client.watcher = self.calls.add_watcher(
                call.cid, caller, "websocket", client.cut, WATCH_CAPABILITIES & set(have)
            )
        except AuthenticationError as exc:  # revoked while it was being admitted
            raise _Refusal(CLOSE_UNAUTHORIZED, ERR_UNAUTHORIZED, exc.message) from None
        return client

    async def _auth_message(self, ws: WebSocket) -> str:
        try:
            message = await asyncio.wait_for(ws.receive(), self.auth_timeout)
        except TimeoutError:
            raise _Refusal(
                CLOSE_AUTH_TIMEOUT,
                ERR_UNAUTHORIZED,
                f'send {{"type": "auth", "token": "<user token>"}} within {self.auth_timeout:g} s '
                "(or connect with ?token=)",
            ) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        raw = message.get("text") or message.get("bytes") or ""
        try:
            msg = parse_message(raw)
        except ProtocolError as exc:
            raise _Refusal(CLOSE_UNAUTHORIZED, ERR_UNAUTHORIZED, exc.message) from None
        if not isinstance(msg, Auth):
            raise _Refusal(
                CLOSE_UNAUTHORIZED,
                ERR_UNAUTHORIZED,
                'authenticate first: {"type": "auth", "token": "<user token>"} or ?token=',
            )
        return msg.token

    async def stop(self, grace: float = 2.0) -> None:
        """Close every client (1001) and its peer connections."""
        self._stopping = True
        clients = list(self.clients)
        for client in clients:
            client.close(CLOSE_GOING_AWAY, "the server is shutting down")
        if clients:
            waiting = [asyncio.ensure_future(c.finished.wait()) for c in clients]
            _, pending = await asyncio.wait(waiting, timeout=grace)
            for task in pending:
                task.cancel()
        await asyncio.gather(*(c.cleanup() for c in clients), return_exceptions=True)


SAMPLE_VIEWER = Path(__file__).resolve().parents[2] / "samples" / "viewer.html"


def build_signaling_router(signaling: Signaling) -> APIRouter:
    """``/video/connect`` (WebSocket) and the sample viewer page."""
    router = APIRouter(tags=["signaling"])

    @router.websocket("/video/connect")
    async def video_connect(ws: WebSocket) -> None:
        """The call's events and its participants' media (see ``ingest.webrtc.signaling``)."""
        await signaling.serve(ws)

    @router.get("/samples/viewer.html", include_in_schema=False)
    async def sample_viewer() -> Response:
        if not SAMPLE_VIEWER.is_file():
            return JSONResponse({"message": "samples/viewer.html is not installed"}, 404)
        return FileResponse(SAMPLE_VIEWER, media_type="text/html")

    return router
