"""RTMP messages: one dataclass per message type, each with ``parse(payload)`` and ``__bytes__``.

Timestamps and message stream ids travel in the chunk headers, not in these payloads (except the
sub-tags of an :class:`Aggregate`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from . import amf0
from .error import RTMPError

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class MessageType(enum.IntEnum):
    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class UserControlEvent(enum.IntEnum):
    STREAM_BEGIN = 0
    STREAM_EOF = 1
    STREAM_DRY = 2
    SET_BUFFER_LENGTH = 3
    STREAM_IS_RECORDED = 4
    PING_REQUEST = 6
    PING_RESPONSE = 7


def _u32(payload: bytes, name: str) -> int:
    if len(payload) < 4:
        raise RTMPError(f"{name} message needs 4 bytes, got {len(payload)}")
    value: int = _U32.unpack_from(payload)[0]
    return value


@dataclass(frozen=True, slots=True)
class SetChunkSize:
    """Type 1: the sender's chunk size for the chunks that follow (1..2**31-1)."""

    chunk_size: int
    type_id = MessageType.SET_CHUNK_SIZE

    @classmethod
    def parse(cls, payload: bytes) -> SetChunkSize:
        return cls(_u32(payload, "Set Chunk Size") & 0x7FFFFFFF)

    def __bytes__(self) -> bytes:
        return _U32.pack(self.chunk_size & 0x7FFFFFFF)


