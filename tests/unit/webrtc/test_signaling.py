"""The WebSocket signaling without a socket: messages, the event mapping, the outbox, the SDP
rewriting, subscriptions and every limit.

A fake control plane stands in for CallService; the hub and SFU are real. The offer tests make
aiortc peer connections (they bind local UDP sockets to gather candidates; nothing connects).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from fastapi import WebSocket

from ingest.calls import capabilities as caps
from ingest.calls import events as ev
from ingest.calls.service import (
    CUT_KICKED,
    CUT_REMOVED,
    CUT_REVOKED,
    Caller,
    CallService,
    Participant,
)
from ingest.errors import InputError, NotFoundError, PermissionDeniedError
from ingest.media.hub import Hub
from ingest.media.units import AudioConfig, Kind, VideoConfig
from ingest.webrtc import negotiation
from ingest.webrtc import signaling as sig
from ingest.webrtc.bridge import VideoBridge
from ingest.webrtc.sfu import MAX_OFFER_BYTES, SFU
from ingest.webrtc.subscriber import send_preferences
from tests.unit.webrtc.offers import CHROME

CID, UID = "livestream:show", "alice"
HIGH = VideoConfig(codec="h264", record=b"", width=1280, height=720, profile=100, level=40)
AAC = AudioConfig(codec="aac", record=b"\x11\x90", sample_rate=48_000, channels=2)
HOST = Caller(server=False, user_id="carol")
VIEWER = Caller(server=False, user_id="viewer")
HOST_CAPS = [caps.JOIN_CALL, caps.JOIN_BACKSTAGE, caps.READ_CALL]
VIEWER_CAPS = [caps.JOIN_CALL, caps.READ_CALL]


# --- messages -------------------------------------------------------------------------------


def test_parse_every_message_type() -> None:
    assert sig.parse_message('{"type": "ping"}') == sig.Ping()
    assert sig.parse_message(b'{"type": "auth", "token": "t"}') == sig.Auth("t")
    assert sig.parse_message('{"type":"subscribe","user_session_id":"s"}') == sig.Subscribe("s")
    assert sig.parse_message('{"type":"unsubscribe","user_session_id":"s"}') == sig.Unsubscribe("s")
    answer = '{"type":"answer","user_session_id":"s","sdp":"v=0","offer_id":3}'
    assert sig.parse_message(answer) == sig.Answer("s", "v=0", 3)
    assert sig.parse_message('{"type":"answer","user_session_id":"s","sdp":"v=0"}') == sig.Answer(
        "s", "v=0", None
    )


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        ("{not json", sig.ERR_BAD_JSON, "not JSON"),
        (b"\xff\xfe", sig.ERR_BAD_JSON, "not JSON"),
        ("[1, 2]", sig.ERR_BAD_MESSAGE, "JSON object"),
        ('{"kind": "ping"}', sig.ERR_BAD_MESSAGE, '"type"'),
        ('{"type": 7}', sig.ERR_BAD_MESSAGE, '"type"'),
        ('{"type": "dance"}', sig.ERR_UNKNOWN_TYPE, "subscribe"),
        ('{"type": "subscribe"}', sig.ERR_BAD_MESSAGE, "user_session_id"),
        ('{"type": "subscribe", "user_session_id": ""}', sig.ERR_BAD_MESSAGE, "non-empty"),
        ('{"type": "subscribe", "user_session_id": 5}', sig.ERR_BAD_MESSAGE, "string"),
        ('{"type": "answer", "user_session_id": "s"}', sig.ERR_BAD_MESSAGE, "sdp"),
        (
            '{"type": "answer", "user_session_id": "s", "sdp": "v", "offer_id": "1"}',
            sig.ERR_BAD_MESSAGE,
            "offer_id",
        ),
        (
            '{"type": "answer", "user_session_id": "s", "sdp": "v", "offer_id": true}',
            sig.ERR_BAD_MESSAGE,
            "offer_id",
        ),
        ('{"type": "auth"}', sig.ERR_BAD_MESSAGE, "token"),
    ],
)
def test_bad_messages_say_what_is_wrong(raw: str | bytes, code: str, words: str) -> None:
    with pytest.raises(sig.ProtocolError) as info:
        sig.parse_message(raw)
    assert info.value.code == code
    assert words in info.value.message


def test_limit_message_size() -> None:
    assert MAX_OFFER_BYTES < sig.MAX_MESSAGE_BYTES
    head = '{"type": "ping", "pad": "'
    fits = head + "x" * (sig.MAX_MESSAGE_BYTES - len(head) - 2) + '"}'
    assert len(fits) == sig.MAX_MESSAGE_BYTES
    assert sig.parse_message(fits) == sig.Ping()
    too_big = head + "x" * (sig.MAX_MESSAGE_BYTES - len(head) - 1) + '"}'
    with pytest.raises(sig.ProtocolError) as info:
        sig.parse_message(too_big)
    assert info.value.code == sig.ERR_TOO_LARGE
    assert str(sig.MAX_MESSAGE_BYTES) in info.value.message
    # multi-byte characters count as bytes, not characters
    wide = head + "é" * (sig.MAX_MESSAGE_BYTES // 2) + '"}'
    with pytest.raises(sig.ProtocolError):
        sig.parse_message(wide)


def test_limit_id_length() -> None:
    usid = "s" * sig.MAX_ID_LENGTH
    msg = json.dumps({"type": "subscribe", "user_session_id": usid})
    assert sig.parse_message(msg) == sig.Subscribe(usid)
    longer = json.dumps({"type": "subscribe", "user_session_id": usid + "s"})
    with pytest.raises(sig.ProtocolError, match="longer than"):
        sig.parse_message(longer)


def test_limit_close_reason() -> None:
    assert sig.close_reason("short") == "short"
    long = sig.close_reason("é" * 200)
    assert len(long.encode()) <= sig.MAX_CLOSE_REASON_BYTES == 123
    assert long.endswith("...")


# --- the event → JSON mapping ---------------------------------------------------------------


def test_events_pass_through_in_streams_shape() -> None:
    bus = ev.EventBus()
    event = bus.emit(ev.REACTION_NEW, CID, reaction={"type": "like", "user": {"id": "v"}})
    msg = sig.event_message(event)
    assert msg == event
    assert msg is not event
    data = json.loads(sig.encode(msg))
    assert data["type"] == "call.reaction_new"
    assert data["call_cid"] == CID
    assert data["created_at"].endswith("Z")
    assert data["reaction"] == {"type": "like", "user": {"id": "v"}}


def test_participant_events_gain_tracks_and_rfc3339_times() -> None:
    joined_at = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    participant = {
        "user": {"id": UID},
        "user_session_id": "s1",
        "role": "host",
        "joined_at": joined_at,
        "source": "rtmp",
    }
    event = {"type": ev.PARTICIPANT_JOINED, "call_cid": CID, "participant": participant}
    msg = sig.event_message(event, ["audio", "video"])
    assert msg["participant"]["tracks"] == ["audio", "video"]
    assert "tracks" not in participant  # the bus's dict is shared: never modified
    data = json.loads(sig.encode(msg))
    assert data["participant"]["joined_at"] == "2025-01-02T03:04:05.678000Z"
    assert sig.event_message(event)["participant"]["tracks"] == []
    with_tracks = {**event, "participant": {**participant, "tracks": ["video"]}}
    assert sig.event_message(with_tracks, ["audio"])["participant"]["tracks"] == ["video"]


def test_error_message_shape() -> None:
    assert sig.error_message("bad_json", "why") == {
        "type": "error",
        "code": "bad_json",
        "message": "why",
    }


# --- the outbox -----------------------------------------------------------------------------


def test_limit_event_queue_drops_oldest_events_only() -> None:
    box = sig.Outbox()
    assert (box.max_events, box.max_control) == (sig.EVENT_QUEUE, sig.CONTROL_QUEUE)
    box.put_control({"n": "offer"})
    for i in range(sig.EVENT_QUEUE + 5):
        box.put_event({"n": i})
    assert box.dropped == 5
    assert len(box) == sig.EVENT_QUEUE + 1
    got = [box.get_nowait() for _ in range(len(box))]
    assert got[0] == {"n": "offer"}  # a reply is never dropped, and keeps its place
    assert got[1:] == [{"n": i} for i in range(5, sig.EVENT_QUEUE + 5)]
    assert box.get_nowait() is None


def test_limit_control_queue_refuses_when_full() -> None:
    box = sig.Outbox(max_events=2, max_control=3)
    assert all(box.put_control({"n": i}) for i in range(3))
    assert not box.put_control({"n": 3})
    close = sig.CloseRequest(1000, "bye")
    assert box.put_control(close, force=True)
    box.put_event({"e": 1})
    assert [box.get_nowait() for _ in range(5)] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
        close,
        {"e": 1},
    ]
    assert box.put_control({"n": 4})


async def test_outbox_get_waits_for_an_item() -> None:
    box = sig.Outbox()
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)  # let it wait (a scheduling point, not a delay)
    assert not getter.done()
    box.put_event({"e": 1})
    assert await getter == {"e": 1}


# --- SDP ------------------------------------------------------------------------------------


def test_offer_names_the_streams_profile() -> None:
    sdp = negotiation.offer_with_profiles(CHROME, {"1": "640028"})
    video = sdp.split("m=video")[1]
    h264 = [line for line in video.splitlines() if line.startswith("a=fmtp:") and "profile" in line]
    assert len(h264) > 1
    # the first H.264 entry names the stream; the others (the fallback) stay as offered
    assert h264[0].endswith(
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640028"
    )
    assert sum("profile-level-id=640028" in line for line in h264) == 1
    assert "a=candidate:" in sdp  # candidates survive the rewrite
    assert negotiation.offer_with_profiles(CHROME, {}).count("profile-level-id=640028") == 0


def test_answer_is_mapped_back_to_aiortcs_entry() -> None:
    offered = {
        "1": [
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=112,
                parameters={"packetization-mode": "1", "profile-level-id": "42e01f"},
            )
        ]
    }
    sdp, said = negotiation.answer_for_aiortc(CHROME, offered)
    video = next(m for m in said.media if m.kind == "video")
    (said_112,) = [c for c in video.rtp.codecs if c.payloadType == 112]
    assert said_112.parameters["profile-level-id"] == "64001f"  # as the client said it
    assert "profile-level-id=42e01f" in sdp.split("a=fmtp:112 ")[1].splitlines()[0]
    no_h264 = {"1": [RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=7)]}
    with pytest.raises(InputError, match=r"no H\.264"):
        negotiation.answer_for_aiortc(CHROME, no_h264)
    with pytest.raises(InputError, match="not SDP"):
        negotiation.answer_for_aiortc("m=video x", offered)


def test_h264_send_preferences() -> None:
    """Every aiortc H.264 entry (the offer rewrites the first to the stream's profile), RTX."""
    hub = Hub()
    track = hub.publish(CID, "s1", UID, Kind.VIDEO, HIGH)
    bridge = VideoBridge(track)
    prefs = send_preferences(bridge)
    plids = [p.parameters.get("profile-level-id") for p in prefs if p.mimeType == "video/H264"]
    assert plids == ["42001f", negotiation.AIORTC_H264_PROFILE]
    assert {p.mimeType for p in prefs} == {"video/H264", "video/rtx"}
    hub.close()


def test_an_answer_that_rejects_a_section_says_so() -> None:
    offered = {
        "1": [
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=112,
                parameters={"packetization-mode": "1", "profile-level-id": "42e01f"},
            )
        ]
    }
    rejected = CHROME.replace("m=video 9 ", "m=video 0 ")
    assert rejected != CHROME
    with pytest.raises(InputError, match=r"rejects the video section \(mid 1, port 0\)"):
        negotiation.answer_for_aiortc(rejected, offered)


