"""The FLV container: header, tags, extended timestamps, truncation."""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import MediaError
from ingest.flv import file as flv
from ingest.flv.tags import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO
from ingest.media.units import Kind


def test_header_golden() -> None:
    assert bytes(flv.FlvHeader()) == b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
    assert bytes(flv.FlvHeader(has_audio=False))[4] == 1
    header, offset = flv.parse_header(bytes(flv.FlvHeader(has_video=False)))
    assert (header.has_audio, header.has_video, offset) == (True, False, 13)


def test_tag_golden_with_extended_timestamp() -> None:
    tag = flv.tag_bytes(TAG_VIDEO, 0x12345678, b"abc")
    assert tag == (
        b"\x09\x00\x00\x03" + b"\x34\x56\x78\x12" + b"\x00\x00\x00" + b"abc" + struct.pack(">I", 14)
    )


def test_round_trip(tmp_path: Path) -> None:
    writer = flv.FlvWriter()
    writer.write_metadata({"width": 640, "height": 360, "encoder": "test", "stereo": True})
    writer.write(Kind.VIDEO, 0, b"\x17\x00\x00\x00\x00")
    writer.write(Kind.AUDIO, 2**31 + 5, b"\xaf\x01x")
    writer.write(TAG_VIDEO, 2**32 - 1, b"\x27\x01\x00\x00\x00")
    data = writer.getvalue()
    parsed = flv.read_flv(data)
    assert [(t.type, t.timestamp) for t in parsed] == [
        (TAG_SCRIPT, 0),
        (TAG_VIDEO, 0),
        (TAG_AUDIO, 2**31 + 5),
        (TAG_VIDEO, 2**32 - 1),
    ]
    assert [t.kind for t in parsed] == [None, Kind.VIDEO, Kind.AUDIO, Kind.VIDEO]
    assert parsed[0].body.startswith(b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x04")
    assert parsed[0].body.endswith(b"\x00\x00\x09")
    assert b"".join(bytes(t) for t in parsed) == data[13:]
    path = tmp_path / "x.flv"
    path.write_bytes(data)
    assert flv.read_flv(str(path)) == parsed
    assert flv.read_flv(io.BytesIO(data)) == parsed
    assert flv.write_flv([(t.type, t.timestamp, t.body) for t in parsed]) == data


@given(
    st.lists(
        st.tuples(
            st.sampled_from([Kind.AUDIO, Kind.VIDEO]),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=40),
        ),
        max_size=20,
    )
)
def test_round_trip_property(tags: list[tuple[Kind, int, bytes]]) -> None:
    parsed = flv.read_flv(flv.write_flv(tags))
    assert [(t.kind, t.timestamp, t.body) for t in parsed] == tags


def test_errors() -> None:
    good = flv.write_flv([(Kind.VIDEO, 0, b"abcdef")])
    with pytest.raises(MediaError, match="not an FLV file"):
        flv.read_flv(b"FLX" + good[3:])
    with pytest.raises(MediaError, match="FLV header is truncated"):
        flv.read_flv(good[:5])
    with pytest.raises(MediaError, match="header size 3"):
        flv.read_flv(good[:5] + b"\x00\x00\x00\x03" + good[9:])
    with pytest.raises(MediaError, match="tag header at offset 13 is truncated"):
        flv.read_flv(good[:20])
    with pytest.raises(MediaError, match="body of 6 bytes, 2 left"):
        flv.read_flv(good[:26])
    with pytest.raises(MediaError, match="encrypted"):
        flv.read_flv(good[:13] + b"\x29" + good[14:])
    with pytest.raises(MediaError, match="exceeds"):
        flv.tag_bytes(TAG_VIDEO, 0, bytes(1 << 24))


@given(st.binary(max_size=80))
def test_reader_only_raises_media_error(data: bytes) -> None:
    with contextlib.suppress(MediaError):
        flv.read_flv(b"FLV\x01\x05\x00\x00\x00\x09" + data)
