"""What every publishing front end (RTMP, WHIP) shares once a publish is authorized.

:class:`Publishers` admits a publisher into its call (the same user on the same front end again
takes over: the new connection wins), makes it a participant (``call.session_participant_joined``),
emits ``ingress.started`` / ``ingress.stopped`` / ``ingress.error`` with ``ingress`` naming the
front end, and keeps the list of live publishers. :class:`LivePublisher` is the participant side
of one publish: its tracks on the hub, its health, and one idempotent :meth:`LivePublisher.finish`
that every way of ending reaches (the client left, takeover, kick, member removal, revocation,
media we cannot carry).

Authorization is :meth:`~ingest.calls.service.CallService.authorize_publisher`, the same for
every front end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .calls import events as ev
from .calls.models import Call
from .calls.service import Caller, CallService, Participant
from .media.health import Health
from .media.hub import Hub, Track, TrackConfig
from .media.units import Kind, MediaUnit

log = logging.getLogger("ingest.publishing")


class LivePublisher:
    """One accepted publish, as a call participant. Front ends subclass it and implement
    :meth:`close_transport` (end the connection; must not block)."""

    transport = ""
    """The front end: ``"rtmp"``, ``"whip"`` (the events' ``ingress``, the participant's
    ``source``, the health's ``transport``)."""

    def __init__(self, publishers: Publishers, participant: Participant, peer: str) -> None:
        self.publishers = publishers
        self.participant = participant
        self.peer = peer
        self.health = Health()
        self.tracks: dict[Kind, Track] = {}
        self.closed = False
        self.error: str | None = None
        self.started_at = time.monotonic()
        participant.health = self.health_snapshot
        participant.disconnect = self.disconnect

    @property
    def key(self) -> tuple[str, str, str]:
        return self.participant.call_cid, self.participant.user_id, self.transport

    def health_snapshot(self) -> dict[str, Any]:
        snap = self.health.snapshot(time.monotonic())
        snap["transport"] = self.transport
        snap["peer"] = self.peer
        return snap

    def publish_track(self, kind: Kind, config: TrackConfig) -> Track:
        """Start (or reconfigure) this participant's track of ``kind`` on the hub."""
        self.health.on_config(config)
        track = self.tracks.get(kind)
        if track is not None:
            track.config = config
            return track
        p = self.participant
        track = self.tracks[kind] = self.publishers.hub.publish(
            p.call_cid, p.session_id, p.user_id, kind, config
        )
        log.info(
            "%s publishes %s in %s (%s, %s)",
            p.user_id,
            kind.value,
            p.call_cid,
            config.codec,
            self.transport,
        )
        return track

    def push(self, unit: MediaUnit, now: float) -> None:
        self.health.on_unit(unit, now)
        track = self.tracks.get(unit.kind)
        if track is not None and not track.ended:
            track.push(unit)

    def close_transport(self, reason: str) -> None:
        raise NotImplementedError

    def fail(self, message: str) -> None:
        """Media we cannot carry: tell the call (``ingress.error``), end this publish only."""
        if self.closed:
            return
        self.error = message
        p = self.participant
        log.warning("publisher %s in %s refused: %s", p.user_id, p.call_cid, message)
        self.publishers.emit(ev.INGRESS_ERROR, self, error=message)
        self.disconnect(message)

    def disconnect(self, reason: str) -> None:
        """End the publish from our side (takeover, kick, removal, revocation, failure)."""
        self.close_transport(reason)
        self.finish(reason)

    def finish(self, reason: str | None) -> None:
        """Leave the call; idempotent (every way of ending reaches it)."""
        if self.closed:
            return
        self.closed = True
        p = self.participant
        self.publishers.hub.unpublish(p.call_cid, p.session_id)
        self.on_finish()
        self.publishers.calls.leave(p)
        if self.publishers.active.get(self.key) is self:
            del self.publishers.active[self.key]
        self.publishers.emit(ev.INGRESS_STOPPED, self, reason=reason or "publisher stopped")
        log.info(
            "publisher %s left %s after %.1f s (%s, %s)",
            p.user_id,
            p.call_cid,
            time.monotonic() - self.started_at,
            self.transport,
            reason or "unpublished",
        )

    def on_finish(self) -> None:
        """Front end's clean-up when the publish ends (before the participant leaves)."""


P = TypeVar("P", bound=LivePublisher)


class Publishers:
    """The live publishers of every front end, and how one is admitted."""

    def __init__(self, calls: CallService, hub: Hub) -> None:
        self.calls = calls
        self.hub = hub
        self.active: dict[tuple[str, str, str], LivePublisher] = {}

    def emit(self, event: str, publisher: LivePublisher, **fields: Any) -> None:
        p = publisher.participant
        self.calls.bus.emit(
            event,
            p.call_cid,
            ingress=publisher.transport,
            user={"id": p.user_id},
            user_session_id=p.session_id,
            **fields,
        )

    async def admit(
        self,
        caller: Caller,
        call: Call,
        role: str,
        transport: str,
        peer: str,
        make: Callable[[Participant], P],
    ) -> P:
        """Join an authorized publisher to the call; an earlier publish of the same user on the
        same front end is ended first (taken over)."""
        assert caller.user_id is not None
        old = self.active.get((call.cid, caller.user_id, transport))
        if old is not None:
            old.disconnect(f"taken over by a new connection from {peer}")
        participant = await self.calls.join(
            call,
            caller.user_id,
            role=role,
            source=transport,
            token_issued_at=caller.claims.issued_at if caller.claims else None,
        )
        publisher = make(participant)
        self.active[publisher.key] = publisher
        self.emit(ev.INGRESS_STARTED, publisher, peer=peer)
        return publisher

    def of(self, transport: str) -> list[LivePublisher]:
        return [p for p in self.active.values() if p.transport == transport]
