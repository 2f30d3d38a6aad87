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
