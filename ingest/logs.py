"""Logging setup and the one redaction rule: never log a token or stream key in full."""

from __future__ import annotations

import logging
import sys

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


def setup(level: str = "INFO") -> None:
    """Plain one-line logs on stderr: time, level, logger, message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs would print query strings (api_key) on every request; keep them quiet.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
