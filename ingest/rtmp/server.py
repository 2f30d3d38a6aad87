"""asyncio adapter for :class:`~ingest.rtmp.connection.ServerConnection`: sockets, timeouts, limits.

Auth stays out: the server asks a :class:`PublishHandler` before it answers ``publish``. One
publish per connection. Timeouts: the handshake must complete within ``handshake_timeout``; once
a publish is accepted the first audio/video must arrive within ``first_media_timeout``; otherwise
a connection that sends nothing for ``idle_timeout`` is closed (not while its publish is being
decided). A malformed stream closes only its own connection, logged once on ``ingest.rtmp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from ingest.errors import (
    AuthenticationError,
    ConflictError,
    IngestError,
    InputError,
    NotFoundError,
    PermissionDeniedError,
)
from ingest.logs import redact

from .connection import (
    AudioReceived,
    ConnectRequested,
    MetadataReceived,
    PublishRequested,
    ServerConnection,
    UnpublishRequested,
    VideoReceived,
)
from .error import RTMPError

HANDSHAKE_TIMEOUT = 10.0  # seconds from accept to a complete handshake
FIRST_MEDIA_TIMEOUT = 20.0  # seconds from publish accepted to the first audio/video message
IDLE_TIMEOUT = 10.0  # seconds without any byte from the peer
MAX_CONNECTIONS = 1000
REJECT_DELAY = (0.2, 0.6)  # seconds, uniformly random, before a refused publish is answered

log = logging.getLogger("ingest.rtmp")


@dataclass(frozen=True)
class PublishRequest:
    """What the handler decides on."""

    app: str
    stream_key: str = field(repr=False)
    peer: str  # "ip:port"


class PublishSession(Protocol):
    """Receives one accepted publication. The sync callbacks run on the event loop."""

    def on_metadata(self, metadata: dict[str, object]) -> None: ...
    def on_audio(self, timestamp: int, payload: bytes) -> None: ...
    def on_video(self, timestamp: int, payload: bytes) -> None: ...
    async def on_close(self, reason: str | None) -> None:
        """``None``: clean unpublish; otherwise why (timeout, protocol error, kick...)."""


class PublishHandler(Protocol):
    async def on_publish(
        self, request: PublishRequest, disconnect: Callable[[str], None]
    ) -> PublishSession:
        """Accept by returning a session; refuse by raising :class:`IngestError` (its message
        becomes the onStatus description). ``disconnect(reason)`` closes the connection later
        (kick, takeover); call it on the event loop."""
        ...


def status_code(error: IngestError) -> str:
    """The onStatus code that refuses a publish for ``error``."""
    if isinstance(error, NotFoundError | InputError | ConflictError):
        return "NetStream.Publish.BadName"
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return "NetStream.Publish.Unauthorized"
    return "NetStream.Publish.Failed"


class _Peer(asyncio.Protocol):
    """One TCP connection."""

    def __init__(self, server: RTMPServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._conn = ServerConnection()
        self._transport: asyncio.Transport | None = None
        self.peer = "?"
        self._session: PublishSession | None = None
        self._authorizing = False
        self._publish_seen = False
        self._awaiting_media = False
        self._closing = False
        self._last_rx = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._media_timer: asyncio.TimerHandle | None = None
        self._key = ""
        self._close_reason: str | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        addr = transport.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            host = str(addr[0])
            self.peer = f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
        server = self._server
        if len(server._peers) >= server.max_connections:
            log.warning(
                "refusing %s: %d connections open (limit %d)",
                self.peer,
                len(server._peers),
                server.max_connections,
            )
            self._closing = True
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server._peers.add(self)
        self._timer = self._loop.call_later(server.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        conn = self._conn
        self._last_rx = self._loop.time()
        handshaking = not conn.handshake_complete
        conn.receive_data(data)
        self._flush()
        if handshaking and conn.handshake_complete:
            self._schedule_idle(self._server.idle_timeout)
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close("connection lost" + (f": {exc}" if exc else ""), peer_gone=True)

    # -- events ------------------------------------------------------------------------------

    def _process(self) -> None:
        conn = self._conn
        try:
            while (event := conn.next_event()) is not None:
                if self._closing:
                    return
                kind = type(event)
                if kind is VideoReceived or kind is AudioReceived:
                    assert isinstance(event, VideoReceived | AudioReceived)
                    session = self._session
                    if session is None:
                        continue
                    if self._awaiting_media:
                        self._media_started()
                    if kind is VideoReceived:
                        session.on_video(event.timestamp, event.payload)
                    else:
                        session.on_audio(event.timestamp, event.payload)
                elif isinstance(event, MetadataReceived):
                    if self._session is not None:
                        self._session.on_metadata(event.metadata)
                elif isinstance(event, PublishRequested):
                    self._publish_requested(event)
                elif isinstance(event, UnpublishRequested):
                    session, self._session = self._session, None
                    if session is not None:
                        log.info("%s unpublished %s", self.peer, redact(self._key))
                        self._server._spawn(session.on_close(None))
                elif isinstance(event, ConnectRequested):
                    log.debug("%s connect app=%r", self.peer, event.app)
        except RTMPError as e:
            log.warning("closing %s: %s", self.peer, e)
            self._close(f"protocol error: {e}")
        except Exception:
            log.exception("closing %s: the publish session failed", self.peer)
            self._close("internal error")

    def _publish_requested(self, event: PublishRequested) -> None:
        if self._publish_seen:
            self._conn.reject_publish(
                event.stream_id,
                "NetStream.Publish.BadName",
                "Only one publish per connection.",
            )
            self._flush()
            return
        self._publish_seen = True
        self._authorizing = True
        self._key = event.stream_key
        assert self._transport is not None
        self._transport.pause_reading()
        self._server._spawn(self._authorize(event))

    async def _authorize(self, event: PublishRequested) -> None:
        request = PublishRequest(event.app, event.stream_key, self.peer)
        try:
            session = await self._server.handler.on_publish(request, self.disconnect)
        except Exception as e:
            if isinstance(e, IngestError):
                code, description = status_code(e), e.message
                log.info(
                    "refusing publish from %s app=%r key=%s: %s",
                    self.peer,
                    event.app,
                    redact(event.stream_key),
                    description,
                )
            else:
                code, description = "NetStream.Publish.Failed", "Internal server error."
                log.exception("publish handler failed for %s", self.peer)
            await asyncio.sleep(random.uniform(*self._server.reject_delay))
            if not self._closing:
                self._conn.reject_publish(event.stream_id, code, description)
                self._flush()
                self._close(f"publish refused: {description}")
            return
        self._authorizing = False
        if self._closing:
            await session.on_close(self._close_reason)
            return
        self._session = session
        log.info("%s publishing app=%r key=%s", self.peer, event.app, redact(event.stream_key))
        self._conn.accept_publish(event.stream_id)
        self._flush()
        self._awaiting_media = True
        self._media_timer = self._loop.call_later(
            self._server.first_media_timeout, self._first_media_expired
        )
        assert self._transport is not None
        self._transport.resume_reading()
        self._process()

    # -- timers ------------------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        if not self._conn.handshake_complete:
            log.info(
                "closing %s: no handshake within %g s", self.peer, self._server.handshake_timeout
            )
            self._close("handshake timeout")

    def _schedule_idle(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        idle = self._server.idle_timeout
        if self._authorizing or self._awaiting_media:
            self._schedule_idle(idle)
            return
        silent = self._loop.time() - self._last_rx
        if silent >= idle:
            log.info("closing %s: no data for %g s", self.peer, idle)
            self._close(f"idle timeout: no data for {idle:g} s")
        else:
            self._schedule_idle(idle - silent)

    def _media_started(self) -> None:
        self._awaiting_media = False
        if self._media_timer is not None:
            self._media_timer.cancel()
            self._media_timer = None

    def _first_media_expired(self) -> None:
        if self._awaiting_media:
            timeout = self._server.first_media_timeout
            log.info("closing %s: no media within %g s of publish", self.peer, timeout)
            self._close(f"no media within {timeout:g} s")

    # -- closing -----------------------------------------------------------------------------

    def disconnect(self, reason: str) -> None:
        """Close this connection at the application's request; the peer is told ``reason``."""
        if self._closing:
            return
        log.info("disconnecting %s: %s", self.peer, reason)
        self._conn.close(reason)
        self._flush()
        self._close(reason)

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def _close(self, reason: str, *, peer_gone: bool = False) -> None:
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        for timer in (self._timer, self._media_timer):
            if timer is not None:
                timer.cancel()
        self._conn.close()
        if not peer_gone and self._transport is not None:
            self._transport.close()
        self._server._peers.discard(self)
        session, self._session = self._session, None
        if session is not None:
            if peer_gone:
                log.info("%s closed the connection while publishing", self.peer)
            self._server._spawn(session.on_close(reason))


class RTMPServer:
    """Listens for RTMP publishers and hands accepted publications to ``handler``."""

    def __init__(
        self,
        handler: PublishHandler,
        host: str = "0.0.0.0",
        port: int = 1935,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        first_media_timeout: float = FIRST_MEDIA_TIMEOUT,
        reject_delay: tuple[float, float] = REJECT_DELAY,
    ) -> None:
        self.handler = handler
        self.host = host
        self._port = port
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.first_media_timeout = first_media_timeout
        self.reject_delay = reject_delay
        self._server: asyncio.Server | None = None
        self._peers: set[_Peer] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._server is not None and self._server.sockets:
            port: int = self._server.sockets[0].getsockname()[1]
            return port
        return self._port

    @property
    def connections(self) -> int:
        return len(self._peers)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Peer(self), self.host, self._port)
        log.info("RTMP listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Close the listener and every connection; wait for the sessions' ``on_close``."""
        if self._server is not None:
            self._server.close()
        for peer in list(self._peers):
            peer._close("server stopping")
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("RTMP task failed", exc_info=task.exception())
