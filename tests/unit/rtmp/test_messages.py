import pytest

from ingest.rtmp.amf0 import ECMAArray
from ingest.rtmp.error import RTMPError
from ingest.rtmp.messages import (
    Abort,
    Acknowledgement,
    Aggregate,
    AggregatePart,
    Audio,
    CommandMessage,
    DataMessage,
    MessageType,
    SetChunkSize,
    SetPeerBandwidth,
    UserControl,
    UserControlEvent,
    Video,
    WindowAckSize,
    parse_message,
)

GOLDEN = [
    (SetChunkSize(4096), "00001000"),
    (Abort(5), "00000005"),
    (Acknowledgement(123456), "0001e240"),
    (UserControl.stream_begin(1), "0000 00000001"),
    (UserControl.ping_request(77), "0006 0000004d"),
    (UserControl.ping_response(77), "0007 0000004d"),
    (UserControl(UserControlEvent.SET_BUFFER_LENGTH, 1, 3000), "0003 00000001 00000bb8"),
    (WindowAckSize(2_500_000), "002625a0"),
    (SetPeerBandwidth(2_500_000, 2), "002625a0 02"),
    (Audio(b"\xaf\x01xyz"), "af01 78797a"),
    (Video(b"\x17\x01"), "1701"),
    (
        CommandMessage("connect", 1.0, {"app": "live"}),
        "02 0007 636f6e6e656374 00 3ff0000000000000 03 0003 617070 02 0004 6c697665 000009",
    ),
    (
        CommandMessage("x", 0.0, None, ["k"], amf3=True),
        "00 02 0001 78 00 0000000000000000 05 02 0001 6b",
    ),
    (
        DataMessage(["onMetaData", ECMAArray({"w": 1.0})]),
        "02 000a 6f6e4d65746144617461 08 00000001 0001 77 00 3ff0000000000000 000009",
    ),
]


@pytest.mark.parametrize(("message", "hexdata"), GOLDEN)
def test_golden_round_trip(message: object, hexdata: str) -> None:
    data = bytes.fromhex(hexdata)
    assert bytes(message) == data  # type: ignore[call-overload]
    type_id = message.type_id  # type: ignore[attr-defined]
    assert parse_message(type_id, data) == message


def test_set_chunk_size_ignores_high_bit() -> None:
    assert SetChunkSize.parse(bytes.fromhex("80000080")).chunk_size == 128


@pytest.mark.parametrize(
    ("type_id", "hexdata", "message"),
    [
        (MessageType.SET_CHUNK_SIZE, "0000", "Set Chunk Size message needs 4 bytes, got 2"),
        (MessageType.USER_CONTROL, "00", "at least 2 bytes"),
        (MessageType.USER_CONTROL, "0006 00", "event 6 needs 6 bytes"),
        (MessageType.USER_CONTROL, "0003 00000001", "Set Buffer Length event needs 10 bytes"),
        (MessageType.SET_PEER_BANDWIDTH, "00000001", "needs 5 bytes"),
        (MessageType.COMMAND_AMF0, "05", "must start with a string name, got NoneType"),
        (MessageType.COMMAND_AMF0, "", "got nothing"),
        (MessageType.COMMAND_AMF0, "02 0001 78 02 0001 78", "transaction id must be a number"),
        (MessageType.COMMAND_AMF3, "11 0a", "AMF3 command message starts with 0x11"),
        (MessageType.DATA_AMF3, "", "AMF3 data message starts with nothing"),
        (MessageType.AGGREGATE, "0900", "sub-tag header at offset 0 needs 11 bytes, 2 left"),
        (MessageType.AGGREGATE, "09 000010 000000 00 000000 00", "announces 16 bytes"),
    ],
)
def test_malformed_raises(type_id: int, hexdata: str, message: str) -> None:
    with pytest.raises(RTMPError, match=message):
        parse_message(type_id, bytes.fromhex(hexdata))


def test_unknown_user_control_event_is_kept() -> None:
    assert UserControl.parse(bytes.fromhex("0020")) == UserControl(0x20)


def test_command_defaults_when_fields_are_missing() -> None:
    cmd = CommandMessage.parse(bytes.fromhex("02 0001 78"))
    assert (cmd.name, cmd.transaction_id, cmd.command_object, cmd.arguments) == ("x", 0.0, None, [])


def test_unhandled_types_parse_to_none() -> None:
    assert parse_message(MessageType.SHARED_OBJECT_AMF0, b"\x00") is None


def test_aggregate_round_trip_and_timestamps() -> None:
    agg = Aggregate(
        (
            AggregatePart(9, 1000, b"\x17\x00v1", 0),
            AggregatePart(8, 1010, b"\xaf\x01a", 0),
            AggregatePart(9, 1033, b"\x27\x01v2", 0),
        )
    )
    data = bytes(agg)
    # the first tag: type 9, size 4, ts 1000, stream 0, body, back pointer 15
    assert data[:19] == bytes.fromhex("09 000004 0003e8 00 000000 17007631 0000000f")
    assert Aggregate.parse(data) == agg
    assert agg.timed(50_000) == [
        (9, 50_000, b"\x17\x00v1"),
        (8, 50_010, b"\xaf\x01a"),
        (9, 50_033, b"\x27\x01v2"),
    ]


def test_aggregate_extended_sub_timestamp_and_wrap() -> None:
    agg = Aggregate((AggregatePart(8, 0x01000000, b"a"), AggregatePart(8, 0x01000010, b"b")))
    parsed = Aggregate.parse(bytes(agg))
    assert parsed.parts[1].timestamp == 0x01000010
    assert parsed.timed(0xFFFFFFF8) == [(8, 0xFFFFFFF8, b"a"), (8, 0x8, b"b")]
