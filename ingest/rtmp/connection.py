"""One RTMP connection, server side, sans I/O: bytes in, events out, bytes to send.

Usage::

    conn = ServerConnection()
    conn.receive_data(data)          # never raises
    out = conn.data_to_send()        # write these bytes to the peer
    while (event := conn.next_event()) is not None:   # raises RTMPError after the events
        ...                                            # that preceded a protocol violation

The connection answers protocol chatter itself (handshake, connect, createStream, releaseStream,
FCPublish, pings, acknowledgements, unknown commands). ``publish`` becomes
:class:`PublishRequested`; until the application calls :meth:`ServerConnection.accept_publish` or
:meth:`ServerConnection.reject_publish`, later input is held (at most :data:`MAX_BACKLOG_BYTES`),
so a client that sends media right behind ``publish`` is not refused.

Until the peer is authenticated it holds little memory and costs little work: at most
:data:`MAX_INPUT_BEFORE_PUBLISH` bytes and :data:`MAX_MESSAGES_BEFORE_PUBLISH` messages after the
handshake, messages of at most
:data:`MAX_BYTES_BEFORE_CONNECT` before ``connect`` and :data:`MAX_BYTES_BEFORE_PUBLISH` until a
publish is accepted (the chunk reader's full limits apply only after that); replies it has not
collected beyond :data:`MAX_OUTPUT_BYTES` close it (a peer that sends requests without reading),
and no reply echoes more than :data:`MAX_ECHO_LENGTH` characters of what the peer sent.

Timestamps in events are the RTMP message timestamps: 32-bit milliseconds that wrap mod 2**32
(the media layer unwraps).
"""

from __future__ import annotations

import enum
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .chunk import MAX_MESSAGE_SIZE, MAX_PENDING_BYTES, ChunkMessage, ChunkReader, ChunkWriter
from .error import RTMPError
from .handshake import C0C1_SIZE, HANDSHAKE_SIZE, check_version, server_response
from .messages import (
    Acknowledgement,
    Aggregate,
    CommandMessage,
    DataMessage,
    MessageType,
    SetChunkSize,
    SetPeerBandwidth,
    UserControl,
    UserControlEvent,
    WindowAckSize,
)

