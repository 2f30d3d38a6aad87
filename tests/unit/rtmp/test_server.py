"""RTMPServer's bookkeeping that needs no socket: read sizes and the pre-auth time slice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ingest.rtmp.server import (
    PREAUTH_SLICE,
    READ_SIZE,
    READ_SIZE_BEFORE_PUBLISH,
    PublishRequest,
    RTMPServer,
    _Peer,
)


class Never:
    async def on_publish(self, request: PublishRequest, disconnect: Callable[[str], None]) -> None:
        raise AssertionError("not reached")


async def test_an_unadmitted_peer_is_read_in_small_pieces() -> None:
    assert READ_SIZE_BEFORE_PUBLISH <= 8 * 1024 < READ_SIZE
    server = RTMPServer(Never(), "127.0.0.1", 0)  # type: ignore[arg-type]
    peer = _Peer(server)
    assert len(peer.get_buffer(-1)) == READ_SIZE_BEFORE_PUBLISH
    peer._admitted = True  # what an accepted publish sets
    assert len(peer.get_buffer(-1)) == READ_SIZE


async def test_heavy_talkers_share_a_time_slice_renewed_each_loop_turn() -> None:
    assert 0 < PREAUTH_SLICE <= 0.02
    server = RTMPServer(Never(), "127.0.0.1", 0)  # type: ignore[arg-type]
    assert server._slice_left()
    server._slice_spent(PREAUTH_SLICE)
    assert not server._slice_left()
    await asyncio.sleep(0)  # the next turn of the loop
    await asyncio.sleep(0)
    assert server._slice_left()
