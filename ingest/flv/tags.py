"""FLV audio/video tag bodies (what RTMP message types 8 and 9 carry) → media units.

:func:`parse_video_tag` / :func:`parse_audio_tag` understand legacy FLV and Enhanced RTMP
(v1 and v2 ModEx) headers and name every codec; they raise :class:`MediaError` on malformed
bodies. :class:`TagReader` is the per-publisher state machine: it keeps the current
:class:`VideoConfig` / :class:`AudioConfig`, refuses codecs we cannot carry (anything but H.264
and AAC) with a message saying what to change in OBS, and turns frames into
:class:`MediaUnit`s on the participant timeline (H.264 as Annex B with SPS/PPS in front of
every IDR; AAC as raw frames). The ``*_body`` builders do the reverse for tests and restreaming.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ingest.errors import MediaError
from ingest.media.codecs import h264
from ingest.media.codecs.aac import audio_config_from_asc
from ingest.media.timeline import Timeline
from ingest.media.units import AudioConfig, Kind, MediaUnit, VideoConfig

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

# Legacy video header: FrameType (4 bits) | CodecID (4 bits).
FRAME_KEY = 1
FRAME_INTER = 2
FRAME_DISPOSABLE_INTER = 3
FRAME_GENERATED_KEY = 4
FRAME_COMMAND = 5  # "video info/command frame"
CODEC_AVC = 7
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2

# Enhanced RTMP video: IsExHeader (1 bit) | FrameType (3 bits) | VideoPacketType (4 bits).
EX_HEADER = 0x80
VIDEO_SEQUENCE_START = 0
VIDEO_CODED_FRAMES = 1
VIDEO_SEQUENCE_END = 2
VIDEO_CODED_FRAMES_X = 3
VIDEO_METADATA = 4
VIDEO_MPEG2TS_SEQUENCE_START = 5
VIDEO_MULTITRACK = 6
VIDEO_MODEX = 7

# Legacy audio header: SoundFormat (4) | SoundRate (2) | SoundSize (1) | SoundType (1).
SOUND_AAC = 10
SOUND_EX_HEADER = 9  # Enhanced RTMP: the low nibble is the AudioPacketType
AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1
AAC_FLAGS = 0xAF  # AAC, 44 kHz, 16 bit, stereo: what the FLV spec requires for AAC
AUDIO_SEQUENCE_START = 0
AUDIO_CODED_FRAMES = 1
AUDIO_SEQUENCE_END = 2
AUDIO_MULTICHANNEL_CONFIG = 4
AUDIO_MULTITRACK = 5
AUDIO_MODEX = 7

# (codec, human name) by legacy id / FourCC. Only "h264" and "aac" are carried.
VIDEO_CODEC_IDS: dict[int, tuple[str, str]] = {
    1: ("jpeg", "JPEG"),
    2: ("h263", "Sorenson H.263"),
    3: ("screen", "Screen video"),
    4: ("vp6", "On2 VP6"),
    5: ("vp6a", "On2 VP6 with alpha"),
    6: ("screen2", "Screen video v2"),
    7: ("h264", "H.264"),
    8: ("realh263", "RealH263"),
    9: ("mpeg4", "MPEG-4 Part 2"),
    12: ("hevc", "HEVC"),  # the pre-Enhanced-RTMP extension some CDNs use
}
VIDEO_FOURCCS: dict[str, tuple[str, str]] = {
    "avc1": ("h264", "H.264"),
    "hvc1": ("hevc", "HEVC"),
    "av01": ("av1", "AV1"),
    "vp09": ("vp9", "VP9"),
    "vp08": ("vp8", "VP8"),
}
SOUND_FORMATS: dict[int, tuple[str, str]] = {
    0: ("pcm", "Linear PCM (platform endian)"),
    1: ("adpcm", "ADPCM"),
    2: ("mp3", "MP3"),
    3: ("pcm_le", "Linear PCM (little endian)"),
    4: ("nellymoser", "Nellymoser 16 kHz mono"),
    5: ("nellymoser", "Nellymoser 8 kHz mono"),
    6: ("nellymoser", "Nellymoser"),
    7: ("alaw", "G.711 A-law"),
    8: ("mulaw", "G.711 mu-law"),
    10: ("aac", "AAC"),
    11: ("speex", "Speex"),
    14: ("mp3", "MP3 8 kHz"),
    15: ("device", "Device-specific sound"),
}
AUDIO_FOURCCS: dict[str, tuple[str, str]] = {
    "Opus": ("opus", "Opus"),
    "mp4a": ("aac", "AAC"),
    ".mp3": ("mp3", "MP3"),
    "ac-3": ("ac3", "AC-3"),
    "ec-3": ("eac3", "E-AC-3"),
    "fLaC": ("flac", "FLAC"),
}
CARRIED_VIDEO = "h264"
CARRIED_AUDIO = "aac"
# Codecs we may carry one day: their refusal says "not supported yet".
_FUTURE = frozenset({"hevc", "av1", "vp9", "vp8", "opus", "flac"})
VIDEO_FIX = "set OBS Output > Encoder to x264 or NVENC H.264 (ffmpeg: -c:v libx264)"
AUDIO_FIX = "set OBS Output > Audio Encoder to AAC (ffmpeg: -c:a aac)"

# Dropped H.264 NAL units: access unit delimiters and filler data (OBS CBR pads with it).
DROPPED_NAL_TYPES = frozenset({h264.NAL_AUD, h264.NAL_FILLER})
_U32 = struct.Struct(">I")
_SET_TYPES = (h264.NAL_SPS, h264.NAL_PPS)
# NAL unit types as bits (1 << type) for the per-frame checks
_SETS = 1 << h264.NAL_SPS | 1 << h264.NAL_PPS
_IDR = 1 << h264.NAL_IDR
_VCL = sum(1 << t for t in h264.VCL_TYPES)
_DROPPED = sum(1 << t for t in DROPPED_NAL_TYPES)


class Packet(enum.Enum):
    """What a tag body carries, legacy and Enhanced RTMP alike."""

    SEQUENCE_START = "sequence start"  # decoder configuration (avcC, AudioSpecificConfig)
    CODED_FRAMES = "coded frames"
    SEQUENCE_END = "sequence end"
    METADATA = "metadata"  # Enhanced RTMP video metadata (AMF, e.g. colorInfo)
    COMMAND = "command"  # video info/command frame
    MPEG2TS_SEQUENCE_START = "mpeg2ts sequence start"
    MULTICHANNEL_CONFIG = "multichannel config"
    MULTITRACK = "multitrack"


@dataclass(frozen=True, slots=True)
class VideoTag:
    """A parsed video tag body."""

    codec: str  # "h264", "hevc", ... ("unknown" when not recognised)
    codec_name: str  # "H.264", "Sorenson H.263", "FourCC 'abcd'"
    source: str  # "FLV codec id 7" or "Enhanced RTMP avc1"
    frame_type: int
    packet: Packet
    data: bytes  # avcC for SEQUENCE_START, AVCC NAL units for CODED_FRAMES
    composition_time: int = 0

    @property
    def keyframe(self) -> bool:
        return self.frame_type in (FRAME_KEY, FRAME_GENERATED_KEY)

    @property
    def enhanced(self) -> bool:
        return self.source.startswith("Enhanced")


@dataclass(frozen=True, slots=True)
class AudioTag:
    """A parsed audio tag body."""

    codec: str  # "aac", "mp3", "opus", ...
    codec_name: str
    source: str  # "FLV sound format 10" or "Enhanced RTMP mp4a"
    packet: Packet
    data: bytes  # AudioSpecificConfig for SEQUENCE_START, raw frames for CODED_FRAMES


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A new decoder configuration took effect (the first one included)."""

    kind: Kind
    previous: VideoConfig | AudioConfig | None
    config: VideoConfig | AudioConfig


