"""RTMP publishers as call participants: the RTMP front end of :mod:`ingest.publishing`.

The RTMP server knows nothing about calls; it asks :meth:`RtmpIngress.on_publish` (LiveKit's
habit: auth stays out of the protocol layer). Each accepted publish becomes a participant with its
own session id (admitted, taken over, ended like a WHIP publisher: :mod:`ingest.publishing`); its
FLV tags become media units on the hub's tracks for that participant.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .calls.service import CallService, Participant
from .errors import MediaError
from .flv.tags import TagReader
from .media.hub import Hub
from .media.timeline import Timeline
from .media.units import MediaUnit
from .publishing import LivePublisher, Publishers
from .rtmp.server import PublishRequest

log = logging.getLogger("ingest.ingress")

# How many (call, user) timeline ends are remembered for reconnects.
TIMELINE_MEMORY = 10_000


class RtmpPublisher(LivePublisher):
    """One accepted RTMP publish: implements the RTMP server's PublishSession. The participant
    side (tracks, health, events, ending) is :class:`~ingest.publishing.LivePublisher`'s."""

    transport = "rtmp"

    def __init__(
        self,
        ingress: RtmpIngress,
        participant: Participant,
        request: PublishRequest,
        disconnect: Callable[[str], None],
        timeline: Timeline,
    ) -> None:
        super().__init__(ingress.publishing, participant, request.peer)
        self.ingress = ingress
        self.request = request
        self._disconnect = disconnect
        self.reader = TagReader(timeline)

    @property
    def timeline_key(self) -> tuple[str, str]:
        return self.participant.call_cid, self.participant.user_id

    def health_snapshot(self) -> dict[str, Any]:
        snap = super().health_snapshot()
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
        if self.closed:
            return
        try:
            units = self.reader.audio(timestamp, payload)
        except MediaError as e:
            self.fail(e.message)
            return
        self._publish(units)

    def on_video(self, timestamp: int, payload: bytes) -> None:
        if self.closed:
            return
        try:
            units = self.reader.video(timestamp, payload)
        except MediaError as e:
            self.fail(e.message)
            return
        self._publish(units)

    async def on_close(self, reason: str | None) -> None:
        self.finish(reason)

    # --- internals --------------------------------------------------------------------------

    def _publish(self, units: list[MediaUnit]) -> None:
        reader = self.reader
        if reader.changed:
            for change in reader.pop_changes():
                self.publish_track(change.kind, change.config)
        if units:
            now = time.monotonic()
            for unit in units:
                self.push(unit, now)

    def close_transport(self, reason: str) -> None:
        self._disconnect(reason)

    def on_finish(self) -> None:
        end = self.reader.timeline.end
        if end is not None:
            self.ingress.remember_end(self.timeline_key, end)


class RtmpIngress:
    """The RTMP server's PublishHandler: decides who may publish and wires them into the call."""

    def __init__(
        self,
        calls: CallService,
        hub: Hub,
        *,
        transcoding: Callable[[str, str], bool] | None = None,
        publishing: Publishers | None = None,
    ) -> None:
        self.calls = calls
        self.hub = hub
        self.transcoding = transcoding  # (call_cid, participant id) -> WebRTC re-encodes video
        self.publishing = publishing or Publishers(calls, hub)
        """The live publishers of every front end (shared with WHIP by the app)."""
        self._ends: OrderedDict[tuple[str, str], int] = OrderedDict()

    @property
    def active(self) -> dict[tuple[str, str], RtmpPublisher]:
        """Live RTMP publishers by (call cid, user id)."""
        return {
            (p.participant.call_cid, p.participant.user_id): p
            for p in self.publishing.of("rtmp")
            if isinstance(p, RtmpPublisher)
        }

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

        def make(participant: Participant) -> RtmpPublisher:
            # after a takeover: the old connection's end is remembered by now
            previous_end = self._ends.get(key)
            timeline = Timeline(previous_end) if previous_end is not None else Timeline()
            return RtmpPublisher(self, participant, request, disconnect, timeline)

        return await self.publishing.admit(caller, call, role, "rtmp", request.peer, make)

    def publishers(self) -> list[RtmpPublisher]:
        return list(self.active.values())
