"""Persistence: users, call types, calls, members and sessions, through SQLAlchemy 2 (async).

SQLite (aiosqlite) in the data directory by default; PostgreSQL (asyncpg) when given a URL such
as ``postgresql+asyncpg://user:pw@host/db``. SQLAlchemy Core keeps both dialects in one code path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

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


class Store:
    """Typed access to the tables. One instance per process; safe to share across tasks."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)

    async def open(self) -> None:
        async with self.engine.begin() as conn:
            if self.url.startswith("sqlite"):
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            await conn.run_sync(metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    # --- users -----------------------------------------------------------------------------

    async def get_user(self, user_id: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).first()
        return User(**_row(row)) if row else None

    async def get_users(self, ids: list[str]) -> dict[str, User]:
        if not ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(users).where(users.c.id.in_(ids)))).all()
        return {r.id: User(**_row(r)) for r in rows}

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
        await self._upsert(users, values, ["id"])

    # --- call types ------------------------------------------------------------------------

    async def list_call_types(self) -> list[CallType]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(call_types).order_by(call_types.c.name))).all()
        return [CallType(**_row(r)) for r in rows]

    async def get_call_type(self, name: str) -> CallType | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(call_types).where(call_types.c.name == name))
            ).first()
        return CallType(**_row(row)) if row else None

    async def put_call_type(self, ct: CallType) -> None:
        values = {
            "name": ct.name,
            "grants": ct.grants,
            "settings": ct.settings,
            "created_at": ct.created_at,
            "updated_at": ct.updated_at,
        }
        await self._upsert(call_types, values, ["name"])

    async def delete_call_type(self, name: str) -> bool:
        async with self.tx() as conn:
            res = await conn.execute(sa.delete(call_types).where(call_types.c.name == name))
        return bool(res.rowcount)

    async def count_calls_of_type(self, name: str) -> int:
        async with self.engine.connect() as conn:
            n = await conn.scalar(sa.select(sa.func.count()).where(calls.c.type == name))
        return int(n or 0)

    # --- calls -----------------------------------------------------------------------------

    async def get_call(self, cid: str) -> Call | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(calls).where(calls.c.cid == cid))).first()
        return Call(**_row(row)) if row else None

    async def insert_call(self, call: Call) -> bool:
        """Insert; False when a call with that cid already exists (get-or-create race)."""
        try:
            async with self.tx() as conn:
                await conn.execute(sa.insert(calls).values(**self._call_values(call)))
        except sa.exc.IntegrityError:
            return False
        return True

    async def update_call(self, call: Call) -> None:
        async with self.tx() as conn:
            await conn.execute(
                sa.update(calls).where(calls.c.cid == call.cid).values(**self._call_values(call))
            )

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
        q = sa.select(members).where(members.c.call_cid == cid).order_by(members.c.created_at)
        if limit is not None:
            q = q.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [Member(**_row(r)) for r in rows]

    async def get_member(self, cid: str, user_id: str) -> Member | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(members).where(
                        members.c.call_cid == cid, members.c.user_id == user_id
                    )
                )
            ).first()
        return Member(**_row(row)) if row else None

    async def put_member(self, m: Member) -> None:
        values = {
            "call_cid": m.call_cid,
            "user_id": m.user_id,
            "role": m.role,
            "custom": m.custom,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        }
        await self._upsert(members, values, ["call_cid", "user_id"])

    async def delete_member(self, cid: str, user_id: str) -> bool:
        async with self.tx() as conn:
            res = await conn.execute(
                sa.delete(members).where(members.c.call_cid == cid, members.c.user_id == user_id)
            )
        return bool(res.rowcount)

    # --- sessions --------------------------------------------------------------------------

    async def get_session(self, session_id: str) -> CallSession | None:
        if not session_id:
            return None
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(sessions).where(sessions.c.id == session_id))
            ).first()
        return CallSession(**_row(row)) if row else None

    async def put_session(self, s: CallSession) -> None:
        values = {
            "id": s.id,
            "call_cid": s.call_cid,
            "started_at": s.started_at,
            "live_started_at": s.live_started_at,
            "live_ended_at": s.live_ended_at,
            "ended_at": s.ended_at,
        }
        await self._upsert(sessions, values, ["id"])

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
