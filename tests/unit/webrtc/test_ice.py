"""ICE settings: TURN credentials, Link headers, public addresses in candidates, port ranges."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from ingest.config import load
from ingest.errors import ConfigError
from ingest.webrtc.aiortc_compat import PortRange
from ingest.webrtc.ice import IcePolicy, check_url, turn_credential

ANSWER = "\r\n".join(
    [
        "v=0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=candidate:abc 1 udp 2130706431 10.0.0.5 50001 typ host",
        "a=candidate:def 1 udp 2130706431 fd00::5 50002 typ host",
        "a=candidate:ghi 1 udp 1694498815 198.51.100.7 50001 typ srflx raddr 10.0.0.5 rport 50001",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=candidate:abc 1 udp 2130706431 10.0.0.5 50001 typ host",
        "",
    ]
)


def test_turn_credentials_are_the_rest_api_scheme() -> None:
    user, cred = turn_credential("s3cret", "alice", ttl=600, now=1_000_000)
    assert user == "1000600:alice"
    want = hmac.new(b"s3cret", b"1000600:alice", hashlib.sha1).digest()
    assert base64.b64decode(cred) == want


def test_servers_for_a_session() -> None:
    policy = IcePolicy(
        urls=("stun:turn.example.org:3478", "turn:turn.example.org:3478?transport=udp"),
        secret="s3cret",
        ttl=600,
    )
    stun, turn = policy.servers_for("bob", now=100)
    assert stun.urls == ("stun:turn.example.org:3478",)
    assert stun.username is None
    assert turn.username == "700:bob"
    assert turn.as_json()["credential"] == turn.credential
    config = policy.rtc_configuration()
    assert config.iceServers is not None
    assert [s.urls for s in config.iceServers][1] == ["turn:turn.example.org:3478?transport=udp"]
    static = IcePolicy(urls=("turn:t.example:3478",), username="u", credential="p")
    assert static.servers_for("x")[0].as_json() == {
        "urls": ["turn:t.example:3478"],
        "username": "u",
        "credential": "p",
    }
    assert IcePolicy().servers_for("x") == []
    assert IcePolicy().link_headers("x") == []


def test_link_headers_follow_rfc_9725() -> None:
    policy = IcePolicy(urls=("stun:s.example:3478", "turn:t.example:3478"), secret="k", ttl=60)
    stun, turn = policy.link_headers("v")
    assert stun == '<stun:s.example:3478>; rel="ice-server"'
    assert turn.startswith('<turn:t.example:3478>; rel="ice-server"; username="')
    assert turn.endswith('credential-type="password"')


def test_public_addresses_repeat_host_candidates() -> None:
    sdp = IcePolicy(public_ips=("203.0.113.9",)).advertise(ANSWER)
    lines = sdp.split("\r\n")
    public = [ln for ln in lines if " 203.0.113.9 " in ln]
    # one per media section, same port as the IPv4 host candidate, not for IPv6 or srflx
    assert public == [
        "a=candidate:pabc 1 udp 2130706430 203.0.113.9 50001 typ host",
        "a=candidate:pabc 1 udp 2130706430 203.0.113.9 50001 typ host",
    ]
    assert all(ln in lines for ln in ANSWER.split("\r\n"))  # the private ones stay
    assert IcePolicy().advertise(ANSWER) == ANSWER
    v6 = IcePolicy(public_ips=("2001:db8::1",)).advertise(ANSWER)
    assert "a=candidate:pdef 1 udp 2130706430 2001:db8::1 50002 typ host" in v6


def test_bad_ice_settings_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="not a STUN/TURN URL"):
        check_url("http://turn.example.org")
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        IcePolicy(public_ips=("not-an-ip",))
    with pytest.raises(ValueError, match="either a TURN secret"):
        IcePolicy(urls=("turn:t:1",), secret="a", username="u", credential="p")
    from ingest.webrtc.ice import MAX_ICE_SERVER_URLS

    with pytest.raises(ValueError, match=f"at most {MAX_ICE_SERVER_URLS}"):
        IcePolicy(urls=tuple(f"stun:s{i}.example" for i in range(MAX_ICE_SERVER_URLS + 1)))


def test_ice_settings_from_the_environment(tmp_path: object) -> None:
    from ingest.app import ice_policy

    s = load(
        None,
        environ={
            "INGEST_ICE_SERVERS": "stun:a.example:3478, turn:a.example:3478?transport=udp",
            "INGEST_TURN_SECRET": "k",
            "INGEST_PUBLIC_IPS": "203.0.113.9",
            "INGEST_WEBRTC_UDP_PORTS": "50000-50100",
        },
    )
    policy = ice_policy(s)
    assert policy.urls == ("stun:a.example:3478", "turn:a.example:3478?transport=udp")
    assert policy.public_ips == ("203.0.113.9",)
    bad = load(None, environ={"INGEST_ICE_SERVERS": "turn.example.org"})
    with pytest.raises(ConfigError, match="not a STUN/TURN URL"):
        ice_policy(bad)
    with pytest.raises(ConfigError, match="webrtc_udp_ports"):
        load(None, environ={"INGEST_WEBRTC_UDP_PORTS": "lots"})


def test_port_ranges() -> None:
    r = PortRange.parse("50000-50009")
    assert (r.low, r.high, r.size) == (50000, 50009, 10)
    assert 50000 in r
    assert 50009 in r
    assert 50010 not in r
    assert PortRange.parse("6000").size == 1
    with pytest.raises(ValueError, match="within 1024-65535"):
        PortRange.parse("80-90")
    with pytest.raises(ValueError, match="low <= high"):
        PortRange.parse("6000-5000")
    with pytest.raises(ValueError, match="write it as 50000-50100"):
        PortRange.parse("a-b")
