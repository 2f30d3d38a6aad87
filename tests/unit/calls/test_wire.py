"""The wire models refuse what the API does not take, and the errors name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ingest.calls import wire as w
from ingest.calls.api import validation_message


def refused(model: type[BaseModel], data: Any) -> str:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return validation_message([{**err, "loc": ("body", *err["loc"])} for err in e.value.errors()])


def test_query_limit() -> None:
    assert w.QueryCallMembersRequest(type="t", id="i", limit=w.MAX_QUERY_LIMIT).limit
    msg = refused(w.QueryCallMembersRequest, {"type": "t", "id": "i", "limit": 10**20})
    assert "'limit'" in msg
    assert f"less than or equal to {w.MAX_QUERY_LIMIT}" in msg
    assert "'limit'" in refused(w.QueryCallMembersRequest, {"type": "t", "id": "i", "limit": 0})
    assert "'limit'" in refused(w.QueryCallMembersRequest, {"type": "t", "id": "i", "limit": "5"})


def test_members_per_request() -> None:
    many = [{"user_id": f"u{i}"} for i in range(w.MAX_MEMBERS_PER_REQUEST + 1)]
    w.UpdateCallMembersRequest.model_validate({"update_members": many[:-1]})
    msg = refused(w.UpdateCallMembersRequest, {"update_members": many})
    assert "'update_members'" in msg
    assert f"at most {w.MAX_MEMBERS_PER_REQUEST}" in msg
    assert "'data.members'" in refused(w.GetOrCreateCallRequest, {"data": {"members": many}})


def test_users_per_request() -> None:
    users = {f"u{i}": {"id": f"u{i}"} for i in range(w.MAX_USERS_PER_REQUEST + 1)}
    assert "'users'" in refused(w.UpdateUsersRequest, {"users": users})
    assert "'users'" in refused(w.UpdateUsersRequest, {"users": {}})


def test_reaction_type_and_role_length() -> None:
    long_type = "x" * (w.MAX_REACTION_TYPE_LENGTH + 1)
    assert "'type'" in refused(w.SendReactionRequest, {"type": long_type})
    assert "'type'" in refused(w.SendReactionRequest, {"type": ""})
    long_role = "r" * (w.MAX_ROLE_LENGTH + 1)
    msg = refused(w.MemberRequest, {"user_id": "a", "role": long_role})
    assert "'role'" in msg


def test_unknown_and_mistyped_fields_are_named() -> None:
    msg = refused(w.GoLiveRequest, {"start_hls": True, "notify": True})
    assert msg == "invalid request: unknown field 'notify': remove it (see /openapi.json)"
    msg = refused(w.GetOrCreateCallRequest, {"data": {"members": [{"user_id": "a", "role": 5}]}})
    assert "'data.members[0].role' (body): Input should be a valid string (got 5)" in msg
    msg = refused(w.KickUserRequest, {})
    assert msg == "invalid request: 'user_id' is required"
    # strict: no silent coercion of strings into booleans or numbers
    assert "'start_recording'" in refused(w.GoLiveRequest, {"start_recording": "true"})


def test_settings_requests_keep_only_what_they_set() -> None:
    req = w.CallSettingsRequest.model_validate({"backstage": {"enabled": False}})
    assert req.model_dump(exclude_none=True) == {"backstage": {"enabled": False}}
    assert "'backstage.enabled'" in refused(w.CallSettingsRequest, {"backstage": {"enabled": 1}})
    assert "'recording.mode'" in refused(w.CallSettingsRequest, {"recording": {"mode": "always"}})


def test_times_are_rfc3339_on_the_wire() -> None:
    from datetime import UTC, datetime

    user = w.UserResponse(id="a", created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert user.model_dump(mode="json")["created_at"] == "2026-01-02T03:04:05Z"
    req = w.UserRequest.model_validate(
        {"id": "a", "revoke_tokens_issued_before": "2026-01-02T03:04:05Z"}
    )
    assert req.revoke_tokens_issued_before == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_too_many_problems_are_summarised() -> None:
    data = {f"f{i}": i for i in range(8)}
    msg = refused(w.KickUserRequest, data)
    assert msg.endswith("(and 4 more)")
