"""Hostile RTMP clients for the admission tests, run as a separate process (its own CPU time).

    python -m tests.e2e.rtmp_attacker MODE PORT CONNECTIONS ADDRESSES APP KEY

Keeps CONNECTIONS connections open from ADDRESSES source addresses (127.0.1.1, 127.0.1.2, ...)
and reconnects whatever the server closes, until killed. Prints ``ready`` once every connection
has been opened and has done its first step, then ``stats <opened> <closed>`` every 0.2 s (for
a person watching; the tests look at the server instead).

MODE:
- ``trickle``: handshake, then one byte every TRICKLE_INTERVAL seconds of a never-finished
  command (no token).
- ``flood``: handshake, connect, createStream, publish with KEY (e.g. a viewer's valid token),
  wait for the answer, close, again.
- ``noread``: never read a byte; send C0C1, C2, connect, then pings and unknown commands with
  long names as fast as the socket takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from ingest.rtmp.chunk import ChunkWriter
from ingest.rtmp.handshake import HANDSHAKE_SIZE
from ingest.rtmp.messages import CommandMessage, MessageType, UserControl
from tests.unit.rtmp.client import Client

TRICKLE_INTERVAL = 2.0
ATTACKER_NICE = 5
HANDSHAKE = b"\x03" + bytes(HANDSHAKE_SIZE)  # C0 + C1 (simple handshake)


class Stats:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.first_steps = 0


def source(i: int, addresses: int) -> str:
    n = i % addresses
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def connect_command(app: str) -> bytes:
    writer = ChunkWriter()
    obj = {"app": app, "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": f"rtmp://x/{app}"}
    return writer.write(
        3, MessageType.COMMAND_AMF0, 0, 0, bytes(CommandMessage("connect", 1.0, obj))
    )


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: Stats) -> None:
    writer.write(HANDSHAKE)
    await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
    writer.write(bytes(HANDSHAKE_SIZE))  # C2
    stats.first_steps += 1
    # a command message announced at 4000 bytes, sent one byte at a time, never finished
    chunks = ChunkWriter().write(3, MessageType.COMMAND_AMF0, 0, 0, bytes(4000))
    for b in chunks:
        writer.write(bytes((b,)))
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            if not await asyncio.wait_for(reader.read(65536), TRICKLE_INTERVAL):
                return  # closed by the server


async def flood(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stats: Stats,
    app: str,
    key: str,
    first: list[bool],
) -> None:
    client = Client()
    client.connect(app)
    client.command("createStream")
    client.publish(1, key)
    writer.write(client.data_to_send())
    if first[0]:
        first[0] = False
        stats.first_steps += 1
    while not any(c.name == "onStatus" for c in client.commands()):
        data = await reader.read(65536)
        if not data:
            return
        client.receive_data(data)
        writer.write(client.data_to_send())


async def noread(writer: asyncio.StreamWriter, stats: Stats, app: str, first: list[bool]) -> None:
    writer.write(HANDSHAKE + bytes(HANDSHAKE_SIZE) + connect_command(app))
    out = ChunkWriter()
    ping = bytes(UserControl.ping_request(1))
    unknown = bytes(CommandMessage("x" * 2000, 2.0, None))
    batch = b"".join(
        out.write(2, MessageType.USER_CONTROL, 0, 0, ping)
        + out.write(3, MessageType.COMMAND_AMF0, 0, 0, unknown)
        for _ in range(8)
    )
    while True:
        writer.write(batch)
        await writer.drain()
        if first[0]:
            first[0] = False
            stats.first_steps += 1


async def one(
    i: int, mode: str, port: int, addresses: int, app: str, key: str, stats: Stats
) -> None:
    first = [True]
    while True:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source(i, addresses), 0)
            )
        except OSError:
            await asyncio.sleep(0.1)
            continue
        stats.opened += 1
        try:
            if mode == "trickle":
                await trickle(reader, writer, stats)
            elif mode == "flood":
                await flood(reader, writer, stats, app, key, first)
            else:
                await noread(writer, stats, app, first)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            stats.closed += 1
            writer.transport.abort()


async def main(mode: str, port: int, connections: int, addresses: int, app: str, key: str) -> None:
    stats = Stats()
    tasks = [
        asyncio.create_task(one(i, mode, port, addresses, app, key, stats))
        for i in range(connections)
    ]
    ready = False
    while True:
        await asyncio.sleep(0.2)
        if not ready and stats.first_steps >= connections:
            ready = True
            print("ready", flush=True)
        print("stats", stats.opened, stats.closed, flush=True)
        if all(t.done() for t in tasks):
            return


if __name__ == "__main__":
    # An attacker runs on other machines: on this one it yields the CPU to the server first.
    os.nice(ATTACKER_NICE)
    mode, port, connections, addresses, app, key = sys.argv[1:7]
    asyncio.run(main(mode, int(port), int(connections), int(addresses), app, key))
