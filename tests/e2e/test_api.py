"""Our own client (``ingest.client``) against a running server: the livestream flow, access
rules, tokens, typed errors and the OpenAPI contract."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest

from ingest.app import App
from ingest.calls import wire as w
from ingest.calls.api import CORS_MAX_AGE, MAX_BODY_BYTES
from ingest.client import ApiError, AsyncClient, Client, create_server_token
from tests.conftest import API_KEY, API_SECRET, api, user_token

pytestmark = pytest.mark.e2e


async def setup_call(client: AsyncClient, call_id: str = "show1") -> w.GetOrCreateCallResponse:
    await client.upsert_users(
        w.UserRequest(id="alice", name="Alice"),
        w.UserRequest(id="bob", name="Bob"),
        w.UserRequest(id="viewer", name="Viewer"),
    )
    return await client.get_or_create_call(
        "livestream",
        call_id,
        w.CallRequest(
            created_by_id="alice", members=[w.MemberRequest(user_id="alice", role="host")]
        ),
    )


async def test_the_livestream_flow(server: App) -> None:
    async with api(server) as client:
        resp = await setup_call(client)
        assert resp.created is True
        assert resp.call.cid == "livestream:show1"
        assert resp.call.backstage is True
        assert resp.call.ingress.rtmp.address == (
            f"rtmp://127.0.0.1:{server.rtmp_port}/{API_KEY}.livestream.show1"
        )
        assert resp.call.ingress.whip.address.endswith("/whip/livestream/show1")
        assert resp.call.created_by.id == "alice"
        assert [(m.user_id, m.role) for m in resp.members] == [("alice", "host")]
        assert resp.call.created_at is not None
        assert resp.call.created_at.year >= 2026
        assert resp.call.settings.backstage.enabled is True

        again = await client.get_or_create_call(
            "livestream", "show1", w.CallRequest(created_by_id="alice")
        )
        assert again.created is False

        live = await client.go_live("livestream", "show1", start_hls=True)
        assert live.call.backstage is False
        assert live.call.session is not None
        assert live.call.session.live_started_at is not None

        got = await client.get_call("livestream", "show1")
        assert got.call.backstage is False
        assert got.call.egress.broadcasting is True

        stopped = await client.stop_live("livestream", "show1")
        assert stopped.call.backstage is True
        assert stopped.call.session is not None
        assert stopped.call.session.live_ended_at is not None
        assert stopped.call.egress.broadcasting is False

        members = await client.update_call_members(
            "livestream", "show1", update=[w.MemberRequest(user_id="bob", role="host")]
        )
        assert [(m.user_id, m.role) for m in members.members] == [("bob", "host")]
        got = await client.get_call("livestream", "show1")
        assert sorted(m.user_id for m in got.members) == ["alice", "bob"]
        assert "send-video" in got.own_capabilities  # the server token may do everything
        limited = await client.get_call("livestream", "show1", members_limit=1)
        assert len(limited.members) == 1
        queried = await client.query_call_members("livestream", "show1")
        assert sorted(m.user_id for m in queried.members) == ["alice", "bob"]


async def test_the_sync_client_works_the_same(server: App) -> None:
    def blocking() -> tuple[bool, str]:
        base = f"http://127.0.0.1:{server.http_port}"
        with Client(base, API_KEY, secret=API_SECRET) as client:
            client.upsert_users(w.UserRequest(id="carol"))
            resp = client.get_or_create_call(
                "livestream", "sync1", w.CallRequest(created_by_id="carol")
            )
            with pytest.raises(ApiError) as e:
                client.get_call("livestream", "nope")
        return resp.created, e.value.message

    # The server runs on this test's loop: the blocking client runs in a worker thread.
    created, message = await asyncio.to_thread(blocking)
    assert created is True
    assert "livestream:nope does not exist" in message


async def test_settings_override_disables_backstage(server: App) -> None:
    async with api(server) as client:
        await client.upsert_users(w.UserRequest(id="alice"))
        resp = await client.get_or_create_call(
            "livestream",
            "nobackstage",
            w.CallRequest(
                created_by_id="alice",
                settings_override=w.CallSettingsRequest(
                    backstage=w.BackstageSettingsRequest(enabled=False)
                ),
            ),
        )
    assert resp.call.backstage is False
    assert resp.call.settings.backstage.enabled is False


async def test_a_token_signed_with_another_secret_is_refused(server: App) -> None:
    async with api(server, secret="not-the-secret-but-long-enough-for-hs256-keys") as client:
        with pytest.raises(ApiError) as e:
            await client.upsert_users(w.UserRequest(id="alice"))
    assert e.value.status == 401
    assert e.value.code == 5
    assert "invalid signature" in e.value.message
    assert "API secret" in e.value.message


async def test_an_expired_user_token_is_refused(server: App) -> None:
    async with api(server) as client:
        await setup_call(client)
    now = int(time.time())
    token = jwt.encode(
        {"user_id": "alice", "iat": now - 120, "exp": now - 60}, API_SECRET, algorithm="HS256"
    )
    async with api(server, token=token) as host:
        with pytest.raises(ApiError) as e:
            await host.get_call("livestream", "show1")
    assert e.value.status == 401
    assert "expired at" in e.value.message
    assert "create a new one" in e.value.message


async def test_a_viewer_cannot_go_live_but_a_host_can(server: App) -> None:
    async with api(server) as client:
        await setup_call(client)
    async with api(server, token=user_token("viewer")) as viewer:
        with pytest.raises(ApiError) as e:
            await viewer.go_live("livestream", "show1")
        assert e.value.status == 403
        assert e.value.code == 17
        assert "user 'viewer' may not update call" in e.value.message
        assert "grant 'update-call'" in e.value.message
        async with api(server, token=user_token("alice")) as host:
            resp = await host.go_live("livestream", "show1")
            assert resp.call.backstage is False
            got = await host.get_call("livestream", "show1")
            assert {"send-audio", "send-video", "join-backstage", "update-call"} <= set(
                got.own_capabilities
            )
        viewer_view = await viewer.get_call("livestream", "show1")
        assert "send-video" not in viewer_view.own_capabilities
        assert "join-call" in viewer_view.own_capabilities
        # A viewer may react and send events, not kick or start HLS.
        reaction = await viewer.send_reaction(
            "livestream", "show1", w.SendReactionRequest(type="like", emoji_code=":heart:")
        )
        assert reaction.reaction.user.id == "viewer"
        with pytest.raises(ApiError) as e:
            await viewer.kick_user("livestream", "show1", "alice")
        assert e.value.status == 403
        with pytest.raises(ApiError) as e:
            await viewer.start_broadcasting("livestream", "show1")
        assert e.value.status == 403


async def test_unknown_call_type_and_call_say_what_to_fix(server: App) -> None:
    async with api(server) as client:
        await client.upsert_users(w.UserRequest(id="alice"))
        with pytest.raises(ApiError) as e:
            await client.get_or_create_call("nosuchtype", "x", w.CallRequest(created_by_id="alice"))
        assert e.value.status == 404
        assert "call type 'nosuchtype' does not exist" in e.value.message
        assert "livestream" in e.value.message
        with pytest.raises(ApiError) as e:
            await client.get_call("livestream", "missing")
        assert e.value.status == 404
        assert "does not exist" in e.value.message
        with pytest.raises(ApiError) as e:
            await client.get_or_create_call("livestream", "x")
        assert e.value.status == 400
        assert "data.created_by_id is required" in e.value.message


async def test_revoked_tokens_are_refused(server: App) -> None:
    async with api(server) as client:
        await setup_call(client)
        async with api(server, token=user_token("alice")) as host:
            await host.get_call("livestream", "show1")
            await client.revoke_tokens("alice", datetime.now(UTC))
            with pytest.raises(ApiError) as e:
                await host.get_call("livestream", "show1")
    assert e.value.status == 401
    assert "revoked" in e.value.message


async def test_custom_call_type_grants(server: App) -> None:
    async with api(server) as client:
        created = await client.create_call_type(
            w.CreateCallTypeRequest(
                name="townhall",
                grants={"host": ["send-audio", "send-video", "read-call"], "user": ["read-call"]},
            )
        )
        assert created.grants["host"] == ["send-audio", "send-video", "read-call"]
        types = await client.list_call_types()
        assert "townhall" in types.call_types
        updated = await client.update_call_type(
            "townhall",
            w.UpdateCallTypeRequest(
                settings=w.CallSettingsRequest(backstage=w.BackstageSettingsRequest(enabled=True))
            ),
        )
        assert updated.settings.backstage.enabled is True
        with pytest.raises(ApiError) as e:
            await client.create_call_type(
                w.CreateCallTypeRequest(name="bad", grants={"host": ["fly"]})
            )
        assert "unknown capability 'fly'" in e.value.message
        await client.delete_call_type("townhall")
        with pytest.raises(ApiError) as e:
            await client.get_call_type("townhall")
        assert e.value.status == 404


async def test_custom_event_reaches_subscribers(server: App) -> None:
    async with api(server) as client:
        await setup_call(client)
    sub = server.bus.subscribe("livestream:show1")
    async with api(server, token=user_token("viewer")) as viewer:
        sent = await viewer.send_event("livestream", "show1", {"hello": "world"})
    assert sent.event.custom == {"hello": "world"}
    event = sub.get_nowait()
    assert event is not None
    assert event["type"] == "custom"
    assert event["custom"] == {"hello": "world"}
    assert event["user"]["id"] == "viewer"


async def test_hls_and_recording_switches(server: App) -> None:
    # What the sinks produce (and the events they emit) is tested in test_hls / test_recording.
    async with api(server) as client:
        await setup_call(client)
        started = await client.start_broadcasting("livestream", "show1")
        assert started.playlist_url.startswith("http://") or started.playlist_url == ""
        await client.start_recording("livestream", "show1")
        got = await client.get_call("livestream", "show1")
        assert got.call.egress.broadcasting is True
        assert got.call.recording is True
        await client.stop_broadcasting("livestream", "show1")
        await client.stop_recording("livestream", "show1")
        got = await client.get_call("livestream", "show1")
        assert got.call.egress.broadcasting is False
        assert got.call.egress.hls.status == "stopped"
        assert got.call.recording is False
        recordings = await client.list_recordings("livestream", "show1")
        assert isinstance(recordings.recordings, list)


# --- the typed contract ------------------------------------------------------------------


async def raw(server: App, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
        return await http.request(
            method,
            path,
            params={"api_key": API_KEY, **kw.pop("params", {})},
            headers={"Authorization": create_server_token(API_SECRET), **kw.pop("headers", {})},
            json=body,
            **kw,
        )


async def test_a_wrongly_typed_field_is_a_400_naming_it(server: App) -> None:
    async with api(server) as client:
        await setup_call(client)
    resp = await raw(
        server,
        "POST",
        "/api/v2/video/call/members",
        {"type": "livestream", "id": "show1", "limit": "abc"},
    )
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == 4
    assert body["StatusCode"] == 400
    assert "'limit'" in body["message"]
    resp = await raw(
        server,
        "POST",
        "/api/v2/video/call/members",
        {"type": "livestream", "id": "show1", "limit": {}},
    )
    assert resp.status_code == 400
    assert "'limit'" in resp.json()["message"]
    resp = await raw(
        server,
        "POST",
        "/api/v2/video/call/livestream/show1",
        {"data": {"members": [{"user_id": "bob", "role": 5}]}},
    )
    assert resp.status_code == 400
    assert "'data.members[0].role'" in resp.json()["message"]
    resp = await raw(
        server, "POST", "/api/v2/video/call/livestream/show1/go_live", {"start_hls": "yes"}
    )
    assert resp.status_code == 400
    assert "'start_hls'" in resp.json()["message"]


async def test_unknown_fields_and_out_of_range_parameters_are_400s(server: App) -> None:
    async with api(server) as client:
        await setup_call(client)
    resp = await raw(
        server, "POST", "/api/v2/video/call/livestream/show1/go_live", {"start_transcription": True}
    )
    assert resp.status_code == 400
    assert "unknown field 'start_transcription'" in resp.json()["message"]
    resp = await raw(
        server,
        "GET",
        "/api/v2/video/call/livestream/show1",
        params={"members_limit": "99999999999999999999"},
    )
    assert resp.status_code == 400
    assert "'members_limit'" in resp.json()["message"]
    resp = await raw(
        server, "GET", "/api/v2/video/call/livestream/show1", params={"members_limit": "abc"}
    )
    assert resp.status_code == 400
    assert "'members_limit'" in resp.json()["message"]
    resp = await raw(
        server,
        "POST",
        "/api/v2/users",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 400
    assert "JSON" in resp.json()["message"]
    resp = await raw(server, "POST", "/api/v2/users", [1, 2])
    assert resp.status_code == 400


async def test_the_request_body_limit(server: App) -> None:
    declared = await raw(
        server, "POST", "/api/v2/users", content=b"{" + b" " * MAX_BODY_BYTES + b"}"
    )
    assert declared.status_code == 413
    assert f"larger than {MAX_BODY_BYTES} bytes" in declared.json()["message"]

    async def chunks() -> Any:  # no Content-Length: the limit holds while the body streams
        yield b'{"users": {'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    streamed = await raw(server, "POST", "/api/v2/users", content=chunks())
    assert streamed.status_code == 413


async def test_openapi_types_every_operation(server: App) -> None:
    async with httpx.AsyncClient() as http:
        spec = (await http.get(f"http://127.0.0.1:{server.http_port}/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    operations = 0
    for path, item in spec["paths"].items():
        if not path.startswith("/api/v2"):
            continue
        for method, op in item.items():
            operations += 1
            where = f"{method.upper()} {path}"
            ok = op["responses"]["200"] if "200" in op["responses"] else op["responses"]["201"]
            ref = ok["content"]["application/json"]["schema"].get("$ref", "")
            assert ref.startswith("#/components/schemas/"), f"{where}: untyped response"
            assert schemas[ref.rsplit("/", 1)[1]]["properties"], f"{where}: empty response"
            for status in ("400", "401", "403", "404"):
                err = op["responses"][status]["content"]["application/json"]["schema"]
                assert err["$ref"].endswith("/ErrorResponse"), f"{where}: {status} untyped"
            if method in ("post", "put", "patch") and "requestBody" in op:
                body = op["requestBody"]["content"]["application/json"]["schema"]
                refs = [body.get("$ref")] + [s.get("$ref") for s in body.get("anyOf", [])]
                assert any(r and r.startswith("#/components/schemas/") for r in refs), where
            elif method in ("post", "put", "patch"):
                assert path.endswith(("/mark_ended", "_broadcasting", "/stop")), (
                    f"{where} takes no typed body"
                )
            params = {p["name"] for p in op.get("parameters", [])}
            assert {"api_key", "authorization"} <= params, where
    assert operations >= 25
    go_live = schemas["GoLiveRequest"]
    assert go_live["properties"]["start_hls"]["type"] == "boolean"
    assert go_live["additionalProperties"] is False
    call = schemas["CallResponse"]["properties"]
    assert {"ingress", "egress", "backstage", "session", "settings"} <= set(call)


# --- browsers ----------------------------------------------------------------------------


async def test_cors_preflight_in_development_mode(app_factory: Any) -> None:
    app: App = await app_factory(api_key=None, api_secret=None)
    assert app.development
    async with httpx.AsyncClient() as http:
        resp = await http.options(
            f"http://127.0.0.1:{app.http_port}/api/v2/video/call/livestream/x/go_live",
            headers={
                "Origin": "http://pages.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] in ("*", "http://pages.example")
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "authorization" in resp.headers["access-control-allow-headers"].lower()
    assert resp.headers["access-control-max-age"] == str(CORS_MAX_AGE)


async def test_cors_in_production_allows_only_configured_origins(app_factory: Any) -> None:
    app: App = await app_factory(cors_allowed_origins="http://good.example")
    assert not app.development
    url = f"http://127.0.0.1:{app.http_port}/api/v2/video/calltypes"
    async with httpx.AsyncClient() as http:
        good = await http.options(
            url,
            headers={"Origin": "http://good.example", "Access-Control-Request-Method": "GET"},
        )
        bad = await http.options(
            url, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
        )
    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == "http://good.example"
    assert "access-control-allow-origin" not in bad.headers


async def test_a_wildcard_origin_is_refused_in_production(app_factory: Any) -> None:
    from ingest.errors import ConfigError

    with pytest.raises(ConfigError, match="cors_allowed_origins"):
        await app_factory(cors_allowed_origins="*")