# --- subscriptions --------------------------------------------------------------------------


@dataclass
class FakeCall:
    cid: str = CID
    backstage: bool = True


@dataclass
class FakeCalls:
    """What the signaling uses of CallService."""

    bus: ev.EventBus = field(default_factory=ev.EventBus)
    call: FakeCall = field(default_factory=FakeCall)
    participants: dict[str, dict[str, Participant]] = field(default_factory=dict)
    api_key: str = "key"

    async def load_call(self, call_type: str, call_id: str) -> tuple[FakeCall, object]:
        if f"{call_type}:{call_id}" != CID:
            raise NotFoundError("no such call")
        return self.call, object()

    async def authorize_watch(self, caller: Caller, call: FakeCall, ct: object) -> None:
        if call.backstage and caller is VIEWER:
            raise PermissionDeniedError(f"{CID} is not live yet: it is in backstage")

    def list_participants(self, cid: str) -> list[Participant]:
        return list(self.participants.get(cid, {}).values())

    def participant_json(self, p: Participant) -> dict[str, Any]:
        return {"user": {"id": p.user_id}, "user_session_id": p.session_id, "role": p.role}

    def join(self, usid: str, user_id: str = UID) -> Participant:
        p = Participant(CID, user_id, usid, "host", datetime.now(UTC), "rtmp")
        self.participants.setdefault(CID, {})[usid] = p
        return p


