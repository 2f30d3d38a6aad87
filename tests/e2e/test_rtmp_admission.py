"""RTMP admission before authentication, over real sockets on 127.0.0.1 (issue 13, findings 1-3).

The first tests drive :class:`RTMPServer` with a handler the test controls and small limits, one
limit each. The last ones run the whole server under 1000 hostile connections from a separate
process (tests/e2e/rtmp_attacker.py) and check that a real ffmpeg publisher still gets in, the
REST API still answers, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ingest.app import App
from ingest.calls import events as ev
from ingest.calls.tokens import create_server_token, create_token
from ingest.config import DEFAULT_RTMP_MAX_CONNECTIONS_PER_ADDRESS
from ingest.rtmp.messages import DataMessage, MessageType
from ingest.rtmp.server import (
    LIGHT_BYTES,
    MAX_CONNECTIONS_PER_ADDRESS,
    SEND_BUFFER,
    PublishRequest,
    RTMPServer,
)
from tests.conftest import API_KEY, API_SECRET
from tests.e2e.media import MEDIA_DIR, make_flv, push
from tests.unit.rtmp.client import Client

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0


# -- a handler the test controls --------------------------------------------------------------


class Session:
    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def on_metadata(self, metadata: dict[str, object]) -> None:
        pass

    def on_audio(self, timestamp: int, payload: bytes) -> None:
        pass

    def on_video(self, timestamp: int, payload: bytes) -> None:
        pass

    async def on_close(self, reason: str | None) -> None:
        self.closed.set()


class Gatekeeper:
    """Decides when the test says so; counts how many decisions run at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.most = 0
        self.started: list[str] = []
        self.changed = asyncio.Condition()

    async def on_publish(
        self, request: PublishRequest, disconnect: Callable[[str], None]
    ) -> Session:
        self.started.append(request.stream_key)
        self.running += 1
        self.most = max(self.most, self.running)
        async with self.changed:
            self.changed.notify_all()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return Session()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), TIMEOUT)


@contextlib.asynccontextmanager
async def rtmp_server(handler: Gatekeeper, **limits: Any) -> AsyncIterator[RTMPServer]:
    srv = RTMPServer(handler, "127.0.0.1", 0, reject_delay=(0.0, 0.0), **limits)
    await srv.start()
    try:
        yield srv
    finally:
        handler.release.set()
        await srv.stop()


class Peer:
    """One raw client socket speaking through the sans-I/O test client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client = Client()
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    def send(self) -> None:
        self.writer.write(self.client.data_to_send())

    async def until(self, done: Callable[[], bool]) -> bool:
        """Exchange bytes until ``done()``; False if the server closed the connection first."""
        self.send()
        while not done():
            try:
                data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            except ConnectionError:
                data = b""
            if not data:
                return False
            self.client.receive_data(data)
            self.send()
        return True

    async def publish(self, key: str) -> None:
        assert await self.until(lambda: bool(self.client.s0s1s2))
        self.client.connect()
        self.client.command("createStream")
        self.client.publish(1, key)
        self.send()

    def status(self) -> dict[str, Any] | None:
        for c in self.client.commands():
            if c.name == "onStatus" and isinstance(c.arguments[0], dict):
                return c.arguments[0]
        return None

    async def closed_by_server(self) -> bool:
        """Read until EOF or reset: True if the server closed it within TIMEOUT."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
                if not data:
                    return True
                self.client.receive_data(data)
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.transport.abort()


# -- one limit each ---------------------------------------------------------------------------


async def test_admission_deadline_is_not_extended_by_trickled_bytes() -> None:
    handler = Gatekeeper()
    async with rtmp_server(handler, admission_timeout=1.0, idle_timeout=30.0) as srv:
        peer = await Peer.open(srv.port)
        assert await peer.until(lambda: bool(peer.client.s0s1s2))
        start = time.monotonic()
        chunks = bytearray(peer.client.writer.write(3, MessageType.COMMAND_AMF0, 0, 0, bytes(900)))

        async def trickle() -> None:
            while chunks:
                peer.writer.write(bytes((chunks.pop(0),)))
                await asyncio.sleep(0.1)  # the attack's pace, not a wait for the server

        trickling = asyncio.create_task(trickle())
        assert await peer.closed_by_server()
        elapsed = time.monotonic() - start
        trickling.cancel()
        assert chunks  # it was still trickling when the deadline closed it
        assert 0.8 < elapsed < 5.0
        assert srv.connections == 0
        peer.close()


