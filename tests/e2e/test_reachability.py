"""Reachable from outside: RTMPS with a self-signed certificate, HTTPS, WebRTC media within a
fixed UDP port range. (NAT and TURN: test_nat.py, in network namespaces.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ingest.app import App
from ingest.calls import wire as w
from ingest.client import AsyncClient
from ingest.errors import ConfigError
from ingest.webrtc.aiortc_compat import PortRange
from tests.conftest import API_KEY, API_SECRET, user_token
from tests.e2e.calls import livestream
from tests.e2e.media import MEDIA_DIR, finish, make_flv, push

pytestmark = pytest.mark.e2e


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ingest test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


async def test_rtmps_publisher_becomes_a_participant(
    app_factory: Any, certs: tuple[Path, Path]
) -> None:
    cert, key = certs
    app: App = await app_factory(rtmps_port=0, tls_cert_file=cert, tls_key_file=key)
    assert app.rtmps_port
    MEDIA_DIR.mkdir(exist_ok=True)
    src = make_flv(MEDIA_DIR / "baseline-bf0.flv", profile="baseline")
    async with livestream(app, "livestream", "tls") as call:
        assert call.address == f"rtmps://127.0.0.1:{app.rtmps_port}/{API_KEY}.livestream.tls"
        with app.bus.subscribe("livestream:tls") as sub:
            proc = await push(f"{call.address}/{user_token('alice')}", src, realtime=True)
            while (event := await asyncio.wait_for(sub.get(), 30))["type"] != "ingress.started":
                pass
            assert event["user"]["id"] == "alice"
            parts = await call.client.participants("livestream", "tls")
            assert [p.user.id for p in parts.participants] == ["alice"]
            proc.terminate()
            await finish(proc)
        # plain RTMP still listens beside it
        plain = f"rtmp://127.0.0.1:{app.rtmp_port}/{API_KEY}.livestream.tls/{user_token('alice')}"
        code, err = await finish(await push(plain, src))
        assert code == 0, err[-500:]


async def test_https_serves_the_api(app_factory: Any, certs: tuple[Path, Path]) -> None:
    cert, key = certs
    app: App = await app_factory(https=True, tls_cert_file=cert, tls_key_file=key)
    trust = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{app.http_port}"
    async with AsyncClient(base, API_KEY, secret=API_SECRET, verify=trust) as client:
        await client.upsert_users(w.UserRequest(id="alice"))
        resp = await client.get_or_create_call(
            "livestream", "secure", w.CallRequest(created_by_id="alice")
        )
    assert resp.call.ingress.whip.address.startswith(f"https://127.0.0.1:{app.http_port}/")
    async with httpx.AsyncClient(verify=False) as http:
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port is refused
            await http.get(f"http://127.0.0.1:{app.http_port}/healthz")


async def test_tls_settings_are_checked_at_start(app_factory: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need tls_cert_file and tls_key_file"):
        await app_factory(https=True)
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load tls_cert_file"):
        await app_factory(
            rtmps_port=0, tls_cert_file=tmp_path / "bad.pem", tls_key_file=tmp_path / "bad.pem"
        )


def udp_ports_of_this_process() -> list[int]:
    """Local ports of every UDP socket this process holds (from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
async def viewers() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for p in procs:
        p.kill()
        await p.wait()


async def test_webrtc_binds_only_within_the_port_range(
    app_factory: Any, viewers: list[asyncio.subprocess.Process]
) -> None:
    ports = PortRange(47200, 47239)
    before = set(udp_ports_of_this_process())
    app: App = await app_factory(webrtc_udp_ports=f"{ports.low}-{ports.high}")
    MEDIA_DIR.mkdir(exist_ok=True)
    src = make_flv(MEDIA_DIR / "baseline-bf0.flv", profile="baseline")
    async with livestream(app, "livestream", "ranged") as call:
        await call.go_live()
        with app.bus.subscribe("livestream:ranged") as sub:
            proc = await push(
                f"{call.address}/{user_token('alice')}", src, realtime=True, loop=True
            )
            while (await asyncio.wait_for(sub.get(), 30))["type"] != "ingress.started":
                pass
        try:
            for _ in range(3):  # viewers in child processes: their sockets are not ours
                viewers.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "tests.e2e.webrtc_viewer",
                        call.whep(),
                        user_token("viewer"),
                        stdout=asyncio.subprocess.PIPE,
                    )
                )
            for v in viewers:
                assert v.stdout is not None
                line = await asyncio.wait_for(v.stdout.readline(), 30)
                assert line.strip() == b"first-frame"
            assert len(app.sfu.sessions) == 3
            # the lean send path (webrtc/sending.py) still carries the media on these sockets
            for session in app.sfu.sessions.values():
                for transceiver in session.pc.getTransceivers():
                    sender = transceiver.sender
                    if transceiver.kind == "video":
                        assert getattr(sender, "lean_packets", 0) > 0
            opened = [p for p in udp_ports_of_this_process() if p not in before]
            assert len(opened) >= 3, opened  # at least one host candidate per viewer
            assert all(p in ports for p in opened), opened
        finally:
            proc.terminate()
            await finish(proc)


async def test_a_host_page_over_https_gets_a_camera_and_publishes(
    app_factory: Any, certs: tuple[Path, Path]
) -> None:
    from playwright.async_api import async_playwright

    from tests.e2e.browser import CHROMIUM_ARGS, chromium_path
    from tests.e2e.test_apps import FAKE_MEDIA, open_host

    cert, key = certs
    app: App = await app_factory(
        api_key=None, api_secret=None, https=True, tls_cert_file=cert, tls_key_file=key
    )  # development mode: the page gets its token from the server
    base = f"https://127.0.0.1:{app.http_port}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=[*CHROMIUM_ARGS, *FAKE_MEDIA]
        )
        try:
            # the self-signed certificate is accepted by the test, as a user would accept it
            context = await browser.new_context(ignore_https_errors=True)
            page = await open_host(context, base, "secure", "alice")  # camera, then WHIP
            assert await page.evaluate("() => window.isSecureContext") is True
            participants = app.calls.list_participants("livestream:secure")
            assert [(p.user_id, p.source) for p in participants] == [("alice", "whip")]
        finally:
            await browser.close()


async def test_ice_servers_reach_every_kind_of_client(app_factory: Any) -> None:
    import json

    from websockets.asyncio.client import connect

    app: App = await app_factory(
        ice_servers="stun:turn.test:3478,turn:turn.test:3478?transport=udp",
        turn_secret="s3cret",
        turn_credential_ttl=600,
    )
    async with livestream(app, "livestream", "ice") as call:
        await call.go_live()
        # the call WebSocket's joined message
        url = (
            f"ws://127.0.0.1:{app.http_port}/video/connect?api_key={API_KEY}"
            f"&call_type=livestream&call_id=ice&token={user_token('viewer')}"
        )
        async with connect(url) as ws:
            joined = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert joined["type"] == "joined"
        stun, turn = joined["ice_servers"]
        assert stun == {"urls": ["stun:turn.test:3478"]}
        assert turn["urls"] == ["turn:turn.test:3478?transport=udp"]
        assert turn["username"].endswith(":viewer")
        assert int(turn["username"].split(":")[0]) > 0
        # WHEP announces them before the offer (OPTIONS) in Link headers (RFC 9725)
        async with httpx.AsyncClient() as http:
            options = await http.options(call.whep())
        links = options.headers["link"]
        assert '<stun:turn.test:3478>; rel="ice-server"' in links
        assert 'credential-type="password"' in links
