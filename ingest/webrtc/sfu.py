"""The SFU's subscriber side: one aiortc peer connection per viewer, fed from the hub.

A viewer sends an SDP offer (WHEP) for one publishing participant; :meth:`SFU.subscribe` answers
with that participant's audio and video. Media is never decoded per viewer: each hub track has one
shared :class:`~ingest.webrtc.bridge.TrackBridge` (passthrough, or one transcoder for everybody)
and each viewer has its own bounded reader on the bridge's output, so a slow viewer only drops
its own frames (video: to the next keyframe) and never stalls the publisher or other viewers.
A bridge lives while it has viewers.

ICE: the deployment's STUN/TURN servers and public addresses (:mod:`ingest.webrtc.ice`; none by
default); aiortc offers host candidates of every interface, loopback included, all in the answer
(no trickle). A session that does not
connect within :data:`CONNECT_TIMEOUT` seconds, whose connection fails, or whose publisher's
tracks all ended, is closed (a WHEP client then POSTs again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.sdp import MediaDescription, SessionDescription

from ingest.errors import InputError, NotFoundError, RateLimitedError
from ingest.media.hub import GOP_CACHE_MAX_UNITS, Hub, Track
from ingest.media.units import Kind, VideoConfig
from ingest.webrtc.aiortc_compat import on_keyframe_request
from ingest.webrtc.bridge import (
    AudioBridge,
    ForwardBridge,
    OpusFactory,
    RemoverFactory,
    TrackBridge,
    VideoBridge,
    bridge_for,
)
from ingest.webrtc.forwarding import codec_preferences
from ingest.webrtc.ice import IcePolicy
from ingest.webrtc.negotiation import (
    h264_answer_codecs,
    opus_preferences,
    without_mdns_candidates,
)
from ingest.webrtc.packing import install as install_packer
from ingest.webrtc.tracks import (
    ForwardedAudioTrack,
    ForwardedVideoTrack,
    HubPacketTrack,
    OpusAudioTrack,
    PassthroughVideoTrack,
)

log = logging.getLogger("ingest.webrtc")

VIEWER_QUEUE_VIDEO = GOP_CACHE_MAX_UNITS + 1
"""A viewer's video queue: any cached GOP fits (the hub gives a GOP only if it fits)."""
VIEWER_QUEUE_AUDIO = 50
"""A viewer's audio queue: 1 s of 20 ms Opus packets, then the oldest are dropped."""
MAX_SESSIONS_DEFAULT = 1000
"""Viewer peer connections per process before :meth:`SFU.subscribe` refuses (429)."""
MAX_OFFER_BYTES = 64 * 1024
"""An SDP offer larger than this is refused (a browser's is ~5 KiB)."""
CONNECT_TIMEOUT = 30.0
"""Seconds a session may take to connect (ICE + DTLS) before it is closed."""


@dataclass(eq=False)
class Session:
    """One viewer: its peer connection, its tracks and the bridges it holds."""

    session_id: str
    call_cid: str
    participant_id: str
    pc: RTCPeerConnection
    tracks: list[HubPacketTrack] = field(default_factory=list)
    bridges: list[TrackBridge] = field(default_factory=list)
    video_profile_level_id: str | None = None
    """The H.264 ``profile-level-id`` the answer named (``None``: no video)."""
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    watchdog: asyncio.Task[None] | None = None
    on_close: Callable[[], None] | None = None
    """Called once when the session ends, however it ends (the app's roster lets go)."""