@pytest.fixture
def calls() -> FakeCalls:
    return FakeCalls()


@pytest.fixture
async def signaling(calls: FakeCalls) -> AsyncIterator[sig.Signaling]:
    hub = Hub()
    sfu = SFU(hub)
    s = sig.Signaling(cast(CallService, calls), hub, sfu, track_settle=0.0)
    yield s
    await sfu.stop()
    hub.close()


def make_client(signaling: sig.Signaling, caller: Caller = HOST) -> sig.SignalingClient:
    have = HOST_CAPS if caller is HOST else VIEWER_CAPS
    return sig.SignalingClient(signaling, cast(WebSocket, None), CID, caller, have)


def sent(client: sig.SignalingClient) -> list[Any]:
    out = []
    while (item := client.outbox.get_nowait()) is not None:
        out.append(item)
    return out


def types(items: list[Any]) -> list[str]:
    return [i["type"] if isinstance(i, dict) else "close" for i in items]


async def test_limit_max_subscriptions(signaling: sig.Signaling, calls: FakeCalls) -> None:
    assert signaling.max_subscriptions == sig.MAX_SUBSCRIPTIONS
    client = make_client(signaling)
    for i in range(sig.MAX_SUBSCRIPTIONS + 1):
        calls.join(f"s{i}")
    for i in range(sig.MAX_SUBSCRIPTIONS):
        await client.subscribe(f"s{i}")  # no tracks yet: pending, no offer
    assert types(sent(client)) == ["subscribed"] * sig.MAX_SUBSCRIPTIONS
    with pytest.raises(sig.ProtocolError) as info:
        await client.subscribe(f"s{sig.MAX_SUBSCRIPTIONS}")
    assert info.value.code == sig.ERR_TOO_MANY_SUBSCRIPTIONS
    await client.unsubscribe("s0")
    assert sent(client) == [
        {"type": "unsubscribed", "user_session_id": "s0", "reason": "unsubscribed"}
    ]
    await client.subscribe(f"s{sig.MAX_SUBSCRIPTIONS}")
    await client.cleanup()


