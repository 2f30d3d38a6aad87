import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtmp.chunk import (
    MAX_CHUNK_STREAMS,
    MAX_MESSAGE_SIZE,
    MAX_PEER_CHUNK_SIZE,
    MAX_PENDING_BYTES,
    ChunkMessage,
    ChunkReader,
    ChunkWriter,
    basic_header,
)
from ingest.rtmp.error import RTMPError
from ingest.rtmp.messages import Abort, SetChunkSize


def read_whole(data: bytes) -> list[ChunkMessage]:
    return ChunkReader().feed(data)


def read_bytewise(data: bytes) -> list[ChunkMessage]:
    reader, out = ChunkReader(), list[ChunkMessage]()
    for i in range(len(data)):
        reader.feed(data[i : i + 1], out)
    return out


def read_both(data: bytes) -> list[ChunkMessage]:
    whole = read_whole(data)
    assert read_bytewise(data) == whole
    return whole


def stamps(msgs: list[ChunkMessage]) -> list[int]:
    return [m.timestamp for m in msgs]


def test_golden_type0_single_chunk() -> None:
    data = ChunkWriter().write(3, 20, 0, 0, b"abc")
    assert data == bytes.fromhex("03 000000 000003 14 00000000 616263")
    assert read_both(data) == [ChunkMessage(20, 0, 0, b"abc", 3)]


def test_golden_extended_timestamp_on_continuation() -> None:
    payload = bytes(range(128)) + b"yz"
    data = ChunkWriter().write(4, 9, 1, 0x01020304, payload)
    assert data == (
        bytes.fromhex("04 ffffff 000082 09 01000000 01020304")
        + payload[:128]
        + bytes.fromhex("c4 01020304")
        + b"yz"
    )
    assert read_both(data) == [ChunkMessage(9, 1, 0x01020304, payload, 4)]


@pytest.mark.parametrize("csid", [2, 3, 63, 64, 65, 319, 320, 1000, 65599])
def test_basic_header_sizes_round_trip(csid: int) -> None:
    header = basic_header(0, csid)
    assert len(header) == (1 if csid < 64 else 2 if csid < 320 else 3)
    data = ChunkWriter().write(csid, 8, 1, 7, b"\xaf\x01")
    assert read_both(data) == [ChunkMessage(8, 1, 7, b"\xaf\x01", csid)]


def test_three_byte_form_of_a_small_csid_is_accepted() -> None:
    data = bytes.fromhex("01 0001 000000 000001 08 01000000 aa")  # csid 64 + 256 = 320
    assert read_both(data) == [ChunkMessage(8, 1, 0, b"\xaa", 320)]
    data = bytes.fromhex("01 0000 000000 000001 08 01000000 aa")  # csid 64 in 3 bytes
    assert read_both(data)[0].chunk_stream_id == 64


def test_writer_chooses_header_types() -> None:
    w = ChunkWriter()
    firsts = [
        w.write(4, 9, 1, 0, b"v" * 10)[0] >> 6,  # new chunk stream: 0
        w.write(4, 9, 1, 40, b"v" * 10)[0] >> 6,  # same length/type, new delta: 2
        w.write(4, 9, 1, 80, b"v" * 10)[0] >> 6,  # same delta: 3
        w.write(4, 8, 1, 100, b"a" * 3)[0] >> 6,  # other type/length: 1
        w.write(4, 8, 2, 120, b"a" * 3)[0] >> 6,  # other message stream: 0
        w.write(4, 8, 2, 110, b"a" * 3)[0] >> 6,  # timestamp going back: 0
    ]
    assert firsts == [0, 2, 3, 1, 0, 0]


def test_type3_new_message_after_type2_repeats_delta() -> None:
    data = (
        bytes.fromhex("04 000000 000001 08 01000000 aa")  # ts 0
        + bytes.fromhex("84 000021 bb")  # type 2, delta 33
        + bytes.fromhex("c4 cc")  # type 3 new message: +33
        + bytes.fromhex("c4 dd")  # +33
    )
    msgs = read_both(data)
    assert stamps(msgs) == [0, 33, 66, 99]
    assert [m.payload for m in msgs] == [b"\xaa", b"\xbb", b"\xcc", b"\xdd"]


def test_type3_new_message_after_type0_uses_its_timestamp_as_delta() -> None:
    # RTMP spec 5.3.1.2.4: a type 3 may follow a type 0 if the delta equals the first timestamp.
    data = bytes.fromhex("04 000028 000001 08 01000000 aa c4 bb c4 cc")
    assert stamps(read_both(data)) == [40, 80, 120]


