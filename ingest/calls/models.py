"""Domain records of the control plane (what the store keeps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class User:
    id: str
    name: str = ""
    role: str = "user"
    image: str = ""
    custom: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    revoke_tokens_issued_before: datetime | None = None
    deactivated_at: datetime | None = None


@dataclass(slots=True)
class CallType:
    name: str
    grants: dict[str, list[str]]
    settings: dict[str, Any]
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class Member:
    call_cid: str
    user_id: str
    role: str
    custom: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class CallSession:
    id: str
    call_cid: str
    started_at: datetime | None = None
    live_started_at: datetime | None = None
    live_ended_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(slots=True)
class Call:
    cid: str
    type: str
    id: str
    created_by_id: str
    custom: dict[str, Any] = field(default_factory=dict)
    settings_override: dict[str, Any] = field(default_factory=dict)
    backstage: bool = True
    starts_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    current_session_id: str = ""
    hls: bool = False  # HLS broadcasting wanted (media side arrives with its own issue)
    recording: bool = False  # recording wanted


def cid_of(call_type: str, call_id: str) -> str:
    return f"{call_type}:{call_id}"
