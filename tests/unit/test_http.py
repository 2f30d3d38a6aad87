"""Bodies read under a limit while they stream; the HTTP protocol's defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.requests import Request
from starlette.types import Message

from ingest.config import DEFAULT_HTTP_KEEP_ALIVE_TIMEOUT, DEFAULT_HTTP_REQUEST_TIMEOUT, load
from ingest.http import MAX_HEADER_BYTES, PayloadTooLargeError, protocol_class, read_body


def streaming(chunks: list[bytes], length: int | None = None) -> tuple[Request, list[int]]:
    """A request whose body arrives in ``chunks``; the list counts the chunks handed out."""
    given: list[int] = []
    parts: Iterator[bytes] = iter(chunks)

    async def receive() -> Message:
        chunk = next(parts, b"")
        given.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return Request({"type": "http", "headers": headers}, receive), given


async def test_read_body_returns_the_body_within_the_limit() -> None:
    request, _ = streaming([b"ab", b"cd"])
    assert await read_body(request, 4) == b"abcd"


async def test_read_body_stops_as_soon_as_the_limit_is_passed() -> None:
    request, given = streaming([b"x" * 10] * 1000)  # 10 kB offered
    with pytest.raises(PayloadTooLargeError, match="larger than 25 bytes") as e:
        await read_body(request, 25, "the offer")
    assert e.value.status == 413
    assert "the offer" in e.value.message
    assert len(given) == 3  # it read three chunks, not the thousand


async def test_read_body_refuses_by_content_length_before_reading() -> None:
    request, given = streaming([b"x"], length=10**9)
    with pytest.raises(PayloadTooLargeError, match="1000000000"):
        await read_body(request, 100)
    assert given == []


def test_http_defaults_are_named_and_configurable() -> None:
    assert MAX_HEADER_BYTES == 16 * 1024
    assert DEFAULT_HTTP_REQUEST_TIMEOUT == 10.0
    assert DEFAULT_HTTP_KEEP_ALIVE_TIMEOUT == 15
    assert protocol_class().request_timeout == DEFAULT_HTTP_REQUEST_TIMEOUT
    assert protocol_class(2.5).request_timeout == 2.5
    settings = load(None, environ={"INGEST_HTTP_REQUEST_TIMEOUT": "3", "INGEST_API_KEY": "k"})
    assert settings.http_request_timeout == 3.0
    assert settings.http_keep_alive_timeout == DEFAULT_HTTP_KEEP_ALIVE_TIMEOUT
