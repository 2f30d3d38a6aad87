"""The SFU's subscriber side: one aiortc peer connection per viewer, fed from the hub.

A viewer sends an SDP offer (WHEP) for one publishing participant; :meth:`SFU.subscribe` answers
with that participant's audio and video through a :class:`~ingest.webrtc.subscriber.Subscriber`
(the peer connection the call WebSocket uses too). Media is never decoded per viewer: each hub
track has one shared :class:`~ingest.webrtc.bridge.TrackBridge` (passthrough, or one transcoder
for everybody) and each viewer has its own bounded reader on the bridge's output, so a slow
viewer only drops its own frames (video: to the next keyframe) and never stalls the publisher or
other viewers.
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

from aiortc import RTCPeerConnection

from ingest.errors import NotFoundError, RateLimitedError
from ingest.media.hub import Hub, Track
from ingest.media.units import Kind
from ingest.webrtc.bridge import (
    OpusFactory,
    RemoverFactory,
    TrackBridge,
    bridge_for,
)
from ingest.webrtc.ice import IcePolicy
from ingest.webrtc.subscriber import (
    MAX_OFFER_BYTES,
    VIEWER_QUEUE_AUDIO,
    VIEWER_QUEUE_VIDEO,
    Subscriber,
    add_viewer_track,
    parse_offer,
    viewer_track,
)
from ingest.webrtc.tracks import HubPacketTrack

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_OFFER_BYTES",
    "MAX_SESSIONS_DEFAULT",
    "SFU",
    "VIEWER_QUEUE_AUDIO",
    "VIEWER_QUEUE_VIDEO",
    "Session",
    "add_viewer_track",
    "viewer_track",
]

log = logging.getLogger("ingest.webrtc")

MAX_SESSIONS_DEFAULT = 1000
"""Viewer peer connections per process before :meth:`SFU.subscribe` refuses (429)."""
CONNECT_TIMEOUT = 30.0
"""Seconds a session may take to connect (ICE + DTLS) before it is closed."""


@dataclass(eq=False)
class Session:
    """One WHEP viewer: its :class:`~ingest.webrtc.subscriber.Subscriber` (peer connection,
    tracks, the bridges it holds) and its life cycle."""

    session_id: str
    call_cid: str
    participant_id: str
    subscriber: Subscriber
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    watchdog: asyncio.Task[None] | None = None
    on_close: Callable[[], None] | None = None
    """Called once when the session ends, however it ends (the app's roster lets go)."""

    @property
    def pc(self) -> RTCPeerConnection:
        return self.subscriber.pc

    @property
    def tracks(self) -> list[HubPacketTrack]:
        return self.subscriber.tracks

    @property
    def bridges(self) -> list[TrackBridge]:
        return self.subscriber.bridges

    @property
    def video_profile_level_id(self) -> str | None:
        """The H.264 ``profile-level-id`` the answer named (``None``: no H.264 video)."""
        return self.subscriber.video_profile_level_id


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
        parse_offer(offer_sdp)  # a bad offer is refused before anything is set up
        sources = {
            kind: track
            for kind in (Kind.AUDIO, Kind.VIDEO)
            if (track := self.hub.track(call_cid, participant_id, kind)) is not None
        }
        if not sources:
            raise NotFoundError(f"participant {participant_id} publishes nothing in {call_cid}")
        session = Session(
            session_id=secrets.token_urlsafe(16),
            call_cid=call_cid,
            participant_id=participant_id,
            subscriber=Subscriber(self, sources),
            on_close=on_close,
        )
        try:
            answer = await session.subscriber.answer(offer_sdp)
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
        return answer, session.session_id

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
        await session.subscriber.close()
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
