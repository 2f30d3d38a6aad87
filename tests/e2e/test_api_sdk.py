"""The official getstream SDK against a running server: only the base URL changes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from getstream import AsyncStream, StreamApiException
from getstream.models import (
    BackstageSettingsRequest,
    CallRequest,
    CallSettingsRequest,
    MemberRequest,
    UserRequest,
)

from ingest.app import App
from tests.conftest import API_KEY, API_SECRET

pytestmark = pytest.mark.e2e


def sdk(app: App, secret: str = API_SECRET) -> AsyncStream:
    return AsyncStream(API_KEY, secret, base_url=f"http://127.0.0.1:{app.http_port}")


def user_sdk(app: App, token: str) -> Any:
    """The SDK with a user token in place of the server token (what a browser app would send)."""
    client = sdk(app)
    client.token = token
    for sub in (client, client.video):
        sub.headers["Authorization"] = token
        if hasattr(sub, "client") and hasattr(sub.client, "headers"):
            sub.client.headers["Authorization"] = token
    return client


async def setup_call(client: AsyncStream, call_id: str = "show1") -> Any:
    await client.upsert_users(
        UserRequest(id="alice", name="Alice"),
        UserRequest(id="bob", name="Bob"),
        UserRequest(id="viewer", name="Viewer"),
    )
    call = client.video.call("livestream", call_id)
    resp = await call.get_or_create(
        data=CallRequest(
            created_by_id="alice", members=[MemberRequest(user_id="alice", role="host")]
        )
    )
    return call, resp


async def test_livestream_flow_with_the_sdk(server: App) -> None:
    client = sdk(server)
    call, resp = await setup_call(client)
    data = resp.data
    assert data.created is True
    assert data.call.cid == "livestream:show1"
    assert data.call.backstage is True
    assert data.call.ingress.rtmp.address == (
        f"rtmp://127.0.0.1:{server.rtmp_port}/{API_KEY}.livestream.show1"
    )
    assert data.call.created_by.id == "alice"
    assert [m.user_id for m in data.members] == ["alice"]
    assert data.members[0].role == "host"
    assert data.call.created_at.year >= 2026

    again = await call.get_or_create(data=CallRequest(created_by_id="alice"))
    assert again.data.created is False

    live = await call.go_live(start_hls=True)
    assert live.data.call.backstage is False
    assert live.data.call.session.live_started_at is not None

    got = await call.get()
    assert got.data.call.backstage is False
    assert got.data.call.egress.broadcasting is True

    stopped = await call.stop_live()
    assert stopped.data.call.backstage is True
    assert stopped.data.call.session.live_ended_at is not None

    members = await call.update_call_members(
        update_members=[MemberRequest(user_id="bob", role="host")]
    )
    assert [(m.user_id, m.role) for m in members.data.members] == [("bob", "host")]
    got = await call.get()
    assert sorted(m.user_id for m in got.data.members) == ["alice", "bob"]
    assert "send-video" in got.data.own_capabilities  # the server token may do everything


async def test_settings_override_disables_backstage(server: App) -> None:
    client = sdk(server)
    await client.upsert_users(UserRequest(id="alice"))
    resp = await client.video.call("livestream", "nobackstage").get_or_create(
        data=CallRequest(
            created_by_id="alice",
            settings_override=CallSettingsRequest(
                backstage=BackstageSettingsRequest(enabled=False)
            ),
        )
    )
    assert resp.data.call.backstage is False
    assert resp.data.call.settings.backstage.enabled is False


async def test_bad_server_token_is_refused(server: App) -> None:
    client = sdk(server, secret="not-the-secret-but-long-enough-for-hs256-keys")
    with pytest.raises(StreamApiException) as e:
        await client.upsert_users(UserRequest(id="alice"))
    assert e.value.status_code == 401
    assert "invalid signature" in e.value.message
    assert "API secret" in e.value.message


async def test_expired_user_token_is_refused(server: App) -> None:
    client = sdk(server)
    await setup_call(client)
    expired = client.create_token("alice", expiration=1)
    # Issued "now - 5 s" by the SDK with exp = now + 1: make one that is already past.
    import jwt

    payload = jwt.decode(expired, API_SECRET, algorithms=["HS256"], options={"verify_exp": False})
    payload["exp"] = int(time.time()) - 60
    token = jwt.encode(payload, API_SECRET, algorithm="HS256")
    with pytest.raises(StreamApiException) as e:
        await user_sdk(server, token).video.call("livestream", "show1").get()
    assert e.value.status_code == 401
    assert "expired at" in e.value.message


async def test_viewer_cannot_go_live_but_host_can(server: App) -> None:
    client = sdk(server)
    await setup_call(client)
    viewer = user_sdk(server, client.create_token("viewer", expiration=3600))
    with pytest.raises(StreamApiException) as e:
        await viewer.video.call("livestream", "show1").go_live()
    assert e.value.status_code == 403
    assert "viewer" in e.value.message
    assert "update call" in e.value.message

    host = user_sdk(server, client.create_token("alice", expiration=3600))
    resp = await host.video.call("livestream", "show1").go_live()
    assert resp.data.call.backstage is False
    got = await host.video.call("livestream", "show1").get()
    assert "go-live" not in got.data.own_capabilities
    assert {"send-audio", "send-video", "join-backstage", "update-call"} <= set(
        got.data.own_capabilities
    )
    viewer_view = await viewer.video.call("livestream", "show1").get()
    assert "send-video" not in viewer_view.data.own_capabilities
    assert "join-call" in viewer_view.data.own_capabilities


async def test_unknown_call_type_and_call_say_what_to_fix(server: App) -> None:
    client = sdk(server)
    await client.upsert_users(UserRequest(id="alice"))
    with pytest.raises(StreamApiException) as e:
        await client.video.call("nosuchtype", "x").get_or_create(
            data=CallRequest(created_by_id="alice")
        )
    assert e.value.status_code == 404
    assert "call type 'nosuchtype' does not exist" in e.value.message
    assert "livestream" in e.value.message
    with pytest.raises(StreamApiException) as e:
        await client.video.call("livestream", "missing").get()
    assert e.value.status_code == 404
    assert "does not exist" in e.value.message


async def test_revoked_tokens_are_refused(server: App) -> None:
    client = sdk(server)
    await setup_call(client)
    token = client.create_token("alice", expiration=3600)
    host = user_sdk(server, token)
    await host.video.call("livestream", "show1").get()
    from datetime import UTC, datetime

    from getstream.models import UpdateUserPartialRequest

    await client.update_users_partial(
        [
            UpdateUserPartialRequest(
                id="alice", set={"revoke_tokens_issued_before": datetime.now(UTC).isoformat()}
            )
        ]
    )
    with pytest.raises(StreamApiException) as e:
        await host.video.call("livestream", "show1").get()
    assert e.value.status_code == 401
    assert "revoked" in e.value.message


async def test_custom_call_type_grants(server: App) -> None:
    client = sdk(server)
    await client.video.create_call_type(
        name="townhall",
        grants={"host": ["send-audio", "send-video", "read-call"], "user": ["read-call"]},
    )
    types = await client.video.list_call_types()
    assert "townhall" in types.data.call_types
    with pytest.raises(StreamApiException) as e:
        await client.video.create_call_type(name="bad", grants={"host": ["fly"]})
    assert "unknown capability 'fly'" in e.value.message


async def test_custom_event_reaches_subscribers(server: App) -> None:
    client = sdk(server)
    await setup_call(client)
    sub = server.bus.subscribe("livestream:show1")
    viewer = user_sdk(server, client.create_token("viewer", expiration=3600))
    await viewer.video.call("livestream", "show1").send_call_event(custom={"hello": "world"})
    event = sub.get_nowait()
    assert event is not None
    assert event["type"] == "custom"
    assert event["custom"] == {"hello": "world"}
    assert event["user"]["id"] == "viewer"


async def test_members_query_hls_and_recording_intent(server: App) -> None:
    client = sdk(server)
    call, _ = await setup_call(client)
    members = await client.video.query_call_members(type="livestream", id="show1")
    assert [m.user_id for m in members.data.members] == ["alice"]
    with server.bus.subscribe("livestream:show1") as sub:
        await call.start_hls_broadcasting()
        await call.start_recording(recording_type="composite")
        got = await call.get()
        assert got.data.call.egress.broadcasting is True
        assert got.data.call.recording is True
        await call.stop_hls_broadcasting()
        await call.stop_recording(recording_type="composite")
        types = [e["type"] for e in iter(sub.get_nowait, None)]
    assert types == [
        "call.hls_broadcasting_started",
        "call.recording_started",
        "call.hls_broadcasting_stopped",
        "call.recording_stopped",
    ]
    recordings = await call.list_recordings()
    assert recordings.data.recordings == []


async def test_request_body_limit(server: App) -> None:
    import httpx

    from ingest.calls.api import MAX_BODY_BYTES
    from ingest.calls.tokens import create_server_token

    async with httpx.AsyncClient() as http:
        resp = await http.post(
            f"http://127.0.0.1:{server.http_port}/api/v2/users",
            params={"api_key": API_KEY},
            headers={"Authorization": create_server_token(API_SECRET)},
            content=b"{" + b" " * MAX_BODY_BYTES + b"}",
        )
    assert resp.status_code == 400
    assert f"larger than {MAX_BODY_BYTES} bytes" in resp.json()["message"]
