"""Tokens: the one verification function the API, RTMP and WebRTC all use.

Tokens are Stream's: HS256 JWTs signed with the app secret. Server tokens carry
``{"server": true}`` or no ``user_id`` at all (the Python SDK signs ``{}``); user tokens
``{"user_id", "iat", "exp"}`` and optionally ``call_cids`` and ``role``. A user's
``revoke_tokens_issued_before`` invalidates tokens whose ``iat`` is earlier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from ..errors import AuthenticationError, TokenExpiredError, TokenRevokedError
from ..logs import redact

MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says about its bearer."""

    server: bool
    user_id: str | None
    issued_at: int | None
    expires_at: int | None
    call_cids: tuple[str, ...] | None = None
    role: str | None = None


def create_token(
    secret: str,
    user_id: str,
    *,
    ttl: int | None = 3600,
    call_cids: list[str] | None = None,
    role: str | None = None,
    now: float | None = None,
) -> str:
    """A user token the way Stream's SDKs make them (iat one second in the past)."""
    issued = int(now if now is not None else time.time()) - 1
    payload: dict[str, object] = {"user_id": user_id, "iat": issued}
    if ttl is not None:
        payload["exp"] = issued + 1 + ttl
    if call_cids:
        payload["call_cids"] = call_cids
    if role:
        payload["role"] = role
    return jwt.encode(payload, secret, algorithm="HS256")


def create_server_token(secret: str) -> str:
    return jwt.encode({"server": True}, secret, algorithm="HS256")


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify_token(
    token: str,
    secret: str,
    *,
    now: float | None = None,
    leeway: int = 5,
    revoked_before: datetime | None = None,
) -> Claims:
    """Check signature, ``exp`` and revocation; return the claims or raise with what to fix.

    ``revoked_before`` is the user's ``revoke_tokens_issued_before``; the caller looks it up once
    it knows the user id (see :func:`check_revocation`), so this function stays storage-free.
    """
    if not token:
        raise AuthenticationError(
            "missing token: send a JWT in the Authorization header (RTMP: as the stream key)"
        )
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthenticationError(f"token is longer than {MAX_TOKEN_LENGTH} characters")
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        raise AuthenticationError(
            f"token {redact(token)} has an invalid signature: sign it with this app's API secret"
        ) from None
    except jwt.InvalidAlgorithmError:
        raise AuthenticationError("token must be signed with HS256") from None
    except jwt.DecodeError as e:
        raise AuthenticationError(f"token is not a valid JWT ({e})") from None
    if not isinstance(payload, dict):
        raise AuthenticationError("token payload must be a JSON object")
    current = time.time() if now is None else now
    exp = payload.get("exp")
    iat = payload.get("iat")
    if exp is not None and not isinstance(exp, int | float):
        raise AuthenticationError("token 'exp' must be a number of seconds since the epoch")
    if iat is not None and not isinstance(iat, int | float):
        raise AuthenticationError("token 'iat' must be a number of seconds since the epoch")
    if exp is not None and current > exp + leeway:
        raise TokenExpiredError(
            f"token expired at {_when(int(exp))} (now {_when(int(current))}): create a new one"
        )
    if iat is not None and iat > current + leeway:
        raise AuthenticationError(
            f"token issued in the future ({_when(int(iat))}): check this machine's clock"
        )
    user_id = payload.get("user_id")
    if payload.get("server") is True or user_id is None:
        # Stream's server SDKs sign either {"server": true} or an empty payload: whoever holds
        # the secret acts for the app.
        return Claims(server=True, user_id=None, issued_at=None, expires_at=None)
    if not isinstance(user_id, str) or not user_id:
        raise AuthenticationError("token 'user_id' must be a non-empty string")
    cids = payload.get("call_cids")
    call_cids = tuple(str(c) for c in cids) if isinstance(cids, list) else None
    role = payload.get("role")
    claims = Claims(
        server=False,
        user_id=user_id,
        issued_at=int(iat) if iat is not None else None,
        expires_at=int(exp) if exp is not None else None,
        call_cids=call_cids,
        role=role if isinstance(role, str) else None,
    )
    check_revocation(claims, revoked_before)
    return claims


def check_revocation(claims: Claims, revoked_before: datetime | None) -> None:
    """Refuse a token issued before the user's ``revoke_tokens_issued_before``."""
    if revoked_before is None or claims.server:
        return
    cutoff = revoked_before.timestamp()
    if claims.issued_at is None or claims.issued_at < cutoff:
        raise TokenRevokedError(
            f"token of user '{claims.user_id}' was revoked: tokens issued before "
            f"{_when(int(cutoff))} are no longer valid, create a new one"
        )