def _si24(data: bytes) -> int:
    value = int.from_bytes(data, "big")
    return value - (1 << 24) if value & 0x800000 else value


def _skip_modex(body: bytes, pos: int, packet_type: int, what: str, modex: int) -> tuple[int, int]:
    """Skip Enhanced RTMP v2 ModEx blocks; return the real packet type and the new offset."""
    while packet_type == modex:
        if pos >= len(body):
            raise MediaError(f"{what} ModEx block is truncated before its size")
        size = body[pos] + 1
        pos += 1
        if size == 256:
            if pos + 2 > len(body):
                raise MediaError(f"{what} ModEx block is truncated in its 16-bit size")
            size = int.from_bytes(body[pos : pos + 2], "big") + 1
            pos += 2
        if pos + size + 1 > len(body):
            raise MediaError(
                f"{what} ModEx block of {size} bytes is truncated: {len(body) - pos} bytes left"
            )
        pos += size
        packet_type = body[pos] & 0x0F
        pos += 1
    return packet_type, pos


def parse_video_tag(body: bytes) -> VideoTag:
    """Parse a video tag body (legacy FLV or Enhanced RTMP); codecs are named, not judged."""
    if not body:
        raise MediaError("video tag is empty")
    first = body[0]
    if first & EX_HEADER:
        return _parse_ex_video(body)
    frame_type = first >> 4
    codec_id = first & 0x0F
    codec, name = VIDEO_CODEC_IDS.get(codec_id, ("unknown", f"codec id {codec_id}"))
    source = f"FLV codec id {codec_id}"
    if frame_type == FRAME_COMMAND:
        return VideoTag(codec, name, source, frame_type, Packet.COMMAND, body[1:])
    if codec_id not in (CODEC_AVC, 12):
        return VideoTag(codec, name, source, frame_type, Packet.CODED_FRAMES, body[1:])
    if len(body) < 5:
        raise MediaError(
            f"{name} video tag is truncated: {len(body)} bytes, need 5 "
            "(frame type/codec, packet type, composition time)"
        )
    packet_type = body[1]
    packets = {
        AVC_SEQUENCE_HEADER: Packet.SEQUENCE_START,
        AVC_NALU: Packet.CODED_FRAMES,
        AVC_END_OF_SEQUENCE: Packet.SEQUENCE_END,
    }
    if packet_type not in packets:
        raise MediaError(
            f"{name} video packet type {packet_type} is unknown "
            "(expected 0 sequence header, 1 NAL units or 2 end of sequence)"
        )
    return VideoTag(
        codec, name, source, frame_type, packets[packet_type], body[5:], _si24(body[2:5])
    )