async def test_connections_per_address_are_limited() -> None:
    handler = Gatekeeper()
    async with rtmp_server(handler, max_connections_per_address=2) as srv:
        first, second = await Peer.open(srv.port), await Peer.open(srv.port)
        for p in (first, second):
            assert await p.until(lambda p=p: bool(p.client.s0s1s2))  # type: ignore[misc]
        third = await Peer.open(srv.port)
        third.send()
        assert await third.closed_by_server()
        assert not third.client.s0s1s2
        other = await Peer.open(srv.port, "127.0.0.2")  # another address is served
        assert await other.until(lambda: bool(other.client.s0s1s2))
        assert srv.connections == 3
        for p in (first, second, third, other):
            p.close()


async def test_pending_decisions_per_address_and_at_once_are_bounded() -> None:
    handler = Gatekeeper()
    async with rtmp_server(handler, max_pending_per_address=2, max_decisions=3) as srv:
        peers = []
        for i in range(6):  # addresses .1 .1 .2 .2 .3 .3: within the per-address limit
            peer = await Peer.open(srv.port, f"127.0.0.{1 + i // 2}")
            await peer.publish(f"key{i}")
            peers.append(peer)
        await handler.until(lambda: handler.running == 3)
        assert srv.pending_decisions == 6  # three run, three wait in line
        # a third pending publish from 127.0.0.1 is refused at once, saying why
        extra = await Peer.open(srv.port)
        await extra.publish("extra")
        assert await extra.until(lambda: extra.status() is not None)
        status = extra.status()
        assert status is not None
        assert status["code"] == "NetStream.Publish.Failed"
        assert "await a decision (limit 2)" in status["description"]
        assert "extra" not in handler.started
        handler.release.set()
        for peer in peers:
            assert await peer.until(lambda peer=peer: peer.status() is not None)  # type: ignore[misc]
            assert peer.status() == {
                "level": "status",
                "code": "NetStream.Publish.Start",
                "description": "Publishing started.",
            }
        assert handler.most == 3
        assert srv.pending_decisions == 0
        for peer in [*peers, extra]:
            peer.close()


async def test_a_peer_that_leaves_while_queued_is_noticed_and_its_decision_dropped() -> None:
    handler = Gatekeeper()
    async with rtmp_server(handler, max_decisions=1) as srv:
        running = await Peer.open(srv.port)
        await running.publish("running")
        await handler.until(lambda: handler.running == 1)
        queued = await Peer.open(srv.port, "127.0.0.2")
        await queued.publish("queued")

        await asyncio.wait_for(srv.wait_until(lambda: srv.pending_decisions == 2), TIMEOUT)
        queued.writer.close()  # the client gives up while its decision waits in line

        # no CLOSE_WAIT: the server reads while deciding, so it sees the FIN and drops the decision
        await asyncio.wait_for(
            srv.wait_until(lambda: srv.connections == 1 and srv.pending_decisions == 1), TIMEOUT
        )
        handler.release.set()
        assert await running.until(lambda: running.status() is not None)
        assert handler.started == ["running"]  # the queued decision never ran
        assert srv.pending_decisions == 0
        running.close()


async def test_a_full_server_makes_room_by_closing_its_oldest_unadmitted_connection() -> None:
    handler = Gatekeeper()
    async with rtmp_server(handler, max_connections=2, eviction_age=0.0) as srv:
        oldest, newer = await Peer.open(srv.port), await Peer.open(srv.port)
        for p in (oldest, newer):
            assert await p.until(lambda p=p: bool(p.client.s0s1s2))  # type: ignore[misc]
        newcomer = await Peer.open(srv.port)
        assert await newcomer.until(lambda: bool(newcomer.client.s0s1s2))
        assert await oldest.closed_by_server()
        assert srv.connections == 2
        for p in (oldest, newer, newcomer):
            p.close()


async def test_a_full_server_spares_young_connections() -> None:
    handler = Gatekeeper()
    async with rtmp_server(handler, max_connections=1, eviction_age=60.0) as srv:
        first = await Peer.open(srv.port)
        assert await first.until(lambda: bool(first.client.s0s1s2))
        second = await Peer.open(srv.port)
        second.send()
        assert await second.closed_by_server()
        assert not second.client.s0s1s2
        assert srv.connections == 1
        first.close()
        second.close()


