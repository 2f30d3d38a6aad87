"""One place for every error the product reports.

Each error carries a numeric ``code``, the HTTP status it maps to and whether the client may
retry; messages say what to fix. The API turns them into its error shape
(``{"code", "message", "StatusCode", "duration"}``), RTMP into an onStatus description.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error with a user-facing message."""

    code: int = -1
    status: int = 500
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(IngestError):
    """The request is malformed or names something invalid (Stream code 4)."""

    code = 4
    status = 400


class AuthenticationError(IngestError):
    """The token is missing, malformed, has a bad signature, or is expired/revoked."""

    code = 5
    status = 401


class TokenExpiredError(AuthenticationError):
    code = 40


class TokenRevokedError(AuthenticationError):
    code = 44  # Stream reports revoked tokens as "token signature invalid / revoked"


class PermissionDeniedError(IngestError):
    """The caller is known but lacks the capability (Stream code 17)."""

    code = 17
    status = 403


class NotFoundError(IngestError):
    code = 16
    status = 404


class ConflictError(IngestError):
    code = 4
    status = 409


class RateLimitedError(IngestError):
    code = 9
    status = 429
    retryable = True


class ConfigError(IngestError):
    """Bad configuration at start: the message names the key."""

    code = 4
    status = 500


class MediaError(IngestError):
    """A publisher sent media we cannot carry (unsupported codec, broken headers)."""

    code = 4
    status = 400