def _parse_ex_video(body: bytes) -> VideoTag:
    frame_type = (body[0] >> 4) & 0x07
    packet_type, pos = _skip_modex(body, 1, body[0] & 0x0F, "Enhanced RTMP video", VIDEO_MODEX)
    if frame_type == FRAME_COMMAND and packet_type != VIDEO_METADATA:
        return VideoTag("", "command", "Enhanced RTMP", frame_type, Packet.COMMAND, body[pos:])
    if packet_type == VIDEO_MULTITRACK:
        return VideoTag(
            "multitrack",
            "multitrack video",
            "Enhanced RTMP multitrack",
            frame_type,
            Packet.MULTITRACK,
            body[pos:],
        )
    if pos + 4 > len(body):
        raise MediaError(
            f"Enhanced RTMP video tag is truncated: {len(body)} bytes, FourCC needs {pos + 4}"
        )
    fourcc = body[pos : pos + 4].decode("latin-1")
    pos += 4
    codec, name = VIDEO_FOURCCS.get(fourcc, ("unknown", f"FourCC {fourcc!r}"))
    source = f"Enhanced RTMP {fourcc}"
    simple = {
        VIDEO_SEQUENCE_START: Packet.SEQUENCE_START,
        VIDEO_SEQUENCE_END: Packet.SEQUENCE_END,
        VIDEO_CODED_FRAMES_X: Packet.CODED_FRAMES,
        VIDEO_METADATA: Packet.METADATA,
        VIDEO_MPEG2TS_SEQUENCE_START: Packet.MPEG2TS_SEQUENCE_START,
    }
    if packet_type == VIDEO_CODED_FRAMES:
        if codec not in ("h264", "hevc"):
            return VideoTag(codec, name, source, frame_type, Packet.CODED_FRAMES, body[pos:])
        if pos + 3 > len(body):
            raise MediaError(
                f"Enhanced RTMP {name} coded frames are truncated before the composition time"
            )
        cts = _si24(body[pos : pos + 3])
        return VideoTag(codec, name, source, frame_type, Packet.CODED_FRAMES, body[pos + 3 :], cts)
    if packet_type not in simple:
        raise MediaError(f"Enhanced RTMP video packet type {packet_type} is unknown")
    return VideoTag(codec, name, source, frame_type, simple[packet_type], body[pos:])