async def test_a_full_server_takes_room_from_the_most_crowded_address() -> None:
    """Young connections from one address hold every slot: a newcomer from another address
    still gets in (one of the crowd is closed); one more from the crowd does not."""
    handler = Gatekeeper()
    async with rtmp_server(handler, max_connections=3, eviction_age=60.0) as srv:
        crowd = [await Peer.open(srv.port, source="127.0.3.1") for _ in range(3)]
        for p in crowd:
            assert await p.until(lambda p=p: bool(p.client.s0s1s2))  # type: ignore[misc]
        newcomer = await Peer.open(srv.port, source="127.0.3.2")
        assert await newcomer.until(lambda: bool(newcomer.client.s0s1s2))
        assert await crowd[0].closed_by_server()  # the crowd's oldest made room
        assert srv.connections == 3
        again = await Peer.open(srv.port, source="127.0.3.1")
        again.send()
        assert await again.closed_by_server()  # the crowd gets no room from itself
        assert not again.client.s0s1s2
        for p in (*crowd, newcomer, again):
            p.close()


async def test_a_peer_that_does_not_read_is_closed_past_the_write_buffer_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", "ingest.rtmp")
    handler = Gatekeeper()
    handler.release.set()
    async with rtmp_server(handler, max_write_buffer=16 * 1024) as srv:
        peer = await Peer.open(srv.port)
        await peer.publish("key")
        assert await peer.until(lambda: peer.status() is not None)  # publishing: no budgets left
        start = time.monotonic()

        async def send_without_reading() -> None:
            while True:
                for _ in range(16):
                    peer.client.command("x")  # answered with a ~4x larger _error
                peer.send()
                await peer.writer.drain()
                # let the server (same event loop) read each small batch: it answers every one,
                # so what piles up is in its write buffer, not in the replies to one read
                await asyncio.sleep(0)
                await asyncio.sleep(0)

        with pytest.raises(ConnectionError):
            await asyncio.wait_for(send_without_reading(), TIMEOUT * 3)
        assert srv.connections == 0
        assert "bytes of replies wait for it to read (limit 16384)" in caplog.text
        print(f"closed after {time.monotonic() - start:.1f} s")
        peer.close()


async def test_a_heavy_talker_is_served_in_its_turn_and_may_still_publish() -> None:
    handler = Gatekeeper()
    handler.release.set()
    async with rtmp_server(handler, preauth_slice=0.0) as srv:  # a slice always used up
        peer = await Peer.open(srv.port)
        assert await peer.until(lambda: bool(peer.client.s0s1s2))
        peer.client.connect()
        chunk = bytes(DataMessage(["onTextData", "x" * 10_000]))
        for _ in range(LIGHT_BYTES // len(chunk) + 2):  # past LIGHT_BYTES: it waits for slices
            peer.client.send(4, MessageType.DATA_AMF0, 0, 0, chunk)
        peer.client.command("createStream")
        peer.client.publish(1, "key")
        assert await peer.until(lambda: peer.status() is not None)
        status = peer.status()
        assert status is not None
        assert status["code"] == "NetStream.Publish.Start"
        peer.close()


async def test_the_kernel_send_buffer_of_a_peer_is_small() -> None:
    handler = Gatekeeper()
    async with rtmp_server(handler) as srv:
        peer = await Peer.open(srv.port)
        assert await peer.until(lambda: bool(peer.client.s0s1s2))
        (served,) = srv._peers  # the server's side of this connection
        assert served._transport is not None
        sock = served._transport.get_extra_info("socket")
        # Linux doubles the value asked for (bookkeeping overhead)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * SEND_BUFFER
        peer.close()


async def test_the_per_address_limit_is_a_setting(
    app_factory: Callable[..., Awaitable[App]],
) -> None:
    assert DEFAULT_RTMP_MAX_CONNECTIONS_PER_ADDRESS == MAX_CONNECTIONS_PER_ADDRESS
    app = await app_factory(rtmp_max_connections_per_address=1)
    assert app.rtmp is not None
    first = await Peer.open(app.rtmp_port)
    assert await first.until(lambda: bool(first.client.s0s1s2))
    second = await Peer.open(app.rtmp_port)
    second.send()
    assert await second.closed_by_server()
    first.close()
    second.close()


# -- the whole server under 1000 hostile connections ------------------------------------------

HOSTILE = 1000
ADDRESSES = 250  # 4 connections each: the per-address limits alone do not save the publisher
PUBLISHER_WITHIN = 2.0  # seconds from starting ffmpeg to the publish accepted (the target)
API_WITHIN = 1.0
FLOOD_WITHIN = 60.0  # seconds for the flood to have had HOSTILE // 2 publishes refused
MEMORY_BOUND = 200 * 1024 * 1024  # bytes of RSS the attack may add


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def media() -> Path:
    return make_flv(MEDIA_DIR / "admission.flv", seconds=4.0, size="160x120", fps=15, gop=15)


@pytest.fixture
def many_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * HOSTILE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * HOSTILE), hard))


