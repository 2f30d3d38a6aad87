"""Shared fixtures: a real server on 127.0.0.1 with free ports, stopped when the test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ingest.app import App
from ingest.client import AsyncClient, create_token
from ingest.config import load

API_KEY = "testkey"
API_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def make_settings(tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "host": "127.0.0.1",
        "http_port": 0,
        "rtmp_port": 0,
        "public_host": "127.0.0.1",
        "api_key": API_KEY,
        "api_secret": API_SECRET,
        "log_level": "DEBUG",
    }
    values.update(overrides)
    return load(None, environ={}, **values)


@pytest.fixture
async def app_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start servers with given settings; every started server is stopped at teardown."""
    started: list[App] = []

    async def start(**overrides: Any) -> App:
        app = App(make_settings(tmp_path, **overrides))
        await app.start()
        started.append(app)
        return app

    yield start
    for app in started:
        await app.stop()


@pytest.fixture
async def server(app_factory: Callable[..., Any]) -> App:
    app: App = await app_factory()
    return app


def api(app: App, *, secret: str = API_SECRET, token: str | None = None) -> AsyncClient:
    """Our own client for a running server: a server client, or a user's with ``token``."""
    base = f"http://127.0.0.1:{app.http_port}"
    if token is not None:
        return AsyncClient(base, API_KEY, token=token)
    return AsyncClient(base, API_KEY, secret=secret)


def user_token(user_id: str, ttl: int = 3600) -> str:
    return create_token(API_SECRET, user_id, ttl=ttl)
