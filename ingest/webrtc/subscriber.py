"""One viewer's peer connection with one participant's tracks: WHEP and the call WebSocket.

A :class:`Subscriber` builds the aiortc peer connection, adds the participant's tracks (each a
viewer of the track's shared bridge: forwarded as sent, passed through, or bridged) with one
codec preference per track (:func:`send_preferences`), and negotiates in either direction:

* :meth:`Subscriber.answer` answers a viewer's offer (WHEP). A track the viewer cannot decode
  (a forwarded codec it did not offer) is left out of the answer, never sent.
* :meth:`Subscriber.offer` makes our offer (the call WebSocket), and :meth:`Subscriber.accept`
  takes the client's answer.

Either way the H.264 codec the sender sends with is chosen in one place, from the *remote's*
list (the viewer's offer, or the client's answer): :func:`~ingest.webrtc.negotiation.
h264_answer_codecs` picks the entry with the stream's profile, else one able to decode it, else
Constrained Baseline (browsers' decoders play High whatever the SDP says). Our offers list every
aiortc H.264 entry, the first rewritten to the stream's ``profile-level-id``
(:func:`~ingest.webrtc.negotiation.offer_with_profiles`): a browser without High in its SDP
(headless Chromium) takes the Constrained Baseline entry, as it would be answered over WHEP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.sdp import MediaDescription, SessionDescription

from ingest.errors import InputError
from ingest.media.hub import GOP_CACHE_MAX_UNITS, Track
from ingest.media.units import Kind, VideoConfig
from ingest.webrtc import aiortc_compat
from ingest.webrtc.bridge import AudioBridge, ForwardBridge, TrackBridge, VideoBridge
from ingest.webrtc.forwarding import codec_preferences
from ingest.webrtc.ice import IcePolicy
from ingest.webrtc.negotiation import (
    answer_for_aiortc,
    h264_answer_codecs,
    offer_with_profiles,
    without_mdns_candidates,
)
from ingest.webrtc.packing import install as install_packer
from ingest.webrtc.tracks import (
    ForwardedAudioTrack,
    ForwardedVideoTrack,
    HubPacketTrack,
    OpusAudioTrack,
    PassthroughVideoTrack,
)

log = logging.getLogger("ingest.webrtc")

VIEWER_QUEUE_VIDEO = GOP_CACHE_MAX_UNITS + 1
"""A viewer's video queue: any cached GOP fits (the hub gives a GOP only if it fits)."""
VIEWER_QUEUE_AUDIO = 50
"""A viewer's audio queue: 1 s of 20 ms Opus packets, then the oldest are dropped."""
MAX_OFFER_BYTES = 64 * 1024
"""An SDP offer larger than this is refused (a browser's is ~5 KiB)."""


class Bridges(Protocol):
    """Where a subscriber gets the shared bridge of a track (the SFU)."""

    ice: IcePolicy

    def acquire_bridge(self, source: Track) -> TrackBridge: ...

    async def release_bridge(self, bridge: TrackBridge) -> None: ...


def viewer_track(bridge: TrackBridge) -> HubPacketTrack:
    """A new viewer's own track on a bridge's output (bounded reader; video from the GOP)."""
    if isinstance(bridge, ForwardBridge):
        # forwarded video starts at the next keyframe, which subscribing asks the publisher for
        # (no backlog of a long GOP)
        reader = bridge.output.subscribe(
            max_queue=VIEWER_QUEUE_VIDEO if bridge.kind is Kind.VIDEO else VIEWER_QUEUE_AUDIO,
            from_gop=False,
            name=f"webrtc-viewer-forwarded-{bridge.kind.value}",
        )
        if bridge.kind is Kind.VIDEO:
            return ForwardedVideoTrack(reader)
        return ForwardedAudioTrack(reader)
    if isinstance(bridge, VideoBridge):
        reader = bridge.output.subscribe(
            max_queue=VIEWER_QUEUE_VIDEO, from_gop=True, name="webrtc-viewer-video"
        )
        return PassthroughVideoTrack(
            reader, live_edge=lambda: bridge.last_pts, payloads=bridge.payloads
        )
    assert isinstance(bridge, AudioBridge)
    # no audio backlog: the video backlog is stamped to the live edge, so audio starts live too
    reader = bridge.output.subscribe(
        max_queue=VIEWER_QUEUE_AUDIO, from_gop=False, name="webrtc-viewer-audio"
    )
    return OpusAudioTrack(reader)


