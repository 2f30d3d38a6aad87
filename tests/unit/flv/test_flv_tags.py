"""FLV / Enhanced RTMP tag bodies: golden bytes, refusals, the TagReader state machine."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import MediaError
from ingest.flv import tags
from ingest.flv.tags import Packet, TagReader
from ingest.media.codecs import h264
from ingest.media.timeline import Timeline
from ingest.media.units import Kind

SPS = bytes.fromhex("6742c01fda014016e840000003004000000f03c60ca8")  # 1280x720 Baseline 3.1
PPS = bytes.fromhex("68ce0fc8")
SPS_1080 = bytes.fromhex("67640028acd940780227e584000003000400000300f03c60c658")
PPS_1080 = bytes.fromhex("68ef8fcb")
RECORD = h264.build_avcc_record([SPS], [PPS])
ASC_44K = bytes.fromhex("1210")
IDR = b"\x65\x88\x84\x00\x33"
SLICE = b"\x41\x9a\x02\x10"
AUD = b"\x09\xf0"
SEI = b"\x06\x05\x01\x00\x80"
START = h264.START_CODE

# Golden tag bodies as OBS sends them.
AVC_SEQUENCE_HEADER = bytes.fromhex("1700000000") + RECORD
AVC_IDR = bytes.fromhex("1701000042") + h264.to_avcc([AUD, SEI, IDR])  # cts 66 ms
AVC_P_NEGATIVE_CTS = bytes.fromhex("2701ffffdf") + h264.to_avcc([SLICE])  # cts -33 ms
AAC_SEQUENCE_HEADER = bytes.fromhex("af00") + ASC_44K
AAC_FRAME = bytes.fromhex("af01") + b"\x21\x10\x05"


def reader_with_config() -> TagReader:
    reader = TagReader()
    assert reader.video(0, AVC_SEQUENCE_HEADER) == []
    assert reader.audio(0, AAC_SEQUENCE_HEADER) == []
    return reader


# ------------------------------------------------------------------------------------ parsing


def test_parse_legacy_avc_golden() -> None:
    header = tags.parse_video_tag(AVC_SEQUENCE_HEADER)
    assert (header.codec, header.packet, header.data) == ("h264", Packet.SEQUENCE_START, RECORD)
    assert header.source == "FLV codec id 7"
    assert header.keyframe
    frame = tags.parse_video_tag(AVC_IDR)
    assert (frame.packet, frame.composition_time) == (Packet.CODED_FRAMES, 66)
    assert tags.parse_video_tag(AVC_P_NEGATIVE_CTS).composition_time == -33
    assert not tags.parse_video_tag(AVC_P_NEGATIVE_CTS).keyframe
    end = tags.parse_video_tag(tags.avc_end_of_sequence_body())
    assert end.packet is Packet.SEQUENCE_END


def test_parse_enhanced_video_golden() -> None:
    start = tags.parse_video_tag(b"\x90avc1" + RECORD)
    assert (start.codec, start.packet, start.source) == (
        "h264",
        Packet.SEQUENCE_START,
        "Enhanced RTMP avc1",
    )
    assert start.enhanced
    coded = tags.parse_video_tag(b"\xa1avc1\x00\x00\x21" + b"abc")
    assert (coded.packet, coded.composition_time, coded.data, coded.frame_type) == (
        Packet.CODED_FRAMES,
        33,
        b"abc",
        2,
    )
    coded_x = tags.parse_video_tag(b"\x93hvc1abc")
    assert (coded_x.codec, coded_x.packet, coded_x.composition_time, coded_x.data) == (
        "hevc",
        Packet.CODED_FRAMES,
        0,
        b"abc",
    )
    assert tags.parse_video_tag(b"\x94av01\x02\x00").packet is Packet.METADATA
    assert tags.parse_video_tag(b"\x95av01").packet is Packet.MPEG2TS_SEQUENCE_START
    assert tags.parse_video_tag(b"\x91vp09xyz").data == b"xyz"  # no composition time
    assert tags.parse_video_tag(b"\xd0\x01").packet is Packet.COMMAND


def test_enhanced_modex_is_skipped() -> None:
    # ModEx (type 7) with a 3-byte TimestampOffsetNano, then CodedFrames (1) for avc1.
    body = b"\x97\x02\x00\x01\x02\x01avc1\x00\x00\x10" + b"nal"
    parsed = tags.parse_video_tag(body)
    assert (parsed.codec, parsed.packet, parsed.composition_time, parsed.data) == (
        "h264",
        Packet.CODED_FRAMES,
        16,
        b"nal",
    )
    audio = tags.parse_audio_tag(b"\x97\x00\x05\x01mp4a" + b"raw")
    assert (audio.codec, audio.packet, audio.data) == ("aac", Packet.CODED_FRAMES, b"raw")
    long_modex = b"\x97\xff\x01\x00" + bytes(257) + b"\x00avc1" + RECORD
    assert tags.parse_video_tag(long_modex).data == RECORD


def test_parse_audio_golden() -> None:
    header = tags.parse_audio_tag(AAC_SEQUENCE_HEADER)
    assert (header.codec, header.packet, header.data) == ("aac", Packet.SEQUENCE_START, ASC_44K)
    frame = tags.parse_audio_tag(AAC_FRAME)
    assert (frame.packet, frame.data) == (Packet.CODED_FRAMES, b"\x21\x10\x05")
    mp3 = tags.parse_audio_tag(b"\x2f\xff\xfb")
    assert (mp3.codec, mp3.codec_name, mp3.source) == ("mp3", "MP3", "FLV sound format 2")
    opus = tags.parse_audio_tag(b"\x90Opus" + b"OpusHead")
    assert (opus.codec, opus.packet, opus.source) == (
        "opus",
        Packet.SEQUENCE_START,
        "Enhanced RTMP Opus",
    )
    assert tags.parse_audio_tag(b"\x94Opus\x00").packet is Packet.MULTICHANNEL_CONFIG


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "video tag is empty"),
        (b"\x17\x01\x00", "H.264 video tag is truncated: 3 bytes, need 5"),
        (b"\x17\x05\x00\x00\x00", "H.264 video packet type 5 is unknown"),
        (b"\x90av", "Enhanced RTMP video tag is truncated: 3 bytes, FourCC needs 5"),
        (b"\x91avc1\x00", "Enhanced RTMP H.264 coded frames are truncated before the composition"),
        (b"\x9aavc1", "Enhanced RTMP video packet type 10 is unknown"),
        (b"\x97", "Enhanced RTMP video ModEx block is truncated before its size"),
        (b"\x97\x05\x00", "ModEx block of 6 bytes is truncated"),
        (b"\x97\xff\x00", "ModEx block is truncated in its 16-bit size"),
    ],
)
def test_malformed_video(body: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        tags.parse_video_tag(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "audio tag is empty"),
        (b"\xaf", "AAC audio tag is truncated: 1 byte, need 2"),
        (b"\xaf\x02", "AAC packet type 2 is unknown"),
        (b"\x90Op", "Enhanced RTMP audio tag is truncated"),
        (b"\x93mp4a", "Enhanced RTMP audio packet type 3 is unknown"),
    ],
)
def test_malformed_audio(body: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        tags.parse_audio_tag(body)


# ---------------------------------------------------------------------------------- refusals

VIDEO_FIX = "set OBS Output > Encoder to x264 or NVENC H.264"
AUDIO_FIX = "set OBS Output > Audio Encoder to AAC"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x90hvc1", "video codec HEVC (Enhanced RTMP hvc1) is not supported yet: " + VIDEO_FIX),
        (b"\x90av01", "video codec AV1 (Enhanced RTMP av01) is not supported yet: " + VIDEO_FIX),
        (b"\x90vp09", "video codec VP9 (Enhanced RTMP vp09) is not supported yet: " + VIDEO_FIX),
        (b"\x12abc", "video codec Sorenson H.263 (FLV codec id 2) is not supported: " + VIDEO_FIX),
        (b"\x14abc", "video codec On2 VP6 (FLV codec id 4) is not supported: " + VIDEO_FIX),
        (b"\x15abc", "video codec On2 VP6 with alpha (FLV codec id 5) is not supported"),
        (b"\x13abc", "video codec Screen video (FLV codec id 3) is not supported"),
        (b"\x1c\x00\x00\x00\x00", "video codec HEVC (FLV codec id 12) is not supported yet"),
        (b"\x1f", "video codec id 15 (FLV codec id 15) is not recognised: " + VIDEO_FIX),
        (b"\x90abcd", "video FourCC 'abcd' (Enhanced RTMP abcd) is not recognised"),
        (b"\x96\x00avc1", "Enhanced RTMP multitrack video is not supported"),
    ],
)
def test_unsupported_video_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TagReader().video(0, body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x90Opus", "audio codec Opus (Enhanced RTMP Opus) is not supported yet: " + AUDIO_FIX),
        (b"\x2f\xff", "audio codec MP3 (FLV sound format 2) is not supported: " + AUDIO_FIX),
        (b"\xe2\xff", "audio codec MP3 8 kHz (FLV sound format 14) is not supported"),
        (b"\xb6\x00", "audio codec Speex (FLV sound format 11) is not supported"),
        (b"\x6e\x00", "audio codec Nellymoser (FLV sound format 6) is not supported"),
        (b"\x72\x00", "audio codec G.711 A-law (FLV sound format 7) is not supported"),
        (b"\x82\x00", "audio codec G.711 mu-law (FLV sound format 8) is not supported"),
        (b"\x3e\x00", "audio codec Linear PCM (little endian) (FLV sound format 3)"),
        (b"\x91.mp3", "audio codec MP3 (Enhanced RTMP .mp3) is not supported: " + AUDIO_FIX),
        (b"\x91ac-3", "audio codec AC-3 (Enhanced RTMP ac-3) is not supported"),
        (b"\x91ec-3", "audio codec E-AC-3 (Enhanced RTMP ec-3) is not supported"),
        (b"\x90fLaC", "audio codec FLAC (Enhanced RTMP fLaC) is not supported yet"),
        (b"\xc0", "audio sound format 12 (FLV sound format 12) is not recognised"),
        (b"\x95\x00Opus", "Enhanced RTMP multitrack audio is not supported"),
    ],
)
def test_unsupported_audio_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TagReader().audio(0, body)


# -------------------------------------------------------------------------------- TagReader


def test_reader_configs_and_changes() -> None:
    reader = reader_with_config()
    assert reader.video_config is not None
    assert (reader.video_config.width, reader.video_config.height) == (1280, 720)
    assert reader.video_config.sps == (SPS,)
    assert reader.video_config.record == RECORD
    assert reader.audio_config is not None
    assert (reader.audio_config.sample_rate, reader.audio_config.channels) == (44100, 2)
    changes = reader.pop_changes()
    assert [(c.kind, c.previous) for c in changes] == [(Kind.VIDEO, None), (Kind.AUDIO, None)]
    assert reader.pop_changes() == []
    reader.video(100, AVC_SEQUENCE_HEADER)  # resent unchanged: no change
    assert reader.pop_changes() == []
    new_record = h264.build_avcc_record([SPS_1080], [PPS_1080])
    reader.video(200, tags.avc_sequence_header_body(new_record))
    (change,) = reader.pop_changes()
    assert change.previous is not None
    assert change.config.record == new_record
    assert reader.video_config.height == 1080
    units = reader.video(233, tags.avc_nalu_body([IDR], keyframe=True))
    assert units[0].data == START + SPS_1080 + START + PPS_1080 + START + IDR


def test_idr_gets_parameter_sets_and_aud_is_dropped() -> None:
    reader = reader_with_config()
    (unit,) = reader.video(1000, AVC_IDR)
    assert unit.kind is Kind.VIDEO
    assert unit.codec == "h264"
    assert (unit.dts, unit.pts, unit.keyframe) == (1000, 1066, True)
    assert unit.data == START + SPS + START + PPS + START + SEI + START + IDR
    (p,) = reader.video(1033, AVC_P_NEGATIVE_CTS)
    assert (p.dts, p.pts, p.keyframe, p.data) == (1033, 1000, False, START + SLICE)
    assert reader.has_b_frames


def test_idr_that_carries_parameter_sets_is_left_alone() -> None:
    reader = reader_with_config()
    body = tags.avc_nalu_body([SPS, PPS, IDR], keyframe=True)
    (unit,) = reader.video(0, body)
    assert unit.data == START + SPS + START + PPS + START + IDR
    assert not reader.has_b_frames
    assert reader.pop_changes()[2:] == []  # same in-band sets: no change


def test_inband_parameter_sets_change_the_config() -> None:
    reader = reader_with_config()
    reader.pop_changes()
    reader.video(0, tags.avc_nalu_body([SPS_1080, PPS_1080, IDR], keyframe=True))
    (change,) = reader.pop_changes()
    assert change.kind is Kind.VIDEO
    assert reader.video_config is not None
    assert reader.video_config.height == 1080


def test_keyframe_flag() -> None:
    reader = reader_with_config()
    # Frame type 1 on a non-IDR slice: not a keyframe for us (no IDR), no parameter sets.
    (unit,) = reader.video(0, tags.avc_nalu_body([SLICE], keyframe=True))
    assert not unit.keyframe
    assert unit.data == START + SLICE
    # IDR in a frame marked inter: still a keyframe.
    (unit,) = reader.video(33, tags.avc_nalu_body([IDR], keyframe=False))
    assert unit.keyframe
    # No VCL NAL at all: the FLV frame type decides.
    (unit,) = reader.video(66, tags.avc_nalu_body([SEI], keyframe=True))
    assert unit.keyframe
    assert reader.video(99, tags.avc_nalu_body([AUD], keyframe=False)) == []
    assert reader.video(99, tags.avc_nalu_body([], keyframe=False)) == []


@pytest.mark.parametrize(
    ("nals", "keyframe", "cts"),
    [
        ([AUD, SEI, IDR], True, 66),
        ([SLICE], False, -33),
        ([SPS, PPS, IDR], True, 0),
        ([SEI], True, 0),
        ([AUD, b"\x0c\xff\xff", SLICE], False, 0),  # filler data dropped too
        ([SLICE, SLICE], False, 0x7FFFFF),
    ],
)
def test_legacy_frames_read_in_place_equal_the_full_parse(
    nals: list[bytes], keyframe: bool, cts: int
) -> None:
    """Legacy AVC NAL unit bodies take a short path; Enhanced RTMP avc1 bodies carrying the
    same frame go through parse_video_tag: the units are the same, and their data is bytes."""
    legacy, enhanced = reader_with_config(), reader_with_config()
    body = tags.avc_nalu_body(nals, keyframe, cts)
    ex = tags.ex_video_body(
        "avc1",
        tags.VIDEO_CODED_FRAMES,
        h264.to_avcc(nals),
        tags.FRAME_KEY if keyframe else tags.FRAME_INTER,
        cts,
    )
    units = legacy.video(100, body)
    assert units == enhanced.video(100, ex)
    assert units
    assert all(type(u.data) is bytes for u in units)
    assert legacy.has_b_frames == enhanced.has_b_frames == (cts != 0)
    (audio,) = legacy.audio(120, AAC_FRAME)
    assert type(audio.data) is bytes


def test_frames_before_sequence_header_are_dropped() -> None:
    reader = TagReader()
    assert reader.video(0, AVC_IDR) == []
    assert reader.audio(0, AAC_FRAME) == []
    assert (reader.dropped_video, reader.dropped_audio) == (1, 1)


def test_length_size_from_record_and_annexb_fallback() -> None:
    reader = TagReader()
    reader.video(0, tags.avc_sequence_header_body(h264.build_avcc_record([SPS], [PPS], 2)))
    (unit,) = reader.video(0, bytes.fromhex("1701000000") + h264.to_avcc([IDR], 2))
    assert unit.data.endswith(START + IDR)
    (unit,) = reader.video(33, bytes.fromhex("2701000000") + START + SLICE)
    assert unit.data == START + SLICE
    with pytest.raises(MediaError, match="exceeds"):
        reader.video(66, bytes.fromhex("2701000000") + b"\x00\x09\x41")


def test_audio_units() -> None:
    reader = reader_with_config()
    (unit,) = reader.audio(23, AAC_FRAME)
    assert (unit.kind, unit.codec, unit.dts, unit.pts) == (Kind.AUDIO, "aac", 23, 23)
    assert unit.data == b"\x21\x10\x05"
    assert reader.audio(46, b"\xaf\x01") == []  # empty frame
    (ex,) = reader.audio(46, tags.ex_audio_body("mp4a", tags.AUDIO_CODED_FRAMES, b"xyz"))
    assert ex.data == b"xyz"
    reader.audio(50, tags.ex_audio_body("mp4a", tags.AUDIO_SEQUENCE_START, bytes.fromhex("1190")))
    assert reader.audio_config is not None
    assert reader.audio_config.sample_rate == 48000
    assert reader.audio(60, tags.ex_audio_body("mp4a", tags.AUDIO_SEQUENCE_END)) == []


def test_enhanced_avc1_is_carried() -> None:
    reader = TagReader()
    reader.video(0, tags.ex_video_body("avc1", tags.VIDEO_SEQUENCE_START, RECORD))
    assert reader.video_config is not None
    (unit,) = reader.video(
        40, tags.ex_video_body("avc1", tags.VIDEO_CODED_FRAMES, h264.to_avcc([IDR]), 1, 20)
    )
    assert (unit.dts, unit.pts, unit.keyframe) == (40, 60, True)
    (unit,) = reader.video(
        73, tags.ex_video_body("avc1", tags.VIDEO_CODED_FRAMES_X, h264.to_avcc([SLICE]), 2)
    )
    assert (unit.dts, unit.pts) == (73, 73)
    assert reader.video(80, tags.ex_video_body("avc1", tags.VIDEO_METADATA, b"\x02")) == []
    assert reader.video(80, tags.ex_video_body("avc1", tags.VIDEO_SEQUENCE_END)) == []
    assert reader.video_ended


def test_shared_timeline_and_rebase() -> None:
    timeline = Timeline(previous_end=5000)
    reader = TagReader(timeline)
    reader.video(0, AVC_SEQUENCE_HEADER)
    reader.audio(0, AAC_SEQUENCE_HEADER)
    (v,) = reader.video(100, AVC_IDR)
    (a,) = reader.audio(123, AAC_FRAME)
    assert (v.dts, v.pts, a.dts) == (5001, 5067, 5024)
    (v2,) = reader.receive(Kind.VIDEO, 2**32 + 133, AVC_P_NEGATIVE_CTS)
    assert v2.dts == 5034


def test_b_frames_reset_on_config_change() -> None:
    reader = reader_with_config()
    reader.video(0, AVC_IDR)
    assert reader.has_b_frames
    reader.video(10, tags.avc_sequence_header_body(h264.build_avcc_record([SPS_1080], [PPS_1080])))
    assert not reader.has_b_frames
    reader.video(20, tags.avc_nalu_body([IDR], keyframe=True))
    reader.video(53, tags.avc_nalu_body([SLICE], keyframe=False))
    assert not reader.has_b_frames


def test_command_frames_and_metadata_are_ignored() -> None:
    reader = TagReader()
    assert reader.video(0, b"\x57\x00") == []
    reader.on_metadata({"width": 1280.0, "videocodecid": 7.0})
    assert reader.metadata["width"] == 1280.0


def test_builders() -> None:
    assert tags.aac_sequence_header_body(ASC_44K) == AAC_SEQUENCE_HEADER
    assert tags.aac_frame_body(b"\x21\x10\x05") == AAC_FRAME
    reader = reader_with_config()
    assert reader.video_config is not None
    assert reader.audio_config is not None
    assert tags.video_config_body(reader.video_config) == AVC_SEQUENCE_HEADER
    assert tags.audio_config_body(reader.audio_config) == AAC_SEQUENCE_HEADER
    (unit,) = reader.video(0, AVC_IDR)
    again = TagReader()
    again.video(0, AVC_SEQUENCE_HEADER)
    assert again.video(0, tags.video_unit_body(unit)) == [unit]
    (audio,) = reader.audio(0, AAC_FRAME)
    assert tags.audio_unit_body(audio) == AAC_FRAME
    assert tags.legacy_audio_body(2, b"x") == b"\x2fx"
    assert tags.legacy_video_body(4, 2, b"y") == b"\x24y"
    with pytest.raises(MediaError, match="does not fit 24 bits"):
        tags.avc_nalu_body([IDR], True, 1 << 23)
    with pytest.raises(MediaError, match="not 4 bytes"):
        tags.ex_video_body("av1", 0)


# ------------------------------------------------------------------------------- fuzzing


@given(st.binary(max_size=64))
@settings(max_examples=400)
def test_parsers_only_raise_media_error(data: bytes) -> None:
    for parse in (tags.parse_video_tag, tags.parse_audio_tag):
        with contextlib.suppress(MediaError):
            parse(data)


HEADERS = st.sampled_from(
    [
        b"\x17\x00\x00\x00\x00",
        b"\x17\x01\x00\x00\x00",
        b"\x27\x01\xff\xff\xff",
        b"\x90avc1",
        b"\x91avc1",
        b"\x93avc1",
        b"\x97",
        b"\xaf\x00",
        b"\xaf\x01",
        b"\x90mp4a",
        b"\x91mp4a",
        b"",
    ]
)


@given(HEADERS, st.binary(max_size=80), st.integers(min_value=0, max_value=2**32 - 1))
@settings(max_examples=400)
def test_reader_only_raises_media_error(header: bytes, rest: bytes, timestamp: int) -> None:
    reader = reader_with_config()
    for handle in (reader.video, reader.audio):
        with contextlib.suppress(MediaError):
            handle(timestamp, header + rest)


@given(st.integers(min_value=0, max_value=len(AVC_SEQUENCE_HEADER) + 8))
def test_truncated_sequence_header_only_raises_media_error(cut: int) -> None:
    body = (AVC_SEQUENCE_HEADER + h264.to_avcc([IDR]))[:cut]
    with contextlib.suppress(MediaError):
        TagReader().video(0, body)