class SFU:
    """Owns the viewers' peer connections and the shared per-track bridges."""

    def __init__(
        self,
        hub: Hub,
        *,
        max_sessions: int = MAX_SESSIONS_DEFAULT,
        connect_timeout: float = CONNECT_TIMEOUT,
        remover_factory: RemoverFactory | None = None,
        opus_factory: OpusFactory | None = None,
    ) -> None:
        self.hub = hub
        self.max_sessions = max_sessions
        self.connect_timeout = connect_timeout
        self._remover_factory = remover_factory
        self._opus_factory = opus_factory
        self._sessions: dict[str, Session] = {}
        self._bridges: dict[Track, TrackBridge] = {}
        self._refs: dict[TrackBridge, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.ice = IcePolicy()  # STUN/TURN servers and public addresses (set by the app)

    @property
    def sessions(self) -> dict[str, Session]:
        """Open sessions by id (read only, please)."""
        return self._sessions

    def bridge(self, track: Track) -> TrackBridge | None:
        """The running bridge of a hub track, if it has viewers."""
        return self._bridges.get(track)

    def acquire_bridge(self, source: Track) -> TrackBridge:
        """The shared, running bridge of ``source``, held until :meth:`release_bridge`.

        For other signaling front ends (``signaling.py``) that manage their own peer connections
        but must share the one bridge (and transcoder) per track with WHEP viewers. Raises
        :class:`~ingest.errors.MediaError` for media WebRTC cannot carry."""
        return self._acquire(source)

    async def release_bridge(self, bridge: TrackBridge) -> None:
        """Give back a bridge of :meth:`acquire_bridge`; the last holder stops it."""
        await self._release(bridge)

    def transcoding(self, call_cid: str, participant_id: str) -> bool:
        """Whether the participant's video is re-encoded for its viewers (B-frames removed).

        ``False`` when it passes through untouched, and when nobody watches it (then nothing
        is transcoded). For the participant's health."""
        track = self.hub.track(call_cid, participant_id, Kind.VIDEO)
        bridge = self._bridges.get(track) if track is not None else None
        return bridge is not None and not bridge.ended and bridge.transcoding

    async def subscribe(
        self,
        offer_sdp: str,
        call_cid: str,
        participant_id: str,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> tuple[str, str]:
        """Answer a viewer's offer with the participant's media; returns (answer SDP, session
        id). Raises :class:`NotFoundError` if the participant publishes nothing,
        :class:`InputError` for an offer we cannot answer, :class:`RateLimitedError` when full.
        ``on_close`` is called once when the session ends (also if this raises)."""
        if len(self._sessions) >= self.max_sessions:
            raise RateLimitedError(f"this server already has {self.max_sessions} viewers")
        offer = _parse_offer(offer_sdp)
        sources = {
            kind: track
            for kind in (Kind.AUDIO, Kind.VIDEO)
            if (track := self.hub.track(call_cid, participant_id, kind)) is not None
        }
        if not sources:
            raise NotFoundError(f"participant {participant_id} publishes nothing in {call_cid}")
        wanted = {m.kind for m in offer.media}
        session = Session(
            session_id=secrets.token_urlsafe(16),
            call_cid=call_cid,
            participant_id=participant_id,
            pc=RTCPeerConnection(self.ice.rtc_configuration()),
            on_close=on_close,
        )
        try:
            transceivers: dict[Kind, RTCRtpTransceiver] = {}
            refused: list[str] = []
            for kind, source in sources.items():
                if kind.value not in wanted:
                    continue
                forwarded = forwarded_preferences(source, offer)
                if forwarded == []:  # the viewer cannot decode it: its section is not answered
                    refused.append(f"{kind.value} is {source.config.codec}")
                    continue
                bridge = self._acquire(source)
                session.bridges.append(bridge)
                viewer, transceiver = add_viewer_track(session.pc, bridge)
                session.tracks.append(viewer)
                if forwarded is not None:
                    transceiver.setCodecPreferences(forwarded)
                elif kind is Kind.AUDIO:
                    transceiver.setCodecPreferences(opus_preferences())
                transceivers[kind] = transceiver
            if refused:
                log.info("viewer cannot decode %s: not sending it", ", ".join(refused))
            if not transceivers:
                if refused:
                    what = ", ".join(refused)
                    raise InputError(
                        f"this viewer cannot decode what the participant sends ({what}): "
                        "offer those codecs"
                    )
                raise InputError("the offer has no audio or video section this participant sends")
            try:
                await session.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=without_mdns_candidates(offer_sdp), type="offer")
                )
            except (ValueError, AssertionError, InvalidAccessError, InvalidStateError) as exc:
                raise InputError(f"cannot use this SDP offer: {exc}") from exc
            except OperationError as exc:  # no codec in common
                raise InputError(f"cannot answer this SDP offer: {exc}") from exc
            video = transceivers.get(Kind.VIDEO)
            if video is not None and _needs_h264_answer(session.bridges):
                session.video_profile_level_id = _negotiate_video(video, offer, session.bridges)
            answer = await session.pc.createAnswer()
            await session.pc.setLocalDescription(answer)
        except BaseException:
            await self._discard(session)
            raise
        self._sessions[session.session_id] = session
        self._watch(session)
        log.info(
            "viewer session %s… of %s/%s: %s",
            session.session_id[:6],
            call_cid,
            participant_id,
            ", ".join(repr(b) for b in session.bridges),
        )
        return self.ice.advertise(session.pc.localDescription.sdp), session.session_id

    def end(self, session_id: str, reason: str) -> None:
        """Close a session soon (its peer connection closes, so media stops) and log why; for
        callers that cannot wait (kick, revocation). Unknown ids are ignored."""
        self._close_later(session_id, reason)

    async def close(self, session_id: str) -> None:
        """Close a viewer session; :class:`NotFoundError` if there is none by that id."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise NotFoundError(f"no viewer session {session_id}")
        await self._discard(session)
        log.info("viewer session %s… closed", session_id[:6])

    async def stop(self) -> None:
        """Close every session and bridge."""
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(self._discard(s) for s in sessions), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        bridges, self._bridges, self._refs = list(self._bridges.values()), {}, {}
        await asyncio.gather(*(b.stop() for b in bridges), return_exceptions=True)

    # -- internals ---------------------------------------------------------------------------

    def _acquire(self, source: Track) -> TrackBridge:
        bridge = self._bridges.get(source)
        if bridge is None or bridge.ended:
            bridge = bridge_for(
                source,
                remover_factory=self._remover_factory,
                opus_factory=self._opus_factory,
            )
            bridge.start()
            self._bridges[source] = bridge
            self._refs[bridge] = 0
        self._refs[bridge] += 1
        return bridge

    async def _release(self, bridge: TrackBridge) -> None:
        refs = self._refs.get(bridge, 0) - 1
        if refs > 0:
            self._refs[bridge] = refs
            return
        self._refs.pop(bridge, None)
        if self._bridges.get(bridge.source) is bridge:
            del self._bridges[bridge.source]
        await bridge.stop()

    async def _discard(self, session: Session) -> None:
        """Stop a session's tracks, connection and watchdog; release its bridges."""
        watchdog = session.watchdog
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
        for track in session.tracks:
            track.stop()
        try:
            await session.pc.close()
        except Exception:
            log.exception("closing the peer connection of session %s…", session.session_id[:6])
        bridges, session.bridges = session.bridges, []
        for bridge in bridges:
            await self._release(bridge)
        on_close, session.on_close = session.on_close, None
        if on_close is not None:
            try:
                on_close()
            except Exception:
                log.exception("after closing session %s…", session.session_id[:6])
        session.closed.set()

    def _watch(self, session: Session) -> None:
        pc = session.pc

        @pc.on("connectionstatechange")
        def _changed() -> None:
            state = pc.connectionState
            if state == "connected":
                session.connected.set()
            elif state in ("failed", "closed"):
                self._close_later(session.session_id, f"connection {state}")

        def _track_ended() -> None:
            if all(t.readyState == "ended" for t in session.tracks):
                self._close_later(session.session_id, "the publisher's tracks ended")

        for track in session.tracks:
            track.on("ended", _track_ended)

        async def watchdog() -> None:
            try:
                await asyncio.wait_for(session.connected.wait(), self.connect_timeout)
            except TimeoutError:
                self._close_later(session.session_id, "did not connect in time")

        session.watchdog = asyncio.get_running_loop().create_task(watchdog())

    def _close_later(self, session_id: str, why: str) -> None:
        if session_id not in self._sessions:
            return
        log.info("viewer session %s…: %s, closing it", session_id[:6], why)

        async def close() -> None:
            with contextlib.suppress(NotFoundError):
                await self.close(session_id)

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _parse_offer(offer_sdp: str) -> SessionDescription:
    if len(offer_sdp.encode()) > MAX_OFFER_BYTES:
        raise InputError(f"the SDP offer is larger than {MAX_OFFER_BYTES} bytes")
    try:
        offer = SessionDescription.parse(offer_sdp)
    except Exception as exc:  # aiortc's parser raises whatever its split/int() raise
        raise InputError(f"the body is not an SDP offer: {exc}") from exc
    if not any(m.kind in ("audio", "video") for m in offer.media):
        raise InputError("the SDP offer has no audio or video section")
    return offer


