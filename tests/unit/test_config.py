from __future__ import annotations

from pathlib import Path

import pytest

from ingest.config import DEFAULT_HTTP_PORT, DEFAULT_RTMP_PORT, load
from ingest.errors import ConfigError


def test_defaults_need_no_configuration() -> None:
    s = load(None, environ={})
    assert s.http_port == DEFAULT_HTTP_PORT == 8080
    assert s.rtmp_port == DEFAULT_RTMP_PORT == 1935
    assert s.resolved_database_url.startswith("sqlite+aiosqlite:///")


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "ingest.toml"
    f.write_text('http_port = 9001\nrtmp_port = 2001\npublic_host = "file.example"\n')
    s = load(f, environ={})
    assert (s.http_port, s.rtmp_port, s.public_host) == (9001, 2001, "file.example")
    s = load(f, environ={"INGEST_HTTP_PORT": "9002"})
    assert (s.http_port, s.rtmp_port) == (9002, 2001)
    s = load(f, environ={"INGEST_HTTP_PORT": "9002"}, http_port=9003)
    assert s.http_port == 9003


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    f = tmp_path / "ingest.toml"
    f.write_text("http_prot = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'http_prot'"):
        load(f, environ={})


def test_unknown_env_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="INGEST_RTMP_PROT"):
        load(None, environ={"INGEST_RTMP_PROT": "1"})


def test_bad_value_names_key_and_origin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'rtmp_port' \(from environment INGEST_RTMP_PORT\)"):
        load(None, environ={"INGEST_RTMP_PORT": "70000"})
    f = tmp_path / "c.toml"
    f.write_text('http_port = "eighty"\n')
    with pytest.raises(ConfigError, match=r"'http_port' \(from .*c.toml\)"):
        load(f, environ={})


def test_missing_and_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", environ={})
    f = tmp_path / "bad.toml"
    f.write_text("http_port = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(f, environ={})