async def test_subscribe_errors(signaling: sig.Signaling, calls: FakeCalls) -> None:
    host, viewer = make_client(signaling), make_client(signaling, VIEWER)
    with pytest.raises(sig.ProtocolError) as info:
        await host.subscribe("nobody")
    assert info.value.code == sig.ERR_UNKNOWN_PARTICIPANT
    calls.join("s1")
    with pytest.raises(sig.ProtocolError) as info:
        await viewer.subscribe("s1")
    assert info.value.code == sig.ERR_NOT_ALLOWED
    assert "not live yet" in info.value.message
    await host.subscribe("s1")
    with pytest.raises(sig.ProtocolError) as info:
        await host.subscribe("s1")
    assert info.value.code == sig.ERR_ALREADY_SUBSCRIBED
    with pytest.raises(sig.ProtocolError) as info:
        await host.unsubscribe("s2")
    assert info.value.code == sig.ERR_NOT_SUBSCRIBED
    with pytest.raises(sig.ProtocolError) as info:
        await host.answer(sig.Answer("s1", "v=0"))
    assert info.value.code == sig.ERR_STALE_ANSWER  # pending: no offer yet
    await host.cleanup()


async def test_events_end_subscriptions(signaling: sig.Signaling, calls: FakeCalls) -> None:
    host, viewer = make_client(signaling), make_client(signaling, VIEWER)
    for usid in ("s1", "s2"):
        calls.join(usid)
        await host.subscribe(usid)
    calls.call.backstage = False
    await viewer.subscribe("s1")
    sent(host), sent(viewer)

    left = {"type": ev.PARTICIPANT_LEFT, "call_cid": CID, "participant": {"user_session_id": "s2"}}
    await host._on_event(left)
    assert types(sent(host)) == [ev.PARTICIPANT_LEFT, "unsubscribed"]
    assert set(host.subscriptions) == {"s1"}

    back = {"type": ev.CALL_UPDATED, "call_cid": CID, "backstage": True}
    await viewer._on_event(back)
    await host._on_event(back)
    got = sent(viewer)
    assert types(got) == [ev.CALL_UPDATED, "unsubscribed"]
    assert "backstage" in got[1]["reason"]
    assert not viewer.subscriptions
    assert types(sent(host)) == [ev.CALL_UPDATED]  # hosts may watch backstage
    assert set(host.subscriptions) == {"s1"}

    await host._on_event({"type": ev.CALL_ENDED, "call_cid": CID})
    assert types(sent(host)) == [ev.CALL_ENDED, "unsubscribed"]

    kicked = {"type": ev.KICKED_USER, "call_cid": CID, "user": {"id": "carol"}}
    await viewer._on_event(kicked)
    assert types(sent(viewer)) == [ev.KICKED_USER]  # someone else was kicked
    await host._on_event(kicked)
    got = sent(host)
    assert types(got) == [ev.KICKED_USER, "close"]
    assert got[1].code == sig.CLOSE_KICKED


