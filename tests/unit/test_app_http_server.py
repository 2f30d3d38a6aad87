"""The HTTP server's main loop: one tick a second (Date header fresh), woken at once to stop."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from ingest import app as app_module
from ingest.app import HttpServer


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("hi")(scope, receive, send)


class Recording(HttpServer):
    """Records each tick's counter and loop time; ``ticked`` resolves after ``wanted`` ticks."""

    def __init__(self, config: uvicorn.Config, wanted: int) -> None:
        super().__init__(config)
        self.counters: list[int] = []
        self.times: list[float] = []
        self.wanted = wanted
        self.ticked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_tick(self, counter: int) -> bool:
        self.counters.append(counter)
        self.times.append(asyncio.get_running_loop().time())
        if len(self.counters) >= self.wanted and not self.ticked.done():
            self.ticked.set_result(None)
        return await super().on_tick(counter)


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def config() -> uvicorn.Config:
    return uvicorn.Config(hello, log_config=None, lifespan="off", access_log=False)


async def test_the_idle_server_ticks_once_a_second_and_refreshes_the_date_each_tick() -> None:
    sock = listening()
    server = Recording(config(), wanted=3)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            await server.ticked
    finally:
        server.should_exit = True
        await task
        sock.close()
    first, second, third = server.times[:3]
    # uvicorn's own loop ticks every 0.1 s; ours once per HTTP_TICK_S
    assert second - first >= 0.9 * app_module.HTTP_TICK_S
    assert third - second >= 0.9 * app_module.HTTP_TICK_S
    # uvicorn refreshes the Date header on counters that are multiples of 10: every tick
    assert all(c % 10 == 0 for c in server.counters)
    assert server.counters[:3] == [0, 10, 20]
    assert any(name == b"date" for name, _ in server.server_state.default_headers)


async def test_should_exit_wakes_the_loop_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "HTTP_TICK_S", 3600.0)  # without the wakeup: an hour
    sock = listening()
    server = Recording(config(), wanted=1)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            await server.ticked  # the first tick: the loop now waits
        server.should_exit = True
        async with asyncio.timeout(5):
            await task
    finally:
        server.should_exit = True
        sock.close()
    assert server.ticks == 1  # woken once, by should_exit, then stopped


async def test_should_exit_set_from_another_thread_wakes_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app_module, "HTTP_TICK_S", 3600.0)
    sock = listening()
    server = Recording(config(), wanted=1)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            await server.ticked
        await asyncio.to_thread(setattr, server, "should_exit", True)
        async with asyncio.timeout(5):
            await task
    finally:
        server.should_exit = True
        sock.close()
    assert server.should_exit
