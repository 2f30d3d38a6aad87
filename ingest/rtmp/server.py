"""asyncio adapter for :class:`~ingest.rtmp.connection.ServerConnection`: sockets, timeouts, limits.

Auth stays out: the server asks a :class:`PublishHandler` before it answers ``publish``. One
publish per connection. Timeouts: the handshake must complete within ``handshake_timeout``; once
a publish is accepted the first audio/video must arrive within ``first_media_timeout``; otherwise
a connection that sends nothing for ``idle_timeout`` is closed (not while its publish is being
decided). A malformed stream closes only its own connection, logged once on ``ingest.rtmp``.

Admission, before anyone is authenticated (what one hostile client may hold):

- ``admission_timeout``: from TCP accept until a publish is accepted, counted from the accept;
  bytes do not extend it (a peer trickling a byte every few seconds still leaves on time).
- ``max_connections_per_address`` open connections and ``max_pending_per_address`` publish
  decisions per IPv4 address or IPv6 /64.
- ``max_decisions`` publish decisions run at once (each may query the database); the others wait
  in arrival order. The queue is bounded: one publish per connection, ``max_connections``
  connections, and a waiting decision ends with its connection (admission timeout, or the peer
  leaving: the socket is read while a decision is pending, so a peer that left is noticed and
  its queued decision cancelled).
- When all ``max_connections`` are taken, a new connection closes the oldest connection whose
  publish is not accepted yet and that is older than ``eviction_age`` (a publisher mid-admission
  is spared); if there is none, the address holding the most connections gives up its oldest
  unadmitted one when it holds more than the newcomer's address would (young connections renewed
  by a few addresses cannot lock the others out); otherwise the new connection is refused.
- Unadmitted peers share :data:`PREAUTH_SLICE` of each event-loop turn (what they send beyond
  it waits a turn, with reading paused; those that sent under :data:`LIGHT_BYTES` first), are
  read :data:`READ_SIZE_BEFORE_PUBLISH` bytes at a time, and the sans-I/O connection closes
  them after :data:`~ingest.rtmp.connection.MAX_INPUT_BEFORE_PUBLISH` bytes: a flood leaves
  the API and publishers their turns.
- Output back-pressure: a peer that lets more than ``max_write_buffer`` bytes of replies pile up
  (it does not read) is closed. Memory per unauthenticated connection is bounded by the
  sans-I/O connection (:data:`~ingest.rtmp.connection.MAX_BYTES_BEFORE_PUBLISH`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import socket
import ssl as ssl_module
import time
from collections import deque
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
ADMISSION_TIMEOUT = 10.0  # seconds from accept until a publish is accepted (bytes don't extend it)
FIRST_MEDIA_TIMEOUT = 20.0  # seconds from publish accepted to the first audio/video message
IDLE_TIMEOUT = 10.0  # seconds without any byte from the peer
MAX_CONNECTIONS = 1000
MAX_CONNECTIONS_PER_ADDRESS = 32  # open connections from one IPv4 address or IPv6 /64
MAX_PENDING_PER_ADDRESS = 4  # publish decisions queued or running for one address
MAX_DECISIONS = 4  # publish decisions running at once (below the database pool's 5 connections)
EVICTION_AGE = 1.0  # seconds; a full server closes unadmitted connections at least this old
MAX_WRITE_BUFFER = 64 * 1024  # bytes of replies the peer has not read; more closes it
READ_SIZE = 256 * 1024  # bytes read from a publishing peer per event-loop turn
READ_SIZE_BEFORE_PUBLISH = 4096  # the same before its publish is accepted: turns stay short
PREAUTH_SLICE = 0.005  # seconds per event-loop turn for peers without an accepted publish ...
LIGHT_BYTES = 8 * 1024  # ... where those that sent less than this (OBS: ~2 KB) go first
SEND_BUFFER = 32 * 1024  # SO_SNDBUF: kernel memory for a peer that does not read (we send little)
LOG_BURST = 20  # lines about connections without an accepted publish per LOG_WINDOW ...
LOG_WINDOW = 10.0  # ... seconds; the rest are counted and summed up in one line (attack floods)
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


class LogLimiter:
    """At most ``burst`` lines per ``window`` seconds; then one line says how many were dropped.

    For what unauthenticated peers cause (refusals, timeouts, protocol errors): an attack must
    not turn into a flood of log lines, while a few examples are kept."""

    def __init__(
        self,
        burst: int = LOG_BURST,
        window: float = LOG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.window = window
        self._clock = clock
        self._start = -math.inf
        self._count = 0
        self.dropped = 0

    def log(self, level: int, msg: str, *args: object) -> None:
        now = self._clock()
        if now - self._start >= self.window:
            if self.dropped:
                log.warning(
                    "%d more lines about connections without an accepted publish were not "
                    "logged in %g s (at most %d per %g s)",
                    self.dropped,
                    now - self._start,
                    self.burst,
                    self.window,
                )
            self._start = now
            self._count = 0
            self.dropped = 0
        if self._count < self.burst:
            self._count += 1
            log.log(level, msg, *args)
        else:
            self.dropped += 1


def address_key(host: str) -> str:
    """What per-address limits count by: the IPv4 address (also when IPv4-mapped) or the IPv6
    /64 (one subscriber's prefix); a host that is not an IP address counts as itself."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Peer(asyncio.BufferedProtocol):
    """One TCP connection. Reads into the server's one shared buffer, which an admitted peer's
    connection parses in place (an unadmitted peer's bytes are copied out at once); an
    unadmitted peer gets only :data:`READ_SIZE_BEFORE_PUBLISH` of it per turn, so a thousand
    peers flooding bytes delay a publisher's handshake by little."""

    def __init__(self, server: RTMPServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._conn = ServerConnection()
        self._transport: asyncio.Transport | None = None
        self.peer = "?"
        self.address = "?"
        self._registered = False
        self._session: PublishSession | None = None
        self._publish_seen = False
        self._decision: asyncio.Task[None] | None = None  # a refusal being answered
        self._requested: PublishRequested | None = None  # queued or being decided
        self._deciding = False  # the handler is deciding (not cancelled when the peer leaves)
        self._pending_counted = False
        self._admitted = False
        self._awaiting_media = False
        self._closing = False
        self._handshaken = False
        self._opened = self._loop.time()
        self._last_rx = self._opened
        self._timer: asyncio.TimerHandle | None = None
        self._media_timer: asyncio.TimerHandle | None = None
        self._admission_timer: asyncio.TimerHandle | None = None
        self._key = ""
        self._close_reason: str | None = None
        self._held: bytes | None = None  # read, not yet processed (over the pre-auth slice)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        addr = transport.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            host = str(addr[0])
            self.peer = f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
            self.address = address_key(host)
        server = self._server
        if not server._admit(self):
            self._closing = True
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._registered = True
        self._timer = self._loop.call_later(server.handshake_timeout, self._handshake_expired)
        self._admission_timer = self._loop.call_later(
            server.admission_timeout, self._admission_expired
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._server._read_view
        return view if self._admitted else view[:READ_SIZE_BEFORE_PUBLISH]

    def buffer_updated(self, nbytes: int) -> None:
        server = self._server
        if self._admitted and self._held is None:
            # parsed in place: the connection copies what it keeps before the buffer is reused
            self.data_received(server._read_view[:nbytes])
            return
        data = bytes(server._read_view[:nbytes])
        if self._held is not None:  # bytes wait for their turn: these go behind them
            self._held += data
        elif server._slice_left():
            start = time.perf_counter()
            self.data_received(data)
            server._slice_spent(time.perf_counter() - start)
            return
        else:  # beyond this turn's slice: keep the bytes, wait in line (light talkers first)
            self._held = data
            light = self._conn.bytes_received < LIGHT_BYTES
            (server._waiting_light if light else server._waiting).append(self)
            server._schedule_turn()
        assert self._transport is not None
        if self._transport.is_reading():
            self._transport.pause_reading()

    def _serve_held(self) -> None:
        data, self._held = self._held, None
        if data is None or self._closing:
            return
        self.data_received(data)
        if not self._closing and self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes | memoryview) -> None:
        if self._closing:
            return
        conn = self._conn
        self._last_rx = self._loop.time()
        conn.receive_data(data)
        self._flush()
        if not self._handshaken and conn.handshake_complete:
            self._handshaken = True
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
                    session = self._session
                    if session is None:
                        continue
                    if self._awaiting_media:
                        self._media_started()
                    if isinstance(event, VideoReceived):
                        session.on_video(event.timestamp, event.payload)
                    elif isinstance(event, AudioReceived):
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
                    log.debug("%s connect app=%r", self.peer, event.app[:64])
        except RTMPError as e:
            self._log(logging.WARNING, "closing %s: %s", self.peer, e)
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
        self._key = event.stream_key
        server = self._server
        pending = server._pending.get(self.address, 0)
        if pending >= server.max_pending_per_address:
            description = (
                f"{pending} publishes from your address await a decision (limit "
                f"{server.max_pending_per_address}): retry once they are answered"
            )
            self._log(logging.INFO, "refusing publish from %s: %s", self.peer, description)
            self._decision = server._spawn(
                self._refuse(event, "NetStream.Publish.Failed", description)
            )
            return
        server._pending[self.address] = pending + 1
        self._pending_counted = True
        self._requested = event
        server._queue_decision(self)

    def _release_pending(self) -> None:
        if self._pending_counted:
            self._pending_counted = False
            self._server._release(self._server._pending, self.address)

    async def _decide(self) -> None:
        """Ask the handler (called by a decision runner, in arrival order)."""
        event = self._requested
        assert event is not None
        server = self._server
        request = PublishRequest(event.app, event.stream_key, self.peer)
        self._deciding = True
        try:
            session = await server.handler.on_publish(request, self.disconnect)
        except Exception as e:
            if isinstance(e, IngestError):
                code, description = status_code(e), e.message
                self._log(
                    logging.INFO,
                    "refusing publish from %s app=%r key=%s: %s",
                    self.peer,
                    event.app[:64],
                    redact(event.stream_key),
                    description,
                )
            else:
                code, description = "NetStream.Publish.Failed", "Internal server error."
                log.exception("publish handler failed for %s", self.peer)
            if not self._closing:
                self._decision = server._spawn(self._refuse(event, code, description))
            return
        finally:
            self._deciding = False
            self._release_pending()
        if self._closing:
            server._spawn(session.on_close(self._close_reason))
            return
        self._session = session
        self._admitted = True
        server._unadmitted.pop(self, None)
        if self._admission_timer is not None:
            self._admission_timer.cancel()
            self._admission_timer = None
        log.info("%s publishing app=%r key=%s", self.peer, event.app, redact(event.stream_key))
        self._conn.accept_publish(event.stream_id)
        self._flush()
        self._awaiting_media = True
        self._media_timer = self._loop.call_later(
            server.first_media_timeout, self._first_media_expired
        )
        self._process()  # what arrived while the decision was pending

    async def _refuse(self, event: PublishRequested, code: str, description: str) -> None:
        """Answer a refused publish after a random delay (slows down guessing), then close."""
        await asyncio.sleep(random.uniform(*self._server.reject_delay))
        if not self._closing:
            self._server.publishes_refused += 1
            self._conn.reject_publish(event.stream_id, code, description)
            self._flush()
            self._close(f"publish refused: {description}")

    # -- timers ------------------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        if not self._conn.handshake_complete:
            self._log(
                logging.INFO,
                "closing %s: no handshake within %g s",
                self.peer,
                self._server.handshake_timeout,
            )
            self._close("handshake timeout")

    def _admission_expired(self) -> None:
        self._admission_timer = None
        if not self._admitted:
            timeout = self._server.admission_timeout
            self._log(
                logging.INFO,
                "closing %s: no publish accepted %g s after connecting",
                self.peer,
                timeout,
            )
            self._close(f"admission timeout: no publish accepted within {timeout:g} s")

    def _schedule_idle(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        idle = self._server.idle_timeout
        if (self._publish_seen and not self._admitted) or self._awaiting_media:
            self._schedule_idle(idle)
            return
        silent = self._loop.time() - self._last_rx
        if silent >= idle:
            self._log(logging.INFO, "closing %s: no data for %g s", self.peer, idle)
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

    def _log(self, level: int, msg: str, *args: object) -> None:
        """Log about this connection; rate-limited while it has no accepted publish."""
        if self._admitted:
            log.log(level, msg, *args)
        else:
            self._server.quiet.log(level, msg, *args)

    @property
    def evictable(self) -> bool:
        """Not admitted, not being decided, and old enough to be closed for a newcomer."""
        return (
            not self._admitted
            and not self._deciding
            and not self._closing
            and self._loop.time() - self._opened >= self._server.eviction_age
        )

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
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)
            unsent = transport.get_write_buffer_size()
            if unsent > self._server.max_write_buffer and not self._closing:
                self._log(
                    logging.INFO,
                    "closing %s: %d bytes of replies wait for it to read (limit %d)",
                    self.peer,
                    unsent,
                    self._server.max_write_buffer,
                )
                self._close(
                    f"the peer does not read: {unsent} bytes unsent, limit "
                    f"{self._server.max_write_buffer}"
                )

    def _close(self, reason: str, *, peer_gone: bool = False) -> None:
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        self._held = None
        for timer in (self._timer, self._media_timer, self._admission_timer):
            if timer is not None:
                timer.cancel()
        self._conn.close()
        transport = self._transport
        if not peer_gone and transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()  # it does not read: close() would wait for it forever
            else:
                transport.close()
        server = self._server
        if self._registered:
            self._registered = False
            server._peers.discard(self)
            server._unadmitted.pop(self, None)
            server._release(server._by_address, self.address)
        decision = self._decision
        if (
            decision is not None
            and not self._deciding
            and not decision.done()
            and decision is not asyncio.current_task()
        ):
            decision.cancel()  # waiting to answer a refusal: nobody to answer
        if not self._deciding:  # otherwise released when the handler returns
            self._release_pending()
        session, self._session = self._session, None
        if session is not None:
            if peer_gone:
                log.info("%s closed the connection while publishing", self.peer)
            server._spawn(session.on_close(reason))


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
        admission_timeout: float = ADMISSION_TIMEOUT,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
        max_decisions: int = MAX_DECISIONS,
        eviction_age: float = EVICTION_AGE,
        max_write_buffer: int = MAX_WRITE_BUFFER,
        preauth_slice: float = PREAUTH_SLICE,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.ssl = ssl  # RTMPS: TLS first, then the same RTMP
        self.host = host
        self._port = port
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.first_media_timeout = first_media_timeout
        self.reject_delay = reject_delay
        self.admission_timeout = admission_timeout
        self.max_connections_per_address = max_connections_per_address
        self.max_pending_per_address = max_pending_per_address
        self.max_decisions = max_decisions
        self.eviction_age = eviction_age
        self.max_write_buffer = max_write_buffer
        self.preauth_slice = preauth_slice
        self._server: asyncio.Server | None = None
        self._peers: set[_Peer] = set()
        self._unadmitted: dict[_Peer, None] = {}  # oldest first
        self._by_address: dict[str, int] = {}  # open connections per address_key
        self._pending: dict[str, int] = {}  # publish decisions queued or running per address_key
        self._decisions: deque[_Peer] = deque()  # publishes waiting for a decision runner
        self._runners = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._read_view = memoryview(bytearray(READ_SIZE))
        self.quiet = LogLimiter()  # what unauthenticated peers make us log
        self.publishes_refused = 0  # answered with a refusal, since start
        self.connections_accepted = 0  # taken in (not refused at once), since start
        self._waiting_light: deque[_Peer] = deque()  # unadmitted peers with held bytes that
        self._waiting: deque[_Peer] = deque()  # sent less than LIGHT_BYTES, and the others
        self._slice_used = 0.0
        self._turn_scheduled = False

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

    @property
    def pending_decisions(self) -> int:
        """Publish decisions queued or running."""
        return sum(self._pending.values())

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checked whenever a connection opens or closes or a
        publish decision starts or ends (for tests and orderly shutdowns)."""
        while not predicate():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _admit(self, peer: _Peer) -> bool:
        """Register a new connection, or say no (per-address limit; full and nothing to evict)."""
        open_here = self._by_address.get(peer.address, 0)
        if open_here >= self.max_connections_per_address:
            self.quiet.log(
                logging.WARNING,
                "refusing %s: %d connections open from %s (limit %d)",
                peer.peer,
                open_here,
                peer.address,
                self.max_connections_per_address,
            )
            return False
        if len(self._peers) >= self.max_connections:
            victim = next((p for p in self._unadmitted if p.evictable), None)
            if victim is None:
                victim = self._crowding_victim(open_here)
            if victim is None:
                self.quiet.log(
                    logging.WARNING,
                    "refusing %s: %d connections open (limit %d)",
                    peer.peer,
                    len(self._peers),
                    self.max_connections,
                )
                return False
            self.quiet.log(
                logging.INFO,
                "closing %s to make room for %s: %d connections open (limit %d)",
                victim.peer,
                peer.peer,
                len(self._peers),
                self.max_connections,
            )
            victim._close("the server is full; the oldest connection without a publish made room")
        self.connections_accepted += 1
        self._peers.add(peer)
        self._unadmitted[peer] = None
        self._by_address[peer.address] = open_here + 1
        self._changed()
        return True

    def _crowding_victim(self, open_here: int) -> _Peer | None:
        """Full, and no connection old enough to close: the address holding the most
        connections gives up its oldest unadmitted one, if it holds more than the newcomer's
        address would. Young connections that a few addresses keep renewing (a churning
        attacker) then cannot lock everybody else out."""
        if not self._by_address:
            return None
        crowded, held = max(self._by_address.items(), key=lambda item: item[1])
        if held <= open_here + 1:
            return None
        return next(
            (
                p
                for p in self._unadmitted
                if p.address == crowded and not p._deciding and not p._closing
            ),
            None,
        )

    # -- publish decisions: at most max_decisions runners, each takes the queue in order ------

    def _queue_decision(self, peer: _Peer) -> None:
        self._decisions.append(peer)
        self._changed()
        if self._runners < self.max_decisions:
            self._runners += 1
            self._spawn(self._run_decisions())

    async def _run_decisions(self) -> None:
        """Decide queued publishes one after the other. A decision answered from the caches
        completes without yielding, so a runner takes many per turn (yielding after
        PREAUTH_SLICE); one that waits for the database holds only this runner."""
        try:
            start = time.perf_counter()
            while self._decisions:
                peer = self._decisions.popleft()
                if peer._closing:  # it left while queued: nobody to decide for
                    continue
                try:
                    await peer._decide()
                except Exception:  # a bug must not stop the queue
                    log.exception("publish decision for %s failed", peer.peer)
                    peer._close("internal error")
                if time.perf_counter() - start > self.preauth_slice:
                    await asyncio.sleep(0)
                    start = time.perf_counter()
        finally:
            self._runners -= 1

    # -- the pre-auth time slice: heavy unadmitted talkers share PREAUTH_SLICE per turn ----------

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _slice_left(self) -> bool:
        self._schedule_turn()  # the slice is renewed on the next turn of the loop
        return self._slice_used < self.preauth_slice

    def _slice_spent(self, seconds: float) -> None:
        self._slice_used += seconds

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        self._slice_used = 0.0
        light, heavy = self._waiting_light, self._waiting
        while light or heavy:  # at least one per turn, however short the slice
            peer = light.popleft() if light else heavy.popleft()
            start = time.perf_counter()
            peer._serve_held()
            self._slice_spent(time.perf_counter() - start)
            if not self._slice_left():
                break
        if light or heavy:
            self._schedule_turn()

    def _release(self, counts: dict[str, int], key: str) -> None:
        n = counts.get(key, 0) - 1
        if n > 0:
            counts[key] = n
        else:
            counts.pop(key, None)
        self._changed()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Peer(self),
            self.host,
            self._port,
            ssl=self.ssl,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl else None,
        )
        log.info("RTMP%s listening on %s:%d", "S" if self.ssl else "", self.host, self.port)

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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("RTMP task failed", exc_info=task.exception())
