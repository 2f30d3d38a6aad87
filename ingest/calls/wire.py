"""The REST API's wire shapes: every request and response body of ``/api/v2``, as pydantic models.

This module is the one place the JSON shape lives. The server validates request bodies with these
models (an unknown or wrongly typed field is a 400 that names it) and declares its responses with
them (so ``/openapi.json`` documents every field); ``ingest.client`` parses responses into the
same models. Times travel as RFC 3339 strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

# Named limits on what a request may carry (each is enforced by the models below and tested).
MAX_MEMBERS_PER_REQUEST = 100  # update_members + remove_members in one request
MAX_QUERY_LIMIT = 1000  # members returned by one query (members_limit, limit)
MAX_REACTION_TYPE_LENGTH = 64
MAX_USERS_PER_REQUEST = 100  # users in one upsert / partial update
MAX_ROLE_LENGTH = 64

Limit = Annotated[StrictInt, Field(ge=1, le=MAX_QUERY_LIMIT)]
Custom = dict[str, Any]
Time = Annotated[datetime, Field(strict=False)]
Role = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ROLE_LENGTH)]


class Request(BaseModel):
    """A request body: strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Wire(BaseModel):
    """A part of a response. Clients ignore fields they do not know, so the server may add some."""

    model_config = ConfigDict(extra="ignore")


class Response(Wire):
    """Every response body carries how long the server took."""

    duration: str = Field("", description="Server time spent on the request, e.g. '1.20ms'.")


# --- errors ----------------------------------------------------------------------------------


class ErrorResponse(Wire):
    """Every non-2xx answer. ``message`` says what to fix."""

    code: int = Field(description="Error code: 4 input, 5 token, 16 not found, 17 permission, …")
    message: str
    StatusCode: int = Field(description="The HTTP status, repeated for clients that lose it.")
    duration: str = ""
    retryable: bool = Field(False, description="True when the same request may succeed later.")


# --- users -----------------------------------------------------------------------------------


class UserRequest(Request):
    id: StrictStr
    name: StrictStr | None = None
    role: Role | None = Field(None, description="App-wide role, e.g. 'user' or 'admin'.")
    image: StrictStr | None = None
    custom: Custom | None = None
    revoke_tokens_issued_before: Time | None = None


class UpdateUsersRequest(Request):
    users: dict[str, UserRequest] = Field(
        description="Users by id; each is created or replaced.",
        min_length=1,
        max_length=MAX_USERS_PER_REQUEST,
    )


class UserPartialUpdate(Request):
    id: StrictStr
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="name, role, image, revoke_tokens_issued_before; other keys go to custom.",
    )
    unset: list[StrictStr] = Field(default_factory=list)


class UpdateUsersPartialRequest(Request):
    users: list[UserPartialUpdate] = Field(min_length=1, max_length=MAX_USERS_PER_REQUEST)


class UserResponse(Wire):
    id: str
    name: str = ""
    image: str = ""
    role: str = "user"
    custom: Custom = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    revoke_tokens_issued_before: datetime | None = None
    deactivated_at: datetime | None = None


class UpdateUsersResponse(Response):
    users: dict[str, UserResponse]


# --- call settings ---------------------------------------------------------------------------


class BackstageSettings(Wire):
    enabled: bool = False
    join_ahead_time_seconds: int = 0


class HLSSettings(Wire):
    enabled: bool = True
    auto_on: bool = False
    quality_tracks: list[str] = Field(default_factory=lambda: ["original"])
    require_token: bool = Field(
        False,
        description="Playlist and segments need ?token=<a token that may read the call>. Off by "
        "default: HLS players, smart TVs and CDNs cannot add headers, and the call is public "
        "once live anyway.",
    )


class BroadcastSettings(Wire):
    enabled: bool = True
    hls: HLSSettings = Field(default_factory=HLSSettings)


class RecordSettings(Wire):
    mode: Literal["available", "disabled", "auto-on"] = "available"
    quality: str = "original"
    audio_only: bool = False


class CallSettings(Wire):
    """A call's effective settings (its type's, with the call's override on top)."""

    backstage: BackstageSettings = Field(default_factory=BackstageSettings)
    broadcasting: BroadcastSettings = Field(default_factory=BroadcastSettings)
    recording: RecordSettings = Field(default_factory=RecordSettings)


