"""H.264 helpers: framing, emulation prevention, exp-Golomb, SPS and avcC."""

from __future__ import annotations

import contextlib
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import MediaError
from ingest.media.codecs import h264

# x264 parameter sets (veryfast, time base 1/30). The VUI timing fields contain 00 00 03.
BASELINE_720_SPS = bytes.fromhex("6742c01fda014016e840000003004000000f03c60ca8")
BASELINE_720_PPS = bytes.fromhex("68ce0fc8")
HIGH_1080_SPS = bytes.fromhex("67640028acd940780227e584000003000400000300f03c60c658")
HIGH_1080_PPS = bytes.fromhex("68ef8fcb")
MAIN_720_SPS = bytes.fromhex("674d401feca02802dd08000003000800000301e078c18cb0")


def encode_annexb(width: int, height: int, pix_fmt: str = "yuv420p", **options: str) -> bytes:
    """A few frames of libx264 output (Annex B, SPS/PPS in band)."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = pix_fmt
    ctx.framerate = Fraction(30)
    ctx.time_base = Fraction(1, 30)
    ctx.options = {"preset": "ultrafast", **options}
    ctx.open()
    out = bytearray()
    for i in range(2):
        rgb = np.full((height, width, 3), 40 * i, np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        frame.pts = i
        for packet in ctx.encode(frame):
            out += bytes(packet)
    for packet in ctx.encode(None):
        out += bytes(packet)
    return bytes(out)


def first_sps(data: bytes) -> bytes:
    return next(n for n in h264.split_annexb(data) if h264.nal_type(n) == h264.NAL_SPS)


# ------------------------------------------------------------------------------------ framing


def test_split_annexb_mixed_start_codes_and_trailing_zeros() -> None:
    data = b"\xff\x00\x00\x00\x01\x67\x01\x00\x00\x01\x68\x02\x00\x00\x00\x00\x01\x65\x03"
    assert h264.split_annexb(data) == [b"\x67\x01", b"\x68\x02", b"\x65\x03"]
    assert h264.split_annexb(b"") == []
    assert h264.split_annexb(b"\x00\x00\x01") == []


def test_annexb_avcc_round_trip() -> None:
    nals = [b"\x67\x42", b"\x68", b"\x65" + bytes(300)]
    assert h264.split_annexb(h264.to_annexb(nals)) == [b"\x67\x42", b"\x68", b"\x65"]
    for size in (1, 2, 4):
        small = nals[:2]
        assert h264.split_avcc(h264.to_avcc(small, size), size) == small
    assert h264.split_avcc(h264.to_avcc(nals, 4), 4) == nals
    assert h264.to_avcc([b"\x65"], 2) == b"\x00\x01\x65"


def test_split_avcc_errors_are_precise() -> None:
    with pytest.raises(MediaError, match="length 9 at offset 0 exceeds the 2 remaining"):
        h264.split_avcc(b"\x00\x00\x00\x09\x65\x00", 4)
    with pytest.raises(MediaError, match="length field at offset 0 is truncated"):
        h264.split_avcc(b"\x00\x00", 4)
    with pytest.raises(MediaError, match="length size 3 is invalid"):
        h264.split_avcc(b"\x00\x00\x01\x65", 3)
    with pytest.raises(MediaError, match="does not fit a 1-byte length"):
        h264.to_avcc([bytes(256)], 1)
    with pytest.raises(MediaError, match="empty"):
        h264.nal_type(b"")


def test_zero_length_avcc_nal_units_are_skipped() -> None:
    assert h264.split_avcc(b"\x00\x00\x00\x00\x00\x00\x00\x01\x65", 4) == [b"\x65"]


def test_emulation_prevention_golden() -> None:
    assert h264.add_emulation_prevention(b"\x00\x00\x01") == b"\x00\x00\x03\x01"
    assert h264.add_emulation_prevention(b"\x00\x00\x00\x00") == b"\x00\x00\x03\x00\x00"
    assert h264.add_emulation_prevention(b"\x00\x00\x04") == b"\x00\x00\x04"
    assert h264.remove_emulation_prevention(b"\x00\x00\x03\x00\x00\x03\x01") == bytes(
        [0, 0, 0, 0, 1]
    )


@given(st.binary(max_size=200))
def test_emulation_prevention_round_trip(rbsp: bytes) -> None:
    escaped = h264.add_emulation_prevention(rbsp)
    assert b"\x00\x00\x00" not in escaped
    assert b"\x00\x00\x01" not in escaped
    assert b"\x00\x00\x02" not in escaped
    assert h264.remove_emulation_prevention(escaped) == rbsp


def test_exp_golomb_golden() -> None:
    # 1 | 010 | 011 | 00100 | 00101 (se: 0, 1, -1, 2, -2)
    bits = "1" + "010" + "011" + "00100" + "00101"
    data = int(bits.ljust(24, "0"), 2).to_bytes(3, "big")
    r = h264.BitReader(data)
    assert [r.ue("a"), r.ue("b"), r.ue("c"), r.ue("d"), r.ue("e")] == [0, 1, 2, 3, 4]
    r = h264.BitReader(data)
    assert [r.se("a"), r.se("b"), r.se("c"), r.se("d"), r.se("e")] == [0, 1, -1, 2, -2]
    with pytest.raises(MediaError, match="truncated while reading width"):
        h264.BitReader(b"\x00").ue("width")
    with pytest.raises(MediaError, match="invalid exp-Golomb code in x"):
        h264.BitReader(bytes(8)).ue("x")


# ---------------------------------------------------------------------------------------- SPS


def test_golden_sps() -> None:
    sps = h264.parse_sps(BASELINE_720_SPS)
    assert (sps.width, sps.height) == (1280, 720)
    assert (sps.profile_idc, sps.constraint_flags, sps.level_idc) == (66, 0xC0, 31)
    assert sps.profile_name == "Constrained Baseline"
    assert sps.level_name == "3.1"
    assert b"\x00\x00\x03" in BASELINE_720_SPS  # VUI timing needed escaping
    assert sps.fps == 30.0
    high = h264.parse_sps(HIGH_1080_SPS)
    assert (high.width, high.height, high.profile_name, high.level_name) == (
        1920,
        1080,
        "High",
        "4.0",
    )
    assert high.max_num_reorder_frames == 2
    main = h264.parse_sps(MAIN_720_SPS)
    assert (main.width, main.height, main.profile_name, main.level_idc) == (1280, 720, "Main", 31)


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt", "options", "profile", "chroma", "depth"),
    [
        (1280, 720, "yuv420p", {"profile": "baseline"}, 66, 1, 8),
        (1920, 1080, "yuv420p", {"profile": "main", "preset": "veryfast"}, 77, 1, 8),
        (1920, 1080, "yuv420p", {"profile": "high", "preset": "veryfast"}, 100, 1, 8),
        (642, 362, "yuv420p", {"profile": "high", "preset": "veryfast"}, 100, 1, 8),
        (640, 360, "yuv422p", {"profile": "high422"}, 122, 2, 8),
        (322, 182, "yuv444p", {"profile": "high444"}, 244, 3, 8),
        (640, 360, "yuv420p10le", {}, 110, 1, 10),
        (
            640,
            360,
            "yuv420p",
            {"x264-params": "cqm4iy=6,13,20,28,13,20,28,32,20,28,32,37,28,32,37,42"},
            100,
            1,
            8,
        ),
    ],
)
def test_sps_of_x264(
    width: int,
    height: int,
    pix_fmt: str,
    options: dict[str, str],
    profile: int,
    chroma: int,
    depth: int,
) -> None:
    sps = h264.parse_sps(first_sps(encode_annexb(width, height, pix_fmt, **options)))
    assert (sps.width, sps.height) == (width, height)
    assert sps.profile_idc == profile
    assert sps.chroma_format_idc == chroma
    assert sps.bit_depth_luma == depth
    assert sps.fps == 30.0


def test_interlaced_sps() -> None:
    sps = h264.parse_sps(
        first_sps(encode_annexb(640, 480, "yuv420p", **{"x264-params": "interlaced=1"}))
    )
    assert not sps.frame_mbs_only
    assert (sps.width, sps.height) == (640, 480)


def test_sps_errors() -> None:
    with pytest.raises(MediaError, match="expected 7"):
        h264.parse_sps(b"\x68\x00")
    with pytest.raises(MediaError, match="empty"):
        h264.parse_sps(b"")
    with pytest.raises(MediaError, match="truncated while reading level_idc"):
        h264.parse_sps(b"\x67\x42\xc0")
    for cut in range(1, 8):
        with pytest.raises(MediaError, match="truncated"):
            h264.parse_sps(BASELINE_720_SPS[:cut])


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_sps_parser_only_raises_media_error(data: bytes) -> None:
    with contextlib.suppress(MediaError):
        h264.parse_sps(b"\x67" + data)


def test_profile_and_level_names() -> None:
    assert h264.profile_name(66) == "Baseline"
    assert h264.profile_name(66, 0x40) == "Constrained Baseline"
    assert h264.profile_name(100, 0x0C) == "Constrained High"
    assert h264.profile_name(110, 0x10) == "High 10 Intra"
    assert h264.profile_name(7) == "profile 7"
    assert h264.level_name(40) == "4.0"
    assert h264.level_name(31) == "3.1"
    assert h264.level_name(11, 0x10, 66) == "1b"
    assert h264.level_name(9) == "1b"


# --------------------------------------------------------------------------------------- avcC


def test_avcc_record_round_trip() -> None:
    record = h264.build_avcc_record([HIGH_1080_SPS], [HIGH_1080_PPS])
    assert record[:5] == bytes([1, 100, 0, 40, 0xFF])
    assert record[-4:] == bytes([0xFD, 0xF8, 0xF8, 0])  # High profile extension
    parsed = h264.parse_avcc_record(record)
    assert parsed.sps == (HIGH_1080_SPS,)
    assert parsed.pps == (HIGH_1080_PPS,)
    assert parsed.length_size == 4
    config, _ = h264.video_config_from_record(record)
    assert (config.width, config.height, config.profile, config.level) == (1920, 1080, 100, 40)
    assert config.profile_level_id == "640028"
    assert h264.nal_length_size(config) == 4
    small = h264.build_avcc_record([BASELINE_720_SPS], [BASELINE_720_PPS], length_size=2)
    assert h264.parse_avcc_record(small).length_size == 2
    assert len(small) == 6 + 2 + len(BASELINE_720_SPS) + 1 + 2 + len(BASELINE_720_PPS)


def test_avcc_record_errors() -> None:
    good = h264.build_avcc_record([BASELINE_720_SPS], [BASELINE_720_PPS])
    with pytest.raises(MediaError, match="configurationVersion 0"):
        h264.parse_avcc_record(b"\x00" + good[1:])
    with pytest.raises(MediaError, match="NAL length size 3"):
        h264.parse_avcc_record(good[:4] + b"\xfe" + good[5:])
    with pytest.raises(MediaError, match="truncated: 3 bytes"):
        h264.parse_avcc_record(good[:3])
    with pytest.raises(MediaError, match="SPS #0 has 22 bytes"):
        h264.parse_avcc_record(good[:12])
    with pytest.raises(MediaError, match="carries no SPS"):
        h264.parse_avcc_record(good[:5] + b"\xe0\x01\x00\x04" + BASELINE_720_PPS)
    with pytest.raises(MediaError, match="carries no PPS"):
        h264.parse_avcc_record(good[: 8 + len(BASELINE_720_SPS)] + b"\x00")
    with pytest.raises(MediaError, match="SPS entry has NAL unit type 8"):
        h264.parse_avcc_record(good[:5] + b"\xe1\x00\x01\x68\x01\x00\x01\x68")
    for cut in range(len(good)):
        with pytest.raises(MediaError):
            h264.parse_avcc_record(good[:cut])


def test_parameter_sets_are_found_in_annexb() -> None:
    nals = h264.split_annexb(encode_annexb(320, 240))
    sps, pps = h264.parameter_sets(nals)
    assert len(sps) == 1
    assert len(pps) == 1
    config = h264.video_config_from_parameter_sets(sps, pps)
    assert (config.width, config.height) == (320, 240)


# ------------------------------------------------------------------- hand-built SPS and limits


def ue(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def se(value: int) -> str:
    return ue(2 * value - 1 if value > 0 else -2 * value)


def make_sps(
    width_mbs: int,
    height_units: int,
    crop: tuple[int, int, int, int] | None = None,
    poc: str | None = None,
    frame_mbs_only: bool = True,
) -> bytes:
    """A Baseline SPS from its fields (pic_order_cnt_type 2 unless ``poc`` bits are given)."""
    bits = format(66, "08b") + format(0xC0, "08b") + format(31, "08b")
    bits += ue(0) + ue(0)  # seq_parameter_set_id, log2_max_frame_num_minus4
    bits += poc if poc is not None else ue(2)
    bits += ue(1) + "0" + ue(width_mbs - 1) + ue(height_units - 1)
    bits += "1" if frame_mbs_only else "00"  # frame_mbs_only_flag [, mb_adaptive_frame_field]
    bits += "1"  # direct_8x8_inference_flag
    bits += "0" if crop is None else "1" + "".join(ue(c) for c in crop)
    bits += "0" + "1"  # no VUI, rbsp_stop_one_bit
    bits += "0" * (-len(bits) % 8)
    rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return b"\x67" + h264.add_emulation_prevention(rbsp)


def test_hand_built_sps_cropping() -> None:
    sps = h264.parse_sps(make_sps(120, 68, crop=(0, 0, 0, 4)))
    assert (sps.width, sps.height) == (1920, 1080)
    sps = h264.parse_sps(make_sps(80, 45))
    assert (sps.width, sps.height) == (1280, 720)
    sps = h264.parse_sps(make_sps(41, 23, crop=(1, 2, 3, 0)))
    assert (sps.width, sps.height) == (41 * 16 - 6, 23 * 16 - 6)
    field = h264.parse_sps(make_sps(40, 15, crop=(0, 0, 0, 2), frame_mbs_only=False))
    assert (field.width, field.height) == (640, 2 * 15 * 16 - 8)  # crop unit 4 rows


def test_hand_built_sps_poc_type_1() -> None:
    poc = ue(1) + "0" + se(-2) + se(3) + ue(3) + se(1) + se(-1) + se(5)
    sps = h264.parse_sps(make_sps(20, 15, poc=poc))
    assert (sps.pic_order_cnt_type, sps.width, sps.height) == (1, 320, 240)


def test_sps_limits() -> None:
    size = h264.MAX_PICTURE_SIZE_IN_MBS
    assert h264.parse_sps(make_sps(size, 1)).width == size * 16
    with pytest.raises(MediaError, match="too large"):
        h264.parse_sps(make_sps(size + 1, 1))
    cycle = h264.MAX_NUM_REF_FRAMES_IN_POC_CYCLE + 1
    with pytest.raises(MediaError, match="num_ref_frames_in_pic_order_cnt_cycle 256 > 255"):
        h264.parse_sps(make_sps(20, 15, poc=ue(1) + "0" + se(0) + se(0) + ue(cycle)))
    with pytest.raises(MediaError, match="pic_order_cnt_type 3"):
        h264.parse_sps(make_sps(20, 15, poc=ue(3)))
    with pytest.raises(MediaError, match="removes the whole picture"):
        h264.parse_sps(make_sps(2, 2, crop=(16, 0, 0, 0)))
