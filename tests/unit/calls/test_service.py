"""The call service's rules, on a SQLite store in a temp dir (no network)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest.calls import wire as w
from ingest.calls.events import EventBus
from ingest.calls.service import SERVER, CallService
from ingest.calls.tokens import create_server_token, create_token
from ingest.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from ingest.store.db import Store

KEY, SECRET = "k1", "x" * 64


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[CallService]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    service = CallService(
        store,
        EventBus(),
        api_key=KEY,
        api_secret=SECRET,
        rtmp_base="rtmp://h:1935",
        http_base="http://h",
    )
    await service.install_builtin_call_types()
    await service.upsert_users(
        SERVER, w.UpdateUsersRequest(users={u: w.UserRequest(id=u) for u in ("host", "viewer")})
    )
    await service.upsert_users(
        SERVER, w.UpdateUsersRequest(users={"admin1": w.UserRequest(id="admin1", role="admin")})
    )
    await service.get_or_create_call(SERVER, "livestream", "show", create("host", host="host"))
    yield service
    await store.close()


def create(creator: str, host: str | None = None) -> w.GetOrCreateCallRequest:
    hosts = [w.MemberRequest(user_id=host, role="host")] if host else []
    return w.GetOrCreateCallRequest(data=w.CallRequest(created_by_id=creator, members=hosts))


def members(*pairs: tuple[str, str]) -> w.UpdateCallMembersRequest:
    return w.UpdateCallMembersRequest(
        update_members=[w.MemberRequest(user_id=u, role=r) for u, r in pairs]
    )


def app_path(call_id: str = "show", call_type: str = "livestream", key: str = KEY) -> str:
    return f"{key}.{call_type}.{call_id}"


async def test_rtmp_app_path_errors(svc: CallService) -> None:
    with pytest.raises(NotFoundError, match="does not name a call"):
        svc.parse_rtmp_app("live")
    with pytest.raises(NotFoundError, match="this server's key is 'k1'"):
        svc.parse_rtmp_app(app_path(key="other"))
    assert svc.parse_rtmp_app(app_path() + "?x=1") == ("livestream", "show")
    assert svc.parse_rtmp_app("/k1.livestream.a.b") == ("livestream", "a.b")  # ids may hold dots


async def test_host_may_publish_in_backstage(svc: CallService) -> None:
    caller, call, _, role = await svc.authorize_publish(app_path(), create_token(SECRET, "host"))
    assert (caller.user_id, call.cid, role, call.backstage) == (
        "host",
        "livestream:show",
        "host",
        True,
    )


async def test_viewer_and_server_tokens_may_not_publish(svc: CallService) -> None:
    with pytest.raises(PermissionDeniedError, match="not a member of livestream:show"):
        await svc.authorize_publish(app_path(), create_token(SECRET, "viewer"))
    with pytest.raises(PermissionDeniedError, match="server token"):
        await svc.authorize_publish(app_path(), create_server_token(SECRET))
    with pytest.raises(AuthenticationError, match="stream key refused"):
        await svc.authorize_publish(app_path(), create_token("y" * 64, "host"))
    with pytest.raises(NotFoundError, match="livestream:nope does not exist"):
        await svc.authorize_publish(app_path("nope"), create_token(SECRET, "host"))


async def test_member_role_without_send_capability(svc: CallService) -> None:
    await svc.update_members(SERVER, "livestream", "show", members(("viewer", "user")))
    with pytest.raises(PermissionDeniedError, match="has role 'user' in livestream:show"):
        await svc.authorize_publish(app_path(), create_token(SECRET, "viewer"))


async def test_backstage_blocks_roles_without_join_backstage(svc: CallService) -> None:
    await svc.save_call_type(
        SERVER,
        "stage",
        {"performer": ["send-video"]},
        w.CallSettingsRequest(backstage=w.BackstageSettingsRequest(enabled=True)),
        create=True,
    )
    await svc.get_or_create_call(
        SERVER,
        "stage",
        "g",
        w.GetOrCreateCallRequest(
            data=w.CallRequest(
                created_by_id="host",
                members=[w.MemberRequest(user_id="viewer", role="performer")],
            )
        ),
    )
    token = create_token(SECRET, "viewer")
    with pytest.raises(PermissionDeniedError, match="in backstage"):
        await svc.authorize_publish(app_path("g", "stage"), token)
    await svc.go_live(SERVER, "stage", "g", w.GoLiveRequest())
    await svc.authorize_publish(app_path("g", "stage"), token)


async def test_watch_rules(svc: CallService) -> None:
    call, ct = await svc.load_call("livestream", "show")
    viewer = await svc.authenticate(create_token(SECRET, "viewer"))
    with pytest.raises(PermissionDeniedError, match="not live yet"):
        await svc.authorize_watch(viewer, call, ct)
    await svc.authorize_watch(await svc.authenticate(create_token(SECRET, "host")), call, ct)
    await svc.go_live(SERVER, "livestream", "show", w.GoLiveRequest())
    call, ct = await svc.load_call("livestream", "show")
    await svc.authorize_watch(viewer, call, ct)


async def test_app_admin_has_every_capability(svc: CallService) -> None:
    call, ct = await svc.load_call("livestream", "show")
    admin = await svc.authenticate(create_token(SECRET, "admin1"))
    assert "update-call" in await svc.capabilities_of(admin, call, ct)


async def test_kick_revoke_and_removal_disconnect_publishers(svc: CallService) -> None:
    call, _ = await svc.load_call("livestream", "show")
    reasons: list[str] = []
    for _ in range(3):
        p = await svc.join(
            call, "host", role="host", source="rtmp", token_issued_at=1, disconnect=reasons.append
        )
    assert len(svc.list_participants(call.cid)) == 3
    await svc.kick(SERVER, "livestream", "show", w.KickUserRequest(user_id="host"))
    assert len(reasons) == 3
    assert "kicked" in reasons[0]
    reasons.clear()
    await svc.update_users_partial(
        SERVER,
        w.UpdateUsersPartialRequest(
            users=[
                w.UserPartialUpdate(
                    id="host", set={"revoke_tokens_issued_before": "2030-01-01T00:00:00Z"}
                )
            ]
        ),
    )
    assert len(reasons) == 3
    assert "revoked" in reasons[0]
    reasons.clear()
    await svc.update_members(
        SERVER, "livestream", "show", w.UpdateCallMembersRequest(remove_members=["host"])
    )
    assert len(reasons) == 3
    assert "removed" in reasons[0]
    svc.leave(p)
    assert len(svc.list_participants(call.cid)) == 2


async def test_user_tokens_are_refused_for_admin_endpoints(svc: CallService) -> None:
    host = await svc.authenticate(create_token(SECRET, "host"))
    with pytest.raises(PermissionDeniedError, match="needs a server token"):
        await svc.upsert_users(host, w.UpdateUsersRequest(users={"x": w.UserRequest(id="x")}))


async def test_bad_ids_are_explained(svc: CallService) -> None:
    from ingest.errors import InputError

    with pytest.raises(InputError, match="not allowed"):
        await svc.get_or_create_call(SERVER, "livestream", "bad id", create("host"))
    with pytest.raises(InputError, match="created_by_id is required"):
        await svc.get_or_create_call(SERVER, "livestream", "new", w.GetOrCreateCallRequest())
    with pytest.raises(InputError, match="role 'star' is not defined"):
        await svc.update_members(SERVER, "livestream", "show", members(("v", "star")))


async def test_limits_of_ids_custom_data_and_member_batches(svc: CallService) -> None:
    from ingest.calls import service as S
    from ingest.errors import InputError

    with pytest.raises(InputError, match=f"longer than {S.MAX_ID_LENGTH}"):
        await svc.get_or_create_call(
            SERVER, "livestream", "a" * (S.MAX_ID_LENGTH + 1), create("host")
        )
    big = {"blob": "x" * S.MAX_CUSTOM_BYTES}
    with pytest.raises(InputError, match=f"larger than {S.MAX_CUSTOM_BYTES} bytes"):
        await svc.get_or_create_call(
            SERVER,
            "livestream",
            "c1",
            w.GetOrCreateCallRequest(data=w.CallRequest(created_by_id="host", custom=big)),
        )
    half = w.MAX_MEMBERS_PER_REQUEST // 2 + 1  # each list is within its own limit, not the sum
    both = w.UpdateCallMembersRequest(
        update_members=[w.MemberRequest(user_id=f"u{i}") for i in range(half)],
        remove_members=[f"r{i}" for i in range(half)],
    )
    with pytest.raises(InputError, match=f"at most {w.MAX_MEMBERS_PER_REQUEST} members"):
        await svc.update_members(SERVER, "livestream", "show", both)
    with pytest.raises(InputError, match=f"at most {S.MAX_CALL_TYPE_NAME}"):
        await svc.save_call_type(SERVER, "t" * (S.MAX_CALL_TYPE_NAME + 1), None, None, create=True)


async def test_reconnect_timeline_memory_is_bounded(svc: CallService) -> None:
    from ingest.ingress import TIMELINE_MEMORY, RtmpIngress
    from ingest.media.hub import Hub

    ingress = RtmpIngress(svc, Hub())
    for i in range(TIMELINE_MEMORY + 5):
        ingress.remember_end(("livestream:show", f"u{i}"), i)
    assert len(ingress._ends) == TIMELINE_MEMORY
    assert ("livestream:show", "u0") not in ingress._ends
    assert ingress._ends[("livestream:show", f"u{TIMELINE_MEMORY + 4}")] == TIMELINE_MEMORY + 4
