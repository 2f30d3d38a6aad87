"""Persistence: users, call types, calls, members and sessions, through SQLAlchemy 2 (async).

SQLite (aiosqlite) in the data directory by default; PostgreSQL (asyncpg) when given a URL such
as ``postgresql+asyncpg://user:pw@host/db``. SQLAlchemy Core keeps both dialects in one code path.

Reads of users, call types, calls, members and sessions go through a small read-through cache
(what every authorization and call response needs: a flood of refused RTMP publishes or API
calls costs no queries beyond the first, and no thread hops while the event loop is busy). Every
write through this Store drops the entries it touches at once, so revocation, member removal and
role changes take effect immediately in this process; a change made by another process sharing
the database is seen within :data:`CACHE_TTL`. Callers get copies, so mutating a returned record
never changes the cache.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..calls.models import Call, CallSession, CallType, Member, User


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, default=""),
    sa.Column("role", sa.String(64), nullable=False, default="user"),
    sa.Column("image", sa.Text, nullable=False, default=""),
    sa.Column("custom", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("revoke_tokens_issued_before", UTCDateTime, nullable=True),
    sa.Column("deactivated_at", UTCDateTime, nullable=True),
)

call_types = sa.Table(
    "call_types",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("grants", sa.JSON, nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("cid", sa.String(330), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("id", sa.String(255), nullable=False),
    sa.Column("created_by_id", sa.String(255), nullable=False),
    sa.Column("custom", sa.JSON, nullable=False),
    sa.Column("settings_override", sa.JSON, nullable=False),
    sa.Column("backstage", sa.Boolean, nullable=False),
    sa.Column("starts_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("current_session_id", sa.String(64), nullable=False, default=""),
    sa.Column("hls", sa.Boolean, nullable=False, default=False),
    sa.Column("recording", sa.Boolean, nullable=False, default=False),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("call_cid", sa.String(330), sa.ForeignKey("calls.cid"), primary_key=True),
    sa.Column("user_id", sa.String(255), primary_key=True),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("custom", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("call_cid", sa.String(330), sa.ForeignKey("calls.cid"), nullable=False, index=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("live_started_at", UTCDateTime, nullable=True),
    sa.Column("live_ended_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
)


def _row(row: sa.Row[Any]) -> dict[str, Any]:
    return dict(row._mapping)


CACHE_TTL = 2.0  # seconds a cached read may be reused (writes through the Store drop it at once)
CACHE_SIZE = 10_000  # entries per cached table (least recently used go first)

T = TypeVar("T")
_FIELDS: dict[type, tuple[str, ...]] = {}


def fresh_copy(value: Any) -> Any:
    """A deep copy of a record or JSON value, several times faster than copy.deepcopy: records
    are dataclasses whose fields are JSON (dicts, lists, scalars) or immutable datetimes."""
    cls = type(value)
    if cls in _IMMUTABLE:
        return value
    if cls is dict:
        return {k: v if type(v) in _IMMUTABLE else fresh_copy(v) for k, v in value.items()}
    if cls is list:
        return [v if type(v) in _IMMUTABLE else fresh_copy(v) for v in value]
    names = _FIELDS.get(cls)
    if names is None:
        if not dataclasses.is_dataclass(value):
            return copy.deepcopy(value)
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(value))
    return cls(**{n: fresh_copy(getattr(value, n)) for n in names})


_IMMUTABLE = frozenset({str, int, float, bool, type(None), datetime})


class ReadCache(Generic[T]):
    """Key -> record (or ``None`` for "no such row"), with a TTL and an LRU bound.

    A read that started before a write must not put back what it read: :meth:`put` takes the
    generation :meth:`begin` returned and stores nothing if any write happened since.
    """

    def __init__(
        self,
        ttl: float = CACHE_TTL,
        size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, T | None]] = OrderedDict()
        self._generation = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self) -> int:
        return self._generation

    def get(self, key: Hashable) -> tuple[bool, T | None]:
        """``(True, a copy of the value)`` if cached and fresh, else ``(False, None)``."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return False, None
        self._entries.move_to_end(key)
        self.hits += 1
        return True, fresh_copy(entry[1])

    def put(self, key: Hashable, value: T | None, generation: int) -> None:
        if generation != self._generation or self.ttl <= 0:
            return
        self._entries[key] = (self._clock() + self.ttl, fresh_copy(value))
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key: Hashable) -> None:
        self._generation += 1
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()