async def test_joined_lists_participants_with_tracks(
    signaling: sig.Signaling, calls: FakeCalls
) -> None:
    calls.join("s1")
    signaling.hub.publish(CID, "s1", UID, Kind.VIDEO, HIGH)
    joined = await make_client(signaling)._joined()
    assert joined["type"] == "joined"
    assert joined["backstage"] is True
    assert joined["user_id"] == "carol"
    assert joined["participants"] == [
        {"user": {"id": UID}, "user_session_id": "s1", "role": "host", "tracks": ["video"]}
    ]
    assert joined["limits"]["max_subscriptions"] == sig.MAX_SUBSCRIPTIONS


@pytest.mark.usefixtures("chrome_like")
async def test_offer_answer_and_shared_bridges(signaling: sig.Signaling, calls: FakeCalls) -> None:
    calls.join("s1")
    hub, sfu = signaling.hub, signaling.sfu
    hub.publish(CID, "s1", UID, Kind.VIDEO, HIGH)
    hub.publish(CID, "s1", UID, Kind.AUDIO, AAC)
    clients = [make_client(signaling), make_client(signaling)]
    peers: list[RTCPeerConnection] = []
    try:
        for client in clients:
            await client.subscribe("s1")
            subscribed, offer = sent(client)
            assert subscribed == {
                "type": "subscribed",
                "user_session_id": "s1",
                "tracks": ["audio", "video"],
            }
            assert offer["type"] == "offer"
            assert offer["tracks"] == ["audio", "video"]
            assert "profile-level-id=640028" in offer["sdp"]
            assert "VP8" not in offer["sdp"]
            assert "opus/48000/2" in offer["sdp"]
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            peers.append(pc)
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            with pytest.raises(sig.ProtocolError) as info:
                await client.answer(
                    sig.Answer("s1", pc.localDescription.sdp, offer["offer_id"] + 1)
                )
            assert info.value.code == sig.ERR_STALE_ANSWER
            await client.answer(sig.Answer("s1", pc.localDescription.sdp, offer["offer_id"]))
            sub_pc = client.subscriptions["s1"].pc
            assert sub_pc is not None
            assert sub_pc.signalingState == "stable"
        # two clients, one bridge per track
        assert len(sfu._bridges) == 2
        assert sorted(sfu._refs.values()) == [2, 2]

        # the participant's video is replaced: a new offer replaces the connection
        hub.publish(CID, "s1", UID, Kind.VIDEO, HIGH, replace=True)
        client = clients[0]
        async with client._lock:
            await client._sync(client.subscriptions["s1"])
        (offer,) = sent(client)
        assert offer["type"] == "offer"
        assert offer["offer_id"] > 1

        # the participant's tracks end: the connection closes, the subscription waits
        hub.unpublish(CID, "s1")
        async with client._lock:
            await client._sync(client.subscriptions["s1"])
        assert client.subscriptions["s1"].pc is None
    finally:
        for client in clients:
            await client.cleanup()
        for pc in peers:
            await pc.close()
    assert not sfu._bridges


