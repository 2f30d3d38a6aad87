"""What an unauthenticated RTMP peer may make the server hold: the sans-I/O limits."""

from __future__ import annotations

import logging

import pytest

from ingest.rtmp.chunk import MAX_MESSAGE_SIZE, ChunkReader, ChunkWriter
from ingest.rtmp.connection import (
    MAX_BACKLOG_BYTES,
    MAX_BYTES_BEFORE_CONNECT,
    MAX_BYTES_BEFORE_PUBLISH,
    MAX_DESCRIPTION_LENGTH,
    MAX_ECHO_LENGTH,
    MAX_INPUT_BEFORE_PUBLISH,
    MAX_MESSAGES_BEFORE_PUBLISH,
    MAX_OUTPUT_BYTES,
    PublishRequested,
    ServerConnection,
    VideoReceived,
)
from ingest.rtmp.error import RTMPError
from ingest.rtmp.messages import CommandMessage, DataMessage, MessageType, UserControl
from ingest.rtmp.server import LOG_BURST, LOG_WINDOW, LogLimiter, address_key

from .client import Client, publishing_pair, pump


def drain(server: ServerConnection) -> list[object]:
    out: list[object] = []
    while (event := server.next_event()) is not None:
        out.append(event)
    return out


def test_before_connect_a_message_may_not_exceed_the_tiny_budget() -> None:
    assert MAX_BYTES_BEFORE_CONNECT <= 16 * 1024
    client, server = Client(), ServerConnection()
    pump(client, server)
    client.command("x" * (MAX_BYTES_BEFORE_CONNECT - 100))  # fits (answered: 'x...' before connect)
    pump(client, server)
    assert drain(server) == []
    client.send(3, MessageType.COMMAND_AMF0, 0, 0, bytes(MAX_BYTES_BEFORE_CONNECT + 1))
    pump(client, server)
    with pytest.raises(RTMPError, match=f"exceeds the limit of {MAX_BYTES_BEFORE_CONNECT}"):
        server.next_event()


def test_before_connect_partly_received_messages_are_bounded_too() -> None:
    client, server = Client(), ServerConnection()
    pump(client, server)
    # two half-sent messages on two chunk streams: together above the budget
    half = MAX_BYTES_BEFORE_CONNECT // 2 + 1
    for csid in (3, 4):
        chunks = ChunkWriter().write(csid, MessageType.COMMAND_AMF0, 0, 0, bytes(half))
        client.out += chunks[:140]  # the first 128-byte chunk of each
    pump(client, server)
    with pytest.raises(RTMPError, match=f"limit {MAX_BYTES_BEFORE_CONNECT}"):
        server.next_event()


def test_after_connect_and_before_publish_the_budget_is_bounded() -> None:
    assert MAX_BYTES_BEFORE_PUBLISH <= 128 * 1024
    client, server = Client(), ServerConnection()
    pump(client, server)
    client.connect()
    pump(client, server)
    client.command("x" * (MAX_BYTES_BEFORE_CONNECT + 1000))  # too large before connect, not now
    pump(client, server)
    assert client.commands()[-1].name == "_error"
    assert server.error is None
    client, server = Client(), ServerConnection()
    pump(client, server)
    client.connect()
    pump(client, server)
    client.send(6, MessageType.VIDEO, 1, 0, bytes(MAX_BYTES_BEFORE_PUBLISH + 1))
    pump(client, server)
    with pytest.raises(RTMPError, match=f"exceeds the limit of {MAX_BYTES_BEFORE_PUBLISH}"):
        drain(server)


