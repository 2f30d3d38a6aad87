"""Redaction of log records: whoever logs, no token gets through."""

from __future__ import annotations

import logging

import pytest

from ingest.calls.tokens import create_token
from ingest.logs import install_redaction, redact, redact_text

TOKEN = create_token("s" * 40, "alice", now=1_800_000_000)


def test_redact_text_hides_jwts_and_token_parameters() -> None:
    line = f'"WebSocket /video/connect?api_key=k&call_id=x&token={TOKEN}" [accepted]'
    clean = redact_text(line)
    assert TOKEN not in clean
    assert redact(TOKEN) in clean
    assert "api_key=k&call_id=x" in clean  # the rest stays readable
    assert redact_text("GET /x?token=opaque-secret-value-123&a=1") == (
        f"GET /x?token={redact('opaque-secret-value-123')}&a=1"
    )
    assert TOKEN.rsplit(".", 1)[0] not in redact_text(TOKEN.rsplit(".", 1)[0])  # cut frames
    assert redact_text("nothing secret here: a.b.c, api_key=k") == (
        "nothing secret here: a.b.c, api_key=k"
    )


def test_every_record_is_redacted_whatever_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    install_redaction()
    install_redaction()  # idempotent
    log = logging.getLogger("some.library")
    with caplog.at_level(logging.DEBUG):
        log.debug("frame %s", f'{{"type":"auth","token":"{TOKEN}"}}')
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            log.exception("failed")
    text = "\n".join(caplog.messages) + "\n".join(r.exc_text or "" for r in caplog.records)
    assert TOKEN not in text
    assert caplog.text.count(redact(TOKEN)) >= 2
    assert TOKEN not in caplog.text