async def api(
    app: App, method: str, path: str, body: Any = None, http: httpx.AsyncClient | None = None
) -> httpx.Response:
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=TIMEOUT))
        resp = await http.request(
            method,
            f"http://127.0.0.1:{app.http_port}/api/v2{path}",
            params={"api_key": API_KEY},
            headers={"Authorization": create_server_token(API_SECRET)},
            json=body,
        )
    assert resp.status_code < 300, resp.text
    return resp


async def a_call(app: App) -> str:
    """livestream:show with alice as host and a viewer; its RTMP address."""
    users = {u: {"id": u} for u in ("alice", "viewer")}
    await api(app, "POST", "/users", {"users": users})
    resp = await api(
        app,
        "POST",
        "/video/call/livestream/show",
        {"data": {"created_by_id": "alice", "members": [{"user_id": "alice", "role": "host"}]}},
    )
    address: str = resp.json()["call"]["ingress"]["rtmp"]["address"]
    return address


@contextlib.asynccontextmanager
async def attack(mode: str, app: App, address: str) -> AsyncIterator[None]:
    """Run the attacker; the block starts once each of its connections made its first move."""
    rtmp_app = address.rsplit("/", 1)[1]
    viewer = create_token(API_SECRET, "viewer")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.rtmp_attacker", mode, str(app.rtmp_port),
        str(HOSTILE), str(ADDRESSES), rtmp_app, viewer,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert proc.stdout is not None
    stdout = proc.stdout
    try:

        async def ready() -> None:
            while (line := await stdout.readline()) != b"ready\n":
                assert line, "the attacker exited"

        await asyncio.wait_for(ready(), 45)
        drain = asyncio.create_task(stdout.read())  # keep its pipe from filling
        try:
            yield
        finally:
            drain.cancel()
        assert proc.returncode is None, "the attacker exited"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def timed(coro: Awaitable[Any]) -> float:
    start = time.monotonic()
    await coro
    return time.monotonic() - start


async def legit_publisher_and_api(app: App, address: str, media: Path) -> tuple[float, float]:
    """(seconds until ffmpeg's publish is accepted, slowest of five API calls)."""
    sub = app.calls.bus.subscribe("livestream:show")
    start = time.monotonic()
    proc = await push(f"{address}/{create_token(API_SECRET, 'alice')}", media, realtime=True)
    try:

        async def started() -> None:
            while True:
                event = await sub.get()
                if event["type"] == ev.INGRESS_STARTED and event["user"]["id"] == "alice":
                    return

        await asyncio.wait_for(started(), TIMEOUT * 3)
        publisher = time.monotonic() - start
        slowest = 0.0
        # every request on a new connection; the client (its TLS context) is made only once
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=TIMEOUT, limits=fresh) as http:
            for _ in range(5):
                took = await timed(api(app, "GET", "/video/call/livestream/show", http=http))
                slowest = max(slowest, took)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        sub.close()
    return publisher, slowest