def add_viewer_track(
    pc: RTCPeerConnection, bridge: TrackBridge
) -> tuple[HubPacketTrack, RTCRtpTransceiver]:
    """A new viewer track on ``bridge`` in a send-only transceiver of ``pc``, its sender set up
    to pack our packets (:func:`~ingest.webrtc.packing.install`). Every viewer track goes
    through here: aiortc's own H.264 encoder cannot pack them."""
    track = viewer_track(bridge)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    install_packer(transceiver.sender, track.packer())
    if isinstance(bridge, ForwardBridge) and bridge.kind is Kind.VIDEO:
        # the viewer's PLI / FIR ask the publisher (merged, rate-limited); so did its join (its
        # reader waits for a keyframe: Track.subscribe asks for one)
        aiortc_compat.on_keyframe_request(transceiver.sender, bridge.source.request_keyframe)
    return track, transceiver


def sent_codec(bridge: TrackBridge) -> str:
    """The codec viewers of ``bridge`` receive (``"h264"``, ``"vp8"``, ``"opus"``, ...)."""
    if isinstance(bridge, ForwardBridge):
        return bridge.codec
    return "h264" if isinstance(bridge, VideoBridge) else "opus"


def send_preferences(bridge: TrackBridge) -> list[RTCRtpCodecCapability]:
    """The codec preferences of a viewer's transceiver: only what the bridge sends (every aiortc
    entry of it: H.264's profiles are narrowed to the stream's by the negotiation), and RTX."""
    return codec_preferences(bridge.kind.value, sent_codec(bridge))


def h264_profile(bridge: TrackBridge) -> str | None:
    """The ``profile-level-id`` viewers of ``bridge`` receive; ``None`` if it is not H.264."""
    if isinstance(bridge, VideoBridge):
        return bridge.profile_level_id
    if isinstance(bridge, ForwardBridge) and bridge.codec == "h264":
        config = bridge.output.config
        assert isinstance(config, VideoConfig)
        return config.profile_level_id  # forwarded H.264
    return None


def parse_offer(offer_sdp: str) -> SessionDescription:
    """A viewer's SDP offer; :class:`InputError` that says what is wrong with it."""
    if len(offer_sdp.encode()) > MAX_OFFER_BYTES:
        raise InputError(f"the SDP offer is larger than {MAX_OFFER_BYTES} bytes")
    try:
        offer = SessionDescription.parse(offer_sdp)
    except Exception as exc:  # aiortc's parser raises whatever its split/int() raise
        raise InputError(f"the body is not an SDP offer: {exc}") from exc
    if not any(m.kind in ("audio", "video") for m in offer.media):
        raise InputError("the SDP offer has no audio or video section")
    return offer


def decodable(source: Track, offer: SessionDescription) -> bool:
    """Whether a viewer that made ``offer`` can decode what we send of ``source``: H.264 (the
    stream's, passed through or forwarded) needs an H.264 entry with ``packetization-mode=1``,
    a forwarded codec must be in the offer; bridged audio is Opus, which aiortc checks."""
    config = source.config
    if config.codec == "h264" and isinstance(config, VideoConfig):
        offered = [m for m in offer.media if m.kind == "video"]
        return bool(offered) and (
            h264_answer_codecs(offered[0].rtp.codecs, config.profile_level_id) is not None
        )
    if not config.forwarded:
        return True
    mime = f"{source.kind.value}/{config.codec}".lower()
    return any(
        c.mimeType.lower() == mime
        for m in offer.media
        if m.kind == source.kind.value
        for c in m.rtp.codecs
    )


def _media_of(description: SessionDescription, mid: str | None) -> MediaDescription:
    for media in description.media:
        if media.rtp.muxId == mid:
            return media
    raise InputError(f"the SDP has no media section with mid {mid!r}")


