"""Capabilities (what a role may do in a call) and the built-in call types' grants."""

from __future__ import annotations

from typing import Any

READ_CALL = "read-call"
CREATE_CALL = "create-call"
JOIN_CALL = "join-call"
JOIN_BACKSTAGE = "join-backstage"
JOIN_ENDED_CALL = "join-ended-call"
SEND_AUDIO = "send-audio"
SEND_VIDEO = "send-video"
SCREENSHARE = "screenshare"
CREATE_REACTION = "create-reaction"
SEND_EVENT = "send-event"
UPDATE_CALL = "update-call"  # go_live / stop_live
UPDATE_CALL_MEMBER = "update-call-member"
REMOVE_CALL_MEMBER = "remove-call-member"
UPDATE_CALL_SETTINGS = "update-call-settings"
START_BROADCAST = "start-broadcast-call"
STOP_BROADCAST = "stop-broadcast-call"
START_RECORD = "start-record-call"
STOP_RECORD = "stop-record-call"
END_CALL = "end-call"
KICK_USER = "kick-user"
MUTE_USERS = "mute-users"
BLOCK_USERS = "block-users"

ALL: tuple[str, ...] = (
    READ_CALL,
    CREATE_CALL,
    JOIN_CALL,
    JOIN_BACKSTAGE,
    JOIN_ENDED_CALL,
    SEND_AUDIO,
    SEND_VIDEO,
    SCREENSHARE,
    CREATE_REACTION,
    SEND_EVENT,
    UPDATE_CALL,
    UPDATE_CALL_MEMBER,
    REMOVE_CALL_MEMBER,
    UPDATE_CALL_SETTINGS,
    START_BROADCAST,
    STOP_BROADCAST,
    START_RECORD,
    STOP_RECORD,
    END_CALL,
    KICK_USER,
    MUTE_USERS,
    BLOCK_USERS,
)

_HOST = [
    READ_CALL,
    CREATE_CALL,
    JOIN_CALL,
    JOIN_BACKSTAGE,
    SEND_AUDIO,
    SEND_VIDEO,
    SCREENSHARE,
    CREATE_REACTION,
    SEND_EVENT,
    UPDATE_CALL,
    UPDATE_CALL_MEMBER,
    REMOVE_CALL_MEMBER,
    START_BROADCAST,
    STOP_BROADCAST,
    START_RECORD,
    STOP_RECORD,
    END_CALL,
    KICK_USER,
    MUTE_USERS,
    BLOCK_USERS,
]
_VIEWER = [READ_CALL, JOIN_CALL, CREATE_REACTION, SEND_EVENT]
_MEETING_MEMBER = [
    READ_CALL,
    CREATE_CALL,
    JOIN_CALL,
    JOIN_BACKSTAGE,
    SEND_AUDIO,
    SEND_VIDEO,
    SCREENSHARE,
    CREATE_REACTION,
    SEND_EVENT,
]

# Roles every call type knows. `admin` is the app-wide role that may do anything.
ADMIN_ROLE = "admin"

BUILTIN_CALL_TYPES: dict[str, dict[str, Any]] = {
    "livestream": {
        "grants": {
            "admin": list(ALL),
            "host": _HOST,
            "user": _VIEWER,
            "guest": [READ_CALL, JOIN_CALL, CREATE_REACTION],
            "anonymous": [READ_CALL],
        },
        "settings": {"backstage": {"enabled": True, "join_ahead_time_seconds": 0}},
    },
    "default": {
        "grants": {
            "admin": list(ALL),
            "host": _HOST,
            "call_member": _MEETING_MEMBER,
            "user": [READ_CALL, CREATE_CALL, CREATE_REACTION, SEND_EVENT],
            "guest": [READ_CALL],
        },
        "settings": {"backstage": {"enabled": False, "join_ahead_time_seconds": 0}},
    },
    "audio_room": {
        "grants": {
            "admin": list(ALL),
            "host": [c for c in _HOST if c not in (SEND_VIDEO, SCREENSHARE)],
            "speaker": [
                READ_CALL,
                JOIN_CALL,
                JOIN_BACKSTAGE,
                SEND_AUDIO,
                CREATE_REACTION,
                SEND_EVENT,
            ],
            "user": _VIEWER,
            "guest": [READ_CALL],
        },
        "settings": {"backstage": {"enabled": True, "join_ahead_time_seconds": 0}},
    },
}

# What a caller may do in a call where they hold no member role (their app role decides).
DEFAULT_MEMBER_ROLE = {"livestream": "host", "default": "call_member", "audio_room": "speaker"}


def validate_capability(name: str) -> str:
    if name not in ALL:
        raise ValueError(f"unknown capability '{name}': known capabilities are {', '.join(ALL)}")
    return name
