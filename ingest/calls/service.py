"""The control plane's rules: who may do what in which call, and the call's live state.

Persistent records (users, call types, calls, members, sessions) live in the store; live state
(participants and how to disconnect them) lives here in memory. The HTTP API, the RTMP server and
the SFU all come through this one service, so a rule is written once.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthenticationError,
    InputError,
    NotFoundError,
    PermissionDeniedError,
    TokenRevokedError,
)
from ..logs import redact
from ..store.db import Store, utcnow
from . import capabilities as caps
from . import events as ev
from . import wire as w
from .models import Call, CallSession, CallType, Member, User, cid_of
from .tokens import Claims, check_revocation, verify_token
from .wire import MAX_MEMBERS_PER_REQUEST

if TYPE_CHECKING:
    from ..egress import Egress

log = logging.getLogger("ingest.calls")

MAX_ID_LENGTH = 255
MAX_CUSTOM_BYTES = 5 * 1024
MAX_CALL_TYPE_NAME = 64
ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-!@$%^&*()+=.]+$")  # the characters an id may use
CALL_TYPE_PATTERN = re.compile(r"^[a-z0-9_\-]+$")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a request: the server (all capabilities) or a user."""

    server: bool
    user_id: str | None = None
    claims: Claims | None = None

    @property
    def label(self) -> str:
        return "server" if self.server else f"user '{self.user_id}'"


SERVER = Caller(server=True)


@dataclass(slots=True)
class Participant:
    """Someone connected to a call's session (an RTMP publisher or a WebRTC client): an entry of
    the call's one roster (:attr:`CallService.participants`). Its tracks are the hub's, under
    :attr:`session_id` (``Hub.participant(call_cid, session_id)``), not kept here."""

    call_cid: str
    user_id: str
    session_id: str
    role: str
    joined_at: datetime
    source: str  # "rtmp", "webrtc", "whip"
    token_issued_at: int | None = None
    disconnect: Callable[[str], None] | None = None
    health: Callable[[], dict[str, Any]] | None = None


WATCH_CAPABILITIES = frozenset({caps.JOIN_CALL, caps.JOIN_BACKSTAGE})
"""The capabilities that let someone receive a call; a watcher that loses one is cut."""
CUT_KICKED = "kicked"
CUT_REVOKED = "revoked"
CUT_REMOVED = "removed"
CUT_BACKSTAGE = "backstage"
"""Why a watcher is cut (the front end picks its close code by it): kicked, its token revoked,
removed from the call or its role no longer lets it watch, or (WHEP viewers without
join-backstage) the call went back to backstage."""

Disconnect = Callable[[str, str], None]
"""``(cause, reason)``: end a watcher's session now (must not block); ``cause`` is a ``CUT_*``."""


@dataclass(eq=False, slots=True)
class Watcher:
    """Someone who receives a call without publishing: a WHEP viewer or a call WebSocket client.
    Not a participant (not listed, no joined/left events), but kick, revocation and removal from
    the call end its session just the same."""

    call_cid: str
    caller: Caller
    source: str  # "whep", "websocket"
    disconnect: Disconnect
    rights: frozenset[str] = WATCH_CAPABILITIES
    """The watch capabilities it was admitted with."""


def _no_hold(disconnect: Disconnect) -> Callable[[], None]:
    return lambda: None


@dataclass(frozen=True, slots=True)
class WatchGrant:
    """What :meth:`CallService.authorize_whep` allows: whose media to play, and ``hold``, which
    puts the viewer on the call's roster (so kick and revocation reach it) until the function it
    returns is called. ``hold`` raises :class:`TokenRevokedError` if the token was revoked
    meanwhile."""

    call_cid: str
    participant_id: str
    hold: Callable[[Disconnect], Callable[[], None]] = _no_hold


def _check_id(kind: str, value: str) -> str:
    if not value:
        raise InputError(f"{kind} is empty: give a non-empty id")
    if len(value) > MAX_ID_LENGTH:
        raise InputError(f"{kind} '{value[:40]}…' is longer than {MAX_ID_LENGTH} characters")
    if not ID_PATTERN.match(value):
        raise InputError(
            f"{kind} '{value}' has characters that are not allowed: use letters, digits and "
            "_-!@$%^&*()+=."
        )
    return value


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        elif v is not None:
            out[k] = copy.deepcopy(v)
    return out


