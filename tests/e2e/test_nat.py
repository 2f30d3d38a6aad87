"""Viewers that cannot reach the server's private address still play, in network namespaces.

Both tests build the same kind of lab (root; all of it removed afterwards)::

    srv 10.77.1.2 ── 10.77.1.1 pub 10.77.2.1 ── …viewer side…

``srv`` runs the server (``ingest serve``) with a private address only. ``pub`` is the "internet
edge": it forwards the viewer's HTTP to the server (a DNAT of TCP 8080, like a load balancer) and
drops every other packet from the viewer side to 10.77.1.0/24. The publisher (ffmpeg) and the
API calls run in ``pub``, which reaches the server directly.

1. **TURN**: coturn (Debian's package) runs in ``pub`` with ``use-auth-secret``; the viewer sits
   in ``view`` behind a masquerading NAT (``nat``), uses relay candidates only, and gets its TURN
   credentials from the server's WHEP ``Link`` headers.
2. **Public address**: the server advertises 10.77.2.1 (``public_ips``) and binds its media in
   a fixed range that ``pub`` DNATs to it; a viewer in ``view`` reaches only 10.77.2.1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, API_SECRET, user_token
from tests.e2e.media import MEDIA_DIR, make_flv
from tests.e2e.netns import Lab, lab, wait_line

pytestmark = pytest.mark.e2e

SERVER, EDGE = "10.77.1.2", "10.77.2.1"
HTTP, RTMP = 8080, 1935
PORTS = (40000, 40019)
TURN_SECRET = "turn-secret-for-tests"
WITHIN = 60.0

SETUP = f"""
from ingest.calls import wire as w
from ingest.client import Client
with Client("http://{SERVER}:{HTTP}", "{API_KEY}", secret="{API_SECRET}") as api:
    api.upsert_users(w.UserRequest(id="alice"), w.UserRequest(id="viewer"))
    api.get_or_create_call("livestream", "nat", w.CallRequest(
        created_by_id="alice", members=[w.MemberRequest(user_id="alice", role="host")]))
    api.go_live("livestream", "nat")
print("call-ready", flush=True)
"""


def server_config(path: Path, **extra: Any) -> Path:
    values: dict[str, Any] = {
        "host": "0.0.0.0",
        "http_port": HTTP,
        "rtmp_port": RTMP,
        "public_host": EDGE,
        "data_dir": str(path / "data"),
        "api_key": API_KEY,
        "api_secret": API_SECRET,
        **extra,
    }

    def toml(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(toml(x) for x in v) + "]"
        return f'"{v}"' if isinstance(v, str) else str(v)

    config = path / "ingest.toml"
    config.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
    return config


async def edge_and_server(the_lab: Lab, **settings: Any) -> tuple[str, str]:
    """``srv`` and ``pub`` with the server running and a publisher pushing; (srv, pub)."""
    srv, pub = the_lab.ns("srv"), the_lab.ns("pub")
    the_lab.link(srv, SERVER, pub, "10.77.1.1")
    the_lab.sh(srv, "ip route add default via 10.77.1.1")
    the_lab.router(pub)
    # The edge: viewers' HTTP goes to the server (a load balancer's job); nothing else passes
    # from the viewer side to the private network, except replies to flows already admitted.
    the_lab.sh(
        pub,
        f"iptables -t nat -A PREROUTING -d {EDGE} -p tcp --dport {HTTP} "
        f"-j DNAT --to-destination {SERVER}:{HTTP} && "
        "iptables -P FORWARD DROP && "
        "iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED,DNAT -j ACCEPT",
    )
    venv = Path(sys.executable).parent
    config = server_config(the_lab.dir, **settings)
    server = await the_lab.start(
        srv, "server", "sh", "-c", f"exec {venv}/ingest --config {config} serve 2>&1"
    )
    await wait_line(server, b"ready", WITHIN)
    setup = await the_lab.start(pub, "setup", str(venv / "python"), "-c", SETUP)
    await wait_line(setup, b"call-ready", WITHIN)
    MEDIA_DIR.mkdir(exist_ok=True)
    src = make_flv(MEDIA_DIR / "baseline-bf0.flv", profile="baseline")
    url = f"rtmp://{SERVER}:{RTMP}/{API_KEY}.livestream.nat/{user_token('alice')}"
    ffmpeg = await the_lab.start(
        pub, "ffmpeg", "ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1",
        "-i", str(src), "-c", "copy", "-f", "flv", url,
    )  # fmt: skip
    the_lab.drain(ffmpeg)
    await wait_line(server, b"publishes video", WITHIN)
    the_lab.drain(server)
    return srv, pub


def unreachable(the_lab: Lab, ns: str) -> None:
    """Prove that ``ns`` cannot reach the server's private address (a TCP connect times out)."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('{SERVER}', {HTTP}), timeout=2)\n"
        "except OSError:\n"
        "    sys.exit(0)\n"
        "sys.exit('reached the private address')"
    )
    the_lab.sh(ns, f'{sys.executable} -c "{probe}"')