@pytest.mark.parametrize("mode", ["trickle", "flood", "noread"])
async def test_a_publisher_gets_in_while_1000_hostile_connections_attack(
    app_factory: Callable[..., Awaitable[App]],
    media: Path,
    many_files: None,
    mode: str,
) -> None:
    app = await app_factory(log_level="WARNING")
    address = await a_call(app)
    assert app.rtmp is not None
    baseline = rss()
    selects = [0]

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects[0] += 1

    sa.event.listen(app.store.engine.sync_engine, "before_cursor_execute", seen)
    async with attack(mode, app, address):
        rtmp = app.rtmp
        # in full swing: half the hostile connections open at once (flood and noread peers come
        # and go; the attacker, at a lower priority, gets less CPU on a busy machine)
        await asyncio.wait_for(rtmp.wait_until(lambda: rtmp.connections >= HOSTILE // 2), 15)
        peak = rss()
        refused_before, accepted_before = rtmp.publishes_refused, rtmp.connections_accepted
        publisher, slowest_api = await legit_publisher_and_api(app, address, media)
        peak = max(peak, rss())
        open_during = app.rtmp.connections
        refused_during = rtmp.publishes_refused - refused_before
        accepted_during = rtmp.connections_accepted - accepted_before
        if mode == "flood":
            # the refusals prove this attack, and the niced attacker on a busy machine may still
            # be finishing its handshakes when the publisher is in (6 refusals by then, at
            # 0.29 s, in one clean-clone CI run): awaited while the attack goes on
            await asyncio.wait_for(
                rtmp.wait_until(lambda: rtmp.publishes_refused >= HOSTILE // 2), FLOOD_WITHIN
            )
        refused, queries = rtmp.publishes_refused, selects[0]
    print(
        f"{mode}: publisher accepted after {publisher:.2f} s, API {slowest_api:.3f} s, "
        f"RSS +{(peak - baseline) / 2**20:.0f} MiB, {open_during} RTMP connections, "
        f"{accepted_during} accepted and {refused_during} publishes refused meanwhile "
        f"({refused} in all), {queries} SELECTs"
    )
    assert publisher < PUBLISHER_WITHIN
    assert slowest_api < API_WITHIN
    assert peak - baseline < MEMORY_BOUND
    # the attack went on while the publisher got in: its peers stayed (trickle), or were
    # replaced by new ones (flood, noread: on a busy machine the attacker, at a lower priority,
    # gets little CPU to reconnect, but what it had open still weighs on the server)
    if mode == "trickle":
        assert open_during >= HOSTILE * 0.8
    elif mode == "noread":
        assert open_during + accepted_during >= HOSTILE // 2
    # flood: the refusals prove the attack (a niced attacker on a busy machine may reconnect
    # slowly while the publisher gets in: 236 peers were seen in a full-suite run)
    if mode == "flood":  # refusals cost no queries beyond the first (per CACHE_TTL)
        assert refused >= HOSTILE // 2
        assert queries < refused / 20
    # the attacker is gone: the server notices every socket (nothing left in CLOSE_WAIT)
    await asyncio.wait_for(
        rtmp.wait_until(lambda: rtmp.connections == 0 and rtmp.pending_decisions == 0), TIMEOUT
    )


FUZZED = 2000
FUZZ_MEMORY_BOUND = 64 * 1024 * 1024  # bytes of RSS the fuzzed sessions may leave behind


async def test_fuzzed_sessions_leave_little_memory_behind(
    app_factory: Callable[..., Awaitable[App]], many_files: None
) -> None:
    """Finding 8: after 5000 fuzzed connections the server kept ~300 MiB. That was the C
    allocator keeping what 200 concurrent unauthenticated peers had buffered (up to MBs each,
    freed but not returned: malloc_trim gave back all but ~30 MiB); the pre-auth budgets keep
    the peak, and so what stays, small."""
    app = await app_factory(log_level="ERROR")
    address = await a_call(app)
    assert app.rtmp is not None
    rtmp = app.rtmp
    baseline = rss()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.rtmp_fuzzer", str(app.rtmp_port),
        address.rsplit("/", 1)[1], create_token(API_SECRET, "alice"), str(FUZZED), "200", "1",
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    peak = baseline

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss())
            await asyncio.sleep(0.2)  # sampling, not waiting for the server

    watcher = asyncio.create_task(watch())
    try:
        assert await asyncio.wait_for(proc.wait(), 50) == 0
    finally:
        watcher.cancel()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await asyncio.wait_for(
        rtmp.wait_until(lambda: rtmp.connections == 0 and rtmp.pending_decisions == 0), TIMEOUT
    )
    after = rss()
    print(
        f"fuzz: RSS peak +{(peak - baseline) / 2**20:.0f} MiB, "
        f"after +{(after - baseline) / 2**20:.0f} MiB"
    )
    assert peak - baseline < FUZZ_MEMORY_BOUND
    assert after - baseline < FUZZ_MEMORY_BOUND
