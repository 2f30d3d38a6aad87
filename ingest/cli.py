"""``ingest``: serve, mint tokens, create calls, run benchmarks."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

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
    "--no-expiry",
    is_flag=True,
    help="A token without 'exp' (it never expires; revoke it with revoke_tokens_issued_before).",
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
    from .calls import wire as w
    from .client import ApiError, Client, create_token

    settings, creds = _credentials(ctx, data_dir)
    base = (server or f"http://127.0.0.1:{settings.http_port}").rstrip("/")
    members = [w.MemberRequest(user_id=h, role="host") for h in hosts]
    try:
        with Client(base, creds.api_key, secret=creds.api_secret) as api:
            api.upsert_users(*(w.UserRequest(id=h) for h in hosts))
            resp = api.get_or_create_call(
                call_type, call_id, w.CallRequest(created_by_id=hosts[0], members=members)
            )
            if not resp.created:  # the call existed: make sure the hosts are members now
                api.update_call_members(call_type, call_id, update=members)
    except ApiError as e:
        if e.status == 0:
            raise click.ClickException(f"{e.message}: is 'ingest serve' running?") from None
        raise click.ClickException(e.message) from None
    call = resp.call
    click.echo(f"call {call.cid} ({'backstage' if call.backstage else 'live'})")
    click.echo(
        f"  OBS > Settings > Stream > Service: Custom...\n  Server:     {call.ingress.rtmp.address}"
    )
    for h in hosts:
        key = create_token(creds.api_secret, h, ttl=ttl)
        click.echo(f"  Stream Key for {h}: {key}")
    if call.backstage:
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
