"""WHIP (WebRTC-HTTP Ingestion Protocol, RFC 9725): hosts publish from a browser.

``POST {http_base}/whip/{call_type}/{call_id}`` with ``Content-Type: application/sdp`` and
``Authorization: Bearer <user token>`` answers ``201 Created``, ``Location:
/whip/session/{id}`` and the SDP answer, which holds every ICE candidate (no trickle: ``PATCH``
answers 405). ``DELETE`` on the location ends the publish. ``OPTIONS`` answers CORS preflights and
announces the ICE servers in ``Link`` headers (RFC 9725 4.6), as the 201 does.

Who may publish is decided by :meth:`~ingest.calls.service.CallService.authorize_publisher`, the
same rules and words as RTMP (the token is the stream key there). A WHIP publisher is a participant
like an RTMP one (:mod:`ingest.publishing`: events, takeover by a new publish of the same user,
kick / removal / revocation end it).

Media is forwarded, never decoded: the answer accepts one video codec (VP8 or H.264 with
``packetization-mode=1``, in the offer's order of preference) and Opus; each receiver hands its
RTP packets to us instead of its jitter buffer and decoder
(:func:`~ingest.webrtc.aiortc_compat.forward_receiver`), video packets are grouped into frames
(:class:`~ingest.webrtc.forwarding.FrameAssembler`), and each frame or Opus packet goes on the
hub as a unit that keeps the RTP payloads as received. Viewers' keyframe requests (a join, a PLI,
a FIR) reach the publisher as one PLI per :data:`~ingest.webrtc.forwarding.
KEYFRAME_REQUEST_INTERVAL_S` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import get_capabilities
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription
from fastapi import APIRouter, Request, Response

from .calls.service import CallService, Participant
from .errors import IngestError, InputError, MediaError, NotFoundError, RateLimitedError
from .media.codecs.h264 import parse_sps, split_annexb
from .media.hub import Hub
from .media.units import AudioConfig, Kind, MediaUnit, VideoConfig
from .publishing import LivePublisher, Publishers
from .webrtc.aiortc_compat import depayloaded, forward_receiver, round_trip, send_pli
from .webrtc.forwarding import (
    H264_SPS,
    AudioSequencer,
    FrameAssembler,
    KeyframeRequests,
    RtpClock,
    RtpIn,
    h264_keyframe,
    h264_starts_frame,
    vp8_keyframe,
    vp8_starts_frame,
)
from .webrtc.ice import IcePolicy
from .webrtc.negotiation import without_mdns_candidates
from .webrtc.whep import (
    CORS_HEADERS,
    created,
    error_response,
    no_trickle,
    offer_preflight,
    read_offer,
    refused,
)

log = logging.getLogger("ingest.whip")

MAX_WHIP_OFFER_BYTES = 64 * 1024
"""A WHIP offer larger than this is refused with 413 (a browser's is ~5 KiB)."""
MAX_WHIP_PUBLISHERS = 100
"""WHIP publishers (peer connections) per process before a POST is refused with 429."""
WHIP_CONNECT_TIMEOUT = 30.0
"""Seconds a publisher may take to connect (ICE + DTLS) before its session is ended."""
WHIP_STATS_INTERVAL_S = 1.0
"""How often a publisher's packet loss (from its receivers) and round-trip time (one STUN
binding request on its ICE pair) are measured for its health."""
WHIP_VIDEO_CODECS = ("video/vp8", "video/h264")
"""Video codecs a WHIP publisher may send (forwarded as is); the offer's order decides."""
WHIP_AUDIO_CODECS = ("audio/opus",)

VIDEO_CLOCK_RATE = 90_000
OPUS_CLOCK_RATE = 48_000


def _profile_fields(profile_level_id: str) -> dict[str, int]:
    try:
        value = int(profile_level_id, 16)
    except ValueError:
        return {}
    return {"profile": value >> 16, "profile_compat": (value >> 8) & 0xFF, "level": value & 0xFF}


def choose_codecs(offer: SessionDescription) -> dict[str, RTCRtpCodecParameters]:
    """The codec we accept for each of the offer's first audio and video section (only kinds
    with a codec we forward); raises :class:`InputError` if there is none at all."""
    chosen: dict[str, RTCRtpCodecParameters] = {}
    wanted = {"video": WHIP_VIDEO_CODECS, "audio": WHIP_AUDIO_CODECS}
    from aiortc.codecs import CODECS  # aiortc's table, as its negotiation uses it

    for media in offer.media:
        if media.kind not in wanted or media.kind in chosen:
            continue
        common = find_common_codecs(CODECS[media.kind], media.rtp.codecs)
        codec = next((c for c in common if c.mimeType.lower() in wanted[media.kind]), None)
        if codec is not None:
            chosen[media.kind] = codec
    if not chosen:
        raise InputError(
            "the offer has no codec we can forward: send VP8 or H.264 (packetization-mode=1) "
            "video and/or Opus audio"
        )
    return chosen


def preferences(codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """Codec preferences that make aiortc answer ``codec`` alone (and its RTX)."""
    kind = codec.mimeType.split("/")[0].lower()
    caps = get_capabilities(kind).codecs
    same = [
        c
        for c in caps
        if c.mimeType.lower() == codec.mimeType.lower() and c.parameters == codec.parameters
    ]
    rtx = [c for c in caps if c.mimeType.lower().endswith("/rtx")]
    return same[:1] + rtx


class WhipPublisher(LivePublisher):
    """One WHIP publish: a receive-only peer connection whose RTP goes to the hub as is."""

    transport = "whip"

    def __init__(
        self,
        ingress: WhipIngress,
        participant: Participant,
        peer: str,
        session_id: str,
        pc: RTCPeerConnection,
        codecs: dict[str, RTCRtpCodecParameters],
    ) -> None:
        super().__init__(ingress.publishers, participant, peer)
        self.ingress = ingress
        self.session_id = session_id
        self.pc = pc
        self.receivers: dict[Kind, RTCRtpReceiver] = {}
        self.video_codec = (
            codecs["video"].mimeType.split("/")[1].lower() if "video" in codecs else ""
        )
        self._video_ssrc: int | None = None
        starts = vp8_starts_frame if self.video_codec == "vp8" else h264_starts_frame
        self.assembler = FrameAssembler(starts)
        self.audio_sequencer = AudioSequencer()
        self._clocks: dict[Kind, RtpClock] = {}
        self._need_key = True
        self.keyframes = KeyframeRequests(self._send_pli)
        self.packet_loss: float | None = None
        self.rtt_ms: float | None = None
        """STUN round trip on the ICE pair (aiortc's receiver does not measure RTT)."""
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stats_task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        if "video" in codecs:
            video = codecs["video"]
            fields: dict[str, Any] = {}
            if self.video_codec == "h264":
                fields = _profile_fields(str(video.parameters.get("profile-level-id", "42e01f")))
            self.publish_track(
                Kind.VIDEO, VideoConfig(self.video_codec, b"", forwarded=True, **fields)
            ).keyframe_requester = self.keyframes.request
        if "audio" in codecs:
            audio = codecs["audio"]
            self.publish_track(
                Kind.AUDIO,
                AudioConfig(
                    "opus",
                    b"",
                    sample_rate=OPUS_CLOCK_RATE,
                    channels=audio.channels or 2,
                    forwarded=True,
                ),
            )

    # -- media ----------------------------------------------------------------------------------

    def attach(self, kind: Kind, receiver: RTCRtpReceiver) -> None:
        self.receivers[kind] = receiver
        forward_receiver(receiver, self._on_video if kind is Kind.VIDEO else self._on_audio)

    def _clock(self, kind: Kind, now: float) -> RtpClock:
        clock = self._clocks.get(kind)
        if clock is None:
            rate = VIDEO_CLOCK_RATE if kind is Kind.VIDEO else OPUS_CLOCK_RATE
            clock = self._clocks[kind] = RtpClock(rate, int((now - self.started_at) * 1000))
        return clock

    def _on_video(self, packet: RtpPacket) -> None:
        if self.closed:
            return
        now = time.monotonic()
        if packet.ssrc != self._video_ssrc:
            if self._video_ssrc is not None:  # the sender restarted its stream: a new sequence
                self.assembler = FrameAssembler(self.assembler.starts_frame)
                self._need_key = True
            self._video_ssrc = packet.ssrc
        rtp = RtpIn(
            packet.sequence_number,
            packet.timestamp,
            bool(packet.marker),
            packet.payload,
            depayloaded(packet),
        )
        frames, dropped = self.assembler.add(rtp, now)
        if dropped:
            self._need_key = True
            self.keyframes.request()
        for frame in frames:
            self._video_frame(frame, now)

    def _video_frame(self, frame: list[RtpIn], now: float) -> None:
        packets = [p for p in frame if p.payload]  # padding-only packets carry nothing
        if not packets:
            return
        payloads = tuple(p.payload for p in packets)
        if self.video_codec == "vp8":
            key, width, height = vp8_keyframe(payloads[0])
            track = self.tracks.get(Kind.VIDEO)
            if key and width and track is not None:
                config = track.config
                assert isinstance(config, VideoConfig)
                if (config.width, config.height) != (width, height):
                    self.publish_track(
                        Kind.VIDEO, dataclasses.replace(config, width=width, height=height)
                    )
        else:
            key = h264_keyframe(payloads)
            if key:
                self._h264_size(b"".join(p.data for p in packets))
        if self._need_key:
            if not key:
                self.keyframes.request()
                return
            self._need_key = False
        ms = self._clock(Kind.VIDEO, now).ms(packets[0].timestamp)
        data = b"".join(p.data for p in packets)
        self.push(
            MediaUnit(Kind.VIDEO, self.video_codec, ms, ms, data, key, payloads=payloads), now
        )

    def _h264_size(self, annexb: bytes) -> None:
        """The picture size (and SPS, for health) from a keyframe's SPS, when it changes."""
        track = self.tracks.get(Kind.VIDEO)
        config = track.config if track is not None else None
        if not isinstance(config, VideoConfig):
            return
        for nal in split_annexb(annexb):
            if nal and nal[0] & 0x1F == H264_SPS:
                if config.sps[:1] == (nal,):
                    return
                try:
                    sps = parse_sps(nal)
                except MediaError:
                    return
                self.publish_track(
                    Kind.VIDEO,
                    dataclasses.replace(config, sps=(nal,), width=sps.width, height=sps.height),
                )
                return

    def _on_audio(self, packet: RtpPacket) -> None:
        if self.closed or not packet.payload:
            return
        if not self.audio_sequencer.add(packet.sequence_number):
            return
        now = time.monotonic()
        ms = self._clock(Kind.AUDIO, now).ms(packet.timestamp)
        payload = packet.payload
        self.push(MediaUnit(Kind.AUDIO, "opus", ms, ms, payload, True, payloads=(payload,)), now)

    def _send_pli(self) -> None:
        receiver = self.receivers.get(Kind.VIDEO)
        if receiver is None or self._video_ssrc is None or self.closed:
            return
        self._spawn(send_pli(receiver, self._video_ssrc))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- health ---------------------------------------------------------------------------------

    async def _read_stats(self) -> None:
        while not self.closed:
            await asyncio.sleep(WHIP_STATS_INTERVAL_S)
            lost = received = 0
            for receiver in list(self.receivers.values()):
                with contextlib.suppress(Exception):  # a closing transport
                    report = await receiver.getStats()
                    for stats in report.values():
                        if getattr(stats, "type", "") == "inbound-rtp":
                            lost += max(0, int(getattr(stats, "packetsLost", 0) or 0))
                            received += int(getattr(stats, "packetsReceived", 0) or 0)
            if lost + received:
                self.packet_loss = lost / (lost + received)
            first = next(iter(self.receivers.values()), None)
            if first is not None:  # bundled: every receiver shares one ICE pair
                rtt = await round_trip(first)
                if rtt is not None:
                    self.rtt_ms = rtt * 1000

    def health_snapshot(self) -> dict[str, Any]:
        snap = super().health_snapshot()
        snap["hints"] = []  # the RTMP encoder advice does not apply: keyframes come on request
        snap["packet_loss"] = None if self.packet_loss is None else round(self.packet_loss, 4)
        snap["rtt_ms"] = None if self.rtt_ms is None else round(self.rtt_ms, 1)
        video = snap.get("video")
        if video is not None:
            video["keyframe_requests"] = self.keyframes.sent
            video["frames_dropped"] = self.assembler.dropped
        return snap

    # -- ending ---------------------------------------------------------------------------------

    def close_transport(self, reason: str) -> None:
        self.ingress.forget(self)
        self._spawn(self.pc.close())

    def on_finish(self) -> None:
        self.keyframes.close()
        self.ingress.forget(self)
        for task in (self._stats_task, self._watchdog):
            if task is not None and task is not asyncio.current_task():
                task.cancel()


class WhipIngress:
    """Owns the WHIP publishers' peer connections."""

    def __init__(
        self,
        calls: CallService,
        hub: Hub,
        publishers: Publishers | None = None,
        *,
        max_publishers: int = MAX_WHIP_PUBLISHERS,
        connect_timeout: float = WHIP_CONNECT_TIMEOUT,
    ) -> None:
        self.calls = calls
        self.hub = hub
        self.publishers = publishers or Publishers(calls, hub)
        self.max_publishers = max_publishers
        self.connect_timeout = connect_timeout
        self.ice = IcePolicy()
        self.sessions: dict[str, WhipPublisher] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def publish(
        self, token: str, call_type: str, call_id: str, offer_sdp: str, peer: str
    ) -> tuple[str, str]:
        """Authorize, answer the offer and join the call; returns (answer SDP, session id)."""
        if len(self.sessions) >= self.max_publishers:
            raise RateLimitedError(f"this server already has {self.max_publishers} WHIP publishers")
        try:
            offer = SessionDescription.parse(offer_sdp)
        except Exception as exc:  # aiortc's parser raises whatever its split/int() raise
            raise InputError(f"the body is not an SDP offer: {exc}") from exc
        caller, call, _ct, role = await self.calls.authorize_publisher(call_type, call_id, token)
        codecs = choose_codecs(offer)
        pc = RTCPeerConnection(self.ice.rtc_configuration())
        publisher: WhipPublisher | None = None
        try:
            transceivers: dict[Kind, RTCRtpTransceiver] = {}
            for kind, codec in codecs.items():
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(preferences(codec))
                transceivers[Kind(kind)] = transceiver
            try:
                await pc.setRemoteDescription(
                    RTCSessionDescription(sdp=without_mdns_candidates(offer_sdp), type="offer")
                )
            except (ValueError, AssertionError, InvalidAccessError, InvalidStateError) as exc:
                raise InputError(f"cannot use this SDP offer: {exc}") from exc
            except OperationError as exc:
                raise InputError(f"cannot answer this SDP offer: {exc}") from exc
            await pc.setLocalDescription(await pc.createAnswer())
            session_id = secrets.token_urlsafe(16)

            def make(participant: Participant) -> WhipPublisher:
                return WhipPublisher(self, participant, peer, session_id, pc, codecs)

            publisher = await self.publishers.admit(caller, call, role, "whip", peer, make)
            for media_kind, transceiver in transceivers.items():
                publisher.attach(media_kind, transceiver.receiver)
        except BaseException:
            if publisher is not None:
                publisher.finish("could not answer the offer")
            await pc.close()
            raise
        self.sessions[session_id] = publisher
        self._watch(publisher)
        log.info(
            "WHIP publisher %s in %s from %s: %s",
            publisher.participant.user_id,
            call.cid,
            peer,
            ", ".join(f"{k} {c.mimeType}" for k, c in codecs.items()),
        )
        return self.ice.advertise(pc.localDescription.sdp), session_id

    def forget(self, publisher: WhipPublisher) -> None:
        if self.sessions.get(publisher.session_id) is publisher:
            del self.sessions[publisher.session_id]

    async def delete(self, session_id: str) -> None:
        """The publisher ends its session (``DELETE``)."""
        publisher = self.sessions.pop(session_id, None)
        if publisher is None:
            raise NotFoundError(f"no WHIP session {session_id}")
        publisher.finish("the publisher ended the session")
        await publisher.pc.close()

    async def stop(self) -> None:
        publishers = list(self.sessions.values())
        self.sessions.clear()
        for publisher in publishers:
            publisher.finish("server stopping")
        await asyncio.gather(*(p.pc.close() for p in publishers), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _watch(self, publisher: WhipPublisher) -> None:
        pc = publisher.pc

        @pc.on("connectionstatechange")
        def _changed() -> None:
            state = pc.connectionState
            if state == "connected":
                publisher.connected.set()
            elif state == "failed" and not publisher.closed:
                publisher.fail(  # ingress.error, then the publish ends
                    "the WebRTC connection failed (ICE or DTLS): check that the publisher can "
                    "reach the server's UDP ports, or configure TURN"
                )
            elif state == "closed" and not publisher.closed:
                publisher.disconnect("connection closed")

        async def watchdog() -> None:
            try:
                await asyncio.wait_for(publisher.connected.wait(), self.connect_timeout)
            except TimeoutError:
                if not publisher.closed:
                    publisher.fail(
                        f"did not connect within {self.connect_timeout:g} s: the publisher must "
                        "apply the answer and reach one of its candidates (UDP)"
                    )

        loop = asyncio.get_running_loop()
        publisher._watchdog = loop.create_task(watchdog())
        publisher._stats_task = loop.create_task(publisher._read_stats())


def build_whip_router(ingress: WhipIngress) -> Any:
    """The WHIP endpoints."""
    router = APIRouter(tags=["whip"])

    @router.post("/whip/{call_type}/{call_id}", status_code=201)
    async def whip_publish(request: Request, call_type: str, call_id: str) -> Response:
        """Answer a publisher's SDP offer: it becomes a participant of the call."""
        try:
            token, offer = await read_offer(request, MAX_WHIP_OFFER_BYTES)
            client = request.client
            peer = f"{client.host}:{client.port}" if client else ""
            answer, session_id = await ingress.publish(token, call_type, call_id, offer, peer)
        except IngestError as exc:
            return refused(exc)
        return created(
            request, "whip_session", session_id, answer, ingress.ice, f"whip-{session_id[:8]}"
        )

    @router.delete("/whip/session/{session_id}", name="whip_session")
    async def whip_delete(session_id: str) -> Response:
        """End a publish."""
        try:
            await ingress.delete(session_id)
        except IngestError as exc:
            return error_response(exc)
        return Response(status_code=200, headers=CORS_HEADERS)

    @router.patch("/whip/session/{session_id}")
    async def whip_patch(session_id: str) -> Response:
        """Trickle ICE / ICE restart: not supported (the answer carries every candidate)."""
        return no_trickle()

    @router.options("/whip/{call_type}/{call_id}")
    async def whip_preflight(call_type: str, call_id: str) -> Response:
        """CORS preflight of the offer POST (with the ICE servers)."""
        return offer_preflight(ingress.ice, f"whip-{call_type}-{call_id}")

    @router.options("/whip/session/{session_id}")
    async def whip_session_preflight(session_id: str) -> Response:
        return Response(status_code=204, headers=CORS_HEADERS)

    return router