async def test_a_browser_without_high_takes_the_fallback_entry(
    signaling: sig.Signaling, calls: FakeCalls, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that cannot decode High by its SDP (aiortc here, headless Chromium in the e2e
    test) accepts our offer's Constrained Baseline entry; a refused answer is logged."""
    calls.join("s1")
    signaling.hub.publish(CID, "s1", UID, Kind.VIDEO, HIGH)
    signaling.hub.publish(CID, "s1", UID, Kind.AUDIO, AAC)
    client = make_client(signaling)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await client.subscribe("s1")
        _, offer = sent(client)
        assert "profile-level-id=640028" in offer["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        video = answer.split("m=video")[1]
        assert "profile-level-id=42e01f" in video
        assert "640028" not in video
        # the same answer with its video section rejected: refused, logged, unsubscribed
        caplog.set_level("WARNING", "ingest.webrtc.signaling")
        port = video.split()[0]
        rejected = answer.replace(f"m=video {port} ", "m=video 0 ")
        await client.answer(sig.Answer("s1", rejected, offer["offer_id"]))
        error, unsubscribed = sent(client)
        assert error["code"] == sig.ERR_BAD_ANSWER
        assert "rejects the video section" in error["message"]
        assert unsubscribed["type"] == "unsubscribed"
        assert any(
            "answer for s1" in r.getMessage() and "refused" in r.getMessage()
            for r in caplog.records
        ), caplog.text
        # subscribed again, the answer as the client made it is taken
        await client.subscribe("s1")
        _, offer = sent(client)
        await pc.close()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await client.answer(sig.Answer("s1", pc.localDescription.sdp, offer["offer_id"]))
        sub_pc = client.subscriptions["s1"].pc
        assert sub_pc is not None
        assert sub_pc.signalingState == "stable"
        assert sent(client) == []
        subscriber = client.subscriptions["s1"].subscriber
        assert subscriber is not None
        assert subscriber.video_profile_level_id == "42e01f"  # the fallback entry
    finally:
        await client.cleanup()
        await pc.close()


@pytest.mark.usefixtures("chrome_like")
async def test_a_browser_with_high_gets_the_streams_profile(
    signaling: sig.Signaling, calls: FakeCalls
) -> None:
    """The same offer to a client that lists High: it accepts both entries, the sender sends
    the stream's (the entry WHEP would answer it with)."""
    calls.join("s1")
    signaling.hub.publish(CID, "s1", UID, Kind.VIDEO, HIGH)
    signaling.hub.publish(CID, "s1", UID, Kind.AUDIO, AAC)
    client = make_client(signaling)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await client.subscribe("s1")
        _, offer = sent(client)
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await client.answer(sig.Answer("s1", pc.localDescription.sdp, offer["offer_id"]))
        subscriber = client.subscriptions["s1"].subscriber
        assert subscriber is not None
        assert subscriber.video_profile_level_id == "640028"
    finally:
        await client.cleanup()
        await pc.close()


async def test_an_offer_never_answered_is_dropped_and_logged(
    calls: FakeCalls, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that refuses our offer in its browser sends no answer: the subscription ends
    when the connect timeout is over, and the server's log says the offer was never answered."""
    hub = Hub()
    sfu = SFU(hub, connect_timeout=0.05)
    signaling = sig.Signaling(cast(CallService, calls), hub, sfu, track_settle=0.0)
    calls.join("s1")
    hub.publish(CID, "s1", UID, Kind.VIDEO, HIGH)
    hub.publish(CID, "s1", UID, Kind.AUDIO, AAC)
    client = make_client(signaling)
    caplog.set_level("WARNING", "ingest.webrtc.signaling")
    try:
        await client.subscribe("s1")
        assert types(sent(client)) == ["subscribed", "offer"]
        dropped = await asyncio.wait_for(client.outbox.get(), 10)
        assert isinstance(dropped, dict)
        assert dropped["type"] == "unsubscribed"
        assert "not made in time" in dropped["reason"]
        assert "was never answered" in caplog.text
    finally:
        await client.cleanup()
        await sfu.stop()
        hub.close()


@pytest.mark.usefixtures("chrome_like")
async def test_limit_track_settle(calls: FakeCalls) -> None:
    hub = Hub()
    sfu = SFU(hub)
    signaling = sig.Signaling(cast(CallService, calls), hub, sfu)
    assert signaling.track_settle == sig.TRACK_SETTLE > 0
    calls.join("s1")
    hub.publish(CID, "s1", UID, Kind.AUDIO, AAC)
    client = make_client(signaling)
    try:
        await client.subscribe("s1")
        assert types(sent(client)) == ["subscribed"]  # one track: it waits for the other
        settle = client.subscriptions["s1"].settle
        assert settle is not None
        hub.publish(CID, "s1", UID, Kind.VIDEO, HIGH)  # the second track comes: offer at once
        async with client._lock:
            await client._sync(client.subscriptions["s1"])
        (offer,) = sent(client)
        assert offer["tracks"] == ["audio", "video"]
        await asyncio.gather(settle, return_exceptions=True)
        assert settle.cancelled()
    finally:
        await client.cleanup()
        await sfu.stop()
        hub.close()


@pytest.mark.parametrize(
    ("cause", "code", "error"),
    [
        (CUT_KICKED, sig.CLOSE_KICKED, sig.ERR_KICKED),
        (CUT_REVOKED, sig.CLOSE_UNAUTHORIZED, sig.ERR_UNAUTHORIZED),
        (CUT_REMOVED, sig.CLOSE_FORBIDDEN, sig.ERR_NOT_ALLOWED),
    ],
)
async def test_a_cut_sends_the_reason_then_closes_and_ignores_the_client(
    signaling: sig.Signaling, calls: FakeCalls, cause: str, code: int, error: str
) -> None:
    assert sig.CUT_GRACE > 0
    calls.call.backstage = False
    calls.join("s1")
    client = make_client(signaling, VIEWER)
    client.cut(cause, "why it ends")
    got = sent(client)
    assert types(got) == ["error", "close"]
    assert got[0] == sig.error_message(error, "why it ends")
    assert (got[1].code, got[1].reason) == (code, "why it ends")
    # nothing it asks for afterwards is done, and the kick event no longer reaches it
    await client._dispatch(sig.Ping())
    await client._dispatch(sig.Subscribe("s1"))
    await client._on_event({"type": ev.KICKED_USER, "call_cid": CID, "user": {"id": "viewer"}})
    client.cut(CUT_KICKED, "again")
    assert sent(client) == []
    assert not client.subscriptions


async def test_a_cut_client_that_does_not_take_its_close_is_dropped(
    signaling: sig.Signaling,
) -> None:
    signaling.cut_grace = 0.0
    client = make_client(signaling, VIEWER)
    never = asyncio.get_running_loop().create_future()
    client._writer = asyncio.ensure_future(never)  # a writer stuck on a client that never reads
    client.cut(CUT_REVOKED, "revoked")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(client._writer, 5)


# --- admission ------------------------------------------------------------------------------


class FakeSocket:
    """Enough of a Starlette WebSocket for admission."""

    def __init__(self, query: dict[str, str], first: dict[str, Any] | None = None) -> None:
        self.query_params = query
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self._first = first

    async def accept(self) -> None:
        pass

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason or "")

    async def receive(self) -> dict[str, Any]:
        if self._first is None:
            await asyncio.Future()  # never: the client sends nothing
        return self._first  # type: ignore[return-value]


async def test_limit_max_clients(signaling: sig.Signaling) -> None:
    defaults = sig.Signaling.__init__.__kwdefaults__
    assert defaults is not None
    assert defaults["max_clients"] == sig.MAX_CLIENTS_DEFAULT
    signaling.max_clients = 1
    signaling.clients.add(make_client(signaling))
    ws = FakeSocket({"api_key": "key"})
    await signaling.serve(cast(WebSocket, ws))
    assert ws.closed is not None
    assert ws.closed[0] == sig.CLOSE_TOO_MANY_CLIENTS
    assert ws.sent[0]["type"] == "error"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({}, sig.CLOSE_UNAUTHORIZED),
        ({"api_key": "other"}, sig.CLOSE_UNAUTHORIZED),
        ({"api_key": "key", "call_type": "livestream"}, sig.CLOSE_BAD_REQUEST),
    ],
)
async def test_refusals_close_with_a_code_and_reason(
    signaling: sig.Signaling, query: dict[str, str], code: int
) -> None:
    ws = FakeSocket(query)
    await signaling.serve(cast(WebSocket, ws))
    assert ws.closed is not None
    assert ws.closed[0] == code
    assert ws.closed[1]
    assert ws.sent == [
        {"type": "error", "code": ws.sent[0]["code"], "message": ws.sent[0]["message"]}
    ]


async def test_limit_auth_timeout(signaling: sig.Signaling) -> None:
    assert sig.AUTH_TIMEOUT > 0
    assert signaling.auth_timeout == sig.AUTH_TIMEOUT
    signaling.auth_timeout = 0.0
    ws = FakeSocket({"api_key": "key", "call_type": "livestream", "call_id": "show"})
    await signaling.serve(cast(WebSocket, ws))
    assert ws.closed is not None
    assert ws.closed[0] == sig.CLOSE_AUTH_TIMEOUT
    assert "auth" in ws.closed[1]


async def test_first_message_must_be_auth(signaling: sig.Signaling) -> None:
    first = {"type": "websocket.receive", "text": '{"type": "ping"}'}
    ws = FakeSocket({"api_key": "key", "call_type": "livestream", "call_id": "show"}, first)
    await signaling.serve(cast(WebSocket, ws))
    assert ws.closed is not None
    assert ws.closed[0] == sig.CLOSE_UNAUTHORIZED