class BackstageSettingsRequest(Request):
    enabled: StrictBool | None = None
    join_ahead_time_seconds: Annotated[StrictInt, Field(ge=0, le=86400)] | None = None


class HLSSettingsRequest(Request):
    enabled: StrictBool | None = None
    auto_on: StrictBool | None = None
    quality_tracks: list[StrictStr] | None = None
    require_token: StrictBool | None = None


class BroadcastSettingsRequest(Request):
    enabled: StrictBool | None = None
    hls: HLSSettingsRequest | None = None


class RecordSettingsRequest(Request):
    mode: Literal["available", "disabled", "auto-on"] | None = None
    quality: StrictStr | None = None
    audio_only: StrictBool | None = None


class CallSettingsRequest(Request):
    """Settings to change; fields left out keep their value."""

    backstage: BackstageSettingsRequest | None = None
    broadcasting: BroadcastSettingsRequest | None = None
    recording: RecordSettingsRequest | None = None


# --- call types ------------------------------------------------------------------------------


class CreateCallTypeRequest(Request):
    name: StrictStr
    grants: dict[str, list[StrictStr]] | None = Field(
        None, description="Capabilities by role, e.g. {'host': ['send-video', ...]}."
    )
    settings: CallSettingsRequest | None = None


class UpdateCallTypeRequest(Request):
    grants: dict[str, list[StrictStr]] | None = None
    settings: CallSettingsRequest | None = None


class CallTypeResponse(Response):
    name: str
    grants: dict[str, list[str]]
    settings: CallSettings
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ListCallTypesResponse(Response):
    call_types: dict[str, CallTypeResponse]


# --- calls -----------------------------------------------------------------------------------


class MemberRequest(Request):
    user_id: StrictStr
    role: Role | None = Field(None, description="Role in the call, e.g. 'host'.")
    custom: Custom | None = None


class CallRequest(Request):
    created_by_id: StrictStr | None = Field(
        None, description="Owner of a new call; required when a server token creates it."
    )
    members: list[MemberRequest] = Field(default_factory=list, max_length=MAX_MEMBERS_PER_REQUEST)
    custom: Custom | None = None
    starts_at: Time | None = None
    settings_override: CallSettingsRequest | None = None


class GetOrCreateCallRequest(Request):
    data: CallRequest = Field(default_factory=lambda: CallRequest())
    members_limit: Limit | None = None


class UpdateCallRequest(Request):
    custom: Custom | None = None
    starts_at: Time | None = None
    settings_override: CallSettingsRequest | None = None


class GoLiveRequest(Request):
    start_hls: StrictBool = False
    start_recording: StrictBool = False


class StopLiveRequest(Request):
    continue_hls: StrictBool = Field(False, description="Keep HLS running in backstage.")
    continue_recording: StrictBool = Field(False, description="Keep recording in backstage.")


class UpdateCallMembersRequest(Request):
    update_members: list[MemberRequest] = Field(
        default_factory=list, max_length=MAX_MEMBERS_PER_REQUEST
    )
    remove_members: list[StrictStr] = Field(
        default_factory=list, max_length=MAX_MEMBERS_PER_REQUEST
    )


class QueryCallMembersRequest(Request):
    type: StrictStr = Field(description="The call's type.")
    id: StrictStr = Field(description="The call's id.")
    limit: Limit | None = None


class SendCallEventRequest(Request):
    custom: Custom = Field(default_factory=dict)
    user_id: StrictStr | None = Field(None, description="Sender, when a server token sends.")


class SendReactionRequest(Request):
    type: Annotated[StrictStr, Field(min_length=1, max_length=MAX_REACTION_TYPE_LENGTH)]
    emoji_code: StrictStr | None = None
    custom: Custom | None = None
    user_id: StrictStr | None = Field(None, description="Sender, when a server token sends.")


class KickUserRequest(Request):
    user_id: StrictStr


class QueryParticipantsRequest(Request):
    """No filters yet: every live participant is listed."""


class StartRecordingRequest(Request):
    """No options yet: the recording is of the call as HLS shows it."""


class EmptyRequest(Request):
    """No fields."""


class MemberResponse(Wire):
    user_id: str
    user: UserResponse
    role: str
    custom: Custom = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class VideoHealth(Wire):
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    resolution: str | None = None
    profile: str | None = None
    level: str | None = None
    profile_level: str | None = None
    profile_level_id: str | None = None
    chroma_format: str | None = Field(None, description="e.g. 4:2:0")
    bit_depth: int | None = None
    fps: float | None = None
    bitrate_kbps: float = 0.0
    keyframe_interval_s: float | None = None
    b_frames: bool = False
    frames: int = 0


