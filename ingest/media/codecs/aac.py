"""AAC helpers: AudioSpecificConfig parse/build (ISO/IEC 14496-3 1.6.2.1) and ADTS headers."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.errors import MediaError
from ingest.media.codecs.h264 import BitReader
from ingest.media.units import AudioConfig

SAMPLE_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
EXPLICIT_RATE_INDEX = 0xF
ADTS_HEADER_SIZE = 7
MAX_ADTS_FRAME = (1 << 13) - 1  # frame_length is 13 bits, header included

AOT_MAIN = 1
AOT_LC = 2
AOT_SBR = 5  # HE-AAC
AOT_PS = 29  # HE-AAC v2
_CHANNELS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8}
# Object types whose GASpecificConfig starts with frameLengthFlag.
_GA_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23})

_OBJECT_TYPE_NAMES = {
    1: "AAC Main",
    2: "AAC-LC",
    3: "AAC SSR",
    4: "AAC LTP",
    5: "HE-AAC",
    6: "AAC Scalable",
    17: "ER AAC-LC",
    23: "AAC-LD",
    29: "HE-AAC v2",
    39: "AAC-ELD",
    42: "xHE-AAC (USAC)",
}


@dataclass(frozen=True, slots=True)
class AudioSpecificConfig:
    """The parts of an AudioSpecificConfig a player needs."""

    object_type: int  # as signalled (5 or 29 for explicit HE-AAC)
    sample_rate: int  # core sampling rate
    channel_config: int  # 0 = defined by a program config element
    frequency_index: int  # 0xF when the rate is explicit
    core_object_type: int  # the AAC core under SBR/PS, else = object_type
    extension_sample_rate: int = 0  # SBR output rate for explicit HE-AAC, else 0
    frame_length: int = 1024  # 960 when frameLengthFlag is set

    @property
    def channels(self) -> int:
        """Channel count (0 when the config defers to a program config element)."""
        return _CHANNELS.get(self.channel_config, 0)

    @property
    def output_sample_rate(self) -> int:
        return self.extension_sample_rate or self.sample_rate

    @property
    def name(self) -> str:
        return object_type_name(self.object_type)


def object_type_name(object_type: int) -> str:
    """Human name of an MPEG-4 audio object type, e.g. ``AAC-LC``."""
    return _OBJECT_TYPE_NAMES.get(object_type, f"AAC object type {object_type}")


def _object_type(r: BitReader) -> int:
    aot = r.u(5, "audioObjectType")
    if aot == 31:
        aot = 32 + r.u(6, "audioObjectTypeExt")
    return aot


def _rate(r: BitReader, field: str) -> tuple[int, int]:
    index = r.u(4, field)
    if index == EXPLICIT_RATE_INDEX:
        rate = r.u(24, field.replace("Index", ""))
        if rate == 0:
            raise MediaError("AAC AudioSpecificConfig has an explicit sampling frequency of 0")
        return index, rate
    if index >= len(SAMPLE_RATES):
        raise MediaError(f"AAC AudioSpecificConfig has reserved {field} {index}")
    return index, SAMPLE_RATES[index]


def parse_audio_specific_config(data: bytes) -> AudioSpecificConfig:
    """Parse an AudioSpecificConfig: object type (incl. escape 31), rate (incl. explicit 24-bit
    rate), channel configuration, explicit SBR/PS signalling and frameLengthFlag."""
    if len(data) < 2:
        raise MediaError(f"AAC AudioSpecificConfig is truncated: {len(data)} bytes, need 2")
    r = BitReader(data, "AAC AudioSpecificConfig")
    aot = _object_type(r)
    if aot == 0:
        raise MediaError("AAC AudioSpecificConfig has audio object type 0 (null)")
    index, rate = _rate(r, "samplingFrequencyIndex")
    channel_config = r.u(4, "channelConfiguration")
    core = aot
    ext_rate = 0
    if aot in (AOT_SBR, AOT_PS):
        ext_rate = _rate(r, "extensionSamplingFrequencyIndex")[1]
        core = _object_type(r)
    frame_length = 1024
    if core in _GA_TYPES and r.bits_left >= 1 and r.flag("frameLengthFlag"):
        frame_length = 960
    return AudioSpecificConfig(
        object_type=aot,
        sample_rate=rate,
        channel_config=channel_config,
        frequency_index=index,
        core_object_type=core,
        extension_sample_rate=ext_rate,
        frame_length=frame_length,
    )


def build_audio_specific_config(
    sample_rate: int, channels: int, object_type: int = AOT_LC
) -> bytes:
    """A minimal AudioSpecificConfig (GASpecificConfig with all flags zero)."""
    if not 1 <= object_type < 32 + 64:
        raise MediaError(f"AAC audio object type {object_type} is out of range")
    config = {v: k for k, v in _CHANNELS.items()}.get(channels)
    if config is None:
        raise MediaError(f"AAC cannot signal {channels} channels without a program config")
    bits: list[tuple[int, int]] = []
    if object_type >= 31:
        bits += [(31, 5), (object_type - 32, 6)]
    else:
        bits.append((object_type, 5))
    if sample_rate in SAMPLE_RATES:
        bits.append((SAMPLE_RATES.index(sample_rate), 4))
    else:
        if not 0 < sample_rate < 1 << 24:
            raise MediaError(f"AAC sample rate {sample_rate} is out of range")
        bits += [(EXPLICIT_RATE_INDEX, 4), (sample_rate, 24)]
    bits += [(config, 4), (0, 3)]  # frameLengthFlag, dependsOnCoreCoder, extensionFlag
    value = 0
    count = 0
    for field, width in bits:
        value = (value << width) | field
        count += width
    pad = -count % 8
    return (value << pad).to_bytes((count + pad) // 8, "big")


def audio_config_from_asc(data: bytes) -> tuple[AudioConfig, AudioSpecificConfig]:
    """An :class:`AudioConfig` (and the parsed config) from an AAC sequence header."""
    asc = parse_audio_specific_config(data)
    config = AudioConfig(
        codec="aac",
        record=bytes(data),
        sample_rate=asc.output_sample_rate,
        channels=asc.channels,
        object_type=asc.object_type,
    )
    return config, asc


def adts_header(config: AudioSpecificConfig | bytes, payload_size: int) -> bytes:
    """A 7-byte ADTS header (no CRC) for one raw AAC frame of ``payload_size`` bytes.

    HE-AAC is written with its AAC core (implicit SBR signalling), as ADTS requires.
    """
    asc = parse_audio_specific_config(config) if isinstance(config, bytes) else config
    profile = asc.core_object_type - 1
    if not 0 <= profile <= 3:
        raise MediaError(f"ADTS cannot carry {object_type_name(asc.core_object_type)}")
    if asc.frequency_index == EXPLICIT_RATE_INDEX:
        raise MediaError(f"ADTS cannot carry the explicit sample rate {asc.sample_rate}")
    if not 0 <= asc.channel_config <= 7:
        raise MediaError(f"ADTS cannot carry channel configuration {asc.channel_config}")
    length = payload_size + ADTS_HEADER_SIZE
    if payload_size < 0 or length > MAX_ADTS_FRAME:
        raise MediaError(f"AAC frame of {payload_size} bytes does not fit an ADTS frame")
    return bytes(
        [
            0xFF,
            0xF1,  # MPEG-4, layer 0, no CRC
            (profile << 6) | (asc.frequency_index << 2) | (asc.channel_config >> 2),
            ((asc.channel_config & 3) << 6) | (length >> 11),
            (length >> 3) & 0xFF,
            ((length & 7) << 5) | 0x1F,  # buffer fullness 0x7FF (VBR)
            0xFC,  # ... and one raw data block
        ]
    )


def to_adts(config: AudioSpecificConfig | bytes, frame: bytes) -> bytes:
    """One raw AAC frame with its ADTS header."""
    return adts_header(config, len(frame)) + frame
