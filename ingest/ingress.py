"""RTMP publishers as call participants: auth, takeover, media into the hub, health, events.

The RTMP server knows nothing about calls; it asks :meth:`RtmpIngress.on_publish` (LiveKit's
habit: auth stays out of the protocol layer). Each accepted publish becomes a participant with its
own session id; its FLV tags become media units on the hub's tracks for that participant.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .calls import events as ev
from .calls.service import CallService, Participant
from .errors import MediaError
from .flv.tags import TagReader
from .media.health import Health
from .media.hub import Hub, Track
from .media.timeline import Timeline
from .media.units import Kind
from .rtmp.server import PublishRequest

log = logging.getLogger("ingest.ingress")

# How many (call, user) timeline ends are remembered for reconnects.
TIMELINE_MEMORY = 10_000


class RtmpPublisher:
    """One accepted RTMP publish: implements the RTMP server's PublishSession."""

    def __init__(
        self,
        ingress: RtmpIngress,
        participant: Participant,
        request: PublishRequest,
        disconnect: Callable[[str], None],
        timeline: Timeline,
    ) -> None:
        self.ingress = ingress
        self.participant = participant
        self.request = request
        self._disconnect = disconnect
        self.reader = TagReader(timeline)
        self.health = Health()
        self.tracks: dict[Kind, Track] = {}
        self.closed = False
        self.error: str | None = None
        self.started_at = time.monotonic()
        participant.health = self.health_snapshot

    @property
    def key(self) -> tuple[str, str]:
        return self.participant.call_cid, self.participant.user_id

    def health_snapshot(self) -> dict[str, Any]:
        snap = self.health.snapshot(time.monotonic())
        snap["transport"] = "rtmp"
        snap["peer"] = self.request.peer
        if self.ingress.transcoding is not None:
            p = self.participant
            snap["webrtc"] = {
                "video_transcoded": self.ingress.transcoding(p.call_cid, p.session_id)
            }
        return snap

    # --- PublishSession ---------------------------------------------------------------------

    def on_metadata(self, metadata: dict[str, object]) -> None:
        self.reader.on_metadata(metadata)
        self.health.on_metadata(metadata)

    def on_audio(self, timestamp: int, payload: bytes) -> None:
        self._media(Kind.AUDIO, timestamp, payload)

    def on_video(self, timestamp: int, payload: bytes) -> None:
        self._media(Kind.VIDEO, timestamp, payload)

    async def on_close(self, reason: str | None) -> None:
        self.finish(reason)

    # --- internals --------------------------------------------------------------------------

    def _media(self, kind: Kind, timestamp: int, payload: bytes) -> None:
        if self.closed:
            return
        try:
            units = self.reader.receive(kind, timestamp, payload)
        except MediaError as e:
            self.fail(e.message)
            return
        for change in self.reader.pop_changes():
            self._apply_config(change.kind, change.config)
        if not units:
            return
        now = time.monotonic()
        track = self.tracks.get(kind)
        for unit in units:
            self.health.on_unit(unit, now)
            if track is not None:
                track.push(unit)

    def _apply_config(self, kind: Kind, config: Any) -> None:
        self.health.on_config(config)
        track = self.tracks.get(kind)
        if track is None:
            p = self.participant
            self.tracks[kind] = self.ingress.hub.publish(
                p.call_cid, p.session_id, p.user_id, kind, config
            )
            p.tracks.append(kind.value)
            log.info("%s publishes %s in %s (%s)", p.user_id, kind.value, p.call_cid, config.codec)
        else:
            track.config = config

    def fail(self, message: str) -> None:
        """Media we cannot carry: tell the call (ingress.error) and close this connection only."""
        if self.closed:
            return
        self.error = message
        p = self.participant
        log.warning("publisher %s in %s refused: %s", p.user_id, p.call_cid, message)
        self.ingress.calls.bus.emit(
            ev.INGRESS_ERROR,
            p.call_cid,
            ingress="rtmp",
            user={"id": p.user_id},
            user_session_id=p.session_id,
            error=message,
        )
        self._disconnect(message)
        self.finish(message)

    def disconnect(self, reason: str) -> None:
        self._disconnect(reason)
        self.finish(reason)

    def finish(self, reason: str | None) -> None:
        """Leave the call; idempotent (takeover, kick and the server's on_close all end here)."""
        if self.closed:
            return
        self.closed = True
        p = self.participant
        self.ingress.hub.unpublish(p.call_cid, p.session_id)
        end = self.reader.timeline.end
        if end is not None:
            self.ingress.remember_end(self.key, end)
        self.ingress.calls.leave(p)
        if self.ingress.active.get(self.key) is self:
            del self.ingress.active[self.key]
        self.ingress.calls.bus.emit(
            ev.INGRESS_STOPPED,
            p.call_cid,
            ingress="rtmp",
            user={"id": p.user_id},
            user_session_id=p.session_id,
            reason=reason or "publisher stopped",
        )
        log.info(
            "publisher %s left %s after %.1f s (%s)",
            p.user_id,
            p.call_cid,
            time.monotonic() - self.started_at,
            reason or "unpublished",
        )


class RtmpIngress:
    """The RTMP server's PublishHandler: decides who may publish and wires them into the call."""

    def __init__(
        self,
        calls: CallService,
        hub: Hub,
        *,
        transcoding: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.calls = calls
        self.hub = hub
        self.transcoding = transcoding  # (call_cid, participant id) -> WebRTC re-encodes video
        self.active: dict[tuple[str, str], RtmpPublisher] = {}
        self._ends: OrderedDict[tuple[str, str], int] = OrderedDict()

    def remember_end(self, key: tuple[str, str], end: int) -> None:
        self._ends[key] = end
        self._ends.move_to_end(key)
        while len(self._ends) > TIMELINE_MEMORY:
            self._ends.popitem(last=False)

    async def on_publish(
        self, request: PublishRequest, disconnect: Callable[[str], None]
    ) -> RtmpPublisher:
        # A refusal raises; the RTMP server logs it (rate-limited: floods of refusals are attacks).
        caller, call, _ct, role = await self.calls.authorize_publish(
            request.app, request.stream_key
        )
        assert caller.user_id is not None
        key = (call.cid, caller.user_id)
        old = self.active.get(key)
        if old is not None:
            # The same user again: the new connection wins (the old one may be dead already).
            old.disconnect(f"taken over by a new connection from {request.peer}")
        previous_end = self._ends.get(key)
        timeline = Timeline(previous_end) if previous_end is not None else Timeline()
        participant = await self.calls.join(
            call,
            caller.user_id,
            role=role,
            source="rtmp",
            token_issued_at=caller.claims.issued_at if caller.claims else None,
        )
        publisher = RtmpPublisher(self, participant, request, disconnect, timeline)
        participant.disconnect = publisher.disconnect
        self.active[key] = publisher
        self.calls.bus.emit(
            ev.INGRESS_STARTED,
            call.cid,
            ingress="rtmp",
            user={"id": caller.user_id},
            user_session_id=participant.session_id,
            peer=request.peer,
        )
        return publisher

    def publishers(self) -> list[RtmpPublisher]:
        return list(self.active.values())
