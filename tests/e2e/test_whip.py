"""WHIP ingest end to end: aiortc publishers (VP8 + Opus from generated pictures and a tone)
publish, aiortc WHEP viewers receive the very payloads the publisher sent, never decoded or
re-encoded by the server."""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import get_capabilities
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket, is_rtcp

from ingest.app import App
from ingest.calls import wire as w
from ingest.calls.events import Subscription
from ingest.client import create_token
from ingest.webrtc import aiortc_compat
from ingest.webrtc.bridge import ForwardBridge
from ingest.webrtc.forwarding import KEYFRAME_REQUEST_INTERVAL_S, h264_nal_types, vp8_keyframe
from ingest.webrtc.packing import ForwardPacker, installed_packer
from tests.conftest import API_SECRET, api
from tests.e2e.calls import Call, livestream
from tests.e2e.webrtc_viewer import Viewer

pytestmark = pytest.mark.e2e

TIMEOUT = 15.0
LATE_FIRST_FRAME_S = 2.0
"""A late viewer's first frame after connecting (bench target: 0.5 s; margin for a busy box)."""


def token(user: str) -> str:
    return create_token(API_SECRET, user, ttl=3600)


class Pictures(VideoStreamTrack):
    """320x240 frames whose brightness changes every frame."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        y = np.full((240, 320), 16 + (self.count * 7) % 200, np.uint8)
        y[:, (self.count * 4) % 320 :] = 128
        frame = av.VideoFrame.from_ndarray(
            np.concatenate([y, np.full((120, 320), 128, np.uint8)]), format="yuv420p"
        )
        self.count += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(AudioStreamTrack):
    """A 440 Hz tone, 20 ms frames, 48 kHz mono."""

    def __init__(self) -> None:
        super().__init__()
        self.samples = 0
        self.started: float | None = None

    async def recv(self) -> av.AudioFrame:
        rate, n = 48_000, 960
        if self.started is None:
            self.started = time.monotonic()
        wait = self.started + self.samples / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # pacing the generator, not waiting for a condition
        t = (np.arange(n) + self.samples) / rate
        pcm = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self.samples
        frame.time_base = fractions.Fraction(1, rate)
        self.samples += n
        return frame


@dataclass
class Publisher:
    """An aiortc WHIP publisher; records every RTP payload it sends, per kind."""

    token: str
    codec: str = "VP8"
    """The video codec offered (``VP8`` or ``H264``)."""
    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[]))
    )
    sent: dict[str, list[bytes]] = field(default_factory=lambda: {"audio": [], "video": []})
    keyframes_sent: list[float] = field(default_factory=list)
    """When each VP8 keyframe left (``time.perf_counter``)."""
    location: str = ""
    senders: dict[str, RTCRtpSender] = field(default_factory=dict)
    _waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = field(default_factory=list)

    async def publish(self, url: str, *, apply_answer: bool = True) -> httpx.Response:
        video = self.pc.addTransceiver(Pictures(), direction="sendonly")
        video.setCodecPreferences(
            [
                c
                for c in get_capabilities("video").codecs
                if c.mimeType in (f"video/{self.codec}", "video/rtx")
            ]
        )
        audio = self.pc.addTransceiver(Tone(), direction="sendonly")
        self.senders = {"video": video.sender, "audio": audio.sender}
        self._tap()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient() as http:
            resp = await http.post(
                url,
                content=self.pc.localDescription.sdp,
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {self.token}",
                },
                timeout=TIMEOUT,
            )
        if resp.status_code == 201:
            self.location = resp.headers["location"]
            if apply_answer:
                await self.pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
        return resp

    def _tap(self) -> None:
        """Record each RTP payload as the publisher's transport sends it (before SRTP)."""
        transport = self.senders["video"].transport
        send = transport._send_rtp
        ssrcs = {s._ssrc: kind for kind, s in self.senders.items()}

        async def tapped(data: bytes) -> None:
            if not is_rtcp(data):
                packet = RtpPacket.parse(data)
                kind = ssrcs.get(packet.ssrc)
                if kind is not None:
                    self.sent[kind].append(packet.payload)
                    key = (
                        vp8_keyframe(packet.payload)[0]
                        if self.codec == "VP8"
                        else 5 in h264_nal_types(packet.payload)
                    )
                    if kind == "video" and key:
                        self.keyframes_sent.append(time.perf_counter())
                    for waiter in [x for x in self._waiters if x[0]()]:
                        self._waiters.remove(waiter)
                        if not waiter[1].done():
                            waiter[1].set_result(None)
            await send(data)

        transport._send_rtp = tapped  # type: ignore[method-assign]

    async def until(self, condition: Callable[[], bool], within: float = TIMEOUT) -> None:
        if condition():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        await asyncio.wait_for(future, within)

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class PayloadViewer(Viewer):
    """A WHEP viewer that also keeps every RTP payload it receives (not retransmissions)."""

    got: dict[str, list[bytes]] = field(default_factory=lambda: {"audio": [], "video": []})

    def _tap(self, kind: str, receiver: RTCRtpReceiver) -> None:
        super()._tap(kind, receiver)
        inner = receiver._handle_rtp_packet

        async def tapped(packet: RtpPacket, arrival_time_ms: int) -> None:
            if packet.payload_type not in self._rtx_types and packet.payload:
                self.got[kind].append(packet.payload)
            await inner(packet, arrival_time_ms)

        receiver._handle_rtp_packet = tapped  # type: ignore[method-assign]


