import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtmp import amf0
from ingest.rtmp.amf0 import (
    MAX_AMF_DEPTH,
    UNDEFINED,
    UNSUPPORTED,
    Date,
    ECMAArray,
    TypedObject,
    XMLDocument,
)
from ingest.rtmp.error import RTMPError

GOLDEN: list[tuple[object, str]] = [
    (1.5, "00 3ff8000000000000"),
    (True, "01 01"),
    (False, "01 00"),
    ("ab", "02 0002 6162"),
    ("", "02 0000"),
    ({"a": 1.0}, "03 0001 61 00 3ff0000000000000 000009"),
    ({}, "03 000009"),
    (None, "05"),
    (UNDEFINED, "06"),
    (ECMAArray({"w": 2.0}), "08 00000001 0001 77 00 4000000000000000 000009"),
    ([1.0, "x"], "0a 00000002 00 3ff0000000000000 02 0001 78"),
    ([], "0a 00000000"),
    (Date(1000.0, 0), "0b 408f400000000000 0000"),
    (UNSUPPORTED, "0d"),
    (XMLDocument("<a/>"), "0f 00000004 3c612f3e"),
    (TypedObject("C", {"k": None}), "10 0001 43 0001 6b 05 000009"),
]


@pytest.mark.parametrize(("value", "hexdata"), GOLDEN)
def test_golden_round_trip(value: object, hexdata: str) -> None:
    data = bytes.fromhex(hexdata)
    assert amf0.encode(value) == data
    decoded, end = amf0.decode(data)
    assert end == len(data)
    assert decoded == value
    assert type(decoded) is type(value)


def test_long_string_round_trip() -> None:
    text = "é" * 40000  # 80000 bytes: needs the 32-bit length
    data = amf0.encode(text)
    assert data[0] == amf0.LONG_STRING
    assert struct.unpack(">I", data[1:5])[0] == 80000
    assert amf0.decode(data) == (text, len(data))
    short_long = bytes.fromhex("0c 00000002 6869")
    assert amf0.decode(short_long) == ("hi", 7)


def test_int_encodes_as_number() -> None:
    assert amf0.encode(3) == amf0.encode(3.0)


def test_reference_resolves_and_round_trips() -> None:
    inner = {"x": 1.0}
    value = [inner, inner]
    data = amf0.encode(value)
    # strict array (ref 0), object (ref 1), then a reference to index 1
    assert data.endswith(bytes.fromhex("07 0001"))
    decoded, _ = amf0.decode(data)
    assert isinstance(decoded, list)
    assert decoded[0] is decoded[1]
    assert amf0.encode(decoded) == data


def test_cyclic_reference() -> None:
    obj: dict[str, object] = {}
    obj["self"] = obj
    data = amf0.encode(obj)
    decoded, _ = amf0.decode(data)
    assert isinstance(decoded, dict)
    assert decoded["self"] is decoded


def test_ecma_array_count_is_only_a_hint() -> None:
    data = bytes.fromhex("08 00000000 0001 61 05 000009")  # count 0, one property
    assert amf0.decode(data)[0] == {"a": None}


def test_decode_all_shares_references() -> None:
    data = amf0.encode_all(["name", 1.0, {"k": "v"}])
    assert amf0.decode_all(data) == ["name", 1.0, {"k": "v"}]


@pytest.mark.parametrize(
    ("hexdata", "message"),
    [
        ("12", "unknown AMF0 type marker 0x12 at offset 0"),
        ("ff", "unknown AMF0 type marker 0xff"),
        ("04", "movieclip"),
        ("0e", "recordset"),
        ("11 02", "AMF3"),
        ("09", "object-end marker"),
        ("00 3ff0", "number at offset 1 needs 8 bytes, only 2 left"),
        ("02 0005 6162", "string at offset 3 needs 5 bytes"),
        ("02 00", "string length"),
        ("03 0001 61", "AMF0 value expected at offset 4"),
        ("03 0001 61 05", "property name or object end"),
        ("07 0000", "reference at offset 0 points to object 0, but only 0 were seen"),
        ("0a ffffffff 05", "announces 4294967295 elements"),
        ("02 0002 c328", "not valid UTF-8"),
        ("0b 00", "date"),
        ("", "data ends"),
    ],
)
def test_malformed_raises_precise_error(hexdata: str, message: str) -> None:
    with pytest.raises(RTMPError, match=message.replace("(", r"\(")):
        amf0.decode(bytes.fromhex(hexdata))


def test_depth_limit_enforced() -> None:
    ok = "0a00000001" * (MAX_AMF_DEPTH - 1) + "05"
    amf0.decode(bytes.fromhex(ok))
    deep = "0a00000001" * (MAX_AMF_DEPTH + 1) + "05"
    with pytest.raises(RTMPError, match=f"deeper than {MAX_AMF_DEPTH}"):
        amf0.decode(bytes.fromhex(deep))
    nested: list[object] = []
    for _ in range(MAX_AMF_DEPTH + 1):
        nested = [nested]
    with pytest.raises(ValueError, match="deeper"):
        amf0.encode(nested)


def test_encode_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        amf0.encode(object())
    with pytest.raises(TypeError):
        amf0.encode({1: 2})


_scalars = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([UNDEFINED, UNSUPPORTED])
    | st.builds(Date, st.floats(allow_nan=False), st.integers(-32768, 32767))
    | st.text(max_size=10).map(XMLDocument)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4).map(ECMAArray)
        | st.builds(
            TypedObject, st.text(max_size=8), st.dictionaries(st.text(max_size=8), children)
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_property_round_trip(value: object) -> None:
    data = amf0.encode(value)
    decoded, end = amf0.decode(data)
    assert end == len(data)
    assert decoded == value
    assert amf0.encode(decoded) == data


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_rtmp_error(data: bytes) -> None:
    try:
        values = amf0.decode_all(data)
    except RTMPError:
        return
    for v in values:
        if isinstance(v, float) and math.isnan(v):
            continue
        amf0.encode(v)
