"""Mutated RTMP sessions against a server, run as a separate process (issue 13, finding 8).

    python -m tests.e2e.rtmp_fuzzer PORT APP KEY COUNT CONCURRENCY SEED

Each session is a whole publish (handshake, connect, createStream, publish with KEY, metadata,
video of 0.1 to 20 KB per frame) with up to 8 random bytes changed after the handshake; it is
sent at once, read until the server closes it or is quiet for a second, then aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys

from ingest.rtmp.handshake import HANDSHAKE_SIZE
from tests.unit.rtmp.client import Client

QUIET = 1.0  # seconds without a byte from the server before the session is dropped


def session(app: str, key: str, rnd: random.Random) -> bytearray:
    c = Client()
    c.receive_data(b"\x03" + bytes(2 * HANDSHAKE_SIZE))
    c.connect(app)
    c.command("createStream")
    c.publish(1, key)
    c.metadata(1, {"width": 320.0})
    for i in range(20):
        c.video(1, i * 33, b"\x17\x01" + rnd.randbytes(rnd.choice([100, 3000, 20000])))
    data = bytearray(c.data_to_send())
    for _ in range(rnd.randint(0, 8)):
        data[rnd.randrange(1 + HANDSHAKE_SIZE, len(data))] = rnd.randrange(256)
    return data


async def one(port: int, data: bytes) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        writer.write(data)
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(writer.drain(), QUIET * 2)
            while await asyncio.wait_for(reader.read(65536), QUIET):
                pass
    finally:
        writer.transport.abort()


async def main(port: int, app: str, key: str, count: int, concurrency: int, seed: int) -> None:
    rnd = random.Random(seed)
    gate = asyncio.Semaphore(concurrency)

    async def guarded() -> None:
        async with gate:
            await one(port, bytes(session(app, key, rnd)))

    await asyncio.gather(*(guarded() for _ in range(count)))


if __name__ == "__main__":
    port, app, key, count, concurrency, seed = sys.argv[1:7]
    asyncio.run(main(int(port), app, key, int(count), int(concurrency), int(seed)))
