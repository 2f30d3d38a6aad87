"""Network namespaces for tests that need NAT or several hosts (root only; removed afterwards).

A :class:`Lab` makes namespaces joined by veth pairs, with addresses in 10.77.0.0/16 that exist
only inside them; nothing here addresses anything outside this machine. Every namespace, and so
every veth and iptables rule in it, is deleted when the lab closes, and every process started in
it is killed first.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

REQUIRED = ("ip", "iptables")


def skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: scripts/test installs iproute2 and iptables")


class Lab:
    def __init__(self) -> None:
        self.tag = f"ing{os.getpid() % 100000}"
        self.names: list[str] = []
        self.procs: list[asyncio.subprocess.Process] = []
        self.dir = Path(tempfile.mkdtemp(prefix="ingest-lab-"))
        self._links = 0
        self._drains: list[asyncio.Task[None]] = []

    def ns(self, role: str) -> str:
        name = f"{self.tag}{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        self.sh(name, "ip link set lo up")
        return name

    def sh(self, ns: str, command: str) -> None:
        """Run a command inside ``ns`` and fail loudly if it fails."""
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", command], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"[{ns}] {command}: {done.stderr.strip()}")

    def link(self, a: str, a_ip: str, b: str, b_ip: str, prefix: int = 24) -> None:
        """A veth pair between namespaces ``a`` and ``b`` with these addresses."""
        self._links += 1
        va, vb = f"{self.tag[-6:]}a{self._links}", f"{self.tag[-6:]}b{self._links}"
        subprocess.run(
            ["ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b],
            check=True,
        )
        self.sh(a, f"ip addr add {a_ip}/{prefix} dev {va} && ip link set {va} up")
        self.sh(b, f"ip addr add {b_ip}/{prefix} dev {vb} && ip link set {vb} up")

    def router(self, ns: str) -> None:
        self.sh(ns, "sysctl -qw net.ipv4.ip_forward=1")

    async def start(self, ns: str, name: str, *argv: str) -> asyncio.subprocess.Process:
        """A process inside ``ns``, killed at the end: stdout piped (read it with
        :func:`wait_line`, then :meth:`drain` it), stderr to ``<lab dir>/<name>.log``."""
        with (self.dir / f"{name}.log").open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns, *argv, stdout=asyncio.subprocess.PIPE, stderr=err
            )
        self.procs.append(proc)
        return proc

    def drain(self, proc: asyncio.subprocess.Process) -> None:
        """Keep reading ``proc``'s stdout so that a chatty process never blocks on a full pipe."""

        async def read() -> None:
            assert proc.stdout is not None
            while await proc.stdout.read(65536):
                pass

        self._drains.append(asyncio.create_task(read()))

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        for task in self._drains:
            task.cancel()
        for name in reversed(self.names):
            deleting = await asyncio.create_subprocess_exec("ip", "netns", "del", name)
            await deleting.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@asynccontextmanager
async def lab() -> AsyncIterator[Lab]:
    skip_unless_root()
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        await the_lab.close()


async def wait_line(proc: asyncio.subprocess.Process, marker: bytes, within: float) -> bytes:
    """Read ``proc``'s stdout until a line containing ``marker``; that line."""
    assert proc.stdout is not None

    async def read() -> bytes:
        assert proc.stdout is not None
        seen: list[bytes] = []
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(
                    f"process ended before {marker!r}; stdout: {b''.join(seen)[-2000:]!r}"
                )
            seen.append(line)
            if marker in line:
                return line

    return await asyncio.wait_for(read(), within)
