"""A small sans-I/O RTMP *client* for tests: handshake, connect, createStream, publish, media."""

from __future__ import annotations

import hashlib
import hmac
import os

from ingest.rtmp.chunk import ChunkMessage, ChunkReader, ChunkWriter
from ingest.rtmp.connection import Event, PublishRequested, ServerConnection
from ingest.rtmp.error import RTMPError
from ingest.rtmp.handshake import FP_KEY, HANDSHAKE_SIZE, digest_offset
from ingest.rtmp.messages import CommandMessage, DataMessage, MessageType, SetChunkSize


def client_c1(digest: bool = False) -> bytes:
    """A C1: simple (zero version) or with a Flash Player digest (scheme 0)."""
    if not digest:
        return bytes(8) + os.urandom(HANDSHAKE_SIZE - 8)
    c1 = bytearray(bytes(4) + bytes((9, 0, 124, 2)) + os.urandom(HANDSHAKE_SIZE - 8))
    off = digest_offset(bytes(c1), 0)
    c1[off : off + 32] = hmac.new(
        FP_KEY[:30], bytes(c1[:off] + c1[off + 32 :]), hashlib.sha256
    ).digest()
    return bytes(c1)


class Client:
    """Writes what an encoder writes; reads what the server answers."""

    def __init__(self, digest: bool = False) -> None:
        self.c1 = client_c1(digest)
        self.writer = ChunkWriter()
        self.reader = ChunkReader()
        self.out = bytearray(b"\x03" + self.c1)
        self._queued = bytearray()  # messages written before the handshake completed
        self.received: list[ChunkMessage] = []
        self.s0s1s2 = b""
        self._hs = bytearray()
        self._txn = 1.0

    # -- bytes -------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self.out)
        self.out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if len(self.s0s1s2) < 1 + 2 * HANDSHAKE_SIZE:
            self._hs += data
            if len(self._hs) < 1 + 2 * HANDSHAKE_SIZE:
                return
            self.s0s1s2 = bytes(self._hs[: 1 + 2 * HANDSHAKE_SIZE])
            data = bytes(self._hs[1 + 2 * HANDSHAKE_SIZE :])
            self.out += self.s0s1s2[1 : 1 + HANDSHAKE_SIZE]  # C2 = echo of S1
            self.out += self._queued
            self._queued.clear()
        if data:
            self.reader.feed(data, self.received)

    # -- messages ----------------------------------------------------------------------------

    def send(self, csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes) -> None:
        chunks = self.writer.write(csid, type_id, stream_id, timestamp, payload)
        if self.s0s1s2:
            self.out += chunks
        else:
            self._queued += chunks

    def set_chunk_size(self, size: int) -> None:
        self.send(2, MessageType.SET_CHUNK_SIZE, 0, 0, bytes(SetChunkSize(size)))
        self.writer.chunk_size = size

    def command(self, name: str, *args: object, obj: object = None, stream_id: int = 0) -> float:
        txn = self._txn
        self._txn += 1
        payload = bytes(CommandMessage(name, txn, obj, list(args)))
        self.send(3 if stream_id == 0 else 8, MessageType.COMMAND_AMF0, stream_id, 0, payload)
        return txn

    def connect(self, app: str = "live", tc_url: str = "rtmp://127.0.0.1/live") -> float:
        obj = {"app": app, "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": tc_url}
        return self.command("connect", obj=obj)

    def publish(self, stream_id: int, name: str, kind: str = "live") -> float:
        return self.command("publish", name, kind, stream_id=stream_id)

    def metadata(self, stream_id: int, meta: dict[str, object]) -> None:
        payload = bytes(DataMessage(["@setDataFrame", "onMetaData", meta]))
        self.send(4, MessageType.DATA_AMF0, stream_id, 0, payload)

    def audio(self, stream_id: int, timestamp: int, payload: bytes) -> None:
        self.send(4, MessageType.AUDIO, stream_id, timestamp, payload)

    def video(self, stream_id: int, timestamp: int, payload: bytes) -> None:
        self.send(6, MessageType.VIDEO, stream_id, timestamp, payload)

    def commands(self) -> list[CommandMessage]:
        """Commands received from the server so far."""
        return [
            CommandMessage.parse(m.payload)
            for m in self.received
            if m.type_id == MessageType.COMMAND_AMF0
        ]


def pump(client: Client, server: ServerConnection, *, auto_accept: bool = False) -> list[Event]:
    """Exchange bytes until both sides are quiet; return the server's events."""
    events: list[Event] = []
    while True:
        data = client.data_to_send()
        if data:
            server.receive_data(data)
        try:
            while (event := server.next_event()) is not None:
                events.append(event)
                if auto_accept and isinstance(event, PublishRequested):
                    server.accept_publish(event.stream_id)
        except RTMPError:
            pass  # sticky: the test reads it from server.next_event()
        reply = server.data_to_send()
        if reply:
            client.receive_data(reply)
        if not data and not reply:
            return events


def publishing_pair(key: str = "key", app: str = "live") -> tuple[Client, ServerConnection, int]:
    """A client connected and publishing (accepted) on the returned stream id."""
    client, server = Client(), ServerConnection()
    pump(client, server)
    client.connect(app)
    client.command("releaseStream", key)
    client.command("FCPublish", key)
    client.command("createStream")
    pump(client, server)
    result = next(c for c in client.commands() if c.name == "_result" and c.transaction_id == 4)
    assert isinstance(result.arguments[0], float)
    stream_id = int(result.arguments[0])
    client.publish(stream_id, key)
    pump(client, server, auto_accept=True)
    return client, server, stream_id
