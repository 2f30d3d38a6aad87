"""Codec negotiation for viewers: what we send is named by what the remote can take.

aiortc 1.16 negotiates against its global ``aiortc.codecs.CODECS`` table, which lists H.264 only
as Baseline / Constrained Baseline (``42001f``, ``42e01f``), and matches offers by profile. OBS
sends High (``640028``), so aiortc alone would answer Constrained Baseline (or nothing for a
High-only offer) and Chrome could refuse or mis-handle the stream.

We do not touch that global table. After ``setRemoteDescription`` a
:class:`~ingest.webrtc.subscriber.Subscriber` replaces the negotiated codec list of *its own*
video transceiver (:func:`~ingest.webrtc.aiortc_compat.set_negotiated_codecs`: what
``createAnswer`` writes into an answer and the RTP sender sends with, first entry first) by
:func:`h264_answer_codecs` of the *remote's* list — the viewer's offer (WHEP) or the client's
answer to our offer (the call WebSocket): the H.264 payload type (``packetization-mode=1``) whose
profile matches the stream's, named with the stream's exact ``profile-level-id``,
``packetization-mode=1`` and ``level-asymmetry-allowed=1``, plus its RTX. Audio and forwarded
codecs use the public ``setCodecPreferences`` (only what we send: Opus, never G.711).

If the remote has no H.264 profile able to decode the stream (Firefox offers only Constrained
Baseline; headless Chromium lists no High), its Constrained Baseline entry is used, unchanged,
and logged: browsers' H.264 decoders play High regardless of the SDP, and an answer that repeats
the offer's parameters is always accepted. Our own offers (:func:`offer_with_profiles`) list the
stream's profile first and Constrained Baseline second, so that a browser makes the same choice
in its answer.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiortc.codecs import get_capabilities
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.sdp import H264Profile, SessionDescription, parse_h264_profile_level_id

from ingest.errors import InputError

log = logging.getLogger("ingest.webrtc")

AIORTC_H264_PROFILE = "42e01f"
"""aiortc's Constrained Baseline H.264 entry (what an answer is mapped back to by default)."""

OUR_VIDEO_FEEDBACK = (("nack", None), ("nack", "pli"), ("goog-remb", None))
"""RTCP feedback we keep from the offer (aiortc answers NACKs; PLI is accepted but ignored)."""

# which stream profiles a decoder of each profile can play (without B-frames, which we never send)
_DECODES: dict[H264Profile, frozenset[H264Profile]] = {
    H264Profile.PROFILE_CONSTRAINED_BASELINE: frozenset({H264Profile.PROFILE_CONSTRAINED_BASELINE}),
    H264Profile.PROFILE_BASELINE: frozenset(
        {H264Profile.PROFILE_CONSTRAINED_BASELINE, H264Profile.PROFILE_BASELINE}
    ),
    H264Profile.PROFILE_MAIN: frozenset(
        {H264Profile.PROFILE_CONSTRAINED_BASELINE, H264Profile.PROFILE_MAIN}
    ),
    H264Profile.PROFILE_CONSTRAINED_HIGH: frozenset(
        {
            H264Profile.PROFILE_CONSTRAINED_BASELINE,
            H264Profile.PROFILE_MAIN,
            H264Profile.PROFILE_CONSTRAINED_HIGH,
        }
    ),
    H264Profile.PROFILE_HIGH: frozenset(
        {
            H264Profile.PROFILE_CONSTRAINED_BASELINE,
            H264Profile.PROFILE_MAIN,
            H264Profile.PROFILE_CONSTRAINED_HIGH,
            H264Profile.PROFILE_HIGH,
        }
    ),
}


@dataclass(frozen=True, slots=True)
class VideoChoice:
    """The outcome of :func:`h264_answer_codecs`."""

    codecs: list[RTCRtpCodecParameters]
    """H.264 first, then its RTX (if offered): what the answer lists, what the sender uses."""
    profile_level_id: str
    """The ``profile-level-id`` written in the answer."""
    exact: bool
    """``False`` for the fallback (the offer had no profile able to decode the stream)."""


def _profile(codec: RTCRtpCodecParameters) -> H264Profile | None:
    try:
        return parse_h264_profile_level_id(str(codec.parameters.get("profile-level-id", "42e01f")))[
            0
        ]
    except ValueError:
        return None


def _mode(codec: RTCRtpCodecParameters) -> int:
    try:
        return int(codec.parameters.get("packetization-mode", 0) or 0)
    except (TypeError, ValueError):
        return 0


def h264_answer_codecs(
    offered: list[RTCRtpCodecParameters], profile_level_id: str
) -> VideoChoice | None:
    """The codecs to answer an offer's video section with, for a stream of ``profile_level_id``;
    ``None`` when the offer has no H.264 with ``packetization-mode=1``."""
    candidates = [c for c in offered if c.mimeType.lower() == "video/h264" and _mode(c) == 1]
    if not candidates:
        return None
    try:
        stream_profile: H264Profile | None = parse_h264_profile_level_id(profile_level_id)[0]
    except ValueError:
        stream_profile = None
    chosen: RTCRtpCodecParameters | None = None
    for wanted in (
        lambda p: p == stream_profile,  # the same profile: the best answer
        lambda p: stream_profile in _DECODES.get(p, frozenset()),  # a profile that can play it
    ):
        chosen = next((c for c in candidates if wanted(_profile(c))), None)
        if chosen is not None:
            break
    exact = chosen is not None
    if chosen is None:
        chosen = next(
            (c for c in candidates if _profile(c) is H264Profile.PROFILE_CONSTRAINED_BASELINE),
            candidates[0],
        )
    codec = copy.deepcopy(chosen)
    if exact:
        codec.parameters = {
            "level-asymmetry-allowed": 1,
            "packetization-mode": 1,
            "profile-level-id": profile_level_id,
        }
    else:
        log.warning(
            "viewer offers no H.264 profile able to decode %s; answering its %s and sending "
            "%s anyway",
            profile_level_id,
            chosen.parameters.get("profile-level-id"),
            profile_level_id,
        )
    codec.rtcpFeedback = [
        fb for fb in chosen.rtcpFeedback if (fb.type, fb.parameter) in OUR_VIDEO_FEEDBACK
    ]
    codecs = [codec]
    rtx = next(
        (
            c
            for c in offered
            if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") == chosen.payloadType
        ),
        None,
    )
    if rtx is not None:
        codecs.append(copy.deepcopy(rtx))
    answered = str(codec.parameters.get("profile-level-id", "42e01f"))
    return VideoChoice(codecs, answered, exact)