class Subscriber:
    """One peer connection sending one participant's tracks to one viewer."""

    def __init__(self, bridges: Bridges, sources: Mapping[Kind, Track]) -> None:
        self._bridges = bridges
        self.sources = dict(sources)
        self.pc = RTCPeerConnection(bridges.ice.rtc_configuration())
        self.bridges: list[TrackBridge] = []
        self.tracks: list[HubPacketTrack] = []
        self.transceivers: dict[Kind, RTCRtpTransceiver] = {}
        self.video_profile_level_id: str | None = None
        """The H.264 ``profile-level-id`` the remote named for what we send (``None``: no
        H.264 video, or not negotiated yet)."""
        self.refused: list[str] = []
        """Tracks left out because the viewer cannot decode them (``"video is vp8"``)."""
        self._offered: dict[str, list[RTCRtpCodecParameters]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return ", ".join(repr(b) for b in self.bridges) or "<Subscriber without tracks>"

    def _add(self, kind: Kind, source: Track) -> None:
        bridge = self._bridges.acquire_bridge(source)  # MediaError for what WebRTC cannot carry
        self.bridges.append(bridge)
        track, transceiver = add_viewer_track(self.pc, bridge)
        self.tracks.append(track)
        transceiver.setCodecPreferences(send_preferences(bridge))
        self.transceivers[kind] = transceiver

    def _video_bridge(self) -> TrackBridge | None:
        return next((b for b in self.bridges if b.kind is Kind.VIDEO), None)

    def _choose_video(self, remote: SessionDescription, what: str) -> None:
        """The one negotiation step of both directions: the H.264 codec our video sender sends
        with, chosen from the remote's list (``what``: "offer" or "answer")."""
        transceiver = self.transceivers.get(Kind.VIDEO)
        video = self._video_bridge()
        plid = h264_profile(video) if video is not None else None
        if transceiver is None or plid is None:
            return
        media = _media_of(remote, transceiver.mid)
        choice = h264_answer_codecs(media.rtp.codecs, plid)
        if choice is None:
            raise InputError(
                f"the {what} has no H.264 with packetization-mode=1; we only send H.264"
            )
        aiortc_compat.set_negotiated_codecs(transceiver, choice.codecs)
        self.video_profile_level_id = choice.profile_level_id

    # -- WHEP: the viewer offers ---------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Add the tracks the offer can take and answer it (every candidate, no trickle).
        :class:`InputError` for an offer we cannot answer."""
        offer = parse_offer(offer_sdp)
        wanted = {m.kind for m in offer.media}
        for kind, source in self.sources.items():
            if kind.value not in wanted:
                continue
            if not decodable(source, offer):
                if not source.config.forwarded:
                    raise InputError(
                        "the offer has no H.264 with packetization-mode=1; we only send H.264"
                    )
                self.refused.append(f"{kind.value} is {source.config.codec}")
                continue  # its section is answered inactive
            self._add(kind, source)
        if self.refused:
            log.info("viewer cannot decode %s: not sending it", ", ".join(self.refused))
        if not self.transceivers:
            if self.refused:
                raise InputError(
                    "this viewer cannot decode what the participant sends "
                    f"({', '.join(self.refused)}): offer those codecs"
                )
            raise InputError("the offer has no audio or video section this participant sends")
        try:
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=without_mdns_candidates(offer_sdp), type="offer")
            )
        except (ValueError, AssertionError, InvalidAccessError, InvalidStateError) as exc:
            raise InputError(f"cannot use this SDP offer: {exc}") from exc
        except OperationError as exc:  # no codec in common
            raise InputError(f"cannot answer this SDP offer: {exc}") from exc
        self._choose_video(offer, "offer")
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self._bridges.ice.advertise(self.pc.localDescription.sdp)

    # -- the call WebSocket: we offer ------------------------------------------------------

    async def offer(self) -> str:
        """Add every track of the participant and make our offer (every candidate)."""
        for kind in (Kind.VIDEO, Kind.AUDIO):
            source = self.sources.get(kind)
            if source is not None:
                self._add(kind, source)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        profiles: dict[str, str] = {}
        for kind, transceiver in self.transceivers.items():
            mid = transceiver.mid or ""
            self._offered[mid] = aiortc_compat.negotiated_codecs(transceiver)
            bridge = next(b for b in self.bridges if b.kind is kind)
            if (plid := h264_profile(bridge)) is not None:
                profiles[mid] = plid
        return self._bridges.ice.advertise(
            offer_with_profiles(self.pc.localDescription.sdp, profiles)
        )

    @property
    def awaits_answer(self) -> bool:
        return self.pc.signalingState == "have-local-offer"

    async def accept(self, answer_sdp: str) -> None:
        """Apply the client's answer to our offer; :class:`InputError` that says why not."""
        sdp, answer = answer_for_aiortc(answer_sdp, self._offered)
        try:
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=without_mdns_candidates(sdp), type="answer")
            )
        except (
            ValueError,
            AssertionError,
            InvalidAccessError,
            InvalidStateError,
            OperationError,
        ) as exc:
            raise InputError(str(exc)) from exc
        self._choose_video(answer, "answer")

    # -- the end ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the tracks, close the connection, release the bridges (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for track in self.tracks:
            track.stop()
        try:
            await self.pc.close()
        except Exception:
            log.exception("closing a viewer's peer connection")
        bridges, self.bridges = self.bridges, []
        for bridge in bridges:
            await self._bridges.release_bridge(bridge)
