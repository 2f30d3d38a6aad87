"""Tokens: the one verification function the API, RTMP and WebRTC all use.

Tokens are HS256 JWTs signed with the app secret. Server tokens carry
``{"server": true}`` or no ``user_id`` at all; user tokens
``{"user_id", "iat", "exp"}`` and optionally ``call_cids`` and ``role``. A user's
``revoke_tokens_issued_before`` invalidates tokens whose ``iat`` is earlier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from jwt.types import Options

from ..errors import AuthenticationError, TokenExpiredError, TokenRevokedError
from ..logs import redact

MAX_TOKEN_LENGTH = 4096
MAX_CLAIM_TIME = 253_402_300_799
"""Latest ``exp`` / ``iat`` / ``nbf`` accepted: 9999-12-31T23:59:59Z (later cannot be shown)."""
MAX_SHOWN_CHARS = 40
"""How much of a bad claim value an error message repeats."""


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
    """A user token (iat one second in the past, so a clock a little behind still accepts it)."""
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


def _when(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify_token(
    token: str,
    secret: str,
    *,
    now: float | None = None,
    leeway: int = 5,
    revoked_before: datetime | None = None,
) -> Claims:
    """Check signature, every claim, ``exp`` and revocation; return the claims or raise
    :class:`AuthenticationError` (401) with what to fix. Never raises anything else, whatever
    a validly signed token carries.

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
        # Only the signature is PyJWT's business: every claim is checked below, with messages
        # that name it (PyJWT's own checks would let odd values through or raise its own types).
        payload = jwt.decode(token, secret, algorithms=["HS256"], options=_SIGNATURE_ONLY)
    except jwt.InvalidSignatureError:
        raise AuthenticationError(
            f"token {redact(token)} has an invalid signature: sign it with this app's API secret"
        ) from None
    except jwt.InvalidAlgorithmError:
        raise AuthenticationError("token must be signed with HS256") from None
    except jwt.DecodeError as e:
        raise AuthenticationError(f"token is not a valid JWT ({e})") from None
    except (jwt.PyJWTError, ValueError, TypeError) as e:  # anything else PyJWT may find odd
        raise AuthenticationError(f"token is not a valid JWT ({e})") from None
    if not isinstance(payload, dict):
        raise AuthenticationError("token payload must be a JSON object")
    current = time.time() if now is None else now
    if "aud" in payload:
        raise AuthenticationError(
            "token has an 'aud' (audience) claim, which this server cannot check: "
            "sign tokens without 'aud'"
        )
    exp = _time_claim(payload, "exp")
    iat = _time_claim(payload, "iat")
    nbf = _time_claim(payload, "nbf")
    for name in ("sub", "iss", "jti"):
        if name in payload and not isinstance(payload[name], str):
            raise AuthenticationError(
                f"token claim '{name}' must be a string, not {_shown(payload[name])}"
            )
    server = payload.get("server", False)
    if not isinstance(server, bool):
        raise AuthenticationError(
            f"token claim 'server' must be true or false, not {_shown(server)}"
        )
    if exp is not None and current > exp + leeway:
        raise TokenExpiredError(
            f"token expired at {_when(exp)} (now {_when(current)}): create a new one"
        )
    if iat is not None and iat > current + leeway:
        raise AuthenticationError(
            f"token issued in the future ({_when(iat)}): check this machine's clock"
        )
    if nbf is not None and nbf > current + leeway:
        raise AuthenticationError(
            f"token is not valid before {_when(nbf)} (its 'nbf' claim): wait, or check this "
            "machine's clock"
        )
    user_id = payload.get("user_id")
    if server or user_id is None:
        # A server token is {"server": true} or a payload without user_id: whoever holds
        # the secret acts for the app.
        return Claims(server=True, user_id=None, issued_at=None, expires_at=None)
    if not isinstance(user_id, str) or not user_id:
        raise AuthenticationError(
            f"token claim 'user_id' must be a non-empty string, not {_shown(user_id)}"
        )
    cids = payload.get("call_cids")
    if cids is not None and (
        not isinstance(cids, list) or not all(isinstance(c, str) and c for c in cids)
    ):
        raise AuthenticationError(
            "token claim 'call_cids' must be a list of call ids such as "
            f'["livestream:show"], not {_shown(cids)}'
        )
    role = payload.get("role")
    if role is not None and (not isinstance(role, str) or not role):
        raise AuthenticationError(
            f"token claim 'role' must be a non-empty string, not {_shown(role)}"
        )
    claims = Claims(
        server=False,
        user_id=user_id,
        issued_at=int(iat) if iat is not None else None,
        expires_at=int(exp) if exp is not None else None,
        call_cids=tuple(cids) if cids is not None else None,
        role=role,
    )
    check_revocation(claims, revoked_before)
    return claims


_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


def _shown(value: object) -> str:
    """A claim value as an error message shows it: its JSON type and a short repr."""
    text = repr(value)
    if len(text) > MAX_SHOWN_CHARS:
        text = text[: MAX_SHOWN_CHARS - 1] + "…"
    return f"{type(value).__name__} {text}"


def _time_claim(payload: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519): absent, or a finite number of seconds in range."""
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationError(
            f"token claim '{name}' must be a number of seconds since 1970, not {_shown(value)}"
        )
    if not 0 <= value <= MAX_CLAIM_TIME:  # also false for NaN; no float() of huge ints
        raise AuthenticationError(
            f"token claim '{name}' must be a time between 0 and {MAX_CLAIM_TIME} "
            f"(year 9999), not {_shown(value)}"
        )
    return float(value)


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
