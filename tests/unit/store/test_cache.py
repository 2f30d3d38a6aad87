"""The Store's read cache: a flood of identical reads costs one query; writes are seen at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ingest.calls.models import Call, CallSession, CallType, Member, User
from ingest.store.db import CACHE_SIZE, CACHE_TTL, ReadCache, Store, fresh_copy

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Queries:
    """Counts the SELECTs the engine really runs (a SQLAlchemy event, not a mock)."""

    def __init__(self, store: Store) -> None:
        self.selects = 0
        sa.event.listen(store.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.selects += 1


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await s.open()
    await s.put_call_type(CallType("livestream", {"host": ["send-audio"]}, {}, NOW, NOW))
    await s.put_user(User("alice", created_at=NOW, updated_at=NOW))
    show = Call("livestream:show", "livestream", "show", "alice", created_at=NOW, updated_at=NOW)
    assert await s.insert_call(show)
    await s.put_member(Member("livestream:show", "alice", "host", {}, NOW, NOW))
    yield s
    await s.close()


async def test_a_flood_of_the_same_reads_costs_one_query_each(store: Store) -> None:
    queries = Queries(store)
    for _ in range(100):  # what 100 refused publishes of one user ask
        assert await store.get_user("alice") is not None
        assert await store.get_call_type("livestream") is not None
        assert await store.get_call("livestream:show") is not None
        assert await store.get_member("livestream:show", "alice") is not None
        assert await store.get_member("livestream:show", "viewer") is None
        assert await store.get_call("livestream:nope") is None  # misses are cached too
        assert len(await store.list_call_types()) == 1
        assert [m.user_id for m in await store.list_members("livestream:show")] == ["alice"]
        assert list(await store.get_users(["alice", "nobody"])) == ["alice"]
    assert queries.selects == 9  # get_users found alice cached, and "nobody" cached as missing


async def test_revocation_role_change_and_removal_are_seen_at_once(store: Store) -> None:
    user = await store.get_user("alice")
    assert user is not None
    assert user.revoke_tokens_issued_before is None
    user.revoke_tokens_issued_before = NOW
    await store.put_user(user)
    again = await store.get_user("alice")
    assert again is not None
    assert again.revoke_tokens_issued_before == NOW

    assert await store.get_member("livestream:show", "bob") is None
    await store.put_member(Member("livestream:show", "bob", "user", {}, NOW, NOW))
    bob = await store.get_member("livestream:show", "bob")
    assert bob is not None
    assert bob.role == "user"
    bob.role = "host"
    await store.put_member(bob)
    bob = await store.get_member("livestream:show", "bob")
    assert bob is not None
    assert bob.role == "host"
    assert await store.delete_member("livestream:show", "bob")
    assert await store.get_member("livestream:show", "bob") is None

    call = await store.get_call("livestream:show")
    assert call is not None
    call.backstage = False
    await store.update_call(call)
    call = await store.get_call("livestream:show")
    assert call is not None
    assert not call.backstage

    assert await store.get_call_type("audio") is None
    await store.put_call_type(CallType("audio", {}, {}, NOW, NOW))
    assert await store.get_call_type("audio") is not None
    assert [t.name for t in await store.list_call_types()] == ["audio", "livestream"]
    assert await store.delete_call_type("audio")
    assert await store.get_call_type("audio") is None
    assert [t.name for t in await store.list_call_types()] == ["livestream"]

    assert await store.get_call("livestream:new") is None
    assert [m.user_id for m in await store.list_members("livestream:show")] == ["alice"]
    await store.put_member(Member("livestream:show", "carol", "host", {}, NOW, NOW))
    listed = await store.list_members("livestream:show")
    assert [m.user_id for m in listed] == ["alice", "carol"]
    assert list(await store.get_users(["carol"])) == []
    await store.put_user(User("carol", created_at=NOW, updated_at=NOW))
    assert list(await store.get_users(["carol", "alice"])) == ["carol", "alice"]

    assert await store.get_session("s1") is None
    await store.put_session(CallSession("s1", "livestream:show", started_at=NOW))
    session = await store.get_session("s1")
    assert session is not None
    session.ended_at = NOW
    await store.put_session(session)
    session = await store.get_session("s1")
    assert session is not None
    assert session.ended_at == NOW

    new = Call("livestream:new", "livestream", "new", "alice", created_at=NOW, updated_at=NOW)
    assert await store.insert_call(new)
    assert await store.get_call("livestream:new") is not None


async def test_callers_get_copies(store: Store) -> None:
    user = await store.get_user("alice")
    assert user is not None
    user.custom["x"] = 1
    user.role = "admin"  # changed but not saved
    fresh = await store.get_user("alice")
    assert fresh is not None
    assert fresh.custom == {}
    assert fresh.role == "user"


def test_copies_share_nothing_mutable() -> None:
    ct = CallType("t", {"host": ["send-audio"]}, {"backstage": {"enabled": True}}, NOW, NOW)
    copied = fresh_copy(ct)
    assert copied == ct
    copied.grants["host"].append("send-video")
    copied.settings["backstage"]["enabled"] = False
    assert ct.grants == {"host": ["send-audio"]}
    assert ct.settings == {"backstage": {"enabled": True}}


async def test_forget_drops_what_tx_wrote_behind_the_cache(store: Store) -> None:
    assert await store.get_user("alice") is not None
    async with store.tx() as conn:
        await conn.execute(sa.delete(sa.table("users", sa.column("id"))))
    store.forget()
    assert await store.get_user("alice") is None


async def test_a_write_by_another_process_is_seen_within_the_ttl(store: Store) -> None:
    assert CACHE_TTL <= 5  # revocation by another process reaches RTMP within the 5 s target
    clock = [0.0]
    store.user_cache = ReadCache(clock=lambda: clock[0])
    assert (await store.get_user("alice")) is not None
    async with store.tx() as conn:  # behind the Store's back, as another process would
        await conn.execute(sa.update(sa.table("users", sa.column("role"))).values(role="admin"))
    cached = await store.get_user("alice")
    assert cached is not None
    assert cached.role == "user"
    clock[0] += CACHE_TTL
    fresh = await store.get_user("alice")
    assert fresh is not None
    assert fresh.role == "admin"


def test_a_read_that_raced_a_write_is_not_cached() -> None:
    cache: ReadCache[str] = ReadCache(clock=lambda: 0.0)
    generation = cache.begin()  # a read starts
    cache.drop("k")  # a write lands while it waits for the database
    cache.put("k", "old", generation)  # the read comes back with what it saw before the write
    assert cache.get("k") == (False, None)
    cache.put("k", "new", cache.begin())
    assert cache.get("k") == (True, "new")


def test_size_bound_drops_the_least_recently_used() -> None:
    assert CACHE_SIZE >= 1000
    cache: ReadCache[int] = ReadCache(size=3, clock=lambda: 0.0)
    for i in range(3):
        cache.put(i, i, cache.begin())
    assert cache.get(0) == (True, 0)  # 0 is now the most recently used
    cache.put(3, 3, cache.begin())
    assert len(cache) == 3
    assert cache.get(1) == (False, None)
    assert cache.get(0) == (True, 0)


def test_entries_expire_after_the_ttl() -> None:
    clock = [100.0]
    cache: ReadCache[str] = ReadCache(ttl=2.0, clock=lambda: clock[0])
    cache.put("k", "v", cache.begin())
    clock[0] += 1.9
    assert cache.get("k") == (True, "v")
    clock[0] += 0.1
    assert cache.get("k") == (False, None)
    assert len(cache) == 0