def parse_audio_tag(body: bytes) -> AudioTag:
    """Parse an audio tag body (legacy FLV or Enhanced RTMP); codecs are named, not judged."""
    if not body:
        raise MediaError("audio tag is empty")
    sound_format = body[0] >> 4
    if sound_format == SOUND_EX_HEADER:
        return _parse_ex_audio(body)
    codec, name = SOUND_FORMATS.get(sound_format, ("unknown", f"sound format {sound_format}"))
    source = f"FLV sound format {sound_format}"
    if sound_format != SOUND_AAC:
        return AudioTag(codec, name, source, Packet.CODED_FRAMES, body[1:])
    if len(body) < 2:
        raise MediaError("AAC audio tag is truncated: 1 byte, need 2 (flags, AAC packet type)")
    packet_type = body[1]
    if packet_type == AAC_SEQUENCE_HEADER:
        return AudioTag(codec, name, source, Packet.SEQUENCE_START, body[2:])
    if packet_type == AAC_RAW:
        return AudioTag(codec, name, source, Packet.CODED_FRAMES, body[2:])
    raise MediaError(
        f"AAC packet type {packet_type} is unknown (expected 0 sequence header or 1 raw frame)"
    )


def _parse_ex_audio(body: bytes) -> AudioTag:
    packet_type, pos = _skip_modex(body, 1, body[0] & 0x0F, "Enhanced RTMP audio", AUDIO_MODEX)
    if packet_type == AUDIO_MULTITRACK:
        return AudioTag(
            "multitrack",
            "multitrack audio",
            "Enhanced RTMP multitrack",
            Packet.MULTITRACK,
            body[pos:],
        )
    if pos + 4 > len(body):
        raise MediaError(
            f"Enhanced RTMP audio tag is truncated: {len(body)} bytes, FourCC needs {pos + 4}"
        )
    fourcc = body[pos : pos + 4].decode("latin-1")
    pos += 4
    codec, name = AUDIO_FOURCCS.get(fourcc, ("unknown", f"FourCC {fourcc!r}"))
    packets = {
        AUDIO_SEQUENCE_START: Packet.SEQUENCE_START,
        AUDIO_CODED_FRAMES: Packet.CODED_FRAMES,
        AUDIO_SEQUENCE_END: Packet.SEQUENCE_END,
        AUDIO_MULTICHANNEL_CONFIG: Packet.MULTICHANNEL_CONFIG,
    }
    if packet_type not in packets:
        raise MediaError(f"Enhanced RTMP audio packet type {packet_type} is unknown")
    return AudioTag(codec, name, f"Enhanced RTMP {fourcc}", packets[packet_type], body[pos:])


def unsupported_video(tag: VideoTag) -> MediaError:
    """The refusal for a video codec we do not carry."""
    if tag.packet is Packet.MULTITRACK:
        return MediaError(
            "Enhanced RTMP multitrack video is not supported: send one video track "
            "(turn off OBS multitrack video / Enhanced Broadcasting)"
        )
    if tag.codec == "unknown":
        return MediaError(f"video {tag.codec_name} ({tag.source}) is not recognised: {VIDEO_FIX}")
    yet = " yet" if tag.codec in _FUTURE else ""
    return MediaError(
        f"video codec {tag.codec_name} ({tag.source}) is not supported{yet}: {VIDEO_FIX}"
    )


def unsupported_audio(tag: AudioTag) -> MediaError:
    """The refusal for an audio codec we do not carry."""
    if tag.packet is Packet.MULTITRACK:
        return MediaError(
            "Enhanced RTMP multitrack audio is not supported: send one audio track "
            "(OBS: one track in Output > Audio Track)"
        )
    if tag.codec == "unknown":
        return MediaError(f"audio {tag.codec_name} ({tag.source}) is not recognised: {AUDIO_FIX}")
    yet = " yet" if tag.codec in _FUTURE else ""
    return MediaError(
        f"audio codec {tag.codec_name} ({tag.source}) is not supported{yet}: {AUDIO_FIX}"
    )