class Store:
    """Typed access to the tables. One instance per process; safe to share across tasks."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self.user_cache: ReadCache[User] = ReadCache()
        self.call_type_cache: ReadCache[CallType] = ReadCache()
        self.call_types_cache: ReadCache[list[CallType]] = ReadCache()
        self.call_cache: ReadCache[Call] = ReadCache()
        self.member_cache: ReadCache[Member] = ReadCache()
        self.member_list_cache: ReadCache[list[Member]] = ReadCache()
        self.session_cache: ReadCache[CallSession] = ReadCache()

    async def open(self) -> None:
        async with self.engine.begin() as conn:
            if self.url.startswith("sqlite"):
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            await conn.run_sync(metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    def forget(self) -> None:
        """Drop every cached read (after writing through :meth:`tx` directly)."""
        for cache in (
            self.user_cache,
            self.call_type_cache,
            self.call_types_cache,
            self.call_cache,
            self.member_cache,
            self.member_list_cache,
            self.session_cache,
        ):
            cache.clear()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; what it writes bypasses the read cache (call :meth:`forget`)."""
        async with self.engine.begin() as conn:
            yield conn

    # --- users -----------------------------------------------------------------------------

    async def get_user(self, user_id: str) -> User | None:
        cache = self.user_cache
        hit, cached = cache.get(user_id)
        if hit:
            return cached
        generation = cache.begin()
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).first()
        user = User(**_row(row)) if row else None
        cache.put(user_id, user, generation)
        return user

    async def get_users(self, ids: list[str]) -> dict[str, User]:
        cache = self.user_cache
        found: dict[str, User] = {}
        missing: list[str] = []
        for uid in dict.fromkeys(ids):
            hit, cached = cache.get(uid)
            if not hit:
                missing.append(uid)
            elif cached is not None:
                found[uid] = cached
        if not missing:
            return found
        generation = cache.begin()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(users).where(users.c.id.in_(missing)))).all()
        loaded = {r.id: User(**_row(r)) for r in rows}
        for uid in missing:
            cache.put(uid, loaded.get(uid), generation)
        found.update(loaded)
        return {uid: found[uid] for uid in dict.fromkeys(ids) if uid in found}

    async def put_user(self, user: User) -> None:
        values = {
            "id": user.id,
            "name": user.name,
            "role": user.role,
            "image": user.image,
            "custom": user.custom,
            "created_at": user.created_at,
            "updated_at": user.updated_at,
            "revoke_tokens_issued_before": user.revoke_tokens_issued_before,
            "deactivated_at": user.deactivated_at,
        }
        self.user_cache.drop(user.id)
        try:
            await self._upsert(users, values, ["id"])
        finally:
            self.user_cache.drop(user.id)

    # --- call types ------------------------------------------------------------------------

    async def list_call_types(self) -> list[CallType]:
        cache = self.call_types_cache
        hit, cached = cache.get(None)
        if hit and cached is not None:
            return cached
        generation = cache.begin()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(call_types).order_by(call_types.c.name))).all()
        types = [CallType(**_row(r)) for r in rows]
        cache.put(None, types, generation)
        return types

    async def get_call_type(self, name: str) -> CallType | None:
        cache = self.call_type_cache
        hit, cached = cache.get(name)
        if hit:
            return cached
        generation = cache.begin()
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(call_types).where(call_types.c.name == name))
            ).first()
        ct = CallType(**_row(row)) if row else None
        cache.put(name, ct, generation)
        return ct

    def _call_type_changed(self, name: str) -> None:
        self.call_type_cache.drop(name)
        self.call_types_cache.clear()

    async def put_call_type(self, ct: CallType) -> None:
        values = {
            "name": ct.name,
            "grants": ct.grants,
            "settings": ct.settings,
            "created_at": ct.created_at,
            "updated_at": ct.updated_at,
        }
        self._call_type_changed(ct.name)
        try:
            await self._upsert(call_types, values, ["name"])
        finally:
            self._call_type_changed(ct.name)

    async def delete_call_type(self, name: str) -> bool:
        self._call_type_changed(name)
        try:
            async with self.tx() as conn:
                res = await conn.execute(sa.delete(call_types).where(call_types.c.name == name))
        finally:
            self._call_type_changed(name)
        return bool(res.rowcount)

    async def count_calls_of_type(self, name: str) -> int:
        async with self.engine.connect() as conn:
            n = await conn.scalar(sa.select(sa.func.count()).where(calls.c.type == name))
        return int(n or 0)

    # --- calls -----------------------------------------------------------------------------

    async def get_call(self, cid: str) -> Call | None:
        cache = self.call_cache
        hit, cached = cache.get(cid)
        if hit:
            return cached
        generation = cache.begin()
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(calls).where(calls.c.cid == cid))).first()
        call = Call(**_row(row)) if row else None
        cache.put(cid, call, generation)
        return call

    async def calls_with_egress(self) -> list[Call]:
        """Calls that want HLS or a recording (what a restarted server resumes)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(calls).where(sa.or_(calls.c.hls.is_(True), calls.c.recording.is_(True)))
            )
            return [Call(**_row(row)) for row in rows]

    async def insert_call(self, call: Call) -> bool:
        """Insert; False when a call with that cid already exists (get-or-create race)."""
        self.call_cache.drop(call.cid)
        try:
            async with self.tx() as conn:
                await conn.execute(sa.insert(calls).values(**self._call_values(call)))
        except sa.exc.IntegrityError:
            return False
        finally:
            self.call_cache.drop(call.cid)
        return True

    async def update_call(self, call: Call) -> None:
        self.call_cache.drop(call.cid)
        try:
            async with self.tx() as conn:
                await conn.execute(
                    sa.update(calls)
                    .where(calls.c.cid == call.cid)
                    .values(**self._call_values(call))
                )
        finally:
            self.call_cache.drop(call.cid)

    @staticmethod
    def _call_values(call: Call) -> dict[str, Any]:
        return {
            "cid": call.cid,
            "type": call.type,
            "id": call.id,
            "created_by_id": call.created_by_id,
            "custom": call.custom,
            "settings_override": call.settings_override,
            "backstage": call.backstage,
            "starts_at": call.starts_at,
            "created_at": call.created_at,
            "updated_at": call.updated_at,
            "ended_at": call.ended_at,
            "current_session_id": call.current_session_id,
            "hls": call.hls,
            "recording": call.recording,
        }

    # --- members ---------------------------------------------------------------------------

    async def list_members(self, cid: str, limit: int | None = None) -> list[Member]:
        cache = self.member_list_cache
        key = (cid, limit)
        hit, cached = cache.get(key)
        if hit and cached is not None:
            return cached
        generation = cache.begin()
        q = sa.select(members).where(members.c.call_cid == cid).order_by(members.c.created_at)
        if limit is not None:
            q = q.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        listed = [Member(**_row(r)) for r in rows]
        cache.put(key, listed, generation)
        return listed

    def _member_changed(self, cid: str, user_id: str) -> None:
        self.member_cache.drop((cid, user_id))
        self.member_list_cache.clear()

    async def get_member(self, cid: str, user_id: str) -> Member | None:
        cache = self.member_cache
        key = (cid, user_id)
        hit, cached = cache.get(key)
        if hit:
            return cached
        generation = cache.begin()
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(members).where(
                        members.c.call_cid == cid, members.c.user_id == user_id
                    )
                )
            ).first()
        member = Member(**_row(row)) if row else None
        cache.put(key, member, generation)
        return member

    async def put_member(self, m: Member) -> None:
        values = {
            "call_cid": m.call_cid,
            "user_id": m.user_id,
            "role": m.role,
            "custom": m.custom,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        }
        self._member_changed(m.call_cid, m.user_id)
        try:
            await self._upsert(members, values, ["call_cid", "user_id"])
        finally:
            self._member_changed(m.call_cid, m.user_id)

    async def delete_member(self, cid: str, user_id: str) -> bool:
        self._member_changed(cid, user_id)
        try:
            async with self.tx() as conn:
                res = await conn.execute(
                    sa.delete(members).where(
                        members.c.call_cid == cid, members.c.user_id == user_id
                    )
                )
        finally:
            self._member_changed(cid, user_id)
        return bool(res.rowcount)

    # --- sessions --------------------------------------------------------------------------

    async def get_session(self, session_id: str) -> CallSession | None:
        if not session_id:
            return None
        cache = self.session_cache
        hit, cached = cache.get(session_id)
        if hit:
            return cached
        generation = cache.begin()
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(sessions).where(sessions.c.id == session_id))
            ).first()
        session = CallSession(**_row(row)) if row else None
        cache.put(session_id, session, generation)
        return session

    async def put_session(self, s: CallSession) -> None:
        values = {
            "id": s.id,
            "call_cid": s.call_cid,
            "started_at": s.started_at,
            "live_started_at": s.live_started_at,
            "live_ended_at": s.live_ended_at,
            "ended_at": s.ended_at,
        }
        self.session_cache.drop(s.id)
        try:
            await self._upsert(sessions, values, ["id"])
        finally:
            self.session_cache.drop(s.id)

    # --- app settings (generated dev credentials live in a file, not here) -----------------

    async def _upsert(self, table: sa.Table, values: dict[str, Any], keys: list[str]) -> None:
        """Insert or update by primary key, portable across SQLite and PostgreSQL."""
        dialect = self.engine.dialect.name
        async with self.tx() as conn:
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                stmt = sqlite_insert(table).values(**values)
                stmt = stmt.on_conflict_do_update(
                    index_elements=keys, set_={k: v for k, v in values.items() if k not in keys}
                )
            elif dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                pstmt = pg_insert(table).values(**values)
                await conn.execute(
                    pstmt.on_conflict_do_update(
                        index_elements=keys,
                        set_={k: v for k, v in values.items() if k not in keys},
                    )
                )
                return
            else:  # pragma: no cover - other dialects are not supported
                raise RuntimeError(f"unsupported database dialect {dialect}")
            await conn.execute(stmt)


def utcnow() -> datetime:
    return datetime.now(UTC)
