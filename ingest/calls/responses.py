"""Records and live state → the response models of :mod:`ingest.calls.wire`.

The wire shape lives in ``wire``; these functions only fill it from the store's records, the
live participants and the egress state.
"""

from __future__ import annotations

from typing import Any

from . import wire as w
from .models import Call, CallSession, CallType, Member, User
from .service import CallService, Participant


def user(u: User | None, user_id: str | None = None) -> w.UserResponse:
    if u is None:
        return w.UserResponse(id=user_id or "")
    return w.UserResponse(
        id=u.id,
        name=u.name,
        image=u.image,
        role=u.role,
        custom=u.custom,
        created_at=u.created_at,
        updated_at=u.updated_at,
        revoke_tokens_issued_before=u.revoke_tokens_issued_before,
        deactivated_at=u.deactivated_at,
    )


def member(m: Member, u: User | None) -> w.MemberResponse:
    return w.MemberResponse(
        user_id=m.user_id,
        user=user(u, m.user_id),
        role=m.role,
        custom=m.custom,
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


def call_settings(settings: dict[str, Any]) -> w.CallSettings:
    return w.CallSettings.model_validate(settings)


def call_type(ct: CallType) -> w.CallTypeResponse:
    return w.CallTypeResponse(
        name=ct.name,
        grants=ct.grants,
        settings=call_settings(ct.settings),
        created_at=ct.created_at,
        updated_at=ct.updated_at,
    )


def participant(p: Participant, u: User | None, *, health: bool = False) -> w.ParticipantResponse:
    return w.ParticipantResponse(
        user=user(u, p.user_id),
        user_session_id=p.session_id,
        role=p.role,
        joined_at=p.joined_at,
        source=p.source,
        health=w.ParticipantHealth.model_validate(p.health())
        if health and p.health is not None
        else None,
    )


async def participants(
    svc: CallService, cid: str, *, health: bool = False
) -> list[w.ParticipantResponse]:
    live = svc.list_participants(cid)
    users = await svc.store.get_users(sorted({p.user_id for p in live}))
    return [participant(p, users.get(p.user_id), health=health) for p in live]


async def session(svc: CallService, call: Call, s: CallSession) -> w.CallSessionResponse:
    parts = await participants(svc, call.cid)
    by_role: dict[str, int] = {}
    for p in parts:
        by_role[p.role] = by_role.get(p.role, 0) + 1
    return w.CallSessionResponse(
        id=s.id,
        participants=parts,
        participants_count_by_role=by_role,
        started_at=s.started_at,
        live_started_at=s.live_started_at,
        live_ended_at=s.live_ended_at,
        ended_at=s.ended_at,
    )


async def call(svc: CallService, c: Call, ct: CallType) -> w.CallResponse:
    creator = await svc.store.get_user(c.created_by_id)
    s = await svc.store.get_session(c.current_session_id) if c.current_session_id else None
    settings = call_settings(svc.effective_settings(c, ct))
    return w.CallResponse(
        cid=c.cid,
        id=c.id,
        type=c.type,
        created_at=c.created_at,
        updated_at=c.updated_at,
        created_by=user(creator, c.created_by_id),
        custom=c.custom,
        backstage=c.backstage,
        recording=svc.egress.is_recording(c.cid) if svc.egress is not None else c.recording,
        current_session_id=c.current_session_id,
        starts_at=c.starts_at,
        ended_at=c.ended_at,
        join_ahead_time_seconds=settings.backstage.join_ahead_time_seconds,
        settings=settings,
        ingress=w.CallIngress(
            rtmp=w.Address(address=svc.rtmp_address(c)),
            whip=w.Address(address=svc.whip_address(c)),
        ),
        egress=egress(svc, c),
        session=await session(svc, c, s) if s else None,
    )


def egress(svc: CallService, c: Call) -> w.CallEgress:
    """What HLS is really doing (the egress knows; without one, what was asked)."""
    if svc.egress is None:
        hls = w.EgressHLS(status="starting" if c.hls else "stopped")
    else:
        status = svc.egress.hls_status(c.cid)
        hls = w.EgressHLS(
            playlist_url=svc.egress.playlist_url(c.cid) if status != "stopped" else "",
            status=status if status in ("stopped", "starting", "running", "failed") else "failed",
        )
    return w.CallEgress(broadcasting=c.hls, hls=hls)


async def recordings(svc: CallService, cid: str) -> list[w.RecordingResponse]:
    if svc.egress is None:
        return []
    return [
        w.RecordingResponse.model_validate(svc.egress.recording_json(info))
        for info in await svc.egress.recordings(cid)
    ]


async def members(svc: CallService, ms: list[Member]) -> list[w.MemberResponse]:
    users = await svc.store.get_users([m.user_id for m in ms])
    return [member(m, users.get(m.user_id)) for m in ms]