def _parse_sdp(sdp: str, what: str) -> SessionDescription:
    try:
        return SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever its split/int() raise
        raise InputError(f"the {what} is not SDP: {exc}") from exc


def offer_with_profiles(offer_sdp: str, profiles: Mapping[str, str]) -> str:
    """Our offer with the first H.264 fmtp of each video section (by mid) naming the stream's
    ``profile-level-id`` (``profiles``: mid → profile-level-id). The other H.264 entries stay
    as aiortc wrote them: Constrained Baseline ``42e01f``, which a browser that lists no profile
    able to decode the stream accepts (as WHEP answers it) and plays the stream with anyway."""
    offer = _parse_sdp(offer_sdp, "offer")
    for media in offer.media:
        plid = profiles.get(media.rtp.muxId or "")
        if plid is None:
            continue
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() == "video/h264":
                codec.parameters = {
                    "level-asymmetry-allowed": 1,
                    "packetization-mode": 1,
                    "profile-level-id": plid,
                }
                break
    return str(offer)


def answer_for_aiortc(
    answer_sdp: str, offered: Mapping[str, list[RTCRtpCodecParameters]]
) -> tuple[str, SessionDescription]:
    """The client's answer to our offer as aiortc can match it against the codecs it really
    offered (``offered``: mid → codecs; aiortc compares H.264 profiles, and knows no High), and
    the answer as the client wrote it (what the sender's codec is chosen from). Raises
    :class:`InputError` if a section is rejected (port 0) or a video section answers without
    the H.264 we offered."""
    said = _parse_sdp(answer_sdp, "answer")
    answer = _parse_sdp(answer_sdp, "answer")
    for media in answer.media:
        mid = media.rtp.muxId or ""
        if mid in offered and media.port == 0:
            codecs = sorted({c.mimeType for c in offered[mid] if c.mimeType.lower() != "video/rtx"})
            raise InputError(
                f"the answer rejects the {media.kind} section (mid {mid}, port 0): the client "
                f"cannot receive what we offered ({', '.join(codecs)})"
            )
        if media.kind != "video" or mid not in offered:
            continue
        ours = {c.payloadType: c for c in offered[mid] if c.mimeType.lower() == "video/h264"}
        if not ours:
            continue  # forwarded VP8: aiortc matches the answer as it is
        h264 = [
            c
            for c in media.rtp.codecs
            if c.mimeType.lower() == "video/h264" and c.payloadType in ours
        ]
        if not h264:
            raise InputError(f"the answer's video (mid {mid}) has no H.264: we only send H.264")
        for codec in h264:
            mine = ours[codec.payloadType].parameters.get("profile-level-id", AIORTC_H264_PROFILE)
            codec.parameters = {**codec.parameters, "profile-level-id": mine}
    return str(answer), said


def opus_preferences() -> list[RTCRtpCodecCapability]:
    """Audio codec preferences: Opus only (we send Opus packets)."""
    return [c for c in get_capabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


def without_mdns_candidates(sdp: str) -> str:
    """The SDP without ``.local`` (mDNS) ICE candidates.

    Browsers hide their host addresses behind mDNS names. aioice resolves them inside
    ``setRemoteDescription`` and waits out a 1 s timeout per name wherever multicast does not
    reach (servers, containers, the internet): every viewer would start a second late. ICE still
    connects without them, through the peer-reflexive candidates the browser's own checks reveal.
    """
    lines = sdp.splitlines(keepends=True)
    kept = [line for line in lines if not (line.startswith("a=candidate:") and ".local " in line)]
    return "".join(kept)


def high_profile_viewer_codecs(profile_level_id: str) -> list[RTCRtpCodecParameters]:
    """H.264 High (+ its RTX) as Chrome offers it when it can decode High in hardware.

    aiortc alone offers Constrained Baseline only; an aiortc peer playing the *viewer* (the
    bench, the tests) puts these in front of ``aiortc.codecs.CODECS["video"]`` to behave like
    such a Chrome. The SFU never touches that table.
    """
    from aiortc.rtcrtpparameters import RTCRtcpFeedback

    feedback = [
        RTCRtcpFeedback(type="nack"),
        RTCRtcpFeedback(type="nack", parameter="pli"),
        RTCRtcpFeedback(type="goog-remb"),
    ]
    high = RTCRtpCodecParameters(
        mimeType="video/H264",
        clockRate=90000,
        payloadType=103,
        rtcpFeedback=feedback,
        parameters={
            "level-asymmetry-allowed": "1",
            "packetization-mode": "1",
            "profile-level-id": profile_level_id,
        },
    )
    rtx = RTCRtpCodecParameters(
        mimeType="video/rtx", clockRate=90000, payloadType=104, parameters={"apt": 103}
    )
    return [high, rtx]
