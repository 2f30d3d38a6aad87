"""H.264 helpers: Annex B / AVCC framing, emulation prevention, SPS and avcC parsing.

Everything here works on bytes and raises :class:`~ingest.errors.MediaError` with a message that
names the field when the input is broken, never ``IndexError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ingest.errors import MediaError
from ingest.media.units import VideoConfig

START_CODE = b"\x00\x00\x00\x01"

# NAL unit types (ITU-T H.264 table 7-1) this project looks at.
NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_END_OF_SEQUENCE = 10
NAL_END_OF_STREAM = 11
NAL_FILLER = 12
NAL_SPS_EXT = 13
VCL_TYPES = frozenset({1, 2, 3, 4, 5})

# Limits beside their parser.
MAX_NUM_REF_FRAMES_IN_POC_CYCLE = 255
MAX_PICTURE_SIZE_IN_MBS = 1024  # 16384 pixels: beyond level 6.2
VALID_LENGTH_SIZES = (1, 2, 4)

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling lists.
HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
# profile_idc values whose avcC carries the chroma/bit-depth extension (ISO/IEC 14496-15).
AVCC_EXTENSION_PROFILES = frozenset({100, 110, 122, 144})

_PROFILE_NAMES = {
    44: "CAVLC 4:4:4 Intra",
    66: "Baseline",
    77: "Main",
    83: "Scalable Baseline",
    86: "Scalable High",
    88: "Extended",
    100: "High",
    110: "High 10",
    118: "Multiview High",
    122: "High 4:2:2",
    128: "Stereo High",
    134: "MFC High",
    135: "MFC Depth High",
    138: "Multiview Depth High",
    139: "Enhanced Multiview Depth High",
    144: "High 4:4:4",
    244: "High 4:4:4 Predictive",
}


# --------------------------------------------------------------------------------------------
# NAL framing


def nal_type(nal: bytes) -> int:
    """The ``nal_unit_type`` of a NAL unit (header byte included, no start code)."""
    if not nal:
        raise MediaError("H.264 NAL unit is empty")
    return nal[0] & 0x1F


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream (3- or 4-byte start codes) into NAL units.

    Bytes before the first start code are ignored; trailing zero bytes of each NAL unit
    (``trailing_zero_8bits``) are removed; empty NAL units are skipped.
    """
    nals: list[bytes] = []
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        nal = data[start:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
        pos = nxt
    return nals


def is_annexb(data: bytes) -> bool:
    """Whether ``data`` starts with an Annex B start code."""
    return data.startswith(b"\x00\x00\x01") or data.startswith(START_CODE)


def to_annexb(nals: Iterable[bytes | memoryview]) -> bytes:
    """Join NAL units with 4-byte start codes (one copy of each: views are welcome)."""
    parts: list[bytes | memoryview] = [b""]  # the separator goes in front of every unit
    parts.extend(nals)
    return START_CODE.join(parts)


def split_avcc(data: bytes, length_size: int = 4) -> list[bytes]:
    """Split AVCC (length-prefixed) NAL units; zero-length units are skipped."""
    if length_size not in VALID_LENGTH_SIZES:
        raise MediaError(f"AVC NAL length size {length_size} is invalid: must be 1, 2 or 4")
    nals: list[bytes] = []
    pos = 0
    size = len(data)
    while pos < size:
        if pos + length_size > size:
            raise MediaError(
                f"AVC NAL length field at offset {pos} is truncated: {size - pos} bytes left, "
                f"need {length_size}"
            )
        length = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if length > size - pos:
            raise MediaError(
                f"AVC NAL unit length {length} at offset {pos - length_size} exceeds the "
                f"{size - pos} remaining bytes"
            )
        if length:
            nals.append(data[pos : pos + length])
        pos += length
    return nals


def to_avcc(nals: Iterable[bytes], length_size: int = 4) -> bytes:
    """Join NAL units with big-endian length prefixes of ``length_size`` bytes."""
    if length_size not in VALID_LENGTH_SIZES:
        raise MediaError(f"AVC NAL length size {length_size} is invalid: must be 1, 2 or 4")
    limit = 1 << (8 * length_size)
    out = bytearray()
    for nal in nals:
        if len(nal) >= limit:
            raise MediaError(
                f"H.264 NAL unit of {len(nal)} bytes does not fit a {length_size}-byte length"
            )
        out += len(nal).to_bytes(length_size, "big")
        out += nal
    return bytes(out)


def remove_emulation_prevention(data: bytes) -> bytes:
    """NAL payload → RBSP: drop every ``emulation_prevention_three_byte`` (00 00 03 → 00 00)."""
    return data.replace(b"\x00\x00\x03", b"\x00\x00")


def add_emulation_prevention(rbsp: bytes) -> bytes:
    """RBSP → NAL payload: insert 03 after 00 00 whenever the next byte is 00..03."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Bit reading


class BitReader:
    """MSB-first bit reader with exp-Golomb codes; overruns raise MediaError naming the field."""

    def __init__(self, data: bytes, what: str = "H.264 SPS") -> None:
        self._data = data
        self._pos = 0
        self._bits = len(data) * 8
        self._what = what

    @property
    def bits_left(self) -> int:
        return self._bits - self._pos

    def _truncated(self, field: str) -> MediaError:
        return MediaError(f"{self._what} is truncated while reading {field}")

    def u(self, count: int, field: str) -> int:
        """Read ``count`` bits as an unsigned integer."""
        if count == 0:
            return 0
        if self._pos + count > self._bits:
            raise self._truncated(field)
        value = 0
        for _ in range(count):
            byte = self._data[self._pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def flag(self, field: str) -> bool:
        return self.u(1, field) == 1

    def ue(self, field: str) -> int:
        """Unsigned exp-Golomb code."""
        zeros = 0
        while self.u(1, field) == 0:
            zeros += 1
            if zeros > 31:
                raise MediaError(f"{self._what} has an invalid exp-Golomb code in {field}")
        return (1 << zeros) - 1 + self.u(zeros, field)

    def se(self, field: str) -> int:
        """Signed exp-Golomb code."""
        k = self.ue(field)
        return (k + 1) // 2 if k & 1 else -(k // 2)


# --------------------------------------------------------------------------------------------
# SPS


@dataclass(frozen=True, slots=True)
class Sps:
    """The fields of a sequence parameter set this project uses."""

    profile_idc: int
    constraint_flags: int  # the byte after profile_idc (constraint_set0..5 flags)
    level_idc: int
    sps_id: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    width: int  # after cropping
    height: int  # after cropping
    frame_mbs_only: bool
    max_num_ref_frames: int
    pic_order_cnt_type: int
    fps: float | None = None  # from VUI timing info, when present
    max_num_reorder_frames: int | None = None  # from VUI bitstream restriction, when present
    full_range: bool | None = None

    @property
    def profile_name(self) -> str:
        return profile_name(self.profile_idc, self.constraint_flags)

    @property
    def level_name(self) -> str:
        return level_name(self.level_idc, self.constraint_flags, self.profile_idc)

    @property
    def chroma_format(self) -> str:
        return {0: "4:0:0", 1: "4:2:0", 2: "4:2:2", 3: "4:4:4"}[self.chroma_format_idc]


def _skip_scaling_list(r: BitReader, size: int) -> None:
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            delta = r.se("delta_scale")
            if not -128 <= delta <= 127:
                raise MediaError(f"H.264 SPS delta_scale {delta} is out of range")
            nxt = (last + delta + 256) % 256
        last = nxt if nxt != 0 else last


def _skip_hrd(r: BitReader) -> None:
    cpb_cnt = r.ue("cpb_cnt_minus1") + 1
    if cpb_cnt > 32:
        raise MediaError(f"H.264 SPS cpb_cnt_minus1 {cpb_cnt - 1} is out of range")
    r.u(4, "bit_rate_scale")
    r.u(4, "cpb_size_scale")
    for _ in range(cpb_cnt):
        r.ue("bit_rate_value_minus1")
        r.ue("cpb_size_value_minus1")
        r.u(1, "cbr_flag")
    r.u(20, "hrd delay lengths")


def _parse_vui(r: BitReader) -> tuple[float | None, int | None, bool | None]:
    fps: float | None = None
    reorder: int | None = None
    full_range: bool | None = None
    if r.flag("aspect_ratio_info_present_flag") and r.u(8, "aspect_ratio_idc") == 255:
        r.u(32, "sar_width/sar_height")
    if r.flag("overscan_info_present_flag"):
        r.u(1, "overscan_appropriate_flag")
    if r.flag("video_signal_type_present_flag"):
        r.u(3, "video_format")
        full_range = r.flag("video_full_range_flag")
        if r.flag("colour_description_present_flag"):
            r.u(24, "colour description")
    if r.flag("chroma_loc_info_present_flag"):
        r.ue("chroma_sample_loc_type_top_field")
        r.ue("chroma_sample_loc_type_bottom_field")
    if r.flag("timing_info_present_flag"):
        units = r.u(32, "num_units_in_tick")
        scale = r.u(32, "time_scale")
        r.u(1, "fixed_frame_rate_flag")
        if units and scale:
            fps = scale / (2 * units)
    nal_hrd = r.flag("nal_hrd_parameters_present_flag")
    if nal_hrd:
        _skip_hrd(r)
    vcl_hrd = r.flag("vcl_hrd_parameters_present_flag")
    if vcl_hrd:
        _skip_hrd(r)
    if nal_hrd or vcl_hrd:
        r.u(1, "low_delay_hrd_flag")
    r.u(1, "pic_struct_present_flag")
    if r.flag("bitstream_restriction_flag"):
        r.u(1, "motion_vectors_over_pic_boundaries_flag")
        r.ue("max_bytes_per_pic_denom")
        r.ue("max_bits_per_mb_denom")
        r.ue("log2_max_mv_length_horizontal")
        r.ue("log2_max_mv_length_vertical")
        reorder = r.ue("max_num_reorder_frames")
        r.ue("max_dec_frame_buffering")
    return fps, reorder, full_range


def parse_sps(nal: bytes) -> Sps:
    """Parse an SPS NAL unit (header byte included, emulation prevention bytes allowed).

    Handles every profile (chroma_format_idc, bit depths, scaling lists of the High profiles),
    all picture order count types, interlaced streams and frame cropping. VUI fields are
    best-effort: a VUI that cannot be read leaves them ``None``.
    """
    if not nal:
        raise MediaError("H.264 SPS is empty")
    if nal[0] & 0x1F != NAL_SPS:
        raise MediaError(f"H.264 SPS has NAL unit type {nal[0] & 0x1F}, expected 7")
    r = BitReader(remove_emulation_prevention(nal[1:]))
    profile_idc = r.u(8, "profile_idc")
    constraint_flags = r.u(8, "constraint flags")
    level_idc = r.u(8, "level_idc")
    sps_id = r.ue("seq_parameter_set_id")
    if sps_id > 31:
        raise MediaError(f"H.264 SPS seq_parameter_set_id {sps_id} is out of range 0..31")
    chroma_format_idc = 1
    separate_colour_plane = False
    bit_depth_luma = bit_depth_chroma = 8
    if profile_idc in HIGH_PROFILES:
        chroma_format_idc = r.ue("chroma_format_idc")
        if chroma_format_idc > 3:
            raise MediaError(f"H.264 SPS chroma_format_idc {chroma_format_idc} is out of range")
        if chroma_format_idc == 3:
            separate_colour_plane = r.flag("separate_colour_plane_flag")
        bit_depth_luma = r.ue("bit_depth_luma_minus8") + 8
        bit_depth_chroma = r.ue("bit_depth_chroma_minus8") + 8
        if bit_depth_luma > 14 or bit_depth_chroma > 14:
            raise MediaError("H.264 SPS bit depth is out of range 8..14")
        r.u(1, "qpprime_y_zero_transform_bypass_flag")
        if r.flag("seq_scaling_matrix_present_flag"):
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.flag("seq_scaling_list_present_flag"):
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    log2_max_frame_num = r.ue("log2_max_frame_num_minus4") + 4
    if log2_max_frame_num > 16:
        raise MediaError(f"H.264 SPS log2_max_frame_num_minus4 {log2_max_frame_num - 4} > 12")
    poc_type = r.ue("pic_order_cnt_type")
    if poc_type == 0:
        if r.ue("log2_max_pic_order_cnt_lsb_minus4") > 12:
            raise MediaError("H.264 SPS log2_max_pic_order_cnt_lsb_minus4 is out of range")
    elif poc_type == 1:
        r.u(1, "delta_pic_order_always_zero_flag")
        r.se("offset_for_non_ref_pic")
        r.se("offset_for_top_to_bottom_field")
        cycle = r.ue("num_ref_frames_in_pic_order_cnt_cycle")
        if cycle > MAX_NUM_REF_FRAMES_IN_POC_CYCLE:
            raise MediaError(f"H.264 SPS num_ref_frames_in_pic_order_cnt_cycle {cycle} > 255")
        for _ in range(cycle):
            r.se("offset_for_ref_frame")
    elif poc_type != 2:
        raise MediaError(f"H.264 SPS pic_order_cnt_type {poc_type} is out of range 0..2")
    max_num_ref_frames = r.ue("max_num_ref_frames")
    r.u(1, "gaps_in_frame_num_value_allowed_flag")
    width_mbs = r.ue("pic_width_in_mbs_minus1") + 1
    height_units = r.ue("pic_height_in_map_units_minus1") + 1
    if width_mbs > MAX_PICTURE_SIZE_IN_MBS or height_units > MAX_PICTURE_SIZE_IN_MBS:
        raise MediaError(
            f"H.264 SPS picture size {width_mbs}x{height_units} macroblocks is too large"
        )
    frame_mbs_only = r.flag("frame_mbs_only_flag")
    if not frame_mbs_only:
        r.u(1, "mb_adaptive_frame_field_flag")
    r.u(1, "direct_8x8_inference_flag")
    crop_left = crop_right = crop_top = crop_bottom = 0
    if r.flag("frame_cropping_flag"):
        crop_left = r.ue("frame_crop_left_offset")
        crop_right = r.ue("frame_crop_right_offset")
        crop_top = r.ue("frame_crop_top_offset")
        crop_bottom = r.ue("frame_crop_bottom_offset")
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    if chroma_array_type == 0:
        crop_x, crop_y = 1, 2 - int(frame_mbs_only)
    else:
        sub_w = 2 if chroma_format_idc in (1, 2) else 1
        sub_h = 2 if chroma_format_idc == 1 else 1
        crop_x, crop_y = sub_w, sub_h * (2 - int(frame_mbs_only))
    width = width_mbs * 16 - crop_x * (crop_left + crop_right)
    height = (2 - int(frame_mbs_only)) * height_units * 16 - crop_y * (crop_top + crop_bottom)
    if width <= 0 or height <= 0:
        raise MediaError("H.264 SPS frame cropping removes the whole picture")
    fps: float | None = None
    reorder: int | None = None
    full_range: bool | None = None
    if r.flag("vui_parameters_present_flag"):
        try:
            fps, reorder, full_range = _parse_vui(r)
        except MediaError:
            fps = reorder = full_range = None  # dimensions are what matter; VUI is advisory
    return Sps(
        profile_idc=profile_idc,
        constraint_flags=constraint_flags,
        level_idc=level_idc,
        sps_id=sps_id,
        chroma_format_idc=chroma_format_idc,
        bit_depth_luma=bit_depth_luma,
        bit_depth_chroma=bit_depth_chroma,
        width=width,
        height=height,
        frame_mbs_only=frame_mbs_only,
        max_num_ref_frames=max_num_ref_frames,
        pic_order_cnt_type=poc_type,
        fps=fps,
        max_num_reorder_frames=reorder,
        full_range=full_range,
    )


def profile_name(profile_idc: int, constraint_flags: int = 0) -> str:
    """Human name of an H.264 profile, e.g. ``Constrained Baseline`` or ``High``."""
    set1 = bool(constraint_flags & 0x40)
    set3 = bool(constraint_flags & 0x10)
    set4 = bool(constraint_flags & 0x08)
    set5 = bool(constraint_flags & 0x04)
    if profile_idc == 66 and set1:
        return "Constrained Baseline"
    if profile_idc == 100 and set4 and set5:
        return "Constrained High"
    if profile_idc == 100 and set4:
        return "Progressive High"
    if profile_idc in (110, 122, 244) and set3:
        return _PROFILE_NAMES[profile_idc] + " Intra"
    return _PROFILE_NAMES.get(profile_idc, f"profile {profile_idc}")


def level_name(level_idc: int, constraint_flags: int = 0, profile_idc: int = 0) -> str:
    """Human name of an H.264 level: ``3.1``, ``4.0``, ``1b``."""
    if level_idc == 9 or (
        level_idc == 11 and constraint_flags & 0x10 and profile_idc in (66, 77, 88)
    ):
        return "1b"
    return f"{level_idc // 10}.{level_idc % 10}"


# --------------------------------------------------------------------------------------------
# AVCDecoderConfigurationRecord (avcC)


@dataclass(frozen=True, slots=True)
class AvcDecoderConfig:
    """A parsed AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1)."""

    profile: int
    profile_compat: int
    level: int
    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]


def parse_avcc_record(record: bytes) -> AvcDecoderConfig:
    """Parse an avcC record; the optional High profile extension is ignored."""
    what = "AVCDecoderConfigurationRecord"
    if len(record) < 7:
        raise MediaError(f"{what} is truncated: {len(record)} bytes, need at least 7")
    if record[0] != 1:
        raise MediaError(f"{what} has configurationVersion {record[0]}, expected 1")
    length_size = (record[4] & 0x03) + 1
    if length_size == 3:
        raise MediaError(f"{what} has NAL length size 3: must be 1, 2 or 4")
    pos = 6

    def read_sets(count: int, name: str) -> tuple[bytes, ...]:
        nonlocal pos
        sets: list[bytes] = []
        for i in range(count):
            if pos + 2 > len(record):
                raise MediaError(f"{what} is truncated in the length of {name} #{i}")
            size = int.from_bytes(record[pos : pos + 2], "big")
            pos += 2
            if pos + size > len(record):
                raise MediaError(
                    f"{what} is truncated: {name} #{i} has {size} bytes, {len(record) - pos} left"
                )
            if size == 0:
                raise MediaError(f"{what} has an empty {name} #{i}")
            sets.append(record[pos : pos + size])
            pos += size
        return tuple(sets)

    sps = read_sets(record[5] & 0x1F, "SPS")
    if pos >= len(record):
        raise MediaError(f"{what} is truncated before numOfPictureParameterSets")
    num_pps = record[pos]
    pos += 1
    pps = read_sets(num_pps, "PPS")
    if not sps:
        raise MediaError(f"{what} carries no SPS")
    if not pps:
        raise MediaError(f"{what} carries no PPS")
    for nal in sps:
        if nal[0] & 0x1F != NAL_SPS:
            raise MediaError(f"{what} SPS entry has NAL unit type {nal[0] & 0x1F}, expected 7")
    for nal in pps:
        if nal[0] & 0x1F != NAL_PPS:
            raise MediaError(f"{what} PPS entry has NAL unit type {nal[0] & 0x1F}, expected 8")
    return AvcDecoderConfig(
        profile=record[1],
        profile_compat=record[2],
        level=record[3],
        length_size=length_size,
        sps=sps,
        pps=pps,
    )


def build_avcc_record(sps: Sequence[bytes], pps: Sequence[bytes], length_size: int = 4) -> bytes:
    """Build an avcC record from parameter sets (the first SPS gives profile and level)."""
    if not sps or not pps:
        raise MediaError("an AVCDecoderConfigurationRecord needs at least one SPS and one PPS")
    if length_size not in VALID_LENGTH_SIZES:
        raise MediaError(f"AVC NAL length size {length_size} is invalid: must be 1, 2 or 4")
    if len(sps) > 31 or len(pps) > 255:
        raise MediaError("too many parameter sets for an AVCDecoderConfigurationRecord")
    first = parse_sps(sps[0])
    out = bytearray(
        [1, first.profile_idc, first.constraint_flags, first.level_idc, 0xFC | (length_size - 1)]
    )
    out.append(0xE0 | len(sps))
    for nal in sps:
        out += len(nal).to_bytes(2, "big") + nal
    out.append(len(pps))
    for nal in pps:
        out += len(nal).to_bytes(2, "big") + nal
    if first.profile_idc in AVCC_EXTENSION_PROFILES:
        out.append(0xFC | first.chroma_format_idc)
        out.append(0xF8 | (first.bit_depth_luma - 8))
        out.append(0xF8 | (first.bit_depth_chroma - 8))
        out.append(0)  # numOfSequenceParameterSetExt
    return bytes(out)


def video_config_from_record(record: bytes) -> tuple[VideoConfig, AvcDecoderConfig]:
    """A :class:`VideoConfig` (and the parsed record) from an avcC sequence header."""
    avcc = parse_avcc_record(record)
    sps = parse_sps(avcc.sps[0])
    config = VideoConfig(
        codec="h264",
        record=bytes(record),
        sps=avcc.sps,
        pps=avcc.pps,
        width=sps.width,
        height=sps.height,
        profile=sps.profile_idc,
        level=sps.level_idc,
        profile_compat=sps.constraint_flags,
    )
    return config, avcc


def video_config_from_parameter_sets(
    sps: Sequence[bytes], pps: Sequence[bytes], length_size: int = 4
) -> VideoConfig:
    """A :class:`VideoConfig` built from SPS/PPS (e.g. found in an Annex B stream)."""
    return video_config_from_record(build_avcc_record(sps, pps, length_size))[0]


def nal_length_size(config: VideoConfig) -> int:
    """The AVCC NAL length size of a config's avcC record (``VideoConfig`` has no such field)."""
    return parse_avcc_record(config.record).length_size


def parameter_sets(nals: Iterable[bytes]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The distinct SPS and PPS NAL units among ``nals``, in order of appearance."""
    sps: list[bytes] = []
    pps: list[bytes] = []
    for nal in nals:
        kind = nal_type(nal)
        if kind == NAL_SPS and nal not in sps:
            sps.append(nal)
        elif kind == NAL_PPS and nal not in pps:
            pps.append(nal)
    return tuple(sps), tuple(pps)