def _custom(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    if len(json.dumps(value)) > MAX_CUSTOM_BYTES:
        raise InputError(f"{what} is larger than {MAX_CUSTOM_BYTES} bytes")
    return value


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parse_time(value: Any, what: str) -> datetime | None:
    """A time given inside a free-form object (``set`` of a partial user update)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{what} '{value[:40]}' is not an RFC 3339 time") from None
        return _utc(dt)
    raise InputError(f"{what} must be an RFC 3339 time such as '2026-01-31T12:00:00Z'")


def _settings(override: w.CallSettingsRequest | None) -> dict[str, Any]:
    """The fields a settings request sets, as stored (None means: leave as it is)."""
    return override.model_dump(exclude_none=True) if override is not None else {}


class CallService:
    """Every control-plane operation, with its permission check."""

    def __init__(
        self,
        store: Store,
        bus: ev.EventBus,
        *,
        api_key: str,
        api_secret: str,
        rtmp_base: str,
        http_base: str,
        token_leeway: int = 5,
    ) -> None:
        self.store = store
        self.bus = bus
        self.api_key = api_key
        self.api_secret = api_secret
        self.rtmp_base = rtmp_base.rstrip("/")
        self.http_base = http_base.rstrip("/")
        self.token_leeway = token_leeway
        self.participants: dict[str, dict[str, Participant]] = {}
        self.watchers: dict[str, set[Watcher]] = {}
        self._revoked_before: dict[str, float] = {}  # user id -> cutoff seen by this process
        bus.add_listener(self._on_call_event)
        self.egress: Egress | None = None  # HLS and recording (ingest/egress.py), set by the app

    # --- start-up --------------------------------------------------------------------------

    async def install_builtin_call_types(self) -> None:
        now = utcnow()
        for name, spec in caps.BUILTIN_CALL_TYPES.items():
            if await self.store.get_call_type(name) is None:
                await self.store.put_call_type(
                    CallType(name, spec["grants"], spec["settings"], now, now)
                )

    # --- authentication --------------------------------------------------------------------

    async def authenticate(self, token: str) -> Caller:
        """Verify a token (API, RTMP stream key, WebRTC) and check the user's revocation."""
        claims = verify_token(token, self.api_secret, leeway=self.token_leeway)
        if claims.server:
            return SERVER
        assert claims.user_id is not None
        user = await self.store.get_user(claims.user_id)
        if user is not None:
            if user.deactivated_at is not None:
                raise AuthenticationError(f"user '{user.id}' is deactivated")
            check_revocation(claims, user.revoke_tokens_issued_before)
        return Caller(server=False, user_id=claims.user_id, claims=claims)

    @staticmethod
    def _require_server(caller: Caller, what: str) -> None:
        if not caller.server:
            raise PermissionDeniedError(
                f"{caller.label} may not {what}: this needs a server token (signed with the API "
                "secret, without user_id), which only your backend should hold"
            )

    # --- users -----------------------------------------------------------------------------

    async def upsert_users(self, caller: Caller, body: w.UpdateUsersRequest) -> dict[str, User]:
        self._require_server(caller, "upsert users")
        out: dict[str, User] = {}
        now = utcnow()
        for key, spec in body.users.items():
            uid = _check_id("user id", spec.id or key)
            existing = await self.store.get_user(uid)
            user = existing or User(id=uid, created_at=now)
            user.name = spec.name if spec.name is not None else user.name
            user.role = spec.role or user.role or "user"
            user.image = spec.image if spec.image is not None else user.image
            if "custom" in spec.model_fields_set:
                user.custom = _custom(spec.custom, f"users.{uid}.custom")
            if "revoke_tokens_issued_before" in spec.model_fields_set:
                user.revoke_tokens_issued_before = _utc(spec.revoke_tokens_issued_before)
            user.updated_at = now
            await self.store.put_user(user)
            out[uid] = user
            self._enforce_revocation(user)
        return out

    async def update_users_partial(
        self, caller: Caller, body: w.UpdateUsersPartialRequest
    ) -> dict[str, User]:
        self._require_server(caller, "update users")
        out: dict[str, User] = {}
        now = utcnow()
        for item in body.users:
            uid = item.id
            user = await self.store.get_user(uid)
            if user is None:
                raise NotFoundError(f"user '{uid}' does not exist: create it with upsert users")
            for k, v in item.set.items():
                if k in ("name", "role", "image"):
                    if not isinstance(v, str):
                        raise InputError(f"users[{uid}].set.{k} must be a string")
                    setattr(user, k, v)
                elif k == "revoke_tokens_issued_before":
                    user.revoke_tokens_issued_before = _parse_time(v, f"set.{k}")
                else:
                    user.custom[k] = v
            _custom(user.custom, f"users.{uid}.custom")
            for k in item.unset:
                if k == "revoke_tokens_issued_before":
                    user.revoke_tokens_issued_before = None
                else:
                    user.custom.pop(k, None)
            user.updated_at = now
            await self.store.put_user(user)
            out[uid] = user
            self._enforce_revocation(user)
        return out

    async def _ensure_user(self, user_id: str) -> User:
        user = await self.store.get_user(user_id)
        if user is None:
            now = utcnow()
            user = User(id=_check_id("user id", user_id), created_at=now, updated_at=now)
            await self.store.put_user(user)
        return user

    # --- call types ------------------------------------------------------------------------

    async def get_call_type(self, name: str) -> CallType:
        ct = await self.store.get_call_type(name)
        if ct is None:
            known = ", ".join(t.name for t in await self.store.list_call_types())
            raise NotFoundError(
                f"call type '{name}' does not exist: use one of {known}, or create it with "
                "POST /api/v2/video/calltypes"
            )
        return ct

    async def save_call_type(
        self,
        caller: Caller,
        name: str,
        grants_in: dict[str, list[str]] | None,
        settings: w.CallSettingsRequest | None,
        *,
        create: bool,
    ) -> CallType:
        self._require_server(caller, "change call types")
        if not name:
            raise InputError("call type needs a 'name'")
        if len(name) > MAX_CALL_TYPE_NAME or not CALL_TYPE_PATTERN.match(name):
            raise InputError(
                f"call type name '{name[:80]}' must be lowercase letters, digits, - and _ "
                f"(at most {MAX_CALL_TYPE_NAME})"
            )
        existing = await self.store.get_call_type(name)
        if create and existing is not None:
            raise InputError(f"call type '{name}' already exists: update it with PUT instead")
        if not create and existing is None:
            raise NotFoundError(f"call type '{name}' does not exist: create it with POST first")
        grants: dict[str, list[str]] = dict(existing.grants) if existing else {}
        for role, names in (grants_in or {}).items():
            try:
                grants[role] = [caps.validate_capability(n) for n in names]
            except ValueError as e:
                raise InputError(f"grants.{role}: {e}") from None
        grants.setdefault(caps.ADMIN_ROLE, list(caps.ALL))
        base_settings = existing.settings if existing else {"backstage": {"enabled": False}}
        now = utcnow()
        ct = CallType(
            name,
            grants,
            _deep_merge(base_settings, _settings(settings)),
            existing.created_at if existing else now,
            now,
        )
        await self.store.put_call_type(ct)
        return ct

    async def delete_call_type(self, caller: Caller, name: str) -> None:
        self._require_server(caller, "delete call types")
        await self.get_call_type(name)
        if name in caps.BUILTIN_CALL_TYPES:
            raise InputError(f"call type '{name}' is built in and cannot be deleted")
        if await self.store.count_calls_of_type(name):
            raise InputError(f"call type '{name}' still has calls: it cannot be deleted")
        await self.store.delete_call_type(name)

    # --- calls -----------------------------------------------------------------------------

    async def load_call(self, call_type: str, call_id: str) -> tuple[Call, CallType]:
        ct = await self.get_call_type(call_type)
        call = await self.store.get_call(cid_of(call_type, call_id))
        if call is None:
            raise NotFoundError(
                f"call {call_type}:{call_id} does not exist: create it with "
                f"POST /api/v2/video/call/{call_type}/{call_id}"
            )
        return call, ct

    def effective_settings(self, call: Call, ct: CallType) -> dict[str, Any]:
        return _deep_merge(ct.settings, call.settings_override)

    async def role_in_call(self, caller: Caller, call: Call) -> str | None:
        if caller.server:
            return caps.ADMIN_ROLE
        assert caller.user_id is not None
        if caller.claims is not None and caller.claims.role:
            return caller.claims.role
        member = await self.store.get_member(call.cid, caller.user_id)
        if member is not None:
            return member.role
        user = await self.store.get_user(caller.user_id)
        return user.role if user else "user"

    async def capabilities_of(self, caller: Caller, call: Call, ct: CallType) -> list[str]:
        if caller.server:
            return list(caps.ALL)
        assert caller.user_id is not None
        if (
            caller.claims
            and caller.claims.call_cids is not None
            and call.cid not in caller.claims.call_cids
        ):
            return []
        roles: list[str] = []
        member = await self.store.get_member(call.cid, caller.user_id)
        user = await self.store.get_user(caller.user_id)
        if caller.claims and caller.claims.role:
            roles.append(caller.claims.role)
        if member is not None:
            roles.append(member.role)
        roles.append(user.role if user else "user")
        granted: list[str] = []
        for role in roles:
            for c in ct.grants.get(role, []):
                if c not in granted:
                    granted.append(c)
        return granted

    async def require(self, caller: Caller, call: Call, ct: CallType, capability: str) -> None:
        if caller.server:
            return
        have = await self.capabilities_of(caller, call, ct)
        if capability not in have:
            member = await self.store.get_member(call.cid, caller.user_id or "")
            why = (
                f"their role '{member.role}' in {call.cid} does not grant it"
                if member
                else f"they are not a member of {call.cid} and their app role does not grant it"
            )
            raise PermissionDeniedError(
                f"{caller.label} may not {capability.replace('-', ' ')}: {why} "
                f"(grant '{capability}' to the role in call type '{ct.name}', or add the user "
                "as a member with a role that has it)"
            )

    async def get_call(self, caller: Caller, call_type: str, call_id: str) -> tuple[Call, CallType]:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.READ_CALL)
        return call, ct

    async def get_or_create_call(
        self, caller: Caller, call_type: str, call_id: str, body: w.GetOrCreateCallRequest
    ) -> tuple[Call, CallType, bool]:
        _check_id("call id", call_id)
        ct = await self.get_call_type(call_type)
        cid = cid_of(call_type, call_id)
        data = body.data
        existing = await self.store.get_call(cid)
        if existing is not None:
            await self.require(caller, existing, ct, caps.READ_CALL)
            return existing, ct, False
        if caller.server:
            creator_id = data.created_by_id
            if not creator_id:
                raise InputError(
                    "data.created_by_id is required when a server token creates a call: "
                    "name the user who owns the call"
                )
        else:
            assert caller.user_id is not None
            creator_id = caller.user_id
            user = await self.store.get_user(caller.user_id)
            role = user.role if user else "user"
            if caps.CREATE_CALL not in ct.grants.get(role, []) and role != caps.ADMIN_ROLE:
                raise PermissionDeniedError(
                    f"{caller.label} may not create calls of type '{ct.name}': their role "
                    f"'{role}' lacks 'create-call'"
                )
        await self._ensure_user(creator_id)
        now = utcnow()
        call = Call(
            cid=cid,
            type=call_type,
            id=call_id,
            created_by_id=creator_id,
            custom=_custom(data.custom, "data.custom"),
            settings_override=_settings(data.settings_override),
            starts_at=_utc(data.starts_at),
            created_at=now,
            updated_at=now,
        )
        call.backstage = bool(self.effective_settings(call, ct).get("backstage", {}).get("enabled"))
        if not await self.store.insert_call(call):
            # Someone created it at the same moment: that is still "get".
            got = await self.store.get_call(cid)
            assert got is not None
            return got, ct, False
        await self._apply_members(call, ct, data.members, [], emit=False)
        self.bus.emit(ev.CALL_CREATED, cid, call_id=call_id, call_type=call_type)
        log.info("call %s created by %s", cid, caller.label)
        return call, ct, True

    async def update_call(
        self, caller: Caller, call_type: str, call_id: str, body: w.UpdateCallRequest
    ) -> tuple[Call, CallType]:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.UPDATE_CALL)
        if "custom" in body.model_fields_set:
            call.custom = _custom(body.custom, "custom")
        if body.settings_override is not None:
            call.settings_override = _deep_merge(
                call.settings_override, _settings(body.settings_override)
            )
        if "starts_at" in body.model_fields_set:
            call.starts_at = _utc(body.starts_at)
        call.updated_at = utcnow()
        await self.store.update_call(call)
        self.bus.emit(ev.CALL_UPDATED, call.cid)
        return call, ct

    # --- members ---------------------------------------------------------------------------

    async def update_members(
        self, caller: Caller, call_type: str, call_id: str, body: w.UpdateCallMembersRequest
    ) -> list[Member]:
        call, ct = await self.load_call(call_type, call_id)
        update, remove = body.update_members, body.remove_members
        if update:
            await self.require(caller, call, ct, caps.UPDATE_CALL_MEMBER)
        if remove:
            await self.require(caller, call, ct, caps.REMOVE_CALL_MEMBER)
        if not update and not remove:
            raise InputError("give update_members and/or remove_members")
        return await self._apply_members(call, ct, update, remove, emit=True)

    async def _apply_members(
        self,
        call: Call,
        ct: CallType,
        update: list[w.MemberRequest],
        remove: list[str],
        *,
        emit: bool,
    ) -> list[Member]:
        if len(update) + len(remove) > MAX_MEMBERS_PER_REQUEST:
            raise InputError(f"at most {MAX_MEMBERS_PER_REQUEST} members per request")
        now = utcnow()
        changed: list[Member] = []
        default_role = caps.DEFAULT_MEMBER_ROLE.get(ct.name, "user")
        for spec in update:
            uid = _check_id("member user_id", spec.user_id)
            existing = await self.store.get_member(call.cid, uid)
            role = spec.role or (existing.role if existing else default_role)
            if role not in ct.grants:
                raise InputError(
                    f"role '{role}' is not defined in call type '{ct.name}': use one of "
                    + ", ".join(sorted(ct.grants))
                )
            await self._ensure_user(uid)
            m = Member(
                call.cid,
                uid,
                role,
                _custom(spec.custom, "member custom")
                if "custom" in spec.model_fields_set
                else (existing.custom if existing else {}),
                existing.created_at if existing else now,
                now,
            )
            await self.store.put_member(m)
            changed.append(m)
            if emit:
                self.bus.emit(
                    ev.CALL_MEMBER_UPDATED if existing else ev.CALL_MEMBER_ADDED,
                    call.cid,
                    members=[{"user_id": uid, "role": role}],
                )
            if existing and existing.role != role:
                await self._reconsider_participants(call, ct, uid, f"role changed to '{role}'")
        for uid in remove:
            if await self.store.delete_member(call.cid, uid):
                if emit:
                    self.bus.emit(ev.CALL_MEMBER_REMOVED, call.cid, members=[uid])
                await self._reconsider_participants(call, ct, uid, "removed from the call")
        return changed

    async def _reconsider_participants(
        self, call: Call, ct: CallType, user_id: str, why: str
    ) -> None:
        """A member lost their role or was removed: publishers who may no longer send are
        disconnected; watchers of a removed member are cut, and those whose role no longer
        grants what they were admitted with (join-call, join-backstage)."""
        caller = Caller(server=False, user_id=user_id)
        have = await self.capabilities_of(caller, call, ct)
        for p in list(self.participants.get(call.cid, {}).values()):
            if p.user_id != user_id:  # a publisher of any protocol (RTMP, WHIP)
                continue
            if caps.SEND_AUDIO not in have and caps.SEND_VIDEO not in have:
                self._disconnect(p, f"user '{user_id}' was {why}")
        watchers = [
            watcher
            for watcher in self.watchers.get(call.cid, ())
            if watcher.caller.user_id == user_id
        ]
        if not watchers:
            return
        removed = await self.store.get_member(call.cid, user_id) is None
        for watcher in watchers:
            rights = WATCH_CAPABILITIES & set(await self.capabilities_of(watcher.caller, call, ct))
            if removed or not watcher.rights <= rights:
                self._cut(watcher, CUT_REMOVED, f"user '{user_id}' was {why}")

    # --- live / backstage ------------------------------------------------------------------

    async def _current_session(self, call: Call, now: datetime) -> CallSession:
        session = await self.store.get_session(call.current_session_id)
        if session is None or session.ended_at is not None:
            session = CallSession(id=str(uuid.uuid4()), call_cid=call.cid, started_at=now)
            call.current_session_id = session.id
            await self.store.put_session(session)
            await self.store.update_call(call)
        return session

    async def go_live(
        self, caller: Caller, call_type: str, call_id: str, body: w.GoLiveRequest
    ) -> tuple[Call, CallType]:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.UPDATE_CALL)
        if body.start_hls:
            await self.require(caller, call, ct, caps.START_BROADCAST)
        if body.start_recording:
            await self.require(caller, call, ct, caps.START_RECORD)
        now = utcnow()
        session = await self._current_session(call, now)
        was_backstage = call.backstage
        call.backstage = False
        call.updated_at = now
        if body.start_hls:
            call.hls = True
        if body.start_recording:
            call.recording = True
        await self.store.update_call(call)
        if was_backstage or session.live_started_at is None:
            session.live_started_at = now
            session.live_ended_at = None
            await self.store.put_session(session)
            self.bus.emit(ev.CALL_LIVE_STARTED, call.cid, session_id=session.id)
        # The egress fires call.hls_broadcasting_started / call.recording_started when media flows.
        if self.egress is not None and body.start_hls:
            self.egress.start_hls(call.cid)
        if self.egress is not None and body.start_recording:
            self.egress.start_recording(call.cid, session.id)
        log.info("call %s is live (by %s)", call.cid, caller.label)
        return call, ct

    async def stop_live(
        self, caller: Caller, call_type: str, call_id: str, body: w.StopLiveRequest
    ) -> tuple[Call, CallType]:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.UPDATE_CALL)
        now = utcnow()
        call.backstage = True
        call.updated_at = now
        if not body.continue_hls and call.hls:
            call.hls = False
            if self.egress is not None:
                await self.egress.stop_hls(call.cid)  # emits call.hls_broadcasting_stopped
        if not body.continue_recording and call.recording:
            call.recording = False
            if self.egress is not None:
                await self.egress.stop_recording(call.cid)  # emits call.recording_stopped
        await self.store.update_call(call)
        session = await self.store.get_session(call.current_session_id)
        if session is not None and session.live_ended_at is None:
            session.live_ended_at = now
            await self.store.put_session(session)
        # Viewers without join-backstage lose the call again; the SFU listens for this event.
        self.bus.emit(ev.CALL_UPDATED, call.cid, backstage=True)
        return call, ct

    async def set_intent(
        self, caller: Caller, call_type: str, call_id: str, what: str, on: bool
    ) -> tuple[Call, CallType]:
        """Start/stop HLS broadcasting or recording (the media sinks follow these flags)."""
        call, ct = await self.load_call(call_type, call_id)
        capability = {
            ("hls", True): caps.START_BROADCAST,
            ("hls", False): caps.STOP_BROADCAST,
            ("recording", True): caps.START_RECORD,
            ("recording", False): caps.STOP_RECORD,
        }[(what, on)]
        await self.require(caller, call, ct, capability)
        was = getattr(call, what)
        if was != on:
            setattr(call, what, on)
            call.updated_at = utcnow()
            await self.store.update_call(call)
        # The egress fires the started/stopped events when it really starts/stops.
        egress = self.egress
        if egress is not None and on:  # idempotent: also resumes after a restart
            if what == "hls":
                egress.start_hls(call.cid)
            else:
                egress.start_recording(call.cid, call.current_session_id)
        elif egress is not None and was:
            await (egress.stop_hls(call.cid) if what == "hls" else egress.stop_recording(call.cid))
        return call, ct

    async def delete_recording(
        self, caller: Caller, call_type: str, call_id: str, session_id: str, filename: str
    ) -> None:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.STOP_RECORD)
        if self.egress is None or not await self.egress.delete_recording(
            call.cid, session_id, filename
        ):
            raise NotFoundError(
                f"no recording '{filename[:80]}' of session '{session_id[:40]}' in {call.cid}: "
                "list them with GET .../recordings"
            )

    async def end_call(self, caller: Caller, call_type: str, call_id: str) -> None:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.END_CALL)
        now = utcnow()
        call.ended_at = now
        call.backstage = bool(self.effective_settings(call, ct).get("backstage", {}).get("enabled"))
        call.updated_at = now
        session = await self.store.get_session(call.current_session_id)
        if session is not None and session.ended_at is None:
            session.ended_at = now
            if session.live_started_at and not session.live_ended_at:
                session.live_ended_at = now
            await self.store.put_session(session)
        stop_hls, stop_recording = call.hls, call.recording
        call.hls = call.recording = False  # an ended call broadcasts and records no more
        await self.store.update_call(call)
        if self.egress is not None and stop_hls:
            await self.egress.stop_hls(call.cid)
        if self.egress is not None and stop_recording:
            await self.egress.stop_recording(call.cid)  # the file is closed: recording_ready
        for p in list(self.participants.get(call.cid, {}).values()):
            self._disconnect(p, f"call {call.cid} ended")
        self.bus.emit(ev.CALL_ENDED, call.cid)

    # --- events ----------------------------------------------------------------------------

    async def send_event(
        self, caller: Caller, call_type: str, call_id: str, body: w.SendCallEventRequest
    ) -> dict[str, Any]:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.SEND_EVENT)
        user_id = caller.user_id or body.user_id
        if caller.server and not user_id:
            raise InputError("user_id is required when a server token sends an event")
        custom = _custom(body.custom, "custom")
        return self.bus.emit(ev.CUSTOM, call.cid, custom=custom, user={"id": user_id})

    async def send_reaction(
        self, caller: Caller, call_type: str, call_id: str, body: w.SendReactionRequest
    ) -> dict[str, Any]:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.CREATE_REACTION)
        user_id = caller.user_id or body.user_id
        if caller.server and not user_id:
            raise InputError("user_id is required when a server token sends a reaction")
        reaction = {
            "type": body.type,
            "user": {"id": user_id},
            "emoji_code": body.emoji_code,
            "custom": _custom(body.custom, "custom"),
        }
        self.bus.emit(ev.REACTION_NEW, call.cid, reaction=reaction)
        return reaction

    # --- participants ----------------------------------------------------------------------

    def list_participants(self, cid: str) -> list[Participant]:
        return sorted(self.participants.get(cid, {}).values(), key=lambda p: p.joined_at)

    async def join(
        self,
        call: Call,
        user_id: str,
        *,
        role: str,
        source: str,
        token_issued_at: int | None = None,
        disconnect: Callable[[str], None] | None = None,
    ) -> Participant:
        now = utcnow()
        session = await self._current_session(call, now)
        p = Participant(
            call_cid=call.cid,
            user_id=user_id,
            session_id=secrets.token_hex(12),
            role=role,
            joined_at=now,
            source=source,
            token_issued_at=token_issued_at,
            disconnect=disconnect,
        )
        self.participants.setdefault(call.cid, {})[p.session_id] = p
        self.bus.emit(
            ev.PARTICIPANT_JOINED,
            call.cid,
            session_id=session.id,
            participant=self.participant_json(p),
        )
        return p

    def leave(self, p: Participant) -> None:
        by_call = self.participants.get(p.call_cid, {})
        if by_call.pop(p.session_id, None) is None:
            return
        if not by_call:
            self.participants.pop(p.call_cid, None)
        self.bus.emit(
            ev.PARTICIPANT_LEFT,
            p.call_cid,
            participant=self.participant_json(p),
        )

    def participant_json(self, p: Participant) -> dict[str, Any]:
        return {
            "user": {"id": p.user_id},
            "user_session_id": p.session_id,
            "role": p.role,
            "joined_at": p.joined_at,
            "source": p.source,
        }

    def _disconnect(self, p: Participant, reason: str) -> None:
        if p.disconnect is not None:
            log.info("disconnecting %s from %s: %s", p.user_id, p.call_cid, reason)
            p.disconnect(reason)

    def add_watcher(
        self,
        call_cid: str,
        caller: Caller,
        source: str,
        disconnect: Disconnect,
        rights: frozenset[str] = WATCH_CAPABILITIES,
    ) -> Watcher:
        """Put a watcher on the call's roster until :meth:`remove_watcher`. Raises
        :class:`TokenRevokedError` if its token was revoked after it was verified (a revocation
        that ran while the watcher was being admitted)."""
        claims = caller.claims
        if not caller.server and claims is not None and caller.user_id is not None:
            cutoff = self._revoked_before.get(caller.user_id)
            if cutoff is not None and (claims.issued_at is None or claims.issued_at < cutoff):
                raise TokenRevokedError(
                    f"token of user '{caller.user_id}' was revoked: create a new one"
                )
        watcher = Watcher(call_cid, caller, source, disconnect, rights)
        self.watchers.setdefault(call_cid, set()).add(watcher)
        return watcher

    def remove_watcher(self, watcher: Watcher) -> None:
        """Take a watcher off the roster (its session ended); again does nothing."""
        by_call = self.watchers.get(watcher.call_cid)
        if by_call is None:
            return
        by_call.discard(watcher)
        if not by_call:
            del self.watchers[watcher.call_cid]

    def _on_call_event(self, event: dict[str, Any]) -> None:
        """Back to backstage: WHEP viewers without join-backstage lose the call (a call
        WebSocket client stays connected and loses its subscriptions, see signaling.py)."""
        if event.get("type") != ev.CALL_UPDATED or event.get("backstage") is not True:
            return
        cid = event.get("call_cid")
        for watcher in list(self.watchers.get(cid, ()) if isinstance(cid, str) else ()):
            if watcher.source == "whep" and caps.JOIN_BACKSTAGE not in watcher.rights:
                self._cut(watcher, CUT_BACKSTAGE, f"{cid} went back to backstage")

    def _cut(self, watcher: Watcher, cause: str, reason: str) -> None:
        """End a watcher's session, once."""
        self.remove_watcher(watcher)
        log.info(
            "ending the %s session of %s in %s: %s",
            watcher.source,
            watcher.caller.label,
            watcher.call_cid,
            reason,
        )
        try:
            watcher.disconnect(cause, reason)
        except Exception:  # one front end's failure must not stop a kick or revocation
            log.exception("ending the %s session of %s", watcher.source, watcher.caller.label)

    async def kick(
        self, caller: Caller, call_type: str, call_id: str, body: w.KickUserRequest
    ) -> int:
        call, ct = await self.load_call(call_type, call_id)
        await self.require(caller, call, ct, caps.KICK_USER)
        user_id = body.user_id
        if not user_id:
            raise InputError("user_id is required: name the user to remove from the call")
        kicked = 0
        for p in list(self.participants.get(call.cid, {}).values()):
            if p.user_id == user_id:
                self._disconnect(p, f"kicked by {caller.label}")
                kicked += 1
        for watcher in list(self.watchers.get(call.cid, ())):
            if watcher.caller.user_id == user_id:
                self._cut(watcher, CUT_KICKED, f"kicked from {call.cid} by {caller.label}")
        self.bus.emit(ev.KICKED_USER, call.cid, user={"id": user_id})
        return kicked

    def _enforce_revocation(self, user: User) -> None:
        """Revoking a user's tokens ends the sessions that those tokens opened: publishers and
        watchers (WHEP, the call WebSocket), in every call."""
        cutoff = user.revoke_tokens_issued_before
        if cutoff is None:
            self._revoked_before.pop(user.id, None)
            return
        self._revoked_before[user.id] = cutoff.timestamp()
        for by_call in list(self.participants.values()):
            for p in list(by_call.values()):
                if p.user_id == user.id and (
                    p.token_issued_at is None or p.token_issued_at < cutoff.timestamp()
                ):
                    self._disconnect(p, "the user's tokens were revoked")
        for watchers in list(self.watchers.values()):
            for watcher in list(watchers):
                issued = (
                    watcher.caller.claims.issued_at if watcher.caller.claims is not None else None
                )
                if watcher.caller.user_id == user.id and (
                    issued is None or issued < cutoff.timestamp()
                ):
                    self._cut(watcher, CUT_REVOKED, f"the tokens of user '{user.id}' were revoked")

    # --- RTMP ------------------------------------------------------------------------------

    def parse_rtmp_app(self, app: str) -> tuple[str, str]:
        """``<api_key>.<call_type>.<call_id>`` → (call_type, call_id), with errors that help."""
        app = app.strip("/").split("?", 1)[0]
        parts = app.split(".", 2)
        if len(parts) != 3 or not all(parts):
            raise NotFoundError(
                f"RTMP path '{app}' does not name a call: use the address from "
                "call.ingress.rtmp.address (rtmp://host:port/<api_key>.<call_type>.<call_id>)"
            )
        key, call_type, call_id = parts
        if key != self.api_key:
            raise NotFoundError(
                f"RTMP path names API key '{key}', but this server's key is '{self.api_key}': "
                "copy the address from call.ingress.rtmp.address"
            )
        return call_type, call_id

    async def authorize_publish(
        self, app: str, stream_key: str
    ) -> tuple[Caller, Call, CallType, str]:
        """RTMP: who may publish where (the app path names the call, the stream key is the
        user token); raises an IngestError whose message is the refusal."""
        call_type, call_id = self.parse_rtmp_app(app)
        return await self.authorize_publisher(call_type, call_id, stream_key, "stream key")

    async def authorize_publisher(
        self, call_type: str, call_id: str, token: str, credential: str = "token"
    ) -> tuple[Caller, Call, CallType, str]:
        """Who may publish where, for every front end once it has parsed its request (RTMP: app
        path and stream key; WHIP: URL and bearer token): the same rules in the same words.
        ``credential`` names the token as the client sent it. Raises an IngestError whose
        message is the refusal."""
        try:
            caller = await self.authenticate(token)
        except AuthenticationError as e:
            raise type(e)(f"{credential} refused: {e.message}") from None
        if caller.server:
            raise PermissionDeniedError(
                f"{credential} is a server token: use a user token of a host "
                "(ingest token <user_id>) so the stream has a participant"
            )
        call, ct = await self.load_call(call_type, call_id)
        have = await self.capabilities_of(caller, call, ct)
        if caps.SEND_AUDIO not in have and caps.SEND_VIDEO not in have:
            member = await self.store.get_member(call.cid, caller.user_id or "")
            if member is None:
                raise PermissionDeniedError(
                    f"user '{caller.user_id}' is not a member of {call.cid} and may not publish: "
                    "add them as a member with role 'host'"
                )
            raise PermissionDeniedError(
                f"user '{caller.user_id}' has role '{member.role}' in {call.cid}, which may not "
                "send audio or video: give them role 'host'"
            )
        if call.backstage and caps.JOIN_BACKSTAGE not in have:
            raise PermissionDeniedError(
                f"{call.cid} is in backstage and user '{caller.user_id}' may not join backstage: "
                "go live first, or give them a role with 'join-backstage'"
            )
        role = await self.role_in_call(caller, call) or "user"
        log.info(
            "publish authorized: user %s into %s (%s %s)",
            caller.user_id,
            call.cid,
            credential,
            redact(token),
        )
        return caller, call, ct, role

    # --- watching (WebRTC viewers) ----------------------------------------------------------

    async def authorize_watch(self, caller: Caller, call: Call, ct: CallType) -> None:
        """May this caller receive the call's media now? Backstage rules apply."""
        if caller.server:
            return
        have = await self.capabilities_of(caller, call, ct)
        if caps.JOIN_CALL not in have and caps.JOIN_BACKSTAGE not in have:
            raise PermissionDeniedError(
                f"{caller.label} may not join {call.cid}: their role lacks 'join-call'"
            )
        if call.backstage and caps.JOIN_BACKSTAGE not in have:
            raise PermissionDeniedError(
                f"{call.cid} is not live yet: it is in backstage, where only hosts may watch; "
                "wait for go_live"
            )

    async def authorize_whep(
        self, token: str, call_type: str, call_id: str, user_id: str
    ) -> WatchGrant:
        """WHEP: the call and participant session of user_id's live publish, if allowed, and
        how to hold the viewer on the roster (kick and revocation end its session)."""
        caller = await self.authenticate(token)
        call, ct = await self.load_call(call_type, call_id)
        await self.authorize_watch(caller, call, ct)
        live = [p for p in self.list_participants(call.cid) if p.user_id == user_id]
        if not live:
            raise NotFoundError(
                f"user '{user_id}' is not publishing in {call.cid} right now: start the RTMP "
                "stream first (participants: GET .../participants)"
            )
        rights = WATCH_CAPABILITIES
        if not caller.server:
            rights = WATCH_CAPABILITIES & set(await self.capabilities_of(caller, call, ct))

        def hold(disconnect: Disconnect) -> Callable[[], None]:
            watcher = self.add_watcher(call.cid, caller, "whep", disconnect, rights)
            return lambda: self.remove_watcher(watcher)

        return WatchGrant(call.cid, live[-1].session_id, hold)

    # --- addresses -------------------------------------------------------------------------

    def rtmp_address(self, call: Call) -> str:
        return f"{self.rtmp_base}/{self.api_key}.{call.type}.{call.id}"

    def whip_address(self, call: Call) -> str:
        return f"{self.http_base}/whip/{call.type}/{call.id}"