class AudioHealth(Wire):
    codec: str | None = None
    profile: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    bitrate_kbps: float = 0.0
    frames: int = 0


class WebRTCHealth(Wire):
    video_transcoded: bool = Field(
        description="True when viewers get a re-encode (the source has B-frames)."
    )


class ParticipantHealth(Wire):
    """What the server sees of a publisher's media, with advice when a setting hurts viewers."""

    transport: str = Field(description="'rtmp' or 'whip'.")
    peer: str = Field("", description="The publisher's address.")
    video: VideoHealth | None = None
    audio: AudioHealth | None = None
    bitrate_kbps: float = 0.0
    av_skew_ms: int | None = Field(None, description="Audio minus video timestamp.")
    encoder: str | None = None
    hints: list[str] = Field(default_factory=list)
    webrtc: WebRTCHealth | None = None
    packet_loss: float | None = Field(None, description="Fraction lost (WebRTC publishers).")
    rtt_ms: float | None = Field(None, description="Round-trip time (WebRTC publishers).")


class ParticipantResponse(Wire):
    user: UserResponse
    user_session_id: str
    role: str
    joined_at: datetime
    source: str = Field(description="How they are connected: 'rtmp', 'whip' or 'webrtc'.")
    health: ParticipantHealth | None = None


class CallSessionResponse(Wire):
    id: str
    participants: list[ParticipantResponse]
    participants_count_by_role: dict[str, int]
    started_at: datetime | None = None
    live_started_at: datetime | None = None
    live_ended_at: datetime | None = None
    ended_at: datetime | None = None


class Address(Wire):
    address: str


class CallIngress(Wire):
    rtmp: Address = Field(description="Where OBS publishes; the stream key is a user token.")
    whip: Address = Field(description="Where a browser publishes over WHIP.")


class EgressHLS(Wire):
    playlist_url: str = Field("", description="Absolute URL of the HLS playlist, once running.")
    status: Literal["stopped", "starting", "running", "failed"] = "stopped"


class CallEgress(Wire):
    broadcasting: bool = Field(description="True while HLS is on.")
    hls: EgressHLS


class CallResponse(Wire):
    cid: str = Field(description="'<type>:<id>'.")
    id: str
    type: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: UserResponse
    custom: Custom = Field(default_factory=dict)
    backstage: bool = Field(description="True until go_live: only hosts see the call.")
    recording: bool
    current_session_id: str = ""
    starts_at: datetime | None = None
    ended_at: datetime | None = None
    join_ahead_time_seconds: int = 0
    settings: CallSettings
    ingress: CallIngress
    egress: CallEgress
    session: CallSessionResponse | None = None


class GetCallResponse(Response):
    call: CallResponse
    members: list[MemberResponse]
    own_capabilities: list[str] = Field(description="What the caller may do in this call.")


class GetOrCreateCallResponse(GetCallResponse):
    created: bool


class CallStateResponse(Response):
    """go_live / stop_live: the call as it is now."""

    call: CallResponse


class MembersResponse(Response):
    members: list[MemberResponse]


class EventUser(Wire):
    id: str | None


class CustomEventResponse(Wire):
    type: Literal["custom"]
    call_cid: str
    created_at: datetime
    custom: Custom
    user: EventUser


class SendCallEventResponse(Response):
    event: CustomEventResponse


class ReactionResponse(Wire):
    type: str
    user: EventUser
    emoji_code: str | None = None
    custom: Custom = Field(default_factory=dict)


class SendReactionResponse(Response):
    reaction: ReactionResponse


class KickUserResponse(Response):
    kicked: int = Field(description="Sessions of the user that were ended.")


class ParticipantsResponse(GetCallResponse):
    participants: list[ParticipantResponse]
    total_participants: int


class StartBroadcastingResponse(Response):
    playlist_url: str


class RecordingResponse(Wire):
    filename: str
    url: str = Field(description="Absolute URL; download it with a token that may read the call.")
    start_time: datetime
    end_time: datetime | None = None
    session_id: str = ""


class ListRecordingsResponse(Response):
    recordings: list[RecordingResponse]


class EmptyResponse(Response):
    pass
