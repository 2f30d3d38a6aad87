"""``ingest``: serve, mint tokens, create calls, run benchmarks."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
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


def _bench_options(func: Any) -> Any:
    """Options shared by ``ingest bench`` and its subcommands."""
    options = [
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of markdown."),
        click.option(
            "--markdown",
            "markdown_path",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Also write the markdown report to this file.",
        ),
        click.option(
            "--plot",
            "plot_path",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Write a PNG plot of CPU against streams and viewers here (needs matplotlib: "
            "pip install 'ingest[bench]').",
        ),
        click.option(
            "--runs",
            type=click.IntRange(1, 20),
            default=None,
            help="Interleaved runs of each system in compare (default 3).",
        ),
        click.option(
            "--window",
            type=click.FloatRange(1, 120),
            default=None,
            help="Seconds of each measurement window (default 6).",
        ),
        click.option(
            "--max-streams",
            type=click.IntRange(1, 64),
            default=None,
            help="Largest N of the scale curve (N = 1, 2, 4, 8, 12, 16, ...; default 16).",
        ),
        click.option(
            "--max-viewers",
            type=click.IntRange(1, 100),
            default=None,
            help="Largest fan-out (1, 5, 10, 20, ...; default 20).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _bench_plan(
    runs: int | None, window: float | None, max_streams: int | None, max_viewers: int | None
) -> Any:
    from .bench import compare

    plan = compare.Plan()
    changes: dict[str, Any] = {}
    if runs is not None:
        changes["runs"] = runs
    if window is not None:
        changes["window"] = window
    if max_streams is not None:
        steps = [n for n in (*compare.SCALE_STREAMS, 24, 32, 48, 64) if n <= max_streams]
        changes["streams"] = tuple(steps if steps[-1] == max_streams else [*steps, max_streams])
    if max_viewers is not None:
        steps = [k for k in (*compare.FANOUT_VIEWERS, 50, 100) if k <= max_viewers]
        changes["fanout"] = tuple(steps if steps[-1] == max_viewers else [*steps, max_viewers])
    return replace(plan, **changes)


def _bench_output(
    rows: list[dict[str, Any]],
    report: Any,
    as_json: bool,
    markdown_path: Path | None,
    plot_path: Path | None,
) -> None:
    from .bench import compare

    if plot_path is not None:
        try:
            compare.plot(report, plot_path)
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"plot written to {plot_path}", err=True)
    text = compare.markdown(report, rows)
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(text + "\n")
        click.echo(f"markdown written to {markdown_path}", err=True)
    if as_json:
        click.echo(json.dumps(compare.to_json(report, rows), indent=2, default=str))
    else:
        click.echo(text)
    sys.stdout.flush()


def _bench_check(plot_path: Path | None) -> None:
    """Fail before minutes of measuring, not after."""
    import shutil

    if shutil.which("ffmpeg") is None:
        raise click.ClickException("the benchmarks need the ffmpeg CLI: apt-get install ffmpeg")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "--plot needs matplotlib: pip install 'ingest[bench]' (or leave --plot out)"
            ) from None


@main.group(invoke_without_command=True)
@click.option(
    "--seconds",
    type=float,
    default=2.0,
    show_default=True,
    help="Windows of the in-process rows (parser, bridge, WHIP forwarding, HLS).",
)
@_bench_options
@click.pass_context
def bench(
    ctx: click.Context,
    seconds: float,
    as_json: bool,
    markdown_path: Path | None,
    plot_path: Path | None,
    runs: int | None,
    window: float | None,
    max_streams: int | None,
    max_viewers: int | None,
) -> None:
    """Measure this machine, against the ffmpeg CLI doing the same job in the same run: RTMP
    parser throughput; the WebRTC bridge's latency, first frame and CPU; then `compare` and
    `scale` (1080p30 6 Mbit/s; the ffmpeg CLI with libopus needed; about 7 minutes on 2 cores).
    Prints markdown; `--plot` writes the PNG."""
    if ctx.invoked_subcommand is not None:
        return
    from .bench import run_all

    _bench_check(plot_path)
    plan = _bench_plan(runs, window, max_streams, max_viewers)
    rows, report = run_all(seconds, plan=plan, log=lambda m: click.echo(m, err=True))
    _bench_output(rows, report, as_json, markdown_path, plot_path)


@bench.command("compare")
@_bench_options
def bench_compare(
    as_json: bool,
    markdown_path: Path | None,
    plot_path: Path | None,
    runs: int | None,
    window: float | None,
    max_streams: int | None,
    max_viewers: int | None,
) -> None:
    """One 1080p30 stream, one viewer: this server and the ffmpeg baseline, interleaved runs;
    CPU, memory, frames per second, RTP sequence gaps, ratios (about 1.5 minutes)."""
    from .bench import compare

    _bench_check(plot_path)
    plan = _bench_plan(runs, window, max_streams, max_viewers)
    report = compare.run(plan, scale=False, log=lambda m: click.echo(m, err=True))
    _bench_output([], report, as_json, markdown_path, plot_path)


@bench.command("scale")
@_bench_options
def bench_scale(
    as_json: bool,
    markdown_path: Path | None,
    plot_path: Path | None,
    runs: int | None,
    window: float | None,
    max_streams: int | None,
    max_viewers: int | None,
) -> None:
    """N = 1, 2, 4, 8, 12, 16 streams with one viewer each until a system falls behind, and one
    stream to 1, 5, 10, 20 viewers (ffmpeg: tee muxer), both systems (about 4 minutes)."""
    from .bench import compare

    _bench_check(plot_path)
    plan = _bench_plan(runs, window, max_streams, max_viewers)
    report = compare.run(plan, compare=False, log=lambda m: click.echo(m, err=True))
    _bench_output([], report, as_json, markdown_path, plot_path)


@bench.command("glass")
@click.option("--seconds", type=float, default=15.0, show_default=True, help="Measuring per row.")
@click.option("--json", "as_json", is_flag=True, help="Rows as JSON.")
def bench_glass(seconds: float, as_json: bool) -> None:
    """Glass-to-glass latency measured in headless Chromium (pixel-block timestamps read back from
    the decoded video): RTMP -> WebRTC, WHIP -> WebRTC, RTMP -> LL-HLS, p50/p95 against the
    targets. Needs Playwright (the 'test' extra) and Chromium; about a minute (ingest/glass.py)."""
    import asyncio

    from . import glass

    rows = asyncio.run(glass.measure(seconds))
    click.echo(glass.render(rows, as_json=as_json))
    if not all(row.meets for row in rows):
        raise SystemExit(1)


@bench.command("floor")
@click.option(
    "--streams",
    default=None,
    help="Comma-separated numbers of streams, one viewer each (default 1,8).",
)
@click.option(
    "--runs", type=click.IntRange(1, 20), default=None,
    help="Interleaved runs of each system at each number of streams (default 2).",
)  # fmt: skip
@click.option(
    "--window", type=click.FloatRange(1, 120), default=None,
    help="Seconds of each measurement window (default 6).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of markdown.")
def bench_floor(streams: str | None, runs: int | None, window: float | None, as_json: bool) -> None:
    """How much of our CPU per stream the server's layers cost: this server, the floor (our
    RTMP parser, AAC → Opus, packetizer and send loop with nothing between them, no hub, no
    aiortc) and the ffmpeg baseline, interleaved; CPU per stream and the ratios (about 2.5
    minutes; ingest/bench/floor.py)."""
    from .bench import floor
    from .bench.compare import Plan

    try:
        counts = tuple(int(n) for n in streams.split(",")) if streams else floor.FLOOR_STREAMS
    except ValueError:
        raise click.BadParameter("a comma-separated list of numbers, e.g. 1,8") from None
    if not counts or not all(1 <= n <= 64 for n in counts):
        raise click.BadParameter("each number of streams from 1 to 64")
    plan = Plan(window=window) if window is not None else Plan()
    report = floor.run(
        counts, runs or floor.FLOOR_RUNS, plan, log=lambda m: click.echo(m, err=True)
    )
    if as_json:
        click.echo(json.dumps(report.rows(), indent=2))
    else:
        click.echo(floor.markdown(report), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
