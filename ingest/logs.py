"""Logging setup and the one redaction rule: never log a token or stream key in full.

Our code logs :func:`redact` forms. Libraries do not know what a token is: uvicorn logs each
WebSocket's path *with its query* (``/video/connect?...&token=eyJ...``) at INFO, its access log
(when a handler is attached) every query string, ``websockets`` the first bytes of every frame at
DEBUG (the ``auth`` message). So :func:`install_redaction` makes every log record, whoever
creates it, pass through :func:`redact_text` before any handler sees it: anything shaped like a
JWT and every ``token=`` value becomes its redacted form. The App installs it at start;
:func:`setup` too.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any

REDACT_KEEP_HEAD = 8
REDACT_KEEP_TAIL = 6


def redact(secret: str | None) -> str:
    """A loggable form of a token or stream key: ``eyJhbGci…last6``.

    Short secrets are fully masked, because a head and tail would reveal most of them.
    """
    if not secret:
        return "<empty>"
    if len(secret) <= REDACT_KEEP_HEAD + REDACT_KEEP_TAIL + 4:
        return "…" * 3
    return f"{secret[:REDACT_KEEP_HEAD]}…{secret[-REDACT_KEEP_TAIL:]}"


JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")
"""A JWT (its header is base64url JSON, so it starts ``eyJ``), or the first two parts of one."""
TOKEN_PARAM_PATTERN = re.compile(
    r"((?:^|[?&;\s\"'])(?:token|access_token|stream_key|key)=)([^&\s\"'#]+)", re.IGNORECASE
)
"""A ``token=...`` (or ``access_token``, ``stream_key``, ``key``) value in a query or form."""


def redact_text(text: str) -> str:
    """``text`` with every JWT-shaped string and ``token=`` value replaced by :func:`redact`."""
    if "eyJ" in text:
        text = JWT_PATTERN.sub(lambda m: redact(m.group(0)), text)
    if "=" in text:
        text = TOKEN_PARAM_PATTERN.sub(_redact_param, text)
    return text


def _redact_param(match: re.Match[str]) -> str:
    value = match.group(2)
    if "…" in value:  # already redacted (a JWT, above)
        return match.group(0)
    return match.group(1) + redact(value)


_install_lock = threading.Lock()
_installed = False


def install_redaction() -> None:
    """Redact every log record at creation, for every logger and handler (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        make_record = logging.getLogRecordFactory()

        def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(redacting_record)
        _installed = True


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format: the handler reports it as logging always did
        return
    clean = redact_text(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        # tracebacks are formatted later by each handler: format (and redact) them once here
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact_text(text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


def setup(level: str = "INFO") -> None:
    """Plain one-line logs on stderr: time, level, logger, message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")
    )
    install_redaction()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs would print query strings (api_key) on every request; keep them quiet.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