async def wait_event(sub: Subscription, type_: str, within: float = TIMEOUT) -> dict[str, Any]:
    async def loop() -> dict[str, Any]:
        while True:
            event = await sub.get()
            if event["type"] == type_:
                return event

    return await asyncio.wait_for(loop(), within)


def whip_url(call: Call) -> str:
    return f"{call.base}/whip/{call.call_type}/{call.call_id}"


@pytest.fixture
async def call(server: App) -> AsyncIterator[Call]:
    async with livestream(server, "livestream", "show") as c:
        yield c


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_whip_publish_is_forwarded_byte_identical(
    call: Call, monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    import aiortc.rtcrtpreceiver as receiver_module
    import aiortc.rtcrtpsender as sender_module

    made: list[str] = []
    get_decoder = receiver_module.get_decoder  # type: ignore[attr-defined]
    get_encoder = sender_module.get_encoder  # type: ignore[attr-defined]

    def decoder(codec: Any) -> Any:
        made.append(f"dec {codec.mimeType}")
        return get_decoder(codec)

    def encoder(codec: Any) -> Any:
        made.append(f"enc {codec.mimeType}")
        return get_encoder(codec)

    monkeypatch.setattr(receiver_module, "get_decoder", decoder)
    monkeypatch.setattr(sender_module, "get_encoder", encoder)
    publisher = Publisher(token("alice"), codec)
    viewer = PayloadViewer(token=token("viewer"))
    try:
        with call.app.bus.subscribe("livestream:show") as sub:
            resp = await publisher.publish(whip_url(call))
            assert resp.status_code == 201, resp.text
            assert resp.headers["location"].startswith("/whip/session/")
            assert "a=candidate:" in resp.text
            assert codec in resp.text
            joined = await wait_event(sub, "call.session_participant_joined")
            assert joined["participant"]["source"] == "whip"
            started = await wait_event(sub, "ingress.started")
            assert started["ingress"] == "whip"
            # a second of media through the server before anybody watches: nothing decoded
            await publisher.until(lambda: len(publisher.sent["video"]) >= 30)
            assert sorted(made) == sorted(["enc audio/opus", f"enc video/{codec}"]), made
            assert call.app.whip is not None
            (whip,) = call.app.whip.sessions.values()
            assert all(aiortc_compat.is_forwarding(r) for r in whip.receivers.values())
            await call.go_live()
            await viewer.connect(call.whep())
            assert codec in viewer.answer
            await viewer.until("video", 30)
            await viewer.until("audio", 48_000)
            # the server's sender packs the publisher's payloads: no encoder for this track
            (session,) = call.app.sfu.sessions.values()
            packers = [installed_packer(t.sender) for t in session.pc.getTransceivers()]
            assert all(isinstance(p, ForwardPacker) for p in packers), packers
            assert all(isinstance(b, ForwardBridge) for b in session.bridges)
            # the only codecs made anywhere: the publisher's encoders, the viewer's decoders
            assert sorted(made) == sorted(
                [f"enc video/{codec}", "enc audio/opus", f"dec video/{codec}", "dec audio/opus"]
            ), made
            for kind in ("video", "audio"):
                sent = {p: i for i, p in enumerate(publisher.sent[kind])}
                got = viewer.got[kind]
                assert len(got) > 20
                missing = [p for p in got if p not in sent]
                assert not missing, f"{len(missing)} {kind} payloads differ from the publisher's"
                order = [sent[p] for p in got]
                assert order == sorted(order), f"{kind} payloads out of the publisher's order"
            assert viewer.frames[-1].width == 320
            assert viewer.frames[-1].height == 240
            # health of a WHIP participant
            (p,) = call.app.calls.list_participants("livestream:show")
            assert p.health is not None
            health = w.ParticipantHealth.model_validate(p.health())
            assert health.transport == "whip"
            assert health.video is not None
            assert health.video.codec == codec.lower()
            assert health.video.width == 320  # VP8: key frame header; H.264: its SPS
            assert health.video.height == 240
            assert health.audio is not None
            assert health.audio.codec == "opus"
            assert health.bitrate_kbps > 0
            # loss and round trip are measured once a second: wait for the first measure
            await publisher.until(lambda: whip.rtt_ms is not None and whip.packet_loss is not None)
            health = w.ParticipantHealth.model_validate(p.health())
            assert health.packet_loss == 0.0
            assert health.rtt_ms is not None
            assert 0 < health.rtt_ms < 1000
            # the publisher ends: left events, the viewer's session ends
            async with httpx.AsyncClient() as http:
                gone = await http.delete(f"{call.base}{publisher.location}")
            assert gone.status_code == 200
            left = await wait_event(sub, "call.session_participant_left")
            assert left["participant"]["source"] == "whip"
            stopped = await wait_event(sub, "ingress.stopped")
            assert stopped["ingress"] == "whip"
            assert call.app.calls.list_participants("livestream:show") == []
    finally:
        await viewer.close()
        await publisher.close()


async def test_late_viewer_gets_a_keyframe_on_request(call: Call) -> None:
    """aiortc's VP8 encoder makes a keyframe at start and on request only (its gop_size is
    3000 frames: 100 s), so a viewer joining seconds later starts only thanks to its PLI."""
    publisher = Publisher(token("alice"))
    viewer = PayloadViewer(token=token("viewer"))
    await call.go_live()
    try:
        resp = await publisher.publish(whip_url(call))
        assert resp.status_code == 201, resp.text
        await publisher.until(lambda: len(publisher.keyframes_sent) >= 1)
        first_key = publisher.keyframes_sent[0]
        # 2 s of frames after the first keyframe, before the viewer comes
        await publisher.until(lambda: time.perf_counter() - first_key > 2.0, within=TIMEOUT)
        keys_before = len(publisher.keyframes_sent)
        await viewer.connect(call.whep())
        shown = await asyncio.wait_for(viewer.first_frame, TIMEOUT)
        assert shown - viewer.posted_at < LATE_FIRST_FRAME_S  # from its offer's POST
        assert len(publisher.keyframes_sent) > keys_before, "the join asked for no keyframe"
        assert call.app.whip is not None
        (whip,) = call.app.whip.sessions.values()
        assert whip.keyframes.sent >= 1
        # a viewer's PLI also reaches the publisher, once the rate limit's window is over
        last = publisher.keyframes_sent[-1]
        await publisher.until(lambda: time.perf_counter() - last > KEYFRAME_REQUEST_INTERVAL_S)
        keys = len(publisher.keyframes_sent)
        video = viewer.receivers["video"]
        (source,) = video.getSynchronizationSources()
        await video._send_rtcp_pli(source.source)
        await publisher.until(lambda: len(publisher.keyframes_sent) > keys)
    finally:
        await viewer.close()
        await publisher.close()


async def test_second_publish_of_the_same_user_takes_over(call: Call) -> None:
    first, second = Publisher(token("alice")), Publisher(token("alice"))
    try:
        with call.app.bus.subscribe("livestream:show") as sub:
            assert (await first.publish(whip_url(call))).status_code == 201
            one = await wait_event(sub, "call.session_participant_joined")
            assert (await second.publish(whip_url(call))).status_code == 201
            left = await wait_event(sub, "call.session_participant_left")
            assert left["participant"]["user_session_id"] == one["participant"]["user_session_id"]
            two = await wait_event(sub, "call.session_participant_joined")
            assert two["participant"]["user_session_id"] != one["participant"]["user_session_id"]
        parts = call.app.calls.list_participants("livestream:show")
        assert [p.session_id for p in parts] == [two["participant"]["user_session_id"]]
        assert call.app.whip is not None
        assert len(call.app.whip.sessions) == 1
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("how", ["kick", "remove_member", "revoke"])
async def test_kick_removal_and_revocation_end_the_whip_publish(call: Call, how: str) -> None:
    publisher = Publisher(token("alice"))
    try:
        with call.app.bus.subscribe("livestream:show") as sub:
            assert (await publisher.publish(whip_url(call))).status_code == 201
            await wait_event(sub, "ingress.started")
            closed = asyncio.Event()

            @publisher.pc.on("connectionstatechange")
            def _state() -> None:
                if publisher.pc.connectionState in ("closed", "failed"):
                    closed.set()

            await publisher.until(lambda: len(publisher.sent["video"]) > 10)
            started = time.monotonic()
            if how == "kick":
                await call.client.kick_user("livestream", "show", "alice")
            elif how == "remove_member":
                await call.client.update_call_members("livestream", "show", remove=["alice"])
            else:
                from datetime import UTC, datetime

                await call.client.revoke_tokens("alice", datetime.now(UTC))
            await wait_event(sub, "call.session_participant_left", within=5)
            assert call.app.whip is not None
            assert call.app.whip.sessions == {}
            # the server closed its peer connection: the publisher's DTLS sees it end
            await asyncio.wait_for(closed.wait(), 5)
            assert time.monotonic() - started < 5
        assert call.app.calls.list_participants("livestream:show") == []
    finally:
        await publisher.close()


async def test_refusals_use_the_rtmp_words(call: Call) -> None:
    async with httpx.AsyncClient() as http:
        offer = "v=0\r\n"
        bad = await http.post(
            whip_url(call),
            content=offer,
            headers={"Content-Type": "application/sdp", "Authorization": "Bearer nope"},
        )
        assert bad.status_code == 401, bad.text
        assert "token refused" in bad.json()["message"]
        missing = await http.post(
            whip_url(call), content=offer, headers={"Content-Type": "application/sdp"}
        )
        assert missing.status_code == 401
        wrong_type = await http.post(
            whip_url(call),
            content=offer,
            headers={"Content-Type": "text/plain", "Authorization": f"Bearer {token('alice')}"},
        )
        assert wrong_type.status_code == 415
        preflight = await http.options(whip_url(call))
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
    publisher = Publisher(token("viewer"))
    try:
        resp = await publisher.publish(whip_url(call))
        assert resp.status_code == 403, resp.text
        assert "is not a member of livestream:show and may not publish" in resp.json()["message"]
    finally:
        await publisher.close()


async def test_backstage_needs_join_backstage(server: App) -> None:
    async with api(server) as client:
        await client.upsert_users(w.UserRequest(id="carol"))
        await client.create_call_type(
            w.CreateCallTypeRequest(
                name="stage",
                grants={"performer": ["read-call", "join-call", "send-audio", "send-video"]},
                settings=w.CallSettingsRequest(backstage=w.BackstageSettingsRequest(enabled=True)),
            )
        )
        await client.get_or_create_call(
            "stage",
            "gig",
            w.CallRequest(
                created_by_id="carol", members=[w.MemberRequest(user_id="carol", role="performer")]
            ),
        )
        url = f"http://127.0.0.1:{server.http_port}/whip/stage/gig"
        refused = Publisher(token("carol"))
        try:
            resp = await refused.publish(url)
            assert resp.status_code == 403
            assert "in backstage" in resp.json()["message"]
        finally:
            await refused.close()
        await client.go_live("stage", "gig")
    accepted = Publisher(token("carol"))
    try:
        assert (await accepted.publish(url)).status_code == 201
    finally:
        await accepted.close()


async def test_limits_offer_size_and_publishers(call: Call) -> None:
    from ingest.whip import MAX_WHIP_OFFER_BYTES, MAX_WHIP_PUBLISHERS

    assert MAX_WHIP_PUBLISHERS >= 1
    async with httpx.AsyncClient() as http:
        huge = await http.post(
            whip_url(call),
            content=b"v=0\r\n" + b"a=x\r\n" * (MAX_WHIP_OFFER_BYTES // 5),
            headers={
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {token('alice')}",
            },
        )
    assert huge.status_code == 413, huge.text
    assert call.app.whip is not None
    call.app.whip.max_publishers = 1
    first, second = Publisher(token("alice")), Publisher(token("alice"))
    try:
        assert (await first.publish(whip_url(call))).status_code == 201
        full = await second.publish(whip_url(call))
        assert full.status_code == 429, full.text
        assert "1 WHIP publishers" in full.json()["message"]
    finally:
        await first.close()
        await second.close()


async def test_a_viewer_that_cannot_decode_vp8_is_told_so(call: Call) -> None:
    publisher = Publisher(token("alice"))
    await call.go_live()
    try:
        assert (await publisher.publish(whip_url(call))).status_code == 201
        await publisher.until(lambda: len(publisher.sent["video"]) > 10)
        h264 = [
            c for c in get_capabilities("video").codecs if c.mimeType in ("video/H264", "video/rtx")
        ]

        async def offer(kinds: tuple[str, ...]) -> httpx.Response:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                for kind in kinds:
                    t = pc.addTransceiver(kind, direction="recvonly")
                    if kind == "video":
                        t.setCodecPreferences(h264)
                await pc.setLocalDescription(await pc.createOffer())
                async with httpx.AsyncClient() as http:
                    return await http.post(
                        call.whep(),
                        content=pc.localDescription.sdp,
                        headers={
                            "Content-Type": "application/sdp",
                            "Authorization": f"Bearer {token('viewer')}",
                        },
                    )
            finally:
                await pc.close()

        video_only = await offer(("video",))
        assert video_only.status_code == 400, video_only.text
        assert "cannot decode" in video_only.json()["message"]
        assert "video is vp8" in video_only.json()["message"]
        both = await offer(("video", "audio"))
        assert both.status_code == 201, both.text
        sections = both.text.split("m=")[1:]
        video = next(s for s in sections if s.startswith("video"))
        audio = next(s for s in sections if s.startswith("audio"))
        assert "a=inactive" in video  # nothing is sent in the video section
        assert "a=sendonly" in audio
        assert "opus" in audio
    finally:
        await publisher.close()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_rtmp_and_whip_hosts_in_one_call_over_the_call_websocket(
    server: App, monkeypatch: pytest.MonkeyPatch, codec: str
) -> None:
    """One call-WebSocket client subscribes to an ffmpeg RTMP host and an aiortc WHIP host and
    decodes both; joined / left events as each starts and stops."""
    from ingest.calls import events as ev
    from ingest.calls.service import SERVER
    from tests.e2e.media import MEDIA_DIR, make_flv
    from tests.e2e.test_signaling import (
        CALL_ID,
        CALL_TYPE,
        client,
        hosts_pushing,
        participant_event,
        typed,
        ws_url,
    )
    from tests.unit.webrtc.synth import chrome_like_h264

    chrome_like_h264(monkeypatch)  # the client's aiortc accepts H.264 High, like Chrome
    users = {u: w.UserRequest(id=u) for u in ("alice", "bob", "carol")}
    await server.calls.upsert_users(SERVER, w.UpdateUsersRequest(users=users))
    hosts = [w.MemberRequest(user_id=u, role="host") for u in users]
    await server.calls.get_or_create_call(
        SERVER,
        CALL_TYPE,
        CALL_ID,
        w.GetOrCreateCallRequest(data=w.CallRequest(created_by_id="alice", members=hosts)),
    )
    MEDIA_DIR.mkdir(exist_ok=True)
    clip = make_flv(MEDIA_DIR / "signaling-320x240.flv", seconds=2.0, size="320x240")
    publisher = Publisher(token("alice"), codec)
    url = f"http://127.0.0.1:{server.http_port}/whip/{CALL_TYPE}/{CALL_ID}"
    try:
        async with client(ws_url(server, user="carol")) as c:
            await c.expect(typed("joined"), "joined")
            async with hosts_pushing(server, clip, "bob"):
                assert (await publisher.publish(url)).status_code == 201
                sessions: dict[str, str] = {}
                for user in ("alice", "bob"):
                    event = await c.expect(participant_event(ev.PARTICIPANT_JOINED, user), user)
                    sessions[user] = event["participant"]["user_session_id"]
                    await c.send(type="subscribe", user_session_id=sessions[user])
                for user in ("alice", "bob"):
                    offer = await c.expect(typed("offer", user_session_id=sessions[user]))
                    assert offer["tracks"] == ["audio", "video"]
                    assert (codec if user == "alice" else "H264") in offer["sdp"]
                await c.until_frames(sessions["alice"], 15)
                await c.until_frames(sessions["bob"], 15)
                # one publishing layer: one list of live publishers for both front ends
                assert server.ingress is not None
                live = server.ingress.publishing.active.values()
                assert sorted((p.transport, p.participant.user_id) for p in live) == [
                    ("rtmp", "bob"),
                    ("whip", "alice"),
                ]
                async with httpx.AsyncClient() as http:
                    await http.delete(f"http://127.0.0.1:{server.http_port}{publisher.location}")
                left = await c.expect(participant_event(ev.PARTICIPANT_LEFT, "alice"), "left")
                assert left["participant"]["user_session_id"] == sessions["alice"]
                seen = c.frames[sessions["bob"]]
                await c.until_frames(sessions["bob"], seen + 10)  # bob keeps flowing
            await c.expect(participant_event(ev.PARTICIPANT_LEFT, "bob"), "bob left")
    finally:
        await publisher.close()


async def test_a_publisher_that_never_connects_is_dropped(call: Call) -> None:
    from ingest.whip import WHIP_CONNECT_TIMEOUT

    assert call.app.whip is not None
    assert WHIP_CONNECT_TIMEOUT >= 10
    call.app.whip.connect_timeout = 0.5
    publisher = Publisher(token("alice"))
    try:
        with call.app.bus.subscribe("livestream:show") as sub:
            resp = await publisher.publish(whip_url(call), apply_answer=False)  # never connects
            assert resp.status_code == 201
            error = await wait_event(sub, "ingress.error")
            assert error["ingress"] == "whip"
            assert error["error"].startswith("did not connect within 0.5 s")
            stopped = await wait_event(sub, "ingress.stopped")
            assert stopped["reason"] == error["error"]
        assert call.app.whip.sessions == {}
        assert call.app.calls.list_participants("livestream:show") == []
    finally:
        await publisher.close()


async def test_chromium_publishes_over_whip_and_chromium_plays_it(call: Call) -> None:
    """Headless Chromium with a fake camera publishes through a minimal WHIP page (another
    origin: CORS is exercised); a second Chromium page plays it with samples/whep-player.html."""
    from pathlib import Path

    from playwright.async_api import async_playwright

    from tests.e2e.browser import CHROMIUM_ARGS, PLAYER, chromium_path, play, static_page

    page_html = (Path(__file__).parent / "whip_page.html").read_bytes()
    await call.go_live()
    with call.app.bus.subscribe("livestream:show") as sub:
        async with (
            static_page(page_html, "/whip.html") as whip_page,
            static_page(PLAYER.read_bytes()) as player_url,
            async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(
                executable_path=chromium_path(),
                headless=True,
                args=[
                    *CHROMIUM_ARGS,
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                ],
            )
            try:
                host = await browser.new_page()
                await host.goto(whip_page)
                await host.evaluate(
                    "([url, token]) => publish(url, token)", [whip_url(call), token("alice")]
                )
                assert await host.evaluate("() => whip.error") is None
                await host.wait_for_function("() => whip.state === 'publishing'", timeout=20_000)
                joined = await wait_event(sub, "call.session_participant_joined")
                assert joined["participant"]["source"] == "whip"
                viewer = await browser.new_page()
                await viewer.goto(player_url)
                await play(
                    viewer,
                    server=call.base,
                    call_type=call.call_type,
                    call_id=call.call_id,
                    user="alice",
                    token=token("viewer"),
                )
                await viewer.wait_for_function("() => window.player.frames >= 30", timeout=20_000)
                assert await viewer.evaluate("() => window.player.error") is None
                frames = await viewer.evaluate("() => window.player.frames")
                await viewer.wait_for_function(
                    f"() => window.player.frames >= {frames + 15}", timeout=20_000
                )
                size = await viewer.evaluate(
                    "() => [player.video.videoWidth, player.video.videoHeight]"
                )
                assert size == [320, 240]
                sent = await host.evaluate("() => sent()")
                assert sent["framesEncoded"] > 0
                # the server forwarded what Chromium encoded: no decoder for it on the server
                assert call.app.whip is not None
                (whip,) = call.app.whip.sessions.values()
                assert sent["codec"].lower() == f"video/{whip.video_codec}"
                await host.evaluate("() => stop()")
                left = await wait_event(sub, "call.session_participant_left")
                assert left["participant"]["source"] == "whip"
            finally:
                await browser.close()


async def test_lost_packets_are_resent_from_the_viewers_send_history(call: Call) -> None:
    """A viewer that loses forwarded video packets gets them again on NACK (RTX), from its own
    sender's history: the publisher is not asked, and the picture keeps decoding."""
    await call.go_live()
    publisher = Publisher(token("alice"))
    viewer = PayloadViewer(token=token("viewer"))
    viewer.drop = lambda packet: packet.sequence_number % 25 == 0
    try:
        assert (await publisher.publish(whip_url(call))).status_code == 201
        await viewer.connect(call.whep())
        await viewer.until("video", 90)
        assert viewer.dropped
        resent = set(viewer.retransmitted)
        assert resent, "no retransmission arrived"
        assert len(resent & set(viewer.dropped)) >= len(viewer.dropped) // 2
    finally:
        await viewer.close()
        await publisher.close()


async def test_a_whip_host_reaches_hls_through_the_composite(server: App, tmp_path: Any) -> None:
    """HLS cannot carry VP8 / Opus as they are: the WHIP host is decoded into the composite
    (the only decoder of its media on the server), and the playlist's segments are H.264."""
    import re

    from tests.e2e.egress_helpers import CALL_ID, CALL_TYPE, CID, ffprobe, open_api

    publisher = Publisher(token("alice"))
    try:
        async with open_api(server) as api:
            await api.setup(("alice",))
            url = f"http://127.0.0.1:{server.http_port}/whip/{CALL_TYPE}/{CALL_ID}"
            assert (await publisher.publish(url)).status_code == 201
            await publisher.until(lambda: len(publisher.keyframes_sent) >= 1)
            with server.bus.subscribe(CID) as sub:
                await api.go_live(start_hls=True)
                await wait_event(sub, "call.hls_broadcasting_started", within=30)
            assert server.egress is not None
            program = server.egress.programs[CID]
            assert program.composite is not None
            playlist_url = server.egress.playlist_url(CID)
            async with httpx.AsyncClient(timeout=30) as http:
                text = (await http.get(playlist_url, params={"_HLS_msn": 1})).text
                base = playlist_url.rsplit("/", 1)[0]
                init_uri = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)[-1]
                segment = re.findall(r"(seg-\d+\.m4s)", text)[-1]
                init = (await http.get(f"{base}/{init_uri}")).content
                data = (await http.get(f"{base}/{segment}")).content
            path = tmp_path / "whip-hls.mp4"
            path.write_bytes(init + data)
            info = await ffprobe("-show_streams", str(path))
            codecs = sorted(s["codec_name"] for s in info["streams"])
            assert codecs == ["aac", "h264"]
            assert program.composite.compositor is not None
            assert program.composite.compositor.decode_errors == 0
    finally:
        await publisher.close()


async def test_ice_servers_are_announced_in_link_headers(app_factory: Any) -> None:
    """RFC 9725 4.6: the preflight announces the STUN/TURN servers, TURN with minted credentials,
    so a browser page can gather relay candidates before its (non-trickle) offer."""
    app = await app_factory(
        ice_servers=["stun:stun.example:3478", "turn:turn.example:3478?transport=udp"],
        turn_secret="0123456789abcdef0123456789abcdef",
    )
    async with httpx.AsyncClient() as http:
        resp = await http.options(f"http://127.0.0.1:{app.http_port}/whip/livestream/show")
    assert resp.status_code == 204
    links = resp.headers["link"]
    assert '<stun:stun.example:3478>; rel="ice-server"' in links
    assert '<turn:turn.example:3478?transport=udp>; rel="ice-server"; username="' in links
    assert 'credential="' in links
    assert "Link" in resp.headers["access-control-expose-headers"]
