"""Users, call types, calls, members and sessions survive a restart, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ingest.calls import wire as w
from tests.conftest import api

pytestmark = pytest.mark.e2e


async def exercise_restart(app_factory: Callable[..., Any], **settings: Any) -> None:
    app = await app_factory(**settings)
    async with api(app) as client:
        await client.upsert_users(w.UserRequest(id="alice", name="Alice"), w.UserRequest(id="bob"))
        await client.create_call_type(
            w.CreateCallTypeRequest(name="panel", grants={"host": ["read-call", "send-video"]})
        )
        await client.get_or_create_call(
            "livestream",
            "persisted",
            w.CallRequest(
                created_by_id="alice",
                members=[
                    w.MemberRequest(user_id="alice", role="host"),
                    w.MemberRequest(user_id="bob", role="user"),
                ],
                custom={"title": "Launch"},
            ),
        )
        live = await client.go_live("livestream", "persisted")
    session_id = live.call.current_session_id
    await app.stop()

    app2 = await app_factory(**settings)
    async with api(app2) as client2:
        got = await client2.get_call("livestream", "persisted")
        types = await client2.list_call_types()
    assert got.call.backstage is False
    assert got.call.custom == {"title": "Launch"}
    assert got.call.current_session_id == session_id
    assert got.call.session is not None
    assert got.call.session.live_started_at is not None
    assert {(m.user_id, m.role) for m in got.members} == {("alice", "host"), ("bob", "user")}
    assert got.call.created_by.name == "Alice"
    assert types.call_types["panel"].grants["host"] == ["read-call", "send-video"]


async def test_sqlite_survives_restart(app_factory: Callable[..., Any]) -> None:
    await exercise_restart(app_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian package; scripts/test installs it)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (scripts/test installs it)")
    bindir = os.path.dirname(bins[-1])
    root = tempfile.mkdtemp(prefix="ingest-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(root, "data")
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "ingest")
    run(
        f"{bindir}/pg_ctl",
        "-D",
        data,
        "-w",
        "-l",
        os.path.join(root, "log"),
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
        "start",
    )
    try:
        run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "ingest", "ingest")
        yield f"postgresql+asyncpg://ingest@127.0.0.1:{port}/ingest"
    finally:
        run(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


async def test_postgresql_survives_restart(app_factory: Callable[..., Any], postgres: str) -> None:
    await exercise_restart(app_factory, database_url=postgres)


async def test_hls_and_recording_resume_after_a_restart(app_factory: Callable[..., Any]) -> None:
    from tests.conftest import user_token
    from tests.e2e.media import MEDIA_DIR, finish, make_flv, push

    app = await app_factory()
    async with api(app) as client:
        await client.upsert_users(w.UserRequest(id="alice"))
        await client.get_or_create_call(
            "livestream",
            "resumed",
            w.CallRequest(
                created_by_id="alice", members=[w.MemberRequest(user_id="alice", role="host")]
            ),
        )
        await client.go_live("livestream", "resumed", start_hls=True, start_recording=True)
    await app.stop()  # nobody published: nothing was produced, but both are still wanted

    app2 = await app_factory()
    MEDIA_DIR.mkdir(exist_ok=True)
    src = make_flv(MEDIA_DIR / "baseline-bf0.flv", profile="baseline")
    with app2.bus.subscribe("livestream:resumed") as sub:
        async with api(app2) as client:
            address = (await client.get_call("livestream", "resumed")).call.ingress.rtmp.address
            proc = await push(f"{address}/{user_token('alice')}", src, realtime=True, loop=True)
            try:
                wanted = {"call.hls_broadcasting_started", "call.recording_started"}
                while wanted:
                    wanted.discard((await asyncio.wait_for(sub.get(), 30))["type"])
                got = await client.get_call("livestream", "resumed")
                assert got.call.egress.hls.status == "running"
                assert got.call.recording is True
            finally:
                proc.terminate()
                await finish(proc)