async def play(the_lab: Lab, ns: str, *mode: str) -> list[str]:
    """A WHEP viewer in ``ns``: ``[local candidate type, remote address]`` once it decodes."""
    viewer = await the_lab.start(
        ns, "viewer", sys.executable, "-m", "tests.e2e.ice_viewer",
        f"http://{EDGE}:{HTTP}/whep/livestream/nat/alice", user_token("viewer"), *mode,
    )  # fmt: skip
    try:
        line = await wait_line(viewer, b"first-frame", WITHIN)
    except AssertionError as e:
        raise AssertionError(f"{e}\nviewer: {the_lab.log('viewer')}") from None
    return line.decode().split()[1:]


async def test_a_viewer_behind_nat_plays_through_turn() -> None:
    async with lab() as the_lab:
        _srv, pub = await edge_and_server(
            the_lab,
            ice_servers=[f"turn:{EDGE}:3478?transport=udp"],
            turn_secret=TURN_SECRET,
        )
        nat, view = the_lab.ns("nat"), the_lab.ns("view")
        the_lab.link(nat, "10.77.2.2", pub, EDGE)
        the_lab.link(view, "10.77.3.2", nat, "10.77.3.1")
        the_lab.router(nat)
        the_lab.sh(nat, "ip route add default via 10.77.2.1")
        the_lab.sh(view, "ip route add default via 10.77.3.1")
        the_lab.sh(nat, "iptables -t nat -A POSTROUTING -s 10.77.3.0/24 -j MASQUERADE")
        # coturn in pub, listening on both sides once both addresses exist
        coturn = await the_lab.start(
            pub, "coturn", "stdbuf", "-oL", "turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls",
            f"--listening-ip={EDGE}", "--listening-ip=10.77.1.1", "--relay-ip=10.77.1.1",
            "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}", "--realm=ingest.test",
            "--min-port=49160", "--max-port=49200", "--log-file=stdout", "--simple-log",
            f"--pidfile={the_lab.dir / 'turn.pid'}",
        )  # fmt: skip
        await wait_line(coturn, b"Total General servers", WITHIN)
        the_lab.drain(coturn)
        unreachable(the_lab, view)
        local_type, remote = await play(the_lab, view, "relay")
        assert local_type == "relay"
        assert remote.startswith(f"{SERVER}:")  # the server's private host candidate, via TURN


async def test_a_viewer_reaches_the_advertised_public_address() -> None:
    async with lab() as the_lab:
        low, high = PORTS
        _srv, pub = await edge_and_server(
            the_lab, public_ips=[EDGE], webrtc_udp_ports=f"{low}-{high}"
        )
        the_lab.sh(
            pub,
            f"iptables -t nat -A PREROUTING -d {EDGE} -p udp --dport {low}:{high} "
            f"-j DNAT --to-destination {SERVER}",
        )
        view = the_lab.ns("view")
        the_lab.link(view, "10.77.2.2", pub, EDGE)
        the_lab.sh(view, "ip route add default via 10.77.2.1")
        unreachable(the_lab, view)
        local_type, remote = await play(the_lab, view)
        assert local_type == "host"
        assert remote.startswith(f"{EDGE}:")  # the public address, DNATed to the server
        assert low <= int(remote.rsplit(":", 1)[1]) <= high
