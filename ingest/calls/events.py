"""The event bus (in process) and outgoing webhooks.

Every event is a JSON object (the webhook payload too): ``type``, ``created_at`` and,
for call events, ``call_cid``. Subscribers get their own bounded queue: a subscriber that does not
keep up loses its oldest events (counted), never slows the publisher of the event.
Webhooks go out from one background task with bounded retries; ``emit`` never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

log = logging.getLogger("ingest.events")

CALL_CREATED = "call.created"
CALL_UPDATED = "call.updated"
CALL_LIVE_STARTED = "call.live_started"
CALL_ENDED = "call.ended"
CALL_MEMBER_ADDED = "call.member_added"
CALL_MEMBER_UPDATED = "call.member_updated"
CALL_MEMBER_REMOVED = "call.member_removed"
PARTICIPANT_JOINED = "call.session_participant_joined"
PARTICIPANT_LEFT = "call.session_participant_left"
HLS_STARTED = "call.hls_broadcasting_started"
HLS_STOPPED = "call.hls_broadcasting_stopped"
HLS_FAILED = "call.hls_broadcasting_failed"
RECORDING_STARTED = "call.recording_started"
RECORDING_STOPPED = "call.recording_stopped"
RECORDING_READY = "call.recording_ready"
RECORDING_FAILED = "call.recording_failed"
REACTION_NEW = "call.reaction_new"
CUSTOM = "custom"
INGRESS_STARTED = "ingress.started"
INGRESS_STOPPED = "ingress.stopped"
INGRESS_ERROR = "ingress.error"
KICKED_USER = "call.kicked_user"

SUBSCRIBER_QUEUE_DEFAULT = 1000
WEBHOOK_BACKOFF_BASE = 0.5  # seconds, doubled per attempt


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def sign(body: bytes, secret: str) -> str:
    """``X-Signature``: hex HMAC-SHA256 of the raw body keyed with the API secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Subscription:
    """One subscriber's bounded view of the bus."""

    def __init__(self, bus: EventBus, call_cid: str | None, maxsize: int) -> None:
        self._bus = bus
        self.call_cid = call_cid
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: dict[str, Any]) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("event subscriber falls behind: %d events dropped", self.dropped)
        self._queue.put_nowait(event)

    async def get(self) -> dict[str, Any]:
        return await self._queue.get()

    def get_nowait(self) -> dict[str, Any] | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        self._bus._subs.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.count = 0

    def subscribe(
        self, call_cid: str | None = None, maxsize: int = SUBSCRIBER_QUEUE_DEFAULT
    ) -> Subscription:
        sub = Subscription(self, call_cid, maxsize)
        self._subs.add(sub)
        return sub

    def add_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """A synchronous callback for every event (it must not block)."""
        self._listeners.append(fn)

    def emit(self, type_: str, call_cid: str | None = None, **fields: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": type_, "created_at": iso(datetime.now(UTC))}
        if call_cid is not None:
            event["call_cid"] = call_cid
        event.update(fields)
        self.count += 1
        for sub in list(self._subs):
            if sub.call_cid is None or sub.call_cid == call_cid:
                sub._offer(event)
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:  # a broken listener must not break the caller
                log.exception("event listener failed on %s", type_)
        return event


class WebhookSender:
    """Posts every bus event to one URL, signed; bounded queue, bounded retries."""

    def __init__(
        self,
        bus: EventBus,
        url: str,
        *,
        api_key: str,
        secret: str,
        timeout: float,
        max_attempts: int,
        queue_size: int,
    ) -> None:
        self.url = url
        self._api_key = api_key
        self._secret = secret
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._sub = bus.subscribe(None, maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.delivered = 0
        self.failed = 0

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        self._sub.close()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            event = await self._sub.get()
            await self._deliver(event)

    async def _deliver(self, event: dict[str, Any]) -> None:
        assert self._client is not None
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Signature": sign(body, self._secret),
            "X-Api-Key": self._api_key,
            "X-Webhook-Attempt": "1",
        }
        for attempt in range(1, self._max_attempts + 1):
            headers["X-Webhook-Attempt"] = str(attempt)
            try:
                resp = await self._client.post(self.url, content=body, headers=headers)
                if resp.status_code < 300:
                    self.delivered += 1
                    return
                reason = f"HTTP {resp.status_code}"
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    break  # the receiver rejects this event; retrying will not help
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__}: {e}"
            if attempt < self._max_attempts:
                await asyncio.sleep(WEBHOOK_BACKOFF_BASE * 2 ** (attempt - 1))
        self.failed += 1
        log.warning("webhook %s to %s not delivered: %s", event["type"], self.url, reason)
