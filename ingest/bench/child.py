"""The bench's child processes (viewers, publishers): commands on stdin, one JSON object per
line on stdout (``{"event": ...}``; an ``error`` event carries a ``message``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

STOP_TIMEOUT = 10.0  # seconds a child may take to exit once its stdin is closed


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """Close the child's stdin (its signal to finish), then kill it if it does not exit."""
    if proc.returncode is not None:
        return
    if proc.stdin is not None:
        with contextlib.suppress(ConnectionError):
            proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()


class JsonChild:
    def __init__(self, proc: asyncio.subprocess.Process, timeout: float) -> None:
        self.proc = proc
        self.timeout = timeout  # seconds to wait for one line

    async def expect(self, event: str) -> dict[str, Any]:
        """The next message of kind ``event`` (others are skipped); an error raises."""
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), self.timeout)
            if not line:
                raise RuntimeError(f"a bench child process ended (waiting for {event!r})")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == "error":
                raise RuntimeError(f"bench child process: {message.get('message')}")
            if message.get("event") == event:
                return message

    async def stop(self) -> None:
        await stop_process(self.proc)
