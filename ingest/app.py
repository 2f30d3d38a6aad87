"""The one process: HTTP API, RTMP listener (and later SFU, HLS) on one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .calls import events as ev
from .calls.api import build_router, install_error_handlers
from .calls.service import CallService
from .config import Settings
from .egress import EgressManager
from .errors import ConfigError
from .hls.http import build_egress_router
from .http import MAX_HEADER_BYTES
from .http import protocol_class as http_protocol
from .ingress import RtmpIngress
from .logs import install_redaction
from .media.hub import Hub
from .pages import build_pages_router
from .record.storage import LocalStorage
from .rtmp.server import RTMPServer
from .store.db import Store
from .webrtc.aiortc_compat import PortRange, use_port_range
from .webrtc.ice import IcePolicy, check_url
from .webrtc.sfu import SFU
from .webrtc.signaling import Signaling, build_signaling_router
from .webrtc.whep import build_whep_router
from .whip import WhipIngress, build_whip_router

log = logging.getLogger("ingest")

HTTP_TICK_S = 1.0
"""How often the HTTP server wakes when idle (uvicorn's own loop ticks every 0.1 s)."""
CREDENTIALS_FILE = "credentials.json"
WS_MAX_FRAME_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Credentials:
    api_key: str
    api_secret: str
    generated: bool  # True when this process created them (development mode)


def load_credentials(settings: Settings, *, create: bool = True) -> Credentials:
    """Key and secret from the settings, else the data directory, else generated once there."""
    if settings.api_key and settings.api_secret:
        return Credentials(settings.api_key, settings.api_secret, False)
    if bool(settings.api_key) != bool(settings.api_secret):
        raise ConfigError("set both api_key and api_secret (INGEST_API_KEY / INGEST_API_SECRET)")
    path = settings.data_dir / CREDENTIALS_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return Credentials(str(data["api_key"]), str(data["api_secret"]), False)
        except (ValueError, KeyError) as e:
            raise ConfigError(
                f"{path} is damaged ({e}): delete it to generate new credentials"
            ) from None
    if not create:
        raise ConfigError(
            f"no API credentials: start 'ingest serve' once (it generates them in {path}) "
            "or set INGEST_API_KEY and INGEST_API_SECRET"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    creds = Credentials("dev" + secrets.token_hex(6), secrets.token_urlsafe(48), True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api_key": creds.api_key, "api_secret": creds.api_secret}, f)
    return creds


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror}): choose another port"
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def ice_policy(settings: Settings) -> IcePolicy:
    """The ICE settings as one checked object; a bad value is a ConfigError naming the key."""
    try:
        return IcePolicy(
            urls=tuple(check_url(u) for u in settings.ice_servers),
            username=settings.turn_username,
            credential=settings.turn_password,
            secret=settings.turn_secret,
            ttl=settings.turn_credential_ttl,
            public_ips=tuple(settings.public_ips),
        )
    except ValueError as e:
        raise ConfigError(f"bad ICE setting (ice_servers, turn_*, public_ips): {e}") from None


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for RTMPS (and the check that HTTPS has what it needs), or None."""
    wanted = settings.https or settings.rtmps_port is not None
    if not wanted:
        return None
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None or key is None:
        raise ConfigError(
            "https / rtmps_port need tls_cert_file and tls_key_file (PEM files): set both"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"cannot load tls_cert_file {cert} / tls_key_file {key} ({e}): give a PEM "
            "certificate chain and its private key"
        ) from None
    return context


class _LiveCollector(Collector):
    """Metrics read from live state at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Any:
        parts = GaugeMetricFamily(
            "ingest_participants", "Participants connected, by source", labels=["source"]
        )
        counts: dict[str, int] = {}
        for by_call in self.app.calls.participants.values():
            for p in by_call.values():
                counts[p.source] = counts.get(p.source, 0) + 1
        for source, n in sorted(counts.items()):
            parts.add_metric([source], n)
        yield parts
        yield CounterMetricFamily("ingest_events", "Events emitted", value=self.app.bus.count)
        if self.app.rtmp is not None:
            yield GaugeMetricFamily(
                "ingest_rtmp_connections", "Open RTMP connections", value=self.app.rtmp.connections
            )
        yield from self._publisher_health()
        if self.app.webhooks is not None:
            wh = CounterMetricFamily(
                "ingest_webhooks", "Webhook deliveries by outcome", labels=["outcome"]
            )
            wh.add_metric(["delivered"], self.app.webhooks.delivered)
            wh.add_metric(["failed"], self.app.webhooks.failed)
            yield wh

    def _publisher_health(self) -> Any:
        labels = ["call_cid", "user_id"]
        fams = {
            "bitrate": GaugeMetricFamily(
                "ingest_publisher_bitrate_kbps", "Publisher bitrate (audio + video)", labels=labels
            ),
            "fps": GaugeMetricFamily("ingest_publisher_fps", "Publisher frame rate", labels=labels),
            "keyint": GaugeMetricFamily(
                "ingest_publisher_keyframe_interval_seconds", "Keyframe interval", labels=labels
            ),
            "bframes": GaugeMetricFamily(
                "ingest_publisher_b_frames", "1 when the stream has B-frames", labels=labels
            ),
            "skew": GaugeMetricFamily(
                "ingest_publisher_av_skew_ms", "Audio minus video timestamp", labels=labels
            ),
        }
        ingress = self.app.ingress
        for pub in list(ingress.publishing.active.values()) if ingress is not None else []:
            snap = pub.health_snapshot()
            key = [pub.participant.call_cid, pub.participant.user_id]
            fams["bitrate"].add_metric(key, snap["bitrate_kbps"])
            video = snap.get("video") or {}
            if video.get("fps") is not None:
                fams["fps"].add_metric(key, video["fps"])
            if video.get("keyframe_interval_s") is not None:
                fams["keyint"].add_metric(key, video["keyframe_interval_s"])
            fams["bframes"].add_metric(key, 1.0 if video.get("b_frames") else 0.0)
            if snap.get("av_skew_ms") is not None:
                fams["skew"].add_metric(key, snap["av_skew_ms"])
        yield from fams.values()


class HttpServer(uvicorn.Server):
    """uvicorn's server, ticking once every :data:`HTTP_TICK_S` instead of ten times a second.

    uvicorn's ``main_loop`` sleeps 0.1 s between ticks only to notice ``should_exit`` and to
    refresh the Date header (1 s resolution): ten wakeups a second, ~0.3 % of a core, for an
    idle server. Here every tick refreshes the date (the counter passed to ``on_tick`` is a
    multiple of 10, which is what uvicorn refreshes on), and setting ``should_exit`` (uvicorn's
    signal handler, :meth:`App.stop`) wakes the loop at once. The setter may run in a signal
    handler or another thread: it wakes the loop with ``call_soon_threadsafe``."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit_now = False
        self._wakeup: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self.ticks = 0
        """Times the main loop woke (for tests)."""
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._exit_now

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit_now = value
        wakeup = self._wakeup
        if value and wakeup is not None:
            loop, event = wakeup
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to wake
                loop.call_soon_threadsafe(event.set)

    async def main_loop(self) -> None:
        event = asyncio.Event()
        self._wakeup = asyncio.get_running_loop(), event
        try:
            counter = 0
            should_exit = await self.on_tick(counter)
            while not should_exit:
                counter = (counter + 10) % 864000
                if not self._exit_now:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(HTTP_TICK_S):
                            await event.wait()
                    event.clear()
                self.ticks += 1
                should_exit = await self.on_tick(counter)
        finally:
            self._wakeup = None


class App:
    """Owns every component; ``start()`` listens, ``stop()`` closes everything it opened."""

    def __init__(self, settings: Settings) -> None:
        install_redaction()  # no token reaches a log line, whoever writes it (uvicorn, ...)
        self.settings = settings
        self._cors_origins = self.cors_origins()  # a bad value stops the server here
        self.creds = load_credentials(settings)
        self.store = Store(settings.resolved_database_url)
        self.bus = ev.EventBus()
        self.registry = CollectorRegistry()
        self.http_port = settings.http_port
        self.rtmp_port = settings.rtmp_port
        self._http_sock: socket.socket | None = None
        self._http_server: HttpServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.webhooks: ev.WebhookSender | None = None
        self.hub = Hub()
        self.sfu = SFU(self.hub)
        self.sfu.ice = ice_policy(settings)  # a bad ICE setting stops the server here
        self.tls = tls_context(settings)
        self.rtmps: RTMPServer | None = None
        self.rtmps_port: int | None = None
        self.signaling: Signaling | None = None
        self.whip: WhipIngress | None = None
        self.rtmp: RTMPServer | None = None
        self.ingress: RtmpIngress | None = None
        self.egress: EgressManager | None = None
        self._stopped = False
        self.calls: CallService = None  # type: ignore[assignment]  # set in start()
        self.api: FastAPI = None  # type: ignore[assignment]

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        # Bind first so that port 0 resolves before addresses are computed.
        self._http_sock = _bind(s.host, s.http_port)
        self.http_port = self._http_sock.getsockname()[1]
        scheme = "https" if s.https else "http"
        http_base = s.public_http_url or f"{scheme}://{s.public_host}:{self.http_port}"
        self.calls = CallService(
            self.store,
            self.bus,
            api_key=self.creds.api_key,
            api_secret=self.creds.api_secret,
            rtmp_base="",  # known once the RTMP listener is bound, below
            http_base=http_base,
            token_leeway=s.token_leeway,
        )
        await self.calls.install_builtin_call_types()
        recordings = s.data_dir / "recordings"
        self.egress = EgressManager(
            self.hub,
            self.bus,
            LocalStorage(recordings),
            base_url=lambda: self.calls.http_base,
            storage_label=str(recordings),
        )
        self.calls.egress = self.egress
        for call in await self.store.calls_with_egress():  # a restart resumes what was on
            if call.ended_at is not None:
                continue
            log.info("resuming %s of %s", "HLS and recording" if call.hls and call.recording
                     else "HLS" if call.hls else "recording", call.cid)  # fmt: skip
            if call.hls:
                self.egress.start_hls(call.cid)
            if call.recording:
                self.egress.start_recording(call.cid, call.current_session_id)
        self.ingress = RtmpIngress(self.calls, self.hub, transcoding=self.sfu.transcoding)
        self.rtmp = await self._listen_rtmp(s.rtmp_port, "rtmp_port")
        self.rtmp_port = self.rtmp.port
        self.calls.rtmp_base = f"rtmp://{s.public_host}:{s.public_rtmp_port or self.rtmp_port}"
        if s.rtmps_port is not None:
            self.rtmps = await self._listen_rtmp(s.rtmps_port, "rtmps_port", self.tls)
            self.rtmps_port = self.rtmps.port
            # OBS users expect rtmps:// once the server offers it: advertise that.
            port = s.public_rtmps_port or self.rtmps_port
            self.calls.rtmp_base = f"rtmps://{s.public_host}:{port}"
        if s.webrtc_udp_ports:
            use_port_range(PortRange.parse(s.webrtc_udp_ports))
        if s.webhook_url:
            self.webhooks = ev.WebhookSender(
                self.bus,
                s.webhook_url,
                api_key=self.creds.api_key,
                secret=self.creds.api_secret,
                timeout=s.webhook_timeout,
                max_attempts=s.webhook_max_attempts,
                queue_size=s.webhook_queue,
            )
            self.webhooks.start()
        self.signaling = Signaling(self.calls, self.hub, self.sfu)
        self.whip = WhipIngress(self.calls, self.hub, self.ingress.publishing)  # one layer
        self.whip.ice = self.sfu.ice  # the same STUN/TURN servers and public addresses
        self.api = self._build_api()
        config = uvicorn.Config(
            self.api,
            log_config=None,
            lifespan="off",
            access_log=False,
            server_header=False,
            # h11 with a deadline for each request to arrive (uvicorn has none), a bounded head
            # and idle keep-alive connections closed (see ingest/http.py).
            http=http_protocol(s.http_request_timeout),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=s.http_keep_alive_timeout,
            # Bounded WebSocket frames; messages over signaling's own (smaller) limit still get
            # a clear JSON error from signaling.py rather than a bare close.
            ws_max_size=WS_MAX_FRAME_BYTES,
            ssl_certfile=str(s.tls_cert_file) if s.https else None,
            ssl_keyfile=str(s.tls_key_file) if s.https else None,
        )
        self._http_server = HttpServer(config)
        self._http_task = asyncio.create_task(
            self._http_server.serve(sockets=[self._http_sock]), name="http"
        )
        log.info(
            "HTTP API on http://%s:%d, RTMP on %s:%d",
            s.host,
            self.http_port,
            s.host,
            self.rtmp_port,
        )

    async def _listen_rtmp(
        self, port: int, key: str, tls: ssl.SSLContext | None = None
    ) -> RTMPServer:
        """An RTMP (or, with ``tls``, RTMPS) listener for the ingress; ConfigError names ``key``
        when the port cannot be had."""
        s = self.settings
        assert self.ingress is not None
        server = RTMPServer(
            self.ingress,
            s.host,
            port,
            max_connections=s.rtmp_max_connections,
            max_connections_per_address=s.rtmp_max_connections_per_address,
            idle_timeout=s.rtmp_idle_timeout,
            ssl=tls,
        )
        try:
            await server.start()
        except OSError as e:
            what = "RTMPS" if tls else "RTMP"
            raise ConfigError(
                f"cannot listen for {what} on {s.host}:{port} ({e.strerror}): choose another {key}"
            ) from None
        return server

    def _build_api(self) -> FastAPI:
        api = FastAPI(
            title="ingest",
            version=__version__,
            description="The control plane of the ingest livestream server: users, call types, "
            "calls, members, go live, participants, events. Clients: ingest.client (Python)",
        )
        install_error_handlers(api, cors_origins=self._cors_origins)
        api.include_router(build_pages_router(lambda: self.calls, self.development))  # samples/
        api.include_router(build_router(self.calls))
        api.include_router(build_whep_router(self.sfu, self.calls.authorize_whep))
        if self.whip is not None:
            api.include_router(build_whip_router(self.whip))
        if self.egress is not None:
            api.include_router(build_egress_router(self.calls, self.egress))
        if self.signaling is not None:
            api.include_router(build_signaling_router(self.signaling))
        self.registry.register(_LiveCollector(self))
        up = Gauge("ingest_up", "1 while the server runs", registry=self.registry)
        up.set(1)

        @api.get("/healthz", include_in_schema=False)
        async def healthz() -> JSONResponse:
            return JSONResponse({"status": "ok", "version": __version__})

        @api.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")

        return api

    @property
    def development(self) -> bool:
        """No key and secret configured: they were generated into the data directory."""
        return not (self.settings.api_key and self.settings.api_secret)

    def cors_origins(self) -> list[str]:
        """Browser origins allowed to call the API: configured, or any in development mode."""
        origins = list(self.settings.cors_allowed_origins)
        if "*" in origins and not self.development:
            raise ConfigError(
                "cors_allowed_origins may not contain '*' when api_key/api_secret are set "
                "(production): list the origins of your web apps"
            )
        return origins or (["*"] if self.development else [])

    async def stop(self) -> None:
        """Close everything; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self.signaling is not None:
            await self.signaling.stop()
        if self.whip is not None:
            await self.whip.stop()
        await self.sfu.stop()
        if self.rtmp is not None:
            await self.rtmp.stop()
        if self.rtmps is not None:
            await self.rtmps.stop()
        if self.settings.webrtc_udp_ports:
            use_port_range(None)
        if self.egress is not None:
            await self.egress.stop()  # finishes recordings (closed files, ready events)
        self.hub.close()
        if self._http_server is not None:
            self._http_server.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.store.close()
        if self._http_sock is not None:
            self._http_sock.close()

    def banner(self) -> str:
        s = self.settings
        lines = [
            f"ingest {__version__} ready",
            f"  API      http://{s.public_host}:{self.http_port}  (OpenAPI: /docs, /openapi.json)",
            f"  RTMP     rtmp://{s.public_host}:{self.rtmp_port}/<api_key>.<call_type>.<call_id>",
            f"  API key  {self.creds.api_key}",
        ]
        if self.creds.generated or not (s.api_key and s.api_secret):
            cred_path = Path(s.data_dir) / CREDENTIALS_FILE
            lines += [
                f"  secret   {self.creds.api_secret}",
                f"  (development mode: credentials generated in {cred_path};"
                " set INGEST_API_KEY / INGEST_API_SECRET for production)",
                "  get a token:       ingest token <user_id>",
                "  create a call:     ingest call create livestream <call_id> --host <user_id>",
            ]
        return "\n".join(lines)


async def run_forever(settings: Settings) -> None:
    app = App(settings)
    await app.start()
    print(app.banner(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await app.stop()