def viewer_track(bridge: TrackBridge) -> HubPacketTrack:
    """A new viewer's own track on a bridge's output (bounded reader; video from the GOP)."""
    if isinstance(bridge, ForwardBridge):
        # forwarded video starts at the next keyframe, which subscribing asks the publisher for
        # (no backlog of a long GOP)
        reader = bridge.output.subscribe(
            max_queue=VIEWER_QUEUE_VIDEO if bridge.kind is Kind.VIDEO else VIEWER_QUEUE_AUDIO,
            from_gop=False,
            name=f"webrtc-viewer-forwarded-{bridge.kind.value}",
        )
        if bridge.kind is Kind.VIDEO:
            return ForwardedVideoTrack(reader)
        return ForwardedAudioTrack(reader)
    if isinstance(bridge, VideoBridge):
        reader = bridge.output.subscribe(
            max_queue=VIEWER_QUEUE_VIDEO, from_gop=True, name="webrtc-viewer-video"
        )
        return PassthroughVideoTrack(
            reader, live_edge=lambda: bridge.last_pts, payloads=bridge.payloads
        )
    assert isinstance(bridge, AudioBridge)
    # no audio backlog: the video backlog is stamped to the live edge, so audio starts live too
    reader = bridge.output.subscribe(
        max_queue=VIEWER_QUEUE_AUDIO, from_gop=False, name="webrtc-viewer-audio"
    )
    return OpusAudioTrack(reader)