@dataclass(frozen=True, slots=True)
class Abort:
    """Type 2: discard the partly received message on ``chunk_stream_id``."""

    chunk_stream_id: int
    type_id = MessageType.ABORT

    @classmethod
    def parse(cls, payload: bytes) -> Abort:
        return cls(_u32(payload, "Abort"))

    def __bytes__(self) -> bytes:
        return _U32.pack(self.chunk_stream_id)


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """Type 3: the number of bytes received so far (mod 2**32)."""

    sequence_number: int
    type_id = MessageType.ACKNOWLEDGEMENT

    @classmethod
    def parse(cls, payload: bytes) -> Acknowledgement:
        return cls(_u32(payload, "Acknowledgement"))

    def __bytes__(self) -> bytes:
        return _U32.pack(self.sequence_number & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class UserControl:
    """Type 4: a user control event.

    ``value`` is the stream id (stream begin/EOF/dry/recorded, set buffer length) or the
    timestamp (ping request/response); ``buffer_length`` (ms) only for set buffer length.
    """

    event: int
    value: int = 0
    buffer_length: int = 0
    type_id = MessageType.USER_CONTROL

    @classmethod
    def parse(cls, payload: bytes) -> UserControl:
        if len(payload) < 2:
            raise RTMPError(f"User Control message needs at least 2 bytes, got {len(payload)}")
        (event,) = _U16.unpack_from(payload)
        if event == UserControlEvent.SET_BUFFER_LENGTH:
            if len(payload) < 10:
                raise RTMPError(f"Set Buffer Length event needs 10 bytes, got {len(payload)}")
            sid, ms = struct.unpack_from(">II", payload, 2)
            return cls(event, sid, ms)
        if len(payload) >= 6:
            return cls(event, _U32.unpack_from(payload, 2)[0])
        if event in UserControlEvent._value2member_map_:
            raise RTMPError(f"User Control event {event} needs 6 bytes, got {len(payload)}")
        return cls(event)  # unknown event with a short body: keep the type only

    def __bytes__(self) -> bytes:
        if self.event == UserControlEvent.SET_BUFFER_LENGTH:
            return struct.pack(">HII", self.event, self.value, self.buffer_length)
        return struct.pack(">HI", self.event, self.value & 0xFFFFFFFF)

    @classmethod
    def stream_begin(cls, stream_id: int) -> UserControl:
        return cls(UserControlEvent.STREAM_BEGIN, stream_id)

    @classmethod
    def ping_request(cls, timestamp: int) -> UserControl:
        return cls(UserControlEvent.PING_REQUEST, timestamp)

    @classmethod
    def ping_response(cls, timestamp: int) -> UserControl:
        return cls(UserControlEvent.PING_RESPONSE, timestamp)


@dataclass(frozen=True, slots=True)
class WindowAckSize:
    """Type 5: acknowledge every ``size`` bytes received."""

    size: int
    type_id = MessageType.WINDOW_ACK_SIZE

    @classmethod
    def parse(cls, payload: bytes) -> WindowAckSize:
        return cls(_u32(payload, "Window Acknowledgement Size"))

    def __bytes__(self) -> bytes:
        return _U32.pack(self.size)


@dataclass(frozen=True, slots=True)
class SetPeerBandwidth:
    """Type 6: the peer's output window; ``limit_type`` 0 hard, 1 soft, 2 dynamic."""

    size: int
    limit_type: int = 2
    type_id = MessageType.SET_PEER_BANDWIDTH

    @classmethod
    def parse(cls, payload: bytes) -> SetPeerBandwidth:
        if len(payload) < 5:
            raise RTMPError(f"Set Peer Bandwidth message needs 5 bytes, got {len(payload)}")
        return cls(_U32.unpack_from(payload)[0], payload[4])

    def __bytes__(self) -> bytes:
        return _U32.pack(self.size) + bytes((self.limit_type,))


@dataclass(frozen=True, slots=True)
class Audio:
    """Type 8: one FLV audio tag body."""

    payload: bytes
    type_id = MessageType.AUDIO

    @classmethod
    def parse(cls, payload: bytes) -> Audio:
        return cls(bytes(payload))

    def __bytes__(self) -> bytes:
        return self.payload


@dataclass(frozen=True, slots=True)
class Video:
    """Type 9: one FLV video tag body."""

    payload: bytes
    type_id = MessageType.VIDEO

    @classmethod
    def parse(cls, payload: bytes) -> Video:
        return cls(bytes(payload))

    def __bytes__(self) -> bytes:
        return self.payload


def _amf0_body(payload: bytes, amf3: bool, kind: str) -> int:
    """Offset of the AMF0 values; AMF3 messages carry AMF0 after a 0x00 format byte."""
    if not amf3:
        return 0
    if payload[:1] != b"\x00":
        first = f"0x{payload[0]:02x}" if payload else "nothing"
        raise RTMPError(
            f"AMF3 {kind} message starts with {first}, not the 0x00 that announces AMF0 values; "
            "AMF3-encoded values are not supported"
        )
    return 1


@dataclass(frozen=True, slots=True)
class DataMessage:
    """Type 18 (15 for AMF3): AMF0 values, e.g. ``@setDataFrame``, ``onMetaData``, {...}."""

    values: list[object]
    amf3: bool = False

    @property
    def type_id(self) -> MessageType:
        return MessageType.DATA_AMF3 if self.amf3 else MessageType.DATA_AMF0

    @classmethod
    def parse(cls, payload: bytes, amf3: bool = False) -> DataMessage:
        return cls(amf0.decode_all(payload, _amf0_body(payload, amf3, "data")), amf3)

    def __bytes__(self) -> bytes:
        return (b"\x00" if self.amf3 else b"") + amf0.encode_all(self.values)


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """Type 20 (17 for AMF3): name, transaction id, command object, then arguments."""

    name: str
    transaction_id: float = 0.0
    command_object: object = None
    arguments: list[object] = field(default_factory=list)
    amf3: bool = False

    @property
    def type_id(self) -> MessageType:
        return MessageType.COMMAND_AMF3 if self.amf3 else MessageType.COMMAND_AMF0

    @classmethod
    def parse(cls, payload: bytes, amf3: bool = False) -> CommandMessage:
        values = amf0.decode_all(payload, _amf0_body(payload, amf3, "command"))
        if not values or not isinstance(values[0], str):
            got = type(values[0]).__name__ if values else "nothing"
            raise RTMPError(f"command message must start with a string name, got {got}")
        name = values[0]
        txn = values[1] if len(values) > 1 else 0.0
        if isinstance(txn, bool) or not isinstance(txn, int | float):
            raise RTMPError(
                f"command {name!r}: transaction id must be a number, got {type(txn).__name__}"
            )
        obj = values[2] if len(values) > 2 else None
        return cls(name, float(txn), obj, values[3:], amf3)

    def __bytes__(self) -> bytes:
        body = amf0.encode_all(
            [self.name, self.transaction_id, self.command_object, *self.arguments]
        )
        return (b"\x00" if self.amf3 else b"") + body


@dataclass(frozen=True, slots=True)
class AggregatePart:
    """One FLV tag inside an aggregate message (``timestamp`` as written in the sub-tag)."""

    type_id: int
    timestamp: int
    payload: bytes
    stream_id: int = 0


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Type 22: FLV tags (header, body, back pointer) carried in one message."""

    parts: tuple[AggregatePart, ...]
    type_id = MessageType.AGGREGATE

    @classmethod
    def parse(cls, payload: bytes) -> Aggregate:
        parts: list[AggregatePart] = []
        pos = 0
        end = len(payload)
        while pos < end:
            if pos + 11 > end:
                raise RTMPError(
                    f"aggregate sub-tag header at offset {pos} needs 11 bytes, {end - pos} left"
                )
            kind, size_hi, size_lo, ts_hi, ts_lo, ts_ext, sid_hi, sid_lo = struct.unpack_from(
                ">BBHBHBBH", payload, pos
            )
            size = (size_hi << 16) | size_lo
            sid = (sid_hi << 16) | sid_lo
            ts = (ts_ext << 24) | (ts_hi << 16) | ts_lo
            body = pos + 11
            if body + size + 4 > end:
                raise RTMPError(
                    f"aggregate sub-tag at offset {pos} announces {size} bytes (+4 back pointer) "
                    f"but only {end - body} follow"
                )
            parts.append(AggregatePart(kind, ts, bytes(payload[body : body + size]), sid))
            pos = body + size + 4
        return cls(tuple(parts))

    def timed(self, timestamp: int) -> list[tuple[int, int, bytes]]:
        """``(type_id, timestamp, payload)`` per part: the first part maps to ``timestamp``
        (the aggregate message's), the others keep their offset from it (mod 2**32)."""
        if not self.parts:
            return []
        base = self.parts[0].timestamp
        return [
            (p.type_id, (timestamp + p.timestamp - base) & 0xFFFFFFFF, p.payload)
            for p in self.parts
        ]

    def __bytes__(self) -> bytes:
        out = bytearray()
        for p in self.parts:
            ts = p.timestamp & 0xFFFFFFFF
            size = len(p.payload)
            out += struct.pack(
                ">BBHBHBBH",
                p.type_id,
                size >> 16,
                size & 0xFFFF,
                (ts >> 16) & 0xFF,
                ts & 0xFFFF,
                ts >> 24,
                (p.stream_id >> 16) & 0xFF,
                p.stream_id & 0xFFFF,
            )
            out += p.payload
            out += _U32.pack(11 + size)
        return bytes(out)


Message = (
    SetChunkSize
    | Abort
    | Acknowledgement
    | UserControl
    | WindowAckSize
    | SetPeerBandwidth
    | Audio
    | Video
    | DataMessage
    | CommandMessage
    | Aggregate
)


def parse_message(type_id: int, payload: bytes) -> Message | None:
    """Parse a payload by message type; ``None`` for types this layer ignores (shared objects)."""
    if type_id == MessageType.AUDIO:
        return Audio.parse(payload)
    if type_id == MessageType.VIDEO:
        return Video.parse(payload)
    if type_id == MessageType.SET_CHUNK_SIZE:
        return SetChunkSize.parse(payload)
    if type_id == MessageType.ABORT:
        return Abort.parse(payload)
    if type_id == MessageType.ACKNOWLEDGEMENT:
        return Acknowledgement.parse(payload)
    if type_id == MessageType.USER_CONTROL:
        return UserControl.parse(payload)
    if type_id == MessageType.WINDOW_ACK_SIZE:
        return WindowAckSize.parse(payload)
    if type_id == MessageType.SET_PEER_BANDWIDTH:
        return SetPeerBandwidth.parse(payload)
    if type_id in (MessageType.DATA_AMF0, MessageType.DATA_AMF3):
        return DataMessage.parse(payload, type_id == MessageType.DATA_AMF3)
    if type_id in (MessageType.COMMAND_AMF0, MessageType.COMMAND_AMF3):
        return CommandMessage.parse(payload, type_id == MessageType.COMMAND_AMF3)
    if type_id == MessageType.AGGREGATE:
        return Aggregate.parse(payload)
    return None