def test_extended_timestamps_on_all_header_types() -> None:
    w = ChunkWriter()
    big = 0x01000000
    payload = b"p" * 300  # three chunks each: continuation chunks carry the extended field
    data = (
        w.write(5, 9, 1, big, payload, fmt=0)
        + w.write(5, 8, 1, 2 * big, b"q" * 200, fmt=1)
        + w.write(5, 8, 1, 3 * big, b"r" * 200, fmt=2)
        + w.write(5, 8, 1, 4 * big, b"s" * 200, fmt=3)
    )
    # the type-3 header that begins the last message carries the 4 extra bytes
    type3 = bytes.fromhex("c5") + struct.pack(">I", big) + b"s" * 128
    assert type3 in data
    msgs = read_both(data)
    assert stamps(msgs) == [big, 2 * big, 3 * big, 4 * big]
    assert [m.payload for m in msgs] == [payload, b"q" * 200, b"r" * 200, b"s" * 200]


def test_extended_type3_continuation_after_type0() -> None:
    data = (
        bytes.fromhex("04 ffffff 000003 08 01000000 12345678 aa")
        + bytes.fromhex("c4 12345678 bb")
        + bytes.fromhex("c4 12345678 cc")
    )
    reader = ChunkReader()
    reader.feed(bytes.fromhex("02 000000 000004 01 00000000 00000001"))  # chunk size 1
    out = reader.feed(data)
    assert out == [ChunkMessage(8, 1, 0x12345678, b"\xaa\xbb\xcc", 4)]


def test_crossing_0xffffff() -> None:
    w = ChunkWriter()
    times = [0xFFFFFD, 0xFFFFFE, 0xFFFFFF, 0x1000000, 0x1000021, 0x1000042]
    data = b"".join(w.write(4, 9, 1, t, b"v" * 200) for t in times)
    assert stamps(read_both(data)) == times
    # exactly 0xFFFFFF is written as an extended timestamp (the marker value cannot be literal)
    data = ChunkWriter().write(4, 9, 1, 0xFFFFFF, b"v")
    assert data[1:4] == b"\xff\xff\xff"
    assert data[12:16] == b"\x00\xff\xff\xff"


def test_delta_of_exactly_0xffffff_is_extended() -> None:
    w = ChunkWriter()
    data = w.write(4, 9, 1, 5, b"v") + w.write(4, 9, 1, 5 + 0xFFFFFF, b"v")
    assert data[13:21] == bytes.fromhex("84 ffffff 00ffffff")
    assert stamps(read_both(data)) == [5, 5 + 0xFFFFFF]


def test_wrap_at_2_pow_32() -> None:
    w = ChunkWriter()
    start = 2**32 - 100
    times = [start + 33 * i for i in range(8)]  # crosses 2**32 (4.66 h)
    data = w.write(4, 9, 1, times[0], b"v" * 300)
    data += b"".join(w.write(4, 9, 1, t, b"v" * 300, fmt=2) for t in times[1:])
    assert stamps(read_both(data)) == [t % 2**32 for t in times]
    # a writer left to choose sends a type 0 after the wrap; the result is the same
    w = ChunkWriter()
    data = b"".join(w.write(4, 9, 1, t, b"v" * 300) for t in times)
    assert stamps(read_both(data)) == [t % 2**32 for t in times]


def test_type3_delta_wraps_too() -> None:
    data = bytes.fromhex("04 ffffff 000001 08 01000000 fffffff0 aa 84 000010 bb c4 cc")
    assert stamps(read_both(data)) == [0xFFFFFFF0, 0, 16]


def test_set_chunk_size_applies_to_following_chunks() -> None:
    w = ChunkWriter()
    data = w.write(2, 1, 0, 0, bytes(SetChunkSize(4096)))
    w.chunk_size = 4096
    payload = bytes(range(256)) * 15
    data += w.write(4, 9, 1, 0, payload)
    assert data.count(b"\xc4") == payload.count(b"\xc4")  # a single chunk: no continuation header
    reader = ChunkReader()
    msgs = reader.feed(data)
    assert reader.chunk_size == 4096
    assert msgs[1].payload == payload
    assert read_bytewise(data) == msgs