_viewer_track = viewer_track  # the name before signaling.py shared it


def add_viewer_track(
    pc: RTCPeerConnection, bridge: TrackBridge
) -> tuple[HubPacketTrack, RTCRtpTransceiver]:
    """A new viewer track on ``bridge`` in a send-only transceiver of ``pc``, its sender set up
    to pack our packets (:func:`~ingest.webrtc.packing.install`). Every viewer track goes
    through here: aiortc's own H.264 encoder cannot pack them."""
    track = viewer_track(bridge)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    install_packer(transceiver.sender, track.packer())
    if isinstance(bridge, ForwardBridge) and bridge.kind is Kind.VIDEO:
        # the viewer's PLI / FIR ask the publisher (merged, rate-limited); so did its join (its
        # reader waits for a keyframe: Track.subscribe asks for one)
        on_keyframe_request(transceiver.sender, bridge.source.request_keyframe)
    return track, transceiver


def forwarded_preferences(
    source: Track, offer: SessionDescription
) -> list[RTCRtpCodecCapability] | None:
    """Codec preferences for a forwarded (WHIP) track: its codec (+ RTX) if the offer has it,
    ``[]`` if the viewer cannot decode it; ``None`` for other tracks (negotiated as before)."""
    config = source.config
    if not config.forwarded:
        return None
    if config.codec == "h264" and isinstance(config, VideoConfig):
        offered = [m for m in offer.media if m.kind == "video"]
        ok = offered and h264_answer_codecs(offered[0].rtp.codecs, config.profile_level_id)
        if not ok:
            return []
    mime = f"{source.kind.value}/{config.codec}".lower()
    if not any(
        c.mimeType.lower() == mime
        for m in offer.media
        if m.kind == source.kind.value
        for c in m.rtp.codecs
    ):
        return []
    return codec_preferences(source.kind.value, config.codec)  # H.264: see _negotiate_video


def _needs_h264_answer(bridges: list[TrackBridge]) -> bool:
    video = next((b for b in bridges if b.kind is Kind.VIDEO), None)
    if isinstance(video, ForwardBridge):
        return video.codec == "h264"
    return video is not None


def _negotiate_video(
    transceiver: RTCRtpTransceiver, offer: SessionDescription, bridges: list[TrackBridge]
) -> str:
    """Replace aiortc's H.264 choice for our video transceiver (see ``negotiation``)."""
    bridge = next(b for b in bridges if b.kind is Kind.VIDEO)
    if isinstance(bridge, VideoBridge):
        profile_level_id = bridge.profile_level_id
    else:
        config = bridge.output.config
        assert isinstance(config, VideoConfig)
        profile_level_id = config.profile_level_id
    media = _media_of(offer, transceiver.mid)
    choice = h264_answer_codecs(media.rtp.codecs, profile_level_id)
    if choice is None:
        raise InputError("the offer has no H.264 with packetization-mode=1; we only send H.264")
    transceiver._codecs = choice.codecs
    return choice.profile_level_id


def _media_of(offer: SessionDescription, mid: str | None) -> MediaDescription:
    for media in offer.media:
        if media.rtp.muxId == mid:
            return media
    raise InputError(f"the offer has no media section with mid {mid!r}")