MAX_APP_LENGTH = 256  # characters of the connect command's app (after the ?query is cut)
MAX_STREAM_KEY_LENGTH = 4096  # characters of the publish name (after the ?query is cut)
MAX_MESSAGE_STREAMS = 8  # createStream calls per connection
MAX_BACKLOG_BYTES = 32 * 1024  # input held while a publish decision is pending
MAX_BYTES_BEFORE_CONNECT = 8 * 1024  # largest message, and partly received bytes, before connect
MAX_BYTES_BEFORE_PUBLISH = 16 * 1024  # the same after connect, until a publish is accepted
MAX_INPUT_BEFORE_PUBLISH = 64 * 1024  # bytes after the handshake until a publish is accepted
MAX_MESSAGES_BEFORE_PUBLISH = 64  # messages until a publish is accepted (OBS and ffmpeg send ~10)
MAX_OUTPUT_BYTES = 64 * 1024  # replies not yet collected with data_to_send
MAX_ECHO_LENGTH = 64  # characters of a peer's command name quoted back in an error reply
MAX_DESCRIPTION_LENGTH = 512  # characters of an onStatus description (refusal reasons)
OUTGOING_CHUNK_SIZE = 4096
DEFAULT_WINDOW_ACK_SIZE = 2_500_000
DEFAULT_PEER_BANDWIDTH = 2_500_000
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_STREAM_COMMAND = 5


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The client sent ``connect`` (answered with success; the app is judged at publish)."""

    app: str
    tc_url: str
    flash_ver: str
    object_encoding: float
    properties: dict[str, object] = field(repr=False, compare=True)


@dataclass(frozen=True, slots=True)
class PublishRequested:
    """The client wants to publish ``stream_key``: answer with accept/reject_publish."""

    stream_id: int
    app: str
    stream_key: str = field(repr=False)
    publish_type: str
    transaction_id: float


@dataclass(frozen=True, slots=True)
class MetadataReceived:
    """``@setDataFrame``/``onMetaData`` on a publishing stream."""

    stream_id: int
    metadata: dict[str, object]


# The two media events are built once per message: not frozen, which makes construction ~3x
# dearer (object.__setattr__ per field). Treat them as read-only all the same.
@dataclass(slots=True)
class AudioReceived:
    """An audio message (an FLV audio tag body) on a publishing stream."""

    stream_id: int
    timestamp: int
    payload: bytes = field(repr=False)


@dataclass(slots=True)
class VideoReceived:
    """A video message (an FLV video tag body) on a publishing stream."""

    stream_id: int
    timestamp: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UnpublishRequested:
    """A publishing stream ended cleanly (FCUnpublish, closeStream or deleteStream)."""

    stream_id: int


Event = (
    ConnectRequested
    | PublishRequested
    | MetadataReceived
    | AudioReceived
    | VideoReceived
    | UnpublishRequested
)


class _Phase(enum.Enum):
    C0C1 = 1
    C2 = 2
    OPEN = 3


class _Stream(enum.Enum):
    CREATED = 1
    PENDING = 2
    PUBLISHING = 3


def _strip_query(name: str) -> str:
    return name.split("?", 1)[0]


def _status(level: str, code: str, description: str) -> dict[str, object]:
    return {"level": level, "code": code, "description": description}


class ServerConnection:
    """The server's state machine for one RTMP connection."""

    def __init__(
        self,
        *,
        window_ack_size: int = DEFAULT_WINDOW_ACK_SIZE,
        peer_bandwidth: int = DEFAULT_PEER_BANDWIDTH,
        chunk_size: int = OUTGOING_CHUNK_SIZE,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._window_ack_size = window_ack_size
        self._peer_bandwidth = peer_bandwidth
        self._chunk_size = chunk_size
        self._random = random_bytes
        self._phase = _Phase.C0C1
        self._hs = bytearray()
        self._reader = ChunkReader(
            max_message_size=MAX_BYTES_BEFORE_CONNECT, max_pending=MAX_BYTES_BEFORE_CONNECT
        )
        # A command may change the limits (connect, publish): what follows it is parsed after
        # it is handled, so the outcome never depends on how TCP split the bytes.
        self._reader.stop_after_command = True
        self._writer = ChunkWriter()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._error: RTMPError | None = None
        self._closed = False
        self._received = 0
        self._input_budget: float = MAX_INPUT_BEFORE_PUBLISH  # lifted by an accepted publish
        self._messages = 0
        self._message_budget: float = MAX_MESSAGES_BEFORE_PUBLISH  # the same
        self._acked = 0
        self._peer_window = 0
        self._connected = False
        self._app = ""
        self._streams: dict[int, _Stream] = {}
        self._keys: dict[int, str] = {}
        self._publishing: set[int] = set()
        self._next_stream_id = 1
        self._paused = False

    # -- state -------------------------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._phase is _Phase.OPEN

    @property
    def app(self) -> str:
        """The connect command's app (without ``?query``), or "" before connect."""
        return self._app

    @property
    def bytes_received(self) -> int:
        """Bytes received after the handshake (what acknowledgements count)."""
        return self._received

    @property
    def publishing(self) -> frozenset[int]:
        """Message stream ids whose publish was accepted and not ended."""
        return frozenset(self._publishing)

    @property
    def error(self) -> RTMPError | None:
        return self._error

    @property
    def closed(self) -> bool:
        return self._closed

    # -- I/O ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview) -> None:
        """Consume bytes from the peer. Protocol errors surface from :meth:`next_event`.
        ``data`` may be a view of a buffer the caller reuses once this returns: what is kept
        is copied."""
        if self._error is not None or self._closed or not data:
            return
        try:
            if self._phase is not _Phase.OPEN:
                data = self._handshake(data)
                if not data:
                    return
            self._received += len(data)
            if self._received > self._input_budget:
                raise RTMPError(
                    f"peer sent {self._received} bytes without a publish being accepted; the "
                    f"limit is {self._input_budget}"
                )
            if self._peer_window and self._received - self._acked >= self._peer_window:
                self._acked = self._received
                self._send(CSID_CONTROL, Acknowledgement(self._received & 0xFFFFFFFF))
            if self._paused:
                # held unparsed until the decision: parsed then, under the limits it sets
                reader = self._reader
                reader.hold(data)
                if reader.buffered > MAX_BACKLOG_BYTES:
                    raise RTMPError(
                        f"peer sent {reader.buffered} bytes while its publish awaited a "
                        f"decision; the limit is {MAX_BACKLOG_BYTES}"
                    )
                return
            self._parse(data)
        except RTMPError as e:
            self._error = e

    def _parse(self, data: bytes | memoryview) -> None:
        reader = self._reader
        while True:
            msgs: list[ChunkMessage] = []
            try:
                reader.feed(data, msgs)
            except RTMPError:
                if msgs:
                    self._dispatch(msgs)  # what came before the violation counts
                raise
            if msgs:
                self._dispatch(msgs)
            if self._paused or not reader.stopped:
                return
            data = b""

    def next_event(self) -> Event | None:
        """The next event, ``None`` if there is none yet; raises the connection's RTMPError
        once the events that preceded it are consumed (and on every call after)."""
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer (empties the outgoing buffer)."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- decisions ---------------------------------------------------------------------------

    def accept_publish(self, stream_id: int) -> None:
        """Answer a pending publish with NetStream.Publish.Start; media may flow."""
        if self._error is not None or self._closed:
            return
        self._require_pending(stream_id)
        self._streams[stream_id] = _Stream.PUBLISHING
        self._publishing.add(stream_id)
        self._reader.max_message_size = MAX_MESSAGE_SIZE
        self._reader.max_pending = MAX_PENDING_BYTES
        self._input_budget = math.inf
        self._message_budget = math.inf
        self._send(CSID_CONTROL, UserControl.stream_begin(stream_id))
        self._on_status(stream_id, "status", "NetStream.Publish.Start", "Publishing started.")
        self._resume()

    def reject_publish(self, stream_id: int, code: str, description: str) -> None:
        """Answer a pending publish with an onStatus error (e.g. NetStream.Publish.BadName)."""
        if self._error is not None or self._closed:
            return
        self._require_pending(stream_id)
        self._streams[stream_id] = _Stream.CREATED
        self._keys.pop(stream_id, None)
        self._on_status(stream_id, "error", code, description)
        self._resume()

    def close(self, description: str | None = None) -> None:
        """Stop processing input; with ``description``, tell the peer why first
        (onStatus error NetConnection.Connect.Closed, which ffmpeg prints)."""
        if self._closed:
            return
        if description is not None and self._connected and self._error is None:
            self._on_status(0, "error", "NetConnection.Connect.Closed", description)
        self._closed = True

    def send_ping(self, timestamp: int) -> None:
        """Queue a ping request (the peer answers with a ping response, ignored here)."""
        self._send(CSID_CONTROL, UserControl.ping_request(timestamp & 0xFFFFFFFF))

    # -- internals ---------------------------------------------------------------------------

    def _require_pending(self, stream_id: int) -> None:
        if self._streams.get(stream_id) is not _Stream.PENDING:
            raise ValueError(f"message stream {stream_id} has no publish awaiting a decision")

    def _send(
        self,
        csid: int,
        message: SetChunkSize
        | Acknowledgement
        | UserControl
        | WindowAckSize
        | SetPeerBandwidth
        | CommandMessage,
        stream_id: int = 0,
    ) -> None:
        self._out += self._writer.write(csid, message.type_id, stream_id, 0, bytes(message))

    def _reply(self, stream_id: int, name: str, txn: float, obj: object, *args: object) -> None:
        csid = CSID_STREAM_COMMAND if stream_id else CSID_COMMAND
        self._send(csid, CommandMessage(name, txn, obj, list(args)), stream_id)

    def _on_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        if len(description) > MAX_DESCRIPTION_LENGTH:
            description = description[: MAX_DESCRIPTION_LENGTH - 3] + "..."
        self._reply(stream_id, "onStatus", 0.0, None, _status(level, code, description))

    def _handshake(self, data: bytes | memoryview) -> bytes:
        hs = self._hs
        hs += data
        if self._phase is _Phase.C0C1:
            check_version(hs[0])
            if len(hs) < C0C1_SIZE:
                return b""
            self._out += server_response(bytes(hs[:C0C1_SIZE]), self._random)
            del hs[:C0C1_SIZE]
            self._phase = _Phase.C2
        if len(hs) < HANDSHAKE_SIZE:
            return b""
        rest = bytes(hs[HANDSHAKE_SIZE:])
        self._hs = bytearray()
        self._phase = _Phase.OPEN
        return rest

    def _resume(self) -> None:
        self._paused = False
        if self._reader.buffered:
            try:
                self._parse(b"")
            except RTMPError as e:
                self._error = e

    def _dispatch(self, msgs: list[ChunkMessage]) -> None:
        # The reader stops after each command, so only the last message may pause us.
        events = self._events
        publishing = self._publishing
        for m in msgs:
            t, sid, ts, payload, _ = m
            if t == 9 or t == 8:
                if sid not in publishing:
                    self._media_refused(m)
                if t == 9:
                    events.append(VideoReceived(sid, ts, payload))
                else:
                    events.append(AudioReceived(sid, ts, payload))
            else:
                self._handle(m)

    def _media_refused(self, m: ChunkMessage) -> None:
        kind = "video" if m.type_id == 9 else "audio"
        state = self._streams.get(m.stream_id)
        why = "which was never created" if state is None else "before its publish was accepted"
        raise RTMPError(f"{kind} message on message stream {m.stream_id} {why}")

    def _handle(self, m: ChunkMessage) -> None:
        self._messages += 1
        if self._messages > self._message_budget:
            raise RTMPError(
                f"peer sent {self._messages} messages without a publish being accepted; the "
                f"limit is {MAX_MESSAGES_BEFORE_PUBLISH}"
            )
        if len(self._out) > MAX_OUTPUT_BYTES:
            raise RTMPError(
                f"{len(self._out)} bytes of replies wait for the peer to read them; the limit "
                f"is {MAX_OUTPUT_BYTES} (it sends requests without reading the answers)"
            )
        t = m.type_id
        if t == MessageType.VIDEO or t == MessageType.AUDIO:
            if m.stream_id not in self._publishing:
                self._media_refused(m)
            cls = VideoReceived if t == MessageType.VIDEO else AudioReceived
            self._events.append(cls(m.stream_id, m.timestamp, m.payload))
        elif t == MessageType.COMMAND_AMF0 or t == MessageType.COMMAND_AMF3:
            self._command(
                CommandMessage.parse(m.payload, t == MessageType.COMMAND_AMF3), m.stream_id
            )
        elif t == MessageType.DATA_AMF0 or t == MessageType.DATA_AMF3:
            self._data(DataMessage.parse(m.payload, t == MessageType.DATA_AMF3), m.stream_id)
        elif t == MessageType.USER_CONTROL:
            uc = UserControl.parse(m.payload)
            if uc.event == UserControlEvent.PING_REQUEST:
                self._send(CSID_CONTROL, UserControl.ping_response(uc.value))
        elif t == MessageType.WINDOW_ACK_SIZE:
            self._peer_window = WindowAckSize.parse(m.payload).size
        elif t == MessageType.SET_PEER_BANDWIDTH:
            SetPeerBandwidth.parse(m.payload)
        elif t == MessageType.AGGREGATE:
            for sub_type, ts, payload in Aggregate.parse(m.payload).timed(m.timestamp):
                if sub_type in (MessageType.AUDIO, MessageType.VIDEO, MessageType.DATA_AMF0):
                    self._handle(
                        ChunkMessage(sub_type, m.stream_id, ts, payload, m.chunk_stream_id)
                    )
        # 1 and 2 were applied by the chunk reader; acknowledgements and shared objects: ignored

    def _data(self, msg: DataMessage, stream_id: int) -> None:
        values = msg.values
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if (
            len(values) >= 2
            and values[0] == "onMetaData"
            and isinstance(values[1], dict)
            and stream_id in self._publishing
        ):
            self._events.append(MetadataReceived(stream_id, dict(values[1])))

    def _command(self, cmd: CommandMessage, stream_id: int) -> None:
        name = cmd.name
        if name == "connect":
            self._connect(cmd)
        elif not self._connected:
            if cmd.transaction_id:
                self._call_failed(cmd, stream_id, f"{name[:MAX_ECHO_LENGTH]!r} before connect")
        elif name == "createStream":
            if len(self._streams) >= MAX_MESSAGE_STREAMS:
                self._call_failed(
                    cmd, stream_id, f"at most {MAX_MESSAGE_STREAMS} streams per connection"
                )
                return
            sid = self._next_stream_id
            self._next_stream_id += 1
            self._streams[sid] = _Stream.CREATED
            self._reply(stream_id, "_result", cmd.transaction_id, None, float(sid))
        elif name == "publish":
            self._publish(cmd, stream_id)
        elif name == "releaseStream":
            self._reply(stream_id, "_result", cmd.transaction_id, None)
        elif name == "FCPublish":
            self._reply(
                stream_id,
                "onFCPublish",
                0.0,
                _status("status", "NetStream.Publish.Start", "FCPublish"),
            )
        elif name == "FCUnpublish":
            key = cmd.arguments[0] if cmd.arguments else None
            for sid in sorted(self._publishing):
                if isinstance(key, str) and self._keys.get(sid) == _strip_query(key):
                    self._unpublish(sid)
        elif name == "closeStream":
            self._unpublish(stream_id)
        elif name == "deleteStream":
            arg = cmd.arguments[0] if cmd.arguments else None
            if isinstance(arg, float) and math.isfinite(arg) and arg.is_integer():
                sid = int(arg)
                self._unpublish(sid)
                self._streams.pop(sid, None)
        elif name == "getStreamLength":
            self._reply(stream_id, "_result", cmd.transaction_id, None, 0.0)
        elif name == "play":
            self._on_status(
                stream_id, "error", "NetStream.Play.Failed", "This server accepts publishing only."
            )
        elif name in ("_result", "_error", "onStatus", "onBWDone", "_checkbw"):
            return
        elif cmd.transaction_id:
            self._call_failed(cmd, stream_id, f"unknown command {name[:MAX_ECHO_LENGTH]!r}")

    def _call_failed(self, cmd: CommandMessage, stream_id: int, description: str) -> None:
        self._reply(
            stream_id,
            "_error",
            cmd.transaction_id,
            None,
            _status("error", "NetConnection.Call.Failed", description),
        )

    def _connect(self, cmd: CommandMessage) -> None:
        if self._connected:
            self._call_failed(cmd, 0, "already connected")
            return
        props = cmd.command_object if isinstance(cmd.command_object, dict) else {}
        raw_app = props.get("app")
        app = _strip_query(raw_app).rstrip("/") if isinstance(raw_app, str) else ""
        if len(app) > MAX_APP_LENGTH:
            self._reply(
                0,
                "_error",
                cmd.transaction_id,
                None,
                _status("error", "NetConnection.Connect.Rejected", "app name too long"),
            )
            raise RTMPError(f"connect app name is {len(app)} characters, limit {MAX_APP_LENGTH}")
        tc_url = props.get("tcUrl")
        flash_ver = props.get("flashVer")
        encoding = props.get("objectEncoding", 0.0)
        if isinstance(encoding, bool) or not isinstance(encoding, int | float):
            encoding = 0.0
        self._connected = True
        self._app = app
        self._reader.max_message_size = MAX_BYTES_BEFORE_PUBLISH
        self._reader.max_pending = MAX_BYTES_BEFORE_PUBLISH
        self._send(CSID_CONTROL, WindowAckSize(self._window_ack_size))
        self._send(CSID_CONTROL, SetPeerBandwidth(self._peer_bandwidth, 2))
        self._send(CSID_CONTROL, SetChunkSize(self._chunk_size))
        self._writer.chunk_size = self._chunk_size
        self._send(CSID_CONTROL, UserControl.stream_begin(0))
        self._reply(
            0,
            "_result",
            cmd.transaction_id,
            {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
            {
                **_status("status", "NetConnection.Connect.Success", "Connection succeeded."),
                "objectEncoding": float(encoding),
            },
        )
        self._events.append(
            ConnectRequested(
                app,
                tc_url if isinstance(tc_url, str) else "",
                flash_ver if isinstance(flash_ver, str) else "",
                float(encoding),
                dict(props),
            )
        )

    def _publish(self, cmd: CommandMessage, stream_id: int) -> None:
        state = self._streams.get(stream_id)
        if state is None:
            self._on_status(
                stream_id,
                "error",
                "NetStream.Publish.Failed",
                f"publish on message stream {stream_id}, which createStream did not create",
            )
            return
        if state is not _Stream.CREATED:
            self._on_status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "This stream is already publishing.",
            )
            return
        name = cmd.arguments[0] if cmd.arguments else None
        if not isinstance(name, str):
            self._on_status(
                stream_id, "error", "NetStream.Publish.BadName", "publish needs a stream name"
            )
            return
        key = _strip_query(name)
        if len(key) > MAX_STREAM_KEY_LENGTH:
            self._on_status(stream_id, "error", "NetStream.Publish.BadName", "stream key too long")
            raise RTMPError(
                f"publish stream key is {len(key)} characters, limit {MAX_STREAM_KEY_LENGTH}"
            )
        kind = cmd.arguments[1] if len(cmd.arguments) > 1 else None
        self._streams[stream_id] = _Stream.PENDING
        self._keys[stream_id] = key
        self._paused = True
        self._events.append(
            PublishRequested(
                stream_id,
                self._app,
                key,
                kind if isinstance(kind, str) else "live",
                cmd.transaction_id,
            )
        )

    def _unpublish(self, stream_id: int) -> None:
        if stream_id in self._publishing:
            self._publishing.discard(stream_id)
            self._streams[stream_id] = _Stream.CREATED
            self._keys.pop(stream_id, None)
            self._events.append(UnpublishRequested(stream_id))