class TagReader:
    """Per-publisher: tag bodies in, :class:`MediaUnit`s out.

    ``video_config`` / ``audio_config`` are the configurations in effect; every change (the
    first one too) is queued as a :class:`ConfigChange` for :meth:`pop_changes`.
    ``has_b_frames`` turns true once a composition time offset is non-zero or pts go back;
    it is reset by a new video configuration. Frames that arrive before their sequence header
    are dropped and counted.
    """

    def __init__(self, timeline: Timeline | None = None) -> None:
        self.timeline = timeline if timeline is not None else Timeline()
        self.video_config: VideoConfig | None = None
        self.audio_config: AudioConfig | None = None
        self.has_b_frames = False
        self.metadata: dict[str, object] = {}
        self.dropped_video = 0
        self.dropped_audio = 0
        self.video_ended = False
        self._length_size = 4
        self._max_pts: int | None = None
        self._changes: list[ConfigChange] = []
        self.changed = False
        """Whether :meth:`pop_changes` has changes to give (cheaper to test than to call)."""

    def pop_changes(self) -> list[ConfigChange]:
        """The configuration changes since the last call, oldest first."""
        changes, self._changes = self._changes, []
        self.changed = False
        return changes

    def on_metadata(self, values: Mapping[str, object]) -> None:
        """Remember an ``onMetaData`` dict (advisory: the tags themselves decide)."""
        self.metadata = dict(values)

    # ---------------------------------------------------------------------------------- video

    def video(self, timestamp: int, payload: bytes) -> list[MediaUnit]:
        """One video message (RTMP type 9) → 0 or 1 units."""
        if len(payload) >= 5:
            first = payload[0]
            if 0x10 <= first < 0x50 and first & 0x0F == CODEC_AVC and payload[1] == AVC_NALU:
                # Legacy H.264 NAL units (frame types 1-4), nearly every message: read in
                # place, as parse_video_tag would.
                cts = (payload[2] << 16) | (payload[3] << 8) | payload[4]
                if cts & 0x800000:
                    cts -= 0x1000000
                key = first >> 4
                return self._coded_frames(
                    timestamp, payload, 5, cts, key in (FRAME_KEY, FRAME_GENERATED_KEY)
                )
        tag = parse_video_tag(payload)
        if tag.packet in (Packet.COMMAND, Packet.METADATA):
            return []
        if tag.codec != CARRIED_VIDEO:
            raise unsupported_video(tag)
        if tag.packet is Packet.SEQUENCE_START:
            config, avcc = h264.video_config_from_record(tag.data)
            self._length_size = avcc.length_size
            self._set_video_config(config)
            return []
        if tag.packet is Packet.SEQUENCE_END:
            self.video_ended = True
            return []
        if tag.packet is not Packet.CODED_FRAMES:
            return []
        return self._coded_frames(timestamp, tag.data, 0, tag.composition_time, tag.keyframe)

    def _coded_frames(
        self, timestamp: int, data: bytes, start: int, composition_time: int, key_flag: bool
    ) -> list[MediaUnit]:
        """The H.264 access unit in ``data[start:]`` (AVCC) → 0 or 1 units."""
        self.video_ended = False
        if self.video_config is None:
            self.dropped_video += 1
            return []
        nals = self._split(data, start)
        present = 0  # bit t set: a NAL unit of type t is in the access unit
        for nal in nals:
            present |= 1 << (nal[0] & 0x1F)
        has_sets = present & _SETS == _SETS
        if has_sets:
            self._inband_parameter_sets(nals)
        config = self.video_config
        has_idr = present & _IDR
        keyframe = bool(has_idr) or (key_flag and not present & _VCL)
        kept = nals
        if present & _DROPPED:
            kept = [nal for nal in nals if not (1 << (nal[0] & 0x1F)) & _DROPPED]
        if not kept:
            return []
        if has_idr and not has_sets:
            kept = [*config.sps, *config.pps, *kept]
        dts = self.timeline.map(timestamp)
        pts = dts + composition_time
        max_pts = self._max_pts
        if composition_time != 0 or (max_pts is not None and pts < max_pts):
            self.has_b_frames = True
        self._max_pts = pts if max_pts is None or pts > max_pts else max_pts
        return [MediaUnit(Kind.VIDEO, CARRIED_VIDEO, dts, pts, h264.to_annexb(kept), keyframe)]

    def _split(self, data: bytes, start: int) -> list[bytes | memoryview]:
        """The NAL units of ``data[start:]``: views of ``data`` (AVCC with 4-byte lengths, the
        usual case), else copies."""
        if self._length_size == 4:
            view = memoryview(data)
            size = len(data)
            nals: list[bytes | memoryview] = []
            pos = start
            while pos + 4 <= size:
                length = _U32.unpack_from(data, pos)[0]
                pos += 4
                if length > size - pos:
                    break
                if length:
                    nals.append(view[pos : pos + length])
                pos += length
            if pos == size:
                return nals
        body = data[start:] if start else data  # not AVCC (or other lengths): the full checks
        try:
            return list(h264.split_avcc(body, self._length_size))
        except MediaError:
            if h264.is_annexb(body):  # some encoders put Annex B inside FLV
                return list(h264.split_annexb(body))
            raise

    def _inband_parameter_sets(self, nals: list[bytes | memoryview]) -> None:
        """An access unit carrying SPS and PPS: new ones change the configuration."""
        if self.video_config is None:
            return
        sps, pps = h264.parameter_sets(bytes(nal) for nal in nals if nal[0] & 0x1F in _SET_TYPES)
        if sps == self.video_config.sps and pps == self.video_config.pps:
            return
        try:
            config = h264.video_config_from_parameter_sets(sps, pps, self._length_size)
        except MediaError:
            return  # keep the announced configuration; the decoder uses the in-band sets
        self._set_video_config(config)

    def _set_video_config(self, config: VideoConfig) -> None:
        if config == self.video_config:
            return
        self._changes.append(ConfigChange(Kind.VIDEO, self.video_config, config))
        self.changed = True
        self.video_config = config
        self.has_b_frames = False
        self._max_pts = None

    # ---------------------------------------------------------------------------------- audio

    def audio(self, timestamp: int, payload: bytes) -> list[MediaUnit]:
        """One audio message (RTMP type 8) → 0 or 1 units."""
        if len(payload) > 2 and payload[1] == AAC_RAW and payload[0] >> 4 == SOUND_AAC:
            # a raw AAC frame, nearly every message: read in place, as parse_audio_tag would
            if self.audio_config is None:
                self.dropped_audio += 1
                return []
            dts = self.timeline.map(timestamp)
            return [MediaUnit(Kind.AUDIO, CARRIED_AUDIO, dts, dts, payload[2:], True)]
        tag = parse_audio_tag(payload)
        if tag.codec != CARRIED_AUDIO:
            raise unsupported_audio(tag)
        if tag.packet is Packet.SEQUENCE_START:
            config, _ = audio_config_from_asc(tag.data)
            if config != self.audio_config:
                self._changes.append(ConfigChange(Kind.AUDIO, self.audio_config, config))
                self.changed = True
                self.audio_config = config
            return []
        if tag.packet is not Packet.CODED_FRAMES or not tag.data:
            return []
        if self.audio_config is None:
            self.dropped_audio += 1
            return []
        dts = self.timeline.map(timestamp)
        return [
            MediaUnit(
                kind=Kind.AUDIO,
                codec=CARRIED_AUDIO,
                dts=dts,
                pts=dts,
                data=tag.data,
                keyframe=True,
            )
        ]

    def receive(self, kind: Kind, timestamp: int, payload: bytes) -> list[MediaUnit]:
        """Dispatch on ``kind``: :meth:`audio` or :meth:`video`."""
        return (
            self.video(timestamp, payload) if kind is Kind.VIDEO else self.audio(timestamp, payload)
        )


