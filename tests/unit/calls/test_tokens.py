from __future__ import annotations

from datetime import UTC, datetime

import jwt
import pytest

from ingest.calls.tokens import (
    MAX_TOKEN_LENGTH,
    create_server_token,
    create_token,
    verify_token,
)
from ingest.errors import AuthenticationError, TokenExpiredError, TokenRevokedError
from ingest.logs import redact

SECRET = "s" * 64
NOW = 1_800_000_000.0


def test_user_token_round_trip() -> None:
    tok = create_token(SECRET, "alice", ttl=60, call_cids=["livestream:a"], role="host", now=NOW)
    c = verify_token(tok, SECRET, now=NOW)
    assert (c.server, c.user_id, c.call_cids, c.role) == (False, "alice", ("livestream:a",), "host")
    assert c.issued_at == int(NOW) - 1


def test_server_tokens_both_forms() -> None:
    assert verify_token(create_server_token(SECRET), SECRET).server
    assert verify_token(jwt.encode({}, SECRET, algorithm="HS256"), SECRET).server


def test_expired_token_says_when() -> None:
    tok = create_token(SECRET, "alice", ttl=60, now=NOW)
    verify_token(tok, SECRET, now=NOW + 60 + 5, leeway=5)  # within the leeway
    with pytest.raises(TokenExpiredError, match="expired at 2027-01-15T08:01:00Z"):
        verify_token(tok, SECRET, now=NOW + 60 + 6, leeway=5)


def test_permanent_token_never_expires() -> None:
    tok = create_token(SECRET, "alice", ttl=None, now=NOW)
    assert verify_token(tok, SECRET, now=NOW + 10**8).user_id == "alice"


def test_bad_signature_and_garbage() -> None:
    tok = create_token("x" * 40, "alice", now=NOW)
    with pytest.raises(AuthenticationError, match="invalid signature"):
        verify_token(tok, SECRET, now=NOW)
    with pytest.raises(AuthenticationError, match="not a valid JWT"):
        verify_token("not.a.jwt", SECRET, now=NOW)
    with pytest.raises(AuthenticationError, match="missing token"):
        verify_token("", SECRET, now=NOW)


def test_other_algorithms_are_refused() -> None:
    tok = jwt.encode({"user_id": "a"}, SECRET, algorithm="HS512")
    with pytest.raises(AuthenticationError):
        verify_token(tok, SECRET, now=NOW)


def test_token_length_limit() -> None:
    with pytest.raises(AuthenticationError, match=f"longer than {MAX_TOKEN_LENGTH}"):
        verify_token("a" * (MAX_TOKEN_LENGTH + 1), SECRET)


def test_revocation() -> None:
    tok = create_token(SECRET, "alice", now=NOW)
    cutoff = datetime.fromtimestamp(NOW + 10, UTC)
    with pytest.raises(TokenRevokedError, match="revoked"):
        verify_token(tok, SECRET, now=NOW, revoked_before=cutoff)
    newer = create_token(SECRET, "alice", now=NOW + 20)
    assert verify_token(newer, SECRET, now=NOW + 20, revoked_before=cutoff).user_id == "alice"


def test_future_iat_is_refused() -> None:
    tok = create_token(SECRET, "alice", now=NOW + 3600)
    with pytest.raises(AuthenticationError, match="future"):
        verify_token(tok, SECRET, now=NOW)


def test_error_messages_never_contain_the_token() -> None:
    tok = create_token("x" * 40, "alice", now=NOW)
    with pytest.raises(AuthenticationError) as e:
        verify_token(tok, SECRET, now=NOW)
    assert tok not in str(e.value)
    assert redact(tok) in str(e.value)


def test_redact() -> None:
    assert redact("eyJhbGciOiJIUzI1NiJ9.payload.signature123456") == "eyJhbGci…123456"
    assert redact("short") == "………"
    assert redact("") == "<empty>"


# --- every claim of a validly signed token: a 401 that names it, never anything else ---------

import base64  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
from typing import Any  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ingest.calls.tokens import MAX_CLAIM_TIME  # noqa: E402


