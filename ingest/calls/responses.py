"""Stream-shaped JSON for the records (CallResponse, MemberResponse, UserResponse, ...).

Values stay Python objects (datetimes included); the API's encoder decides the wire form of
times, because Stream's Python SDK reads unix nanoseconds and everything else reads RFC 3339.
"""

from __future__ import annotations

from typing import Any

from .models import Call, CallSession, CallType, Member, User
from .service import CallService, Participant


def user_json(user: User | None, user_id: str | None = None) -> dict[str, Any]:
    if user is None:
        user = User(id=user_id or "")
    return {
        "id": user.id,
        "name": user.name,
        "image": user.image,
        "role": user.role,
        "custom": user.custom,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "revoke_tokens_issued_before": user.revoke_tokens_issued_before,
        "deactivated_at": user.deactivated_at,
        "banned": False,
        "online": False,
        "invisible": False,
        "shadow_banned": False,
        "language": "",
        "teams": [],
        "blocked_user_ids": [],
    }


def member_json(m: Member, user: User | None) -> dict[str, Any]:
    return {
        "user_id": m.user_id,
        "user": user_json(user, m.user_id),
        "role": m.role,
        "custom": m.custom,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    }


def call_type_json(ct: CallType) -> dict[str, Any]:
    return {
        "name": ct.name,
        "grants": ct.grants,
        "settings": ct.settings,
        "notification_settings": {},
        "created_at": ct.created_at,
        "updated_at": ct.updated_at,
    }


def participant_json(p: Participant, user: User | None) -> dict[str, Any]:
    return {
        "user": user_json(user, p.user_id),
        "user_session_id": p.session_id,
        "role": p.role,
        "joined_at": p.joined_at,
        "source": p.source,
    }


def settings_json(settings: dict[str, Any], call: Call) -> dict[str, Any]:
    backstage = settings.get("backstage", {})
    return {
        **settings,
        "backstage": {
            "enabled": bool(backstage.get("enabled")),
            "join_ahead_time_seconds": int(backstage.get("join_ahead_time_seconds") or 0),
        },
        "broadcasting": {
            "enabled": True,
            "hls": {"enabled": True, "auto_on": False, "quality_tracks": ["original"]},
            "rtmp": {"enabled": False},
        },
        "recording": {"mode": "available", "quality": "original", "audio_only": False},
        "ingress": {"enabled": True},
    }


async def call_json(
    svc: CallService, call: Call, ct: CallType, session: CallSession | None = None
) -> dict[str, Any]:
    creator = await svc.store.get_user(call.created_by_id)
    if session is None and call.current_session_id:
        session = await svc.store.get_session(call.current_session_id)
    settings = svc.effective_settings(call, ct)
    hls = (
        {"playlist_url": "", "status": "requested"}
        if call.hls
        else {"playlist_url": "", "status": "stopped"}
    )
    return {
        "cid": call.cid,
        "id": call.id,
        "type": call.type,
        "created_at": call.created_at,
        "updated_at": call.updated_at,
        "created_by": user_json(creator, call.created_by_id),
        "custom": call.custom,
        "backstage": call.backstage,
        "recording": call.recording,
        "transcribing": False,
        "captioning": False,
        "translating": False,
        "blocked_user_ids": [],
        "current_session_id": call.current_session_id,
        "starts_at": call.starts_at,
        "ended_at": call.ended_at,
        "join_ahead_time_seconds": int(
            settings.get("backstage", {}).get("join_ahead_time_seconds") or 0
        ),
        "settings": settings_json(settings, call),
        "ingress": {
            "rtmp": {"address": svc.rtmp_address(call)},
            "whip": {"address": svc.whip_address(call)},
            "srt": {"address": ""},
        },
        "egress": {"broadcasting": call.hls, "hls": hls, "rtmps": []},
        "session": await session_json(svc, call, session) if session else None,
    }


async def session_json(svc: CallService, call: Call, s: CallSession) -> dict[str, Any]:
    live = svc.list_participants(call.cid)
    users = await svc.store.get_users(sorted({p.user_id for p in live}))
    by_role: dict[str, int] = {}
    for p in live:
        by_role[p.role] = by_role.get(p.role, 0) + 1
    return {
        "id": s.id,
        "participants": [participant_json(p, users.get(p.user_id)) for p in live],
        "participants_count_by_role": by_role,
        "anonymous_participant_count": 0,
        "accepted_by": {},
        "missed_by": {},
        "rejected_by": {},
        "started_at": s.started_at,
        "live_started_at": s.live_started_at,
        "live_ended_at": s.live_ended_at,
        "ended_at": s.ended_at,
    }


async def members_json(svc: CallService, members: list[Member]) -> list[dict[str, Any]]:
    users = await svc.store.get_users([m.user_id for m in members])
    return [member_json(m, users.get(m.user_id)) for m in members]