@pytest.mark.parametrize("size", [1, 7, 128, 4096, MAX_PEER_CHUNK_SIZE])
def test_any_chunk_size_both_ways(size: int) -> None:
    w = ChunkWriter()
    data = w.write(2, 1, 0, 0, bytes(SetChunkSize(size)))
    w.chunk_size = size
    payload = bytes(range(256)) * 300
    data += w.write(4, 9, 1, 1, payload) + w.write(4, 9, 1, 2, payload[:1000])
    msgs = read_whole(data)
    assert [m.payload for m in msgs[1:]] == [payload, payload[:1000]]


def test_abort_discards_the_partial_message() -> None:
    w = ChunkWriter()
    first = w.write(4, 9, 1, 0, b"x" * 300)
    partial = first[: 12 + 128]  # header + first chunk only
    abort = ChunkWriter().write(2, 2, 0, 0, bytes(Abort(4)))
    w2 = ChunkWriter()
    w2.write(4, 9, 1, 0, b"x" * 300)  # keep the writer's header state in step
    after = w2.write(4, 9, 1, 40, b"y" * 10)
    reader = ChunkReader()
    msgs = reader.feed(partial)
    assert reader.pending == 300
    msgs = reader.feed(abort + after)
    assert reader.pending == 0
    assert [(m.type_id, m.payload) for m in msgs] == [(2, bytes(Abort(4))), (9, b"y" * 10)]


def test_new_header_while_message_incomplete_is_an_error() -> None:
    w = ChunkWriter()
    partial = w.write(4, 9, 1, 0, b"x" * 300)[: 12 + 128]
    with pytest.raises(RTMPError, match="type-0 header while a 300-byte message still misses 172"):
        read_whole(partial + ChunkWriter().write(4, 9, 1, 0, b"z"))


@pytest.mark.parametrize("first", ["44 000000 000001 08 aa", "84 000000 aa", "c4 aa"])
def test_chunk_stream_must_start_with_type0(first: str) -> None:
    with pytest.raises(RTMPError, match=r"chunk stream 4 starts with a type-[123] header"):
        read_whole(bytes.fromhex(first))


def test_errors_are_sticky_and_keep_earlier_messages() -> None:
    reader, out = ChunkReader(), list[ChunkMessage]()
    good = ChunkWriter().write(3, 20, 0, 0, b"abc")
    with pytest.raises(RTMPError):
        reader.feed(good + bytes.fromhex("c9"), out)
    assert out == [ChunkMessage(20, 0, 0, b"abc", 3)]
    with pytest.raises(RTMPError):
        reader.feed(good)


# -- limits ----------------------------------------------------------------------------------


def test_limit_peer_chunk_size() -> None:
    ok = bytes(SetChunkSize(MAX_PEER_CHUNK_SIZE))
    read_whole(ChunkWriter().write(2, 1, 0, 0, ok))
    with pytest.raises(
        RTMPError, match=f"Set Chunk Size 65537 exceeds the limit of {MAX_PEER_CHUNK_SIZE}"
    ):
        read_whole(ChunkWriter().write(2, 1, 0, 0, bytes(SetChunkSize(MAX_PEER_CHUNK_SIZE + 1))))
    with pytest.raises(RTMPError, match="Set Chunk Size 0 is invalid"):
        read_whole(ChunkWriter().write(2, 1, 0, 0, bytes(SetChunkSize(0))))


def test_limit_message_size_before_buffering() -> None:
    header = bytes.fromhex("04 000000") + (MAX_MESSAGE_SIZE + 1).to_bytes(3, "big") + b"\x09"
    header += bytes(4)
    reader = ChunkReader()
    with pytest.raises(
        RTMPError, match=f"message of {MAX_MESSAGE_SIZE + 1} bytes exceeds the limit"
    ):
        reader.feed(header)  # no payload byte sent yet
    # exactly the limit is fine
    header = bytes.fromhex("04 000000") + MAX_MESSAGE_SIZE.to_bytes(3, "big") + b"\x09" + bytes(4)
    ChunkReader().feed(header)


def test_limit_chunk_streams() -> None:
    w = ChunkWriter()
    data = b"".join(w.write(csid, 8, 1, 0, b"a") for csid in range(2, 2 + MAX_CHUNK_STREAMS))
    assert len(read_whole(data)) == MAX_CHUNK_STREAMS
    data += w.write(2 + MAX_CHUNK_STREAMS, 8, 1, 0, b"a")
    with pytest.raises(RTMPError, match=f"limit is {MAX_CHUNK_STREAMS}"):
        read_whole(data)


