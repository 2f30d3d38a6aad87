"""How WebRTC peers reach this server: ICE servers (STUN/TURN), public addresses, the UDP ports.

- **ICE servers** are configured once (``ice_servers`` URLs) with either static TURN credentials
  or a shared secret (coturn's ``use-auth-secret``, the "TURN REST API" scheme): each session gets
  its own short-lived credentials, ``username = "<expiry>:<user id>"`` and
  ``credential = base64(HMAC-SHA1(secret, username))``, which the TURN server checks without
  asking us. The server's own peer connections use them, and clients get them in WHIP/WHEP
  ``Link`` headers (RFC 9725 §4.6) and in the call WebSocket's ``joined`` message.
- **Public addresses** (``public_ips``): behind a 1:1 NAT or a cloud load balancer the server's
  interfaces have private addresses only. Each of its host candidates is advertised a second time
  with every public address and the same port (a DNAT rule maps it back), so a peer that can reach
  only the public address still connects; the private candidates stay for peers on the LAN.
- **UDP ports** (``webrtc_udp_ports``): see :mod:`ingest.webrtc.ports`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer

from ingest.config import DEFAULT_TURN_CREDENTIAL_TTL

MAX_ICE_SERVER_URLS = 8
"""ICE server URLs one deployment may configure (clients try every one of them)."""

_URL = re.compile(r"^(stun|stuns|turn|turns):[^\s?]+(\?transport=(udp|tcp))?$")
_CANDIDATE = re.compile(
    r"^a=candidate:(?P<foundation>\S+) (?P<component>\d+) (?P<transport>\S+) (?P<priority>\d+) "
    r"(?P<host>\S+) (?P<port>\d+) typ host(?P<rest>.*)$"
)


@dataclass(frozen=True, slots=True)
class IceServer:
    """What a client needs for one ICE server entry (the browser's ``RTCIceServer``)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
            out["credential"] = self.credential
        return out


def check_url(url: str) -> str:
    """A STUN/TURN URL as RFC 7064/7065 write them, or ValueError saying what is wrong."""
    if not _URL.match(url):
        raise ValueError(
            f"'{url}' is not a STUN/TURN URL: write e.g. stun:stun.example.org:3478 or "
            "turn:turn.example.org:3478?transport=udp"
        )
    return url


def turn_credential(secret: str, user: str, ttl: int, now: float | None = None) -> tuple[str, str]:
    """Short-lived TURN credentials for ``user``, as coturn's ``use-auth-secret`` checks them."""
    expiry = int(time.time() if now is None else now) + ttl
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


@dataclass(frozen=True, slots=True)
class IcePolicy:
    """The deployment's ICE settings; the default (nothing configured) is a LAN-only server."""

    urls: tuple[str, ...] = ()
    username: str | None = None  # static TURN credentials ...
    credential: str | None = None
    secret: str | None = None  # ... or coturn's use-auth-secret
    ttl: int = DEFAULT_TURN_CREDENTIAL_TTL  # a client joins again for new credentials after it
    public_ips: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.urls) > MAX_ICE_SERVER_URLS:
            raise ValueError(f"at most {MAX_ICE_SERVER_URLS} ICE server URLs")
        for url in self.urls:
            check_url(url)
        for ip in self.public_ips:
            ipaddress.ip_address(ip)  # ValueError names the bad address
        if self.secret and (self.username or self.credential):
            raise ValueError("give either a TURN secret or a static username/credential, not both")

    @property
    def has_turn(self) -> bool:
        return any(u.startswith("turn") for u in self.urls)

    def servers_for(self, user: str, now: float | None = None) -> list[IceServer]:
        """The ICE servers a client (or our own peer connection) uses for one session."""
        if not self.urls:
            return []
        stun = tuple(u for u in self.urls if u.startswith("stun"))
        turn = tuple(u for u in self.urls if u.startswith("turn"))
        out = [IceServer(stun)] if stun else []
        if turn:
            if self.secret:
                name, cred = turn_credential(self.secret, user, self.ttl, now)
                out.append(IceServer(turn, name, cred))
            else:
                out.append(IceServer(turn, self.username, self.credential))
        return out

    def rtc_configuration(self, user: str = "ingest-server") -> RTCConfiguration:
        """For the server's own peer connections."""
        return RTCConfiguration(
            iceServers=[
                RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                for s in self.servers_for(user)
            ]
        )

    def link_headers(self, user: str) -> list[str]:
        """``Link`` header values announcing the ICE servers (RFC 9725 §4.6)."""
        links = []
        for server in self.servers_for(user):
            for url in server.urls:
                link = f'<{url}>; rel="ice-server"'
                if server.username is not None:
                    link += (
                        f'; username="{server.username}"; credential="{server.credential}"; '
                        'credential-type="password"'
                    )
                links.append(link)
        return links

    def advertise(self, sdp: str) -> str:
        """The SDP with each host candidate repeated for every public address (same port)."""
        if not self.public_ips:
            return sdp
        out: list[str] = []
        seen: set[tuple[str, str]] = set()
        eol = "\r\n" if "\r\n" in sdp else "\n"
        for line in sdp.split(eol):
            out.append(line)
            if line.startswith("m="):
                seen.clear()  # every media section lists its candidates
            m = _CANDIDATE.match(line)
            if m is None or m["transport"].lower() != "udp":
                continue
            try:
                private = ipaddress.ip_address(m["host"])
            except ValueError:
                continue
            for public in self.public_ips:
                pub = ipaddress.ip_address(public)
                if pub.version != private.version or (public, m["port"]) in seen:
                    continue
                seen.add((public, m["port"]))
                # Same port, its own foundation; a little below the private one's priority, so a
                # peer on the LAN still prefers the direct address.
                priority = max(int(m["priority"]) - 1, 1)
                out.append(
                    f"a=candidate:p{m['foundation']} {m['component']} {m['transport']} "
                    f"{priority} {public} {m['port']} typ host{m['rest']}"
                )
        return eol.join(out)
