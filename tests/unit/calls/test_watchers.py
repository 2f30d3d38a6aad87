"""Watchers (WHEP viewers, call WebSocket clients) on the call's roster: kick, revocation and
removal from the call end their sessions too, with a cause and a reason."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.calls import wire as w
from ingest.calls.events import EventBus
from ingest.calls.service import (
    CUT_BACKSTAGE,
    CUT_KICKED,
    CUT_REMOVED,
    CUT_REVOKED,
    SERVER,
    WATCH_CAPABILITIES,
    CallService,
)
from ingest.calls.tokens import create_token
from ingest.errors import TokenRevokedError
from ingest.store.db import Store

KEY, SECRET = "k1", "x" * 64
CID = "livestream:show"
ISSUED = time.time() - 3600  # the watchers' tokens: an hour old, valid for a day


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[CallService]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    service = CallService(
        store,
        EventBus(),
        api_key=KEY,
        api_secret=SECRET,
        rtmp_base="rtmp://h",
        http_base="http://h",
    )
    await service.install_builtin_call_types()
    users = {u: w.UserRequest(id=u) for u in ("host", "viewer", "other")}
    await service.upsert_users(SERVER, w.UpdateUsersRequest(users=users))
    hosts = [w.MemberRequest(user_id="host", role="host")]
    request = w.GetOrCreateCallRequest(data=w.CallRequest(created_by_id="host", members=hosts))
    await service.get_or_create_call(SERVER, "livestream", "show", request)
    await service.go_live(SERVER, "livestream", "show", w.GoLiveRequest())
    yield service
    await store.close()


class Cuts:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def __call__(self, cause: str, reason: str) -> None:
        self.got.append((cause, reason))


async def watch(svc: CallService, user: str, source: str = "websocket") -> Cuts:
    caller = await svc.authenticate(create_token(SECRET, user, now=ISSUED, ttl=24 * 3600))
    cuts = Cuts()
    svc.add_watcher(CID, caller, source, cuts)
    return cuts


def revoke(user: str, when: str | None = None) -> w.UpdateUsersPartialRequest:
    when = when or iso(ISSUED + 600)
    change = w.UserPartialUpdate(id=user, set={"revoke_tokens_issued_before": when})
    return w.UpdateUsersPartialRequest(users=[change])


async def test_kick_cuts_every_watcher_of_that_user_only(svc: CallService) -> None:
    ws, whep, other = await watch(svc, "viewer"), await watch(svc, "viewer", "whep"), Cuts()
    svc.add_watcher(CID, await svc.authenticate(create_token(SECRET, "other")), "whep", other)
    await svc.kick(SERVER, "livestream", "show", w.KickUserRequest(user_id="viewer"))
    for cuts in (ws, whep):
        assert len(cuts.got) == 1
        assert cuts.got[0][0] == CUT_KICKED
        assert "kicked" in cuts.got[0][1]
    assert other.got == []
    assert [x.caller.user_id for x in svc.watchers[CID]] == ["other"]
    # once cut, a watcher is off the roster: a second kick does not reach it again
    await svc.kick(SERVER, "livestream", "show", w.KickUserRequest(user_id="viewer"))
    assert len(ws.got) == 1


async def test_revocation_cuts_watchers_whose_tokens_it_covers(svc: CallService) -> None:
    old = await watch(svc, "viewer")
    await svc.update_users_partial(SERVER, revoke("viewer", iso(ISSUED - 600)))  # before it
    assert old.got == []
    await svc.update_users_partial(SERVER, revoke("viewer"))
    assert old.got == [(CUT_REVOKED, "the tokens of user 'viewer' were revoked")]
    assert CID not in svc.watchers


async def test_a_watcher_admitted_during_a_revocation_is_refused(svc: CallService) -> None:
    """The token was checked before the revocation ran: the roster still refuses it."""
    caller = await svc.authenticate(create_token(SECRET, "viewer", now=ISSUED, ttl=24 * 3600))
    await svc.update_users_partial(SERVER, revoke("viewer"))
    with pytest.raises(TokenRevokedError, match="revoked"):
        svc.add_watcher(CID, caller, "whep", Cuts())
    fresh = await svc.authenticate(create_token(SECRET, "viewer"))
    svc.add_watcher(CID, fresh, "whep", Cuts())  # a token issued after the cutoff is fine


async def test_removal_from_the_call_cuts_its_watchers(svc: CallService) -> None:
    host = await watch(svc, "host")
    viewer = await watch(svc, "viewer")
    await svc.update_members(
        SERVER, "livestream", "show", w.UpdateCallMembersRequest(remove_members=["host"])
    )
    assert host.got[0][0] == CUT_REMOVED
    assert "removed from the call" in host.got[0][1]
    assert viewer.got == []


async def test_a_role_change_cuts_only_watchers_that_lose_a_right(svc: CallService) -> None:
    host = Cuts()  # a host admitted with join-backstage loses it: cut
    caller = await svc.authenticate(create_token(SECRET, "host"))
    svc.add_watcher(CID, caller, "websocket", host, WATCH_CAPABILITIES)
    promoted = Cuts()  # a viewer admitted with join-call only gains rights: stays
    viewer = await svc.authenticate(create_token(SECRET, "viewer"))
    svc.add_watcher(CID, viewer, "websocket", promoted, frozenset({"join-call"}))
    request = w.UpdateCallMembersRequest(
        update_members=[
            w.MemberRequest(user_id="host", role="user"),
            w.MemberRequest(user_id="viewer", role="host"),
        ]
    )
    await svc.update_members(SERVER, "livestream", "show", request)
    assert host.got[0][0] == CUT_REMOVED
    assert "role changed to 'user'" in host.got[0][1]
    assert promoted.got == []


async def test_authorize_whep_holds_the_viewer_on_the_roster(svc: CallService) -> None:
    call, _ = await svc.load_call("livestream", "show")
    await svc.join(call, "host", role="host", source="rtmp")
    grant = await svc.authorize_whep(create_token(SECRET, "viewer"), "livestream", "show", "host")
    assert grant.call_cid == CID
    cuts = Cuts()
    release = grant.hold(cuts)
    assert len(svc.watchers[CID]) == 1
    await svc.kick(SERVER, "livestream", "show", w.KickUserRequest(user_id="viewer"))
    assert cuts.got[0][0] == CUT_KICKED
    release()  # the session closed afterwards: nothing left, nothing raised
    assert CID not in svc.watchers


async def test_back_to_backstage_cuts_whep_viewers_without_join_backstage(
    svc: CallService,
) -> None:
    viewer = await svc.authenticate(create_token(SECRET, "viewer"))
    host = await svc.authenticate(create_token(SECRET, "host"))
    whep_viewer, whep_host, ws_viewer = Cuts(), Cuts(), Cuts()
    svc.add_watcher(CID, viewer, "whep", whep_viewer, frozenset({"join-call"}))
    svc.add_watcher(CID, host, "whep", whep_host, WATCH_CAPABILITIES)
    svc.add_watcher(CID, viewer, "websocket", ws_viewer, frozenset({"join-call"}))
    await svc.stop_live(SERVER, "livestream", "show", w.StopLiveRequest())
    assert whep_viewer.got == [(CUT_BACKSTAGE, f"{CID} went back to backstage")]
    assert whep_host.got == []
    assert ws_viewer.got == []  # it stays, and only loses its subscriptions (signaling.py)


async def test_removal_disconnects_publishers_of_every_protocol(svc: CallService) -> None:
    call, _ = await svc.load_call("livestream", "show")
    reasons: list[str] = []
    for source in ("rtmp", "whip"):
        await svc.join(call, "host", role="host", source=source, disconnect=reasons.append)
    await svc.update_members(
        SERVER, "livestream", "show", w.UpdateCallMembersRequest(remove_members=["host"])
    )
    assert len(reasons) == 2
    assert all("removed from the call" in r for r in reasons)