# ------------------------------------------------------------------------------------ builders


def _i24(value: int) -> bytes:
    if not -(1 << 23) <= value < 1 << 23:
        raise MediaError(f"composition time {value} ms does not fit 24 bits")
    return (value & 0xFFFFFF).to_bytes(3, "big")


def avc_sequence_header_body(record: bytes) -> bytes:
    """Legacy AVC sequence header tag body around an avcC record."""
    return bytes([FRAME_KEY << 4 | CODEC_AVC, AVC_SEQUENCE_HEADER, 0, 0, 0]) + record


def video_config_body(config: VideoConfig) -> bytes:
    """The sequence header tag body of a :class:`VideoConfig` (H.264 only)."""
    if config.codec != CARRIED_VIDEO:
        raise MediaError(f"cannot write a {config.codec} sequence header into FLV")
    return avc_sequence_header_body(config.record)


def avc_nalu_body(
    nals: Iterable[bytes] | bytes,
    keyframe: bool,
    composition_time: int = 0,
    length_size: int = 4,
) -> bytes:
    """Legacy AVC NALU tag body; ``nals`` is Annex B bytes or a list of NAL units."""
    units = h264.split_annexb(nals) if isinstance(nals, bytes) else list(nals)
    frame_type = FRAME_KEY if keyframe else FRAME_INTER
    header = bytes([frame_type << 4 | CODEC_AVC, AVC_NALU]) + _i24(composition_time)
    return header + h264.to_avcc(units, length_size)