def signed(payload: dict[str, Any]) -> str:
    """An HS256 JWT of any JSON payload (PyJWT's encoder refuses some odd claims itself)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = b64(hmac.digest(SECRET.encode(), head + b"." + body, "sha256"))
    return (head + b"." + body + b"." + sig).decode()


@pytest.mark.parametrize(
    ("payload", "claim"),
    [
        ({"user_id": "alice", "aud": "other-app"}, "'aud'"),
        ({"user_id": "alice", "aud": ["a", "b"]}, "'aud'"),
        ({"user_id": 42}, "'user_id'"),
        ({"user_id": ["alice"]}, "'user_id'"),
        ({"user_id": ""}, "'user_id'"),
        ({"user_id": "alice", "sub": 7}, "'sub'"),
        ({"user_id": "alice", "iss": {"x": 1}}, "'iss'"),
        ({"user_id": "alice", "jti": 1.5}, "'jti'"),
        ({"user_id": "alice", "iat": 1e300}, "'iat'"),
        ({"user_id": "alice", "iat": -1}, "'iat'"),
        ({"user_id": "alice", "exp": float("nan")}, "'exp'"),
        ({"user_id": "alice", "exp": float("inf")}, "'exp'"),
        ({"user_id": "alice", "exp": "tomorrow"}, "'exp'"),
        ({"user_id": "alice", "exp": True}, "'exp'"),
        ({"user_id": "alice", "exp": 10**400}, "'exp'"),
        ({"user_id": "alice", "nbf": "soon"}, "'nbf'"),
        ({"user_id": "alice", "server": "yes"}, "'server'"),
        ({"user_id": "alice", "call_cids": "livestream:a"}, "'call_cids'"),
        ({"user_id": "alice", "call_cids": [1, 2]}, "'call_cids'"),
        ({"user_id": "alice", "role": 5}, "'role'"),
    ],
)
def test_odd_claims_are_refused_naming_the_claim(payload: dict[str, Any], claim: str) -> None:
    with pytest.raises(AuthenticationError, match=claim) as e:
        verify_token(signed(payload), SECRET, now=NOW)
    assert e.value.status == 401


def test_nbf_in_the_future_is_refused_and_sane_claims_pass() -> None:
    with pytest.raises(AuthenticationError, match="not valid before"):
        verify_token(signed({"user_id": "alice", "nbf": NOW + 3600}), SECRET, now=NOW)
    ok = {"user_id": "alice", "iat": NOW - 1, "exp": NOW + 60.5, "nbf": NOW - 1, "sub": "alice"}
    claims = verify_token(signed(ok), SECRET, now=NOW)
    assert (claims.user_id, claims.expires_at) == ("alice", int(NOW + 60.5))
    # the latest representable time is still a time
    far = verify_token(signed({"user_id": "a", "exp": MAX_CLAIM_TIME}), SECRET, now=NOW)
    assert far.expires_at == MAX_CLAIM_TIME


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # JSON numbers of any size
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
claim_names = st.sampled_from(
    ["user_id", "server", "iat", "exp", "nbf", "aud", "sub", "iss", "jti", "call_cids", "role", "x"]
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(claim_names, json_values, max_size=6))
def test_any_signed_claims_verify_or_give_a_401(payload: dict[str, Any]) -> None:
    """Whatever a validly signed token carries: claims, or a 401 naming what is wrong."""
    try:
        claims = verify_token(signed(payload), SECRET, now=NOW)
    except AuthenticationError as e:
        refusal: AuthenticationError | None = e
    else:
        refusal = None
    if refusal is not None:
        assert refusal.status == 401
        assert "token" in refusal.message
        return
    if claims.server:
        return
    assert isinstance(claims.user_id, str)
    assert claims.user_id
    assert claims.role is None or isinstance(claims.role, str)
    assert claims.call_cids is None or all(isinstance(c, str) for c in claims.call_cids)
    for value in (claims.issued_at, claims.expires_at):
        assert value is None or 0 <= value <= MAX_CLAIM_TIME
