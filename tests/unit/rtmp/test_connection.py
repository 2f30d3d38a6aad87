import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.rtmp.chunk import ChunkWriter
from ingest.rtmp.connection import (
    MAX_APP_LENGTH,
    MAX_BACKLOG_BYTES,
    MAX_MESSAGE_STREAMS,
    MAX_STREAM_KEY_LENGTH,
    AudioReceived,
    ConnectRequested,
    Event,
    MetadataReceived,
    PublishRequested,
    ServerConnection,
    UnpublishRequested,
    VideoReceived,
)
from ingest.rtmp.error import RTMPError
from ingest.rtmp.handshake import HANDSHAKE_SIZE
from ingest.rtmp.messages import (
    Acknowledgement,
    Aggregate,
    AggregatePart,
    CommandMessage,
    MessageType,
    UserControl,
    UserControlEvent,
    WindowAckSize,
)

from .client import Client, publishing_pair, pump


def drain(server: ServerConnection) -> list[Event]:
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    return events


def test_handshake_then_connect_reply() -> None:
    client, server = Client(), ServerConnection()
    pump(client, server)
    assert server.handshake_complete
    assert client.s0s1s2[1 + HANDSHAKE_SIZE :] == client.c1
    txn = client.connect("live?token=1", "rtmp://h/live")
    events = pump(client, server)
    props: dict[str, object] = {
        "app": "live?token=1",
        "type": "nonprivate",
        "flashVer": "FMLE/3.0",
        "tcUrl": "rtmp://h/live",
    }
    assert events == [ConnectRequested("live", "rtmp://h/live", "FMLE/3.0", 0.0, props)]
    kinds = [(m.type_id, m.chunk_stream_id) for m in client.received]
    assert kinds[:4] == [(5, 2), (6, 2), (1, 2), (4, 2)]
    assert client.reader.chunk_size == 4096  # the server's Set Chunk Size applied on our side
    assert UserControl.parse(client.received[3].payload) == UserControl.stream_begin(0)
    result = client.commands()[0]
    assert result.name == "_result"
    assert result.transaction_id == txn
    assert result.command_object == {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0}
    info = result.arguments[0]
    assert isinstance(info, dict)
    assert info["code"] == "NetConnection.Connect.Success"
    assert info["objectEncoding"] == 0.0


def test_digest_handshake_client() -> None:
    client, server = Client(digest=True), ServerConnection()
    pump(client, server)
    assert server.handshake_complete
    assert client.s0s1s2[5:9] != bytes(4)


def test_publish_flow() -> None:
    client, server = Client(), ServerConnection()
    pump(client, server)
    client.connect("app/")
    client.command("releaseStream", "key")
    client.command("FCPublish", "key")
    client.command("createStream")
    pump(client, server)
    names = [(c.name, c.transaction_id) for c in client.commands()]
    assert names == [("_result", 1.0), ("_result", 2.0), ("onFCPublish", 0.0), ("_result", 4.0)]
    assert client.commands()[-1].arguments == [1.0]
    client.publish(1, "the-key?x=1")
    events = pump(client, server)
    assert events == [PublishRequested(1, "app", "the-key", "live", 5.0)]
    assert "the-key" not in repr(events[0])
    assert server.data_to_send() == b""  # nothing answered until the application decides
    server.accept_publish(1)
    pump(client, server)
    status = client.commands()[-1]
    assert status.name == "onStatus"
    assert status.arguments[0]["code"] == "NetStream.Publish.Start"  # type: ignore[index]
    assert client.received[-2].type_id == MessageType.USER_CONTROL
    assert UserControl.parse(client.received[-2].payload) == UserControl.stream_begin(1)
    client.metadata(1, {"width": 320.0})
    client.video(1, 0, b"\x17\x00vid")
    client.audio(1, 0, b"\xaf\x00")
    client.video(1, 33, b"\x27\x01" + bytes(5000))
    client.audio(1, 23, b"\xaf\x01aud")
    events = pump(client, server)
    assert events == [
        MetadataReceived(1, {"width": 320.0}),
        VideoReceived(1, 0, b"\x17\x00vid"),
        AudioReceived(1, 0, b"\xaf\x00"),
        VideoReceived(1, 33, b"\x27\x01" + bytes(5000)),
        AudioReceived(1, 23, b"\xaf\x01aud"),
    ]
    assert server.publishing == frozenset({1})
    client.command("FCUnpublish", "the-key")
    client.command("deleteStream", 1.0)
    assert pump(client, server) == [UnpublishRequested(1)]
    assert server.publishing == frozenset()


def test_media_pipelined_behind_publish_waits_for_the_decision() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    client.command("createStream")
    client.publish(1, "k")
    client.video(1, 0, b"v")
    events = pump(client, server)
    assert events[-1] == PublishRequested(1, "live", "k", "live", 3.0)
    server.accept_publish(1)
    assert drain(server) == [VideoReceived(1, 0, b"v")]