def test_bytes_behind_a_pending_publish_are_held_raw_up_to_the_backlog_limit() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    pump(client, server)
    client.command("createStream")
    client.publish(1, "k")
    client.video(1, 0, bytes(MAX_BACKLOG_BYTES // 2))  # held, parsed once the publish is accepted
    events = pump(client, server)
    assert isinstance(events[-1], PublishRequested)
    server.accept_publish(1)
    assert drain(server) == [VideoReceived(1, 0, bytes(MAX_BACKLOG_BYTES // 2))]

    client, server = Client(), ServerConnection()
    client.connect()
    pump(client, server)
    client.command("createStream")
    client.publish(1, "k")
    pump(client, server)
    client.video(1, 0, bytes(MAX_BACKLOG_BYTES))
    pump(client, server)
    with pytest.raises(RTMPError, match=f"awaited a decision; the limit is {MAX_BACKLOG_BYTES}"):
        server.next_event()


def test_once_publishing_the_full_message_size_applies() -> None:
    client, server, sid = publishing_pair()
    frame = bytes(MAX_BYTES_BEFORE_PUBLISH * 4)
    client.video(sid, 0, frame)
    assert pump(client, server) == [VideoReceived(sid, 0, frame)]
    assert MAX_MESSAGE_SIZE > MAX_BYTES_BEFORE_PUBLISH * 4


def test_a_peer_that_does_not_collect_replies_is_closed() -> None:
    client, server, _ = publishing_pair()  # authenticated, yet it may not pile up our replies
    server.data_to_send()
    ping = UserControl.ping_request(7)
    sent = 0
    while sent < MAX_OUTPUT_BYTES * 2 and server.error is None:
        chunks = client.writer.write(2, MessageType.USER_CONTROL, 0, 0, bytes(ping))
        server.receive_data(chunks)  # nobody calls server.data_to_send()
        sent += len(chunks)
    with pytest.raises(RTMPError, match=f"the limit is {MAX_OUTPUT_BYTES}"):
        server.next_event()
    assert len(server.data_to_send()) <= MAX_OUTPUT_BYTES + 1024


def test_an_unadmitted_peer_may_send_only_so_many_bytes() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    pump(client, server)
    chunk = bytes(DataMessage(["onTextData", "x" * (MAX_BYTES_BEFORE_PUBLISH // 2)]))
    while server.error is None:  # data messages: small, valid, and ignored before publish
        client.send(4, MessageType.DATA_AMF0, 0, 0, chunk)
        pump(client, server)
    with pytest.raises(
        RTMPError,
        match=f"without a publish being accepted; the limit is {MAX_INPUT_BEFORE_PUBLISH}",
    ):
        server.next_event()
    assert server.bytes_received <= MAX_INPUT_BEFORE_PUBLISH + len(chunk) + 64


def test_an_unadmitted_peer_may_send_only_so_many_messages() -> None:
    assert MAX_MESSAGES_BEFORE_PUBLISH >= 20  # what OBS and ffmpeg send is about 10
    client, server = Client(), ServerConnection()
    client.connect()
    for _ in range(MAX_MESSAGES_BEFORE_PUBLISH - 1):
        client.command("_checkbw")
    assert pump(client, server) != []  # connect, and nothing refused yet
    client.command("_checkbw")
    pump(client, server)
    limit = MAX_MESSAGES_BEFORE_PUBLISH
    with pytest.raises(RTMPError, match=f"messages without a publish .*; the limit is {limit}"):
        server.next_event()


def test_an_accepted_publish_lifts_the_budgets() -> None:
    client, server, sid = publishing_pair()
    frame = bytes(MAX_BYTES_BEFORE_PUBLISH)
    for ts in range(MAX_MESSAGES_BEFORE_PUBLISH * 2):
        client.video(sid, ts, frame)
    events = pump(client, server)
    assert len(events) == MAX_MESSAGES_BEFORE_PUBLISH * 2
    assert server.bytes_received > MAX_INPUT_BEFORE_PUBLISH * 2
    client.command("FCUnpublish", "key")  # after the publish ends, the connection stays usable
    client.command("_checkbw")
    pump(client, server)
    assert server.error is None


def _last_description(client: Client) -> str:
    cmd = client.commands()[-1]
    status = cmd.arguments[0]
    assert isinstance(status, dict)
    description = status["description"]
    assert isinstance(description, str)
    return description


def test_error_replies_quote_at_most_a_bounded_piece_of_the_command_name() -> None:
    long_name = "n" * 5000
    client, server = Client(), ServerConnection()
    client.command(long_name)  # before connect
    pump(client, server)
    before = _last_description(client)
    assert "n" * MAX_ECHO_LENGTH in before
    assert len(before) < MAX_ECHO_LENGTH + 40
    client.connect()
    client.command(long_name)
    pump(client, server)
    after = _last_description(client)
    assert after.startswith("unknown command 'nnn")
    assert len(after) < MAX_ECHO_LENGTH + 40


def test_status_descriptions_are_bounded() -> None:
    client, server = Client(), ServerConnection()
    client.connect()
    client.command("createStream")
    client.publish(1, "k")
    pump(client, server)
    server.reject_publish(1, "NetStream.Publish.BadName", "call 'x" + "y" * 10_000 + "' not found")
    pump(client, server)
    description = _last_description(client)
    assert len(description) == MAX_DESCRIPTION_LENGTH
    assert description.endswith("...")
    assert description.startswith("call 'xyyy")


def test_command_parse_roundtrip_of_the_refusal() -> None:
    """The truncated reply is still a well-formed command message."""
    msg = CommandMessage("onStatus", 0.0, None, [{"description": "d" * MAX_DESCRIPTION_LENGTH}])
    assert CommandMessage.parse(bytes(msg)) == msg


def test_chunk_reader_limits_are_per_instance_and_it_keeps_no_consumed_bytes() -> None:
    reader = ChunkReader(max_message_size=100, max_pending=150)
    writer = ChunkWriter()
    reader.feed(writer.write(3, MessageType.VIDEO, 1, 0, bytes(100)))
    assert reader.buffered == 0
    assert reader._buf == bytearray()  # the received bytes are not kept until the next feed
    with pytest.raises(RTMPError, match="exceeds the limit of 100"):
        reader.feed(writer.write(3, MessageType.VIDEO, 1, 0, bytes(101)))
    reader = ChunkReader(max_message_size=1000, max_pending=1500)
    writer = ChunkWriter()  # 128-byte chunks: an 800-byte message arrives in parts
    reader.feed(writer.write(3, MessageType.VIDEO, 1, 0, bytes(800))[:140])  # its first chunk
    assert reader.pending == 800
    with pytest.raises(RTMPError, match="limit 1500"):
        reader.feed(writer.write(4, MessageType.VIDEO, 1, 0, bytes(800))[:140])


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("some-host", "some-host"),
    ],
)
def test_per_address_limits_count_ipv4_addresses_and_ipv6_64s(host: str, key: str) -> None:
    assert address_key(host) == key


def test_lines_about_unadmitted_peers_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    assert 1 <= LOG_BURST <= 100
    caplog.set_level("INFO", "ingest.rtmp")
    clock = [0.0]
    limiter = LogLimiter(clock=lambda: clock[0])
    for i in range(LOG_BURST + 500):
        limiter.log(logging.INFO, "refusing publish %d", i)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"refusing publish {i}" for i in range(LOG_BURST)]
    assert limiter.dropped == 500
    clock[0] += LOG_WINDOW
    limiter.log(logging.INFO, "refusing publish again")
    assert [r.getMessage() for r in caplog.records][LOG_BURST:] == [
        f"500 more lines about connections without an accepted publish were not logged in "
        f"{LOG_WINDOW:g} s (at most {LOG_BURST} per {LOG_WINDOW:g} s)",
        "refusing publish again",
    ]
