"""``ingest``: serve, mint tokens, create calls, run benchmarks."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from . import __version__, logs
from .config import Settings, load
from .errors import ConfigError, IngestError


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    try:
        return load(ctx.obj.get("config"), **overrides)
    except ConfigError as e:
        raise click.ClickException(e.message) from None


def _credentials(ctx: click.Context, data_dir: Path | None) -> tuple[Settings, Any]:
    """Settings and the API key/secret a running (or once-started) server uses."""
    from .app import load_credentials

    settings = _settings(ctx, data_dir=data_dir)
    try:
        return settings, load_credentials(settings, create=False)
    except ConfigError as e:
        raise click.ClickException(e.message) from None


@click.group()
@click.version_option(__version__, prog_name="ingest")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="INGEST_CONFIG_FILE",
    help="TOML file with settings (see samples/ingest.toml).",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Self-hosted RTMP ingest that bridges OBS into WebRTC livestream calls."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--host", default=None, help="Address to listen on (default 0.0.0.0).")
@click.option("--http-port", type=int, default=None, help="HTTP API port (default 8080).")
@click.option("--rtmp-port", type=int, default=None, help="RTMP port (default 1935).")
@click.option("--public-host", default=None, help="Host name put into ingress addresses.")
@click.pass_context
def serve(
    ctx: click.Context,
    data_dir: Path | None,
    host: str | None,
    http_port: int | None,
    rtmp_port: int | None,
    public_host: str | None,
) -> None:
    """Run the server: API + RTMP on one asyncio loop."""
    from .app import run_forever

    settings = _settings(
        ctx,
        data_dir=data_dir,
        host=host,
        http_port=http_port,
        rtmp_port=rtmp_port,
        public_host=public_host,
    )
    logs.setup(settings.log_level)
    try:
        asyncio.run(run_forever(settings))
    except IngestError as e:
        raise click.ClickException(e.message) from None
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("user_id")
@click.option("--ttl", type=int, default=3600, show_default=True, help="Lifetime in seconds.")
@click.option(
    "--no-expiry", is_flag=True, help="A token without 'exp' (like Stream's permanent tokens)."
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.pass_context
def token(
    ctx: click.Context, user_id: str, ttl: int, no_expiry: bool, data_dir: Path | None
) -> None:
    """Print a user token (use it as the RTMP stream key or a browser client's token)."""
    from .calls.tokens import create_token

    _, creds = _credentials(ctx, data_dir)
    if ttl <= 0 and not no_expiry:
        raise click.ClickException("--ttl must be positive (or use --no-expiry)")
    click.echo(create_token(creds.api_secret, user_id, ttl=None if no_expiry else ttl))


@main.group()
def call() -> None:
    """Manage calls on a running server."""


@call.command("create")
@click.argument("call_type")
@click.argument("call_id")
@click.option(
    "--host", "hosts", multiple=True, required=True, help="User id of a host (repeatable)."
)
@click.option("--server", default=None, help="API base URL (default http://127.0.0.1:<http_port>).")
@click.option(
    "--ttl", type=int, default=24 * 3600, show_default=True, help="Stream key lifetime, seconds."
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.pass_context
def call_create(
    ctx: click.Context,
    call_type: str,
    call_id: str,
    hosts: tuple[str, ...],
    server: str | None,
    ttl: int,
    data_dir: Path | None,
) -> None:
    """Create a call with its hosts; print what to paste into OBS."""
    from .calls.tokens import create_server_token, create_token

    settings, creds = _credentials(ctx, data_dir)
    base = (server or f"http://127.0.0.1:{settings.http_port}").rstrip("/")
    headers = {"Authorization": create_server_token(creds.api_secret), "stream-auth-type": "jwt"}
    params = {"api_key": creds.api_key}
    body = {
        "data": {
            "created_by_id": hosts[0],
            "members": [{"user_id": h, "role": "host"} for h in hosts],
        }
    }
    try:
        with httpx.Client(base_url=base, headers=headers, params=params, timeout=10) as http:
            http.post(
                "/api/v2/users", json={"users": {h: {"id": h} for h in hosts}}
            ).raise_for_status()
            resp = http.post(f"/api/v2/video/call/{call_type}/{call_id}", json=body)
            if resp.status_code >= 300:
                raise click.ClickException(resp.json().get("message", resp.text))
            if not resp.json().get("created"):
                # The call existed: make sure the hosts are members now.
                r2 = http.post(
                    f"/api/v2/video/call/{call_type}/{call_id}/members",
                    json={"update_members": body["data"]["members"]},
                )
                if r2.status_code >= 300:
                    raise click.ClickException(r2.json().get("message", r2.text))
    except httpx.HTTPError as e:
        raise click.ClickException(
            f"cannot reach the server at {base} ({e}): is 'ingest serve' running?"
        ) from None
    data = resp.json()
    address = data["call"]["ingress"]["rtmp"]["address"]
    out: dict[str, Any] = {
        "call": data["call"]["cid"],
        "backstage": data["call"]["backstage"],
        "hosts": [],
    }
    click.echo(f"call {out['call']} ({'backstage' if out['backstage'] else 'live'})")
    click.echo(f"  OBS > Settings > Stream > Service: Custom...\n  Server:     {address}")
    for h in hosts:
        key = create_token(creds.api_secret, h, ttl=ttl)
        click.echo(f"  Stream Key for {h}: {key}")
    if data["call"]["backstage"]:
        click.echo(
            "  The call starts in backstage: go live with "
            f"POST /api/v2/video/call/{call_type}/{call_id}/go_live"
        )


@main.command()
@click.option(
    "--seconds", type=float, default=2.0, show_default=True, help="Duration of each measurement."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(seconds: float, as_json: bool) -> None:
    """Measure this machine: RTMP parser throughput; the WebRTC bridge's CPU per stream and per
    viewer, RTMP-to-RTP latency and time to first frame (1080p30, ffmpeg CLI needed; ~1 min)."""
    from .bench import run_all

    results = run_all(seconds, log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    width = max(len(r["name"]) for r in results)
    units = max(len(r["unit"]) for r in results)
    targets = max(len(r.get("target", "")) for r in results)
    click.echo(
        f"{'benchmark'.ljust(width)}  {'result':>{11 + units}}  {'target'.ljust(targets)}  meets"
    )
    for r in results:
        ok = r.get("ok")
        verdict = "" if ok is None else ("yes" if ok else "NO")
        click.echo(
            f"{r['name'].ljust(width)}  {r['value']:>10.1f} {r['unit'].ljust(units)}"
            f"  {r.get('target', '').ljust(targets)}  {verdict}"
        )
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    main()