def test_backlog_limit() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    client.command("createStream")
    client.publish(1, "k")
    pump(client, server)
    chunk = bytes(16 * 1024)  # each message is small enough for an unauthenticated peer
    for ts in range(MAX_BACKLOG_BYTES // len(chunk) + 1):
        client.video(1, ts, chunk)
    pump(client, server)
    with pytest.raises(RTMPError, match=f"limit is {MAX_BACKLOG_BYTES}"):
        server.next_event()


def test_reject_publish() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    client.command("createStream")
    client.publish(1, "k")
    pump(client, server)
    server.reject_publish(1, "NetStream.Publish.Unauthorized", "token expired")
    pump(client, server)
    status = client.commands()[-1]
    assert status.name == "onStatus"
    assert status.arguments[0] == {
        "level": "error",
        "code": "NetStream.Publish.Unauthorized",
        "description": "token expired",
    }
    with pytest.raises(ValueError, match="no publish awaiting"):
        server.accept_publish(1)


def test_media_before_accept_is_a_protocol_error() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    client.command("createStream")
    client.audio(1, 0, b"a")
    events = pump(client, server)
    assert isinstance(events[0], ConnectRequested)
    with pytest.raises(RTMPError, match="audio message on message stream 1 before its publish"):
        server.next_event()
    with pytest.raises(RTMPError):  # sticky
        server.next_event()
    server.receive_data(b"more")  # ignored after the error


def test_media_on_unknown_stream() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    client.video(7, 0, b"v")
    pump(client, server)
    with pytest.raises(
        RTMPError, match="video message on message stream 7 which was never created"
    ):
        server.next_event()


def test_acknowledgement_after_window() -> None:
    client, server, _ = publishing_pair()
    client.send(2, MessageType.WINDOW_ACK_SIZE, 0, 0, bytes(WindowAckSize(5000)))
    pump(client, server)
    before = server.bytes_received
    acks = [m for m in client.received if m.type_id == MessageType.ACKNOWLEDGEMENT]
    assert acks == []
    client.video(1, 0, bytes(3000))
    pump(client, server)
    assert not [m for m in client.received if m.type_id == MessageType.ACKNOWLEDGEMENT]
    client.video(1, 40, bytes(3000))
    pump(client, server)
    acks = [m for m in client.received if m.type_id == MessageType.ACKNOWLEDGEMENT]
    assert len(acks) == 1
    assert Acknowledgement.parse(acks[0].payload).sequence_number == server.bytes_received
    assert server.bytes_received - before >= 5000


def test_ping_request_gets_a_response() -> None:
    client, server, _ = publishing_pair()
    client.send(2, MessageType.USER_CONTROL, 0, 0, bytes(UserControl.ping_request(123456)))
    pump(client, server)
    last = client.received[-1]
    assert UserControl.parse(last.payload) == UserControl(UserControlEvent.PING_RESPONSE, 123456)


def test_unknown_commands_are_never_fatal() -> None:
    client, server, _ = publishing_pair()
    txn = client.command("someVendorThing", {"a": 1.0})
    client.command("onNothing")  # no transaction id... this one has one; send a zero-txn below
    client.send(3, 20, 0, 0, bytes(CommandMessage("notify", 0.0)))
    client.command("play", "x", stream_id=1)
    client.command("getStreamLength", "x")
    client.video(1, 0, b"v")
    events = pump(client, server)
    assert events == [VideoReceived(1, 0, b"v")]
    replies = [(c.name, c.transaction_id) for c in client.commands()[-4:]]
    assert replies == [
        ("_error", txn),
        ("_error", txn + 1),
        ("onStatus", 0.0),
        ("_result", txn + 3),
    ]


def test_amf3_command_is_parsed() -> None:
    client, server = Client(), ServerConnection()
    pump(client, server)
    payload = bytes(CommandMessage("connect", 1.0, {"app": "live"}, amf3=True))
    client.send(3, MessageType.COMMAND_AMF3, 0, 0, payload)
    events = pump(client, server)
    assert isinstance(events[0], ConnectRequested)
    assert events[0].app == "live"


def test_aggregate_is_split() -> None:
    client, server, sid = publishing_pair()
    agg = Aggregate(
        (AggregatePart(9, 500, b"v1"), AggregatePart(8, 510, b"a1"), AggregatePart(9, 533, b"v2"))
    )
    client.send(4, MessageType.AGGREGATE, sid, 10_000, bytes(agg))
    assert pump(client, server) == [
        VideoReceived(sid, 10_000, b"v1"),
        AudioReceived(sid, 10_010, b"a1"),
        VideoReceived(sid, 10_033, b"v2"),
    ]


def test_timestamps_cross_extended_and_wrap() -> None:
    client, server, sid = publishing_pair()
    times = [0xFFFFF0, 0xFFFFFF, 0x1000010, 2**32 - 10, 2**32 + 23]
    for t in times:
        client.video(sid, t, b"v")
    events = pump(client, server)
    assert [e.timestamp for e in events if isinstance(e, VideoReceived)] == [
        t % 2**32 for t in times
    ]


def test_close_tells_the_peer_and_stops() -> None:
    client, server, _ = publishing_pair()
    server.close("kicked by host")
    pump(client, server)
    status = client.commands()[-1]
    assert status.arguments[0]["description"] == "kicked by host"  # type: ignore[index]
    client.video(1, 0, b"v")
    assert pump(client, server) == []
    assert server.closed


def test_garbage_is_refused_at_the_first_byte() -> None:
    server = ServerConnection()
    server.receive_data(b"GET / HTTP/1.1\r\n")
    with pytest.raises(RTMPError, match="0x47"):
        server.next_event()


# -- limits ----------------------------------------------------------------------------------


def test_limit_app_length() -> None:
    client, server = Client(), ServerConnection()
    client.connect("a" * MAX_APP_LENGTH)
    assert isinstance(pump(client, server)[0], ConnectRequested)
    client, server = Client(), ServerConnection()
    client.connect("a" * (MAX_APP_LENGTH + 1))
    pump(client, server)
    with pytest.raises(RTMPError, match=f"limit {MAX_APP_LENGTH}"):
        server.next_event()
    assert client.commands()[-1].name == "_error"


def test_limit_stream_key_length() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    client.command("createStream")
    client.publish(1, "k" * MAX_STREAM_KEY_LENGTH + "?query-does-not-count")
    assert isinstance(pump(client, server)[-1], PublishRequested)
    client, server = Client(), ServerConnection()
    client.connect()
    client.command("createStream")
    client.publish(1, "k" * (MAX_STREAM_KEY_LENGTH + 1))
    pump(client, server)
    drain_error = pytest.raises(RTMPError, match=f"limit {MAX_STREAM_KEY_LENGTH}")
    with drain_error:
        drain(server)
    assert client.commands()[-1].arguments[0]["code"] == "NetStream.Publish.BadName"  # type: ignore[index]


def test_limit_message_streams() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    for _ in range(MAX_MESSAGE_STREAMS + 1):
        client.command("createStream")
    pump(client, server)
    replies = client.commands()[1:]
    assert [r.name for r in replies] == ["_result"] * MAX_MESSAGE_STREAMS + ["_error"]


# -- fuzz ------------------------------------------------------------------------------------


def run(data: bytes, step: int) -> tuple[list[Event], str | None]:
    server = ServerConnection(random_bytes=bytes)
    events: list[Event] = []
    error = None
    for i in range(0, len(data), step):
        server.receive_data(data[i : i + step])
        try:
            while (event := server.next_event()) is not None:
                events.append(event)
                if isinstance(event, PublishRequested):
                    server.accept_publish(event.stream_id)
        except RTMPError as e:
            error = str(e)
            break
    return events, error


def valid_session() -> bytes:
    client = Client()
    client.receive_data(b"\x03" + bytes(2 * HANDSHAKE_SIZE))
    client.connect()
    client.command("createStream")
    client.publish(1, "key")
    client.metadata(1, {"w": 1.0})
    client.video(1, 0, b"\x17" * 300)
    client.audio(1, 0, b"\xaf" * 10)
    client.command("deleteStream", 1.0)
    return client.data_to_send()


VALID = valid_session()
PREFIX = b"\x03" + bytes(2 * HANDSHAKE_SIZE)


def test_valid_session_whole_equals_bytewise() -> None:
    whole = run(VALID, len(VALID))
    assert whole[1] is None
    assert len(whole[0]) == 6
    assert run(VALID, 1) == whole


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_only_rtmp_error_and_whole_equals_bytewise(data: bytes, handshake: bool) -> None:
    if handshake:
        data = PREFIX + data
    assert run(data, len(data) or 1) == run(data, 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_sessions_only_rtmp_error_and_whole_equals_bytewise(
    edits: list[tuple[int, int]],
) -> None:
    data = bytearray(VALID)
    for pos, value in edits:
        data[pos] = value
    blob = bytes(data)
    assert run(blob, len(blob)) == run(blob, 1)


def test_writer_state_is_per_chunk_stream() -> None:
    w = ChunkWriter()
    assert w.write(3, 20, 0, 0, b"a")[0] >> 6 == 0
    assert w.write(5, 20, 1, 0, b"a")[0] >> 6 == 0