def test_limit_pending_bytes() -> None:
    w = ChunkWriter()
    per = MAX_MESSAGE_SIZE
    count = MAX_PENDING_BYTES // per
    # first chunks of `count` big messages are accepted; one more would exceed the limit
    data = b"".join(w.write(4 + i, 9, 1, 0, bytes(per))[: 12 + 128] for i in range(count))
    reader = ChunkReader()
    reader.feed(data)
    assert reader.pending == count * per
    with pytest.raises(RTMPError, match=f"limit {MAX_PENDING_BYTES}"):
        reader.feed(w.write(4 + count, 9, 1, 0, bytes(200)))


def test_buffered_input_is_bounded() -> None:
    reader = ChunkReader()
    reader.feed(ChunkWriter().write(2, 1, 0, 0, bytes(SetChunkSize(MAX_PEER_CHUNK_SIZE))))
    header = bytes.fromhex("04 000000") + MAX_MESSAGE_SIZE.to_bytes(3, "big") + b"\x09" + bytes(4)
    reader.feed(header)
    for _ in range(200):  # 200 * 1000 bytes of one message: consumed chunk by chunk
        reader.feed(bytes(1000))
        assert reader.buffered <= MAX_PEER_CHUNK_SIZE + 18


# -- properties ------------------------------------------------------------------------------

_csids = st.sampled_from([2, 3, 4, 5, 6, 8, 63, 64, 100, 319, 320, 5000, 65599])
_messages = st.lists(
    st.tuples(
        _csids,
        st.sampled_from([8, 9, 18, 20]),
        st.integers(0, 3),
        st.one_of(st.integers(0, 100), st.integers(0, 2**32 - 1)),
        st.integers(0, 700),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(_messages, st.integers(1, 300), st.data())
def test_writer_reader_round_trip_whole_and_split(
    spec: list[tuple[int, int, int, int, int]], chunk_size: int, data: st.DataObject
) -> None:
    w = ChunkWriter()
    stream = w.write(2, 1, 0, 0, bytes(SetChunkSize(chunk_size)))
    w.chunk_size = chunk_size
    expected = []
    ts_by_csid: dict[int, int] = {}
    for i, (csid, type_id, sid, step, size) in enumerate(spec):
        ts = (ts_by_csid.get(csid, 0) + step) % 2**32
        ts_by_csid[csid] = ts
        payload = bytes((i + k) % 256 for k in range(size))
        stream += w.write(csid, type_id, sid, ts, payload)
        expected.append(ChunkMessage(type_id, sid, ts, payload, csid))
    whole = read_whole(stream)[1:]
    assert whole == expected
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    reader, out = ChunkReader(), list[ChunkMessage]()
    prev = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[prev:cut], out)
        prev = cut
    assert out[1:] == expected


@settings(max_examples=150, deadline=None)
@given(_messages, st.integers(1, 300), st.data())
def test_views_of_a_reused_buffer_read_like_bytes(
    spec: list[tuple[int, int, int, int, int]], chunk_size: int, data: st.DataObject
) -> None:
    """The server feeds views of its one read buffer, overwritten by the next read: what the
    reader keeps (partial chunks, messages in progress) must be copies."""
    w = ChunkWriter()
    stream = w.write(2, 1, 0, 0, bytes(SetChunkSize(chunk_size)))
    w.chunk_size = chunk_size
    for i, (csid, type_id, sid, step, size) in enumerate(spec):
        stream += w.write(csid, type_id, sid, step, bytes((i + k) % 256 for k in range(size)))
    expected = read_whole(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    shared = bytearray(len(stream))
    reader, out = ChunkReader(), list[ChunkMessage]()
    prev = 0
    for cut in [*cuts, len(stream)]:
        n = cut - prev
        shared[:n] = stream[prev:cut]
        reader.feed(memoryview(shared)[:n], out)
        shared[:] = b"\xee" * len(shared)  # the next read overwrites the buffer
        prev = cut
    assert out == expected
    assert all(type(m.payload) is bytes for m in out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_whole_equals_bytewise(data: bytes) -> None:
    def run(feed_bytewise: bool) -> tuple[list[ChunkMessage], str | None]:
        reader, out = ChunkReader(), list[ChunkMessage]()
        try:
            if feed_bytewise:
                for i in range(len(data)):
                    reader.feed(data[i : i + 1], out)
            else:
                reader.feed(data, out)
        except RTMPError as e:
            return out, str(e)
        return out, None

    assert run(False) == run(True)
