"""The CLI as a streamer uses it: serve with no configuration, mint a token, create a call."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from ingest.calls.tokens import verify_token

pytestmark = pytest.mark.e2e

INGEST = [sys.executable, "-m", "ingest.cli"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *INGEST,
        *args,
        env=env or CLEAN_ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serve_token_and_call_create(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        *INGEST,
        "serve",
        "--host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--rtmp-port",
        "0",
        "--data-dir",
        str(data),
        env=CLEAN_ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        while "create a call" not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "server exited before printing its banner"
            banner += line.decode()
        port = int(re.search(r"API\s+http://127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        creds = json.loads((data / "credentials.json").read_text())
        assert creds["api_key"] in banner
        assert creds["api_secret"] in banner  # development mode shows how to connect
        assert oct((data / "credentials.json").stat().st_mode & 0o777) == "0o600"

        code, out, err = await run("token", "alice", "--ttl", "600", "--data-dir", str(data))
        assert code == 0, err
        claims = verify_token(out.strip(), creds["api_secret"])
        assert claims.user_id == "alice"
        assert claims.expires_at is not None

        code, out, err = await run(
            "call",
            "create",
            "livestream",
            "show",
            "--host",
            "alice",
            "--server",
            f"http://127.0.0.1:{port}",
            "--data-dir",
            str(data),
        )
        assert code == 0, err
        assert f"/{creds['api_key']}.livestream.show" in out
        key = re.search(r"Stream Key for alice: (\S+)", out).group(1)  # type: ignore[union-attr]
        assert verify_token(key, creds["api_secret"]).user_id == "alice"
        assert "backstage" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


async def test_serve_refuses_bad_configuration(tmp_path: Path) -> None:
    env = dict(CLEAN_ENV, INGEST_HTTP_PORT="not-a-port")
    code, _, err = await run("serve", "--data-dir", str(tmp_path), env=env)
    assert code != 0
    assert "http_port" in err
    assert "INGEST_HTTP_PORT" in err
    cfg = tmp_path / "c.toml"
    cfg.write_text("colour = 'blue'\n")
    code, _, err = await run("--config", str(cfg), "serve", env=CLEAN_ENV)
    assert code != 0
    assert "unknown key 'colour'" in err


async def test_token_without_credentials_says_how_to_get_them(tmp_path: Path) -> None:
    code, _, err = await run("token", "alice", "--data-dir", str(tmp_path / "empty"))
    assert code != 0
    assert "ingest serve" in err