def avc_end_of_sequence_body() -> bytes:
    return bytes([FRAME_KEY << 4 | CODEC_AVC, AVC_END_OF_SEQUENCE, 0, 0, 0])


def video_unit_body(unit: MediaUnit, length_size: int = 4) -> bytes:
    """The NALU tag body of an H.264 :class:`MediaUnit` (timestamp = ``unit.dts``)."""
    return avc_nalu_body(unit.data, unit.keyframe, unit.composition_offset, length_size)


def aac_sequence_header_body(asc: bytes) -> bytes:
    return bytes([AAC_FLAGS, AAC_SEQUENCE_HEADER]) + asc


def audio_config_body(config: AudioConfig) -> bytes:
    if config.codec != CARRIED_AUDIO:
        raise MediaError(f"cannot write a {config.codec} sequence header into FLV")
    return aac_sequence_header_body(config.record)


def aac_frame_body(frame: bytes) -> bytes:
    return bytes([AAC_FLAGS, AAC_RAW]) + frame


def audio_unit_body(unit: MediaUnit) -> bytes:
    return aac_frame_body(unit.data)


def legacy_video_body(codec_id: int, frame_type: int, data: bytes = b"") -> bytes:
    """Any legacy video tag body (for tests of other codecs)."""
    return bytes([(frame_type & 0x0F) << 4 | (codec_id & 0x0F)]) + data


def legacy_audio_body(sound_format: int, data: bytes = b"", flags: int = 0x0F) -> bytes:
    """Any legacy audio tag body; ``flags`` is rate/size/type (low nibble)."""
    return bytes([(sound_format & 0x0F) << 4 | (flags & 0x0F)]) + data


def ex_video_body(
    fourcc: str,
    packet_type: int,
    data: bytes = b"",
    frame_type: int = FRAME_KEY,
    composition_time: int | None = None,
) -> bytes:
    """An Enhanced RTMP video tag body; ``composition_time`` is written when not ``None``."""
    code = fourcc.encode("latin-1")
    if len(code) != 4:
        raise MediaError(f"FourCC {fourcc!r} is not 4 bytes")
    cts = b"" if composition_time is None else _i24(composition_time)
    return bytes([EX_HEADER | (frame_type & 7) << 4 | (packet_type & 0x0F)]) + code + cts + data


def ex_audio_body(fourcc: str, packet_type: int, data: bytes = b"") -> bytes:
    """An Enhanced RTMP audio tag body."""
    code = fourcc.encode("latin-1")
    if len(code) != 4:
        raise MediaError(f"FourCC {fourcc!r} is not 4 bytes")
    return bytes([SOUND_EX_HEADER << 4 | (packet_type & 0x0F)]) + code + data
