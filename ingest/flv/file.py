"""The FLV container: read tags from an FLV file, write an FLV file from tag bodies.

Tag bodies are what :mod:`ingest.flv.tags` parses and builds; an RTMP audio/video message
payload is exactly such a body. Timestamps are 32-bit ms (24 bits + the extended byte).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from ingest.errors import MediaError
from ingest.flv.tags import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO
from ingest.media.units import Kind

SIGNATURE = b"FLV"
HEADER_SIZE = 9
TAG_HEADER_SIZE = 11
MAX_TAG_BODY = (1 << 24) - 1  # DataSize is 24 bits
_KIND_TO_TYPE = {Kind.AUDIO: TAG_AUDIO, Kind.VIDEO: TAG_VIDEO}


@dataclass(frozen=True, slots=True)
class FlvTag:
    """One FLV tag: type (8 audio, 9 video, 18 script), 32-bit ms timestamp, body."""

    type: int
    timestamp: int
    body: bytes

    @property
    def kind(self) -> Kind | None:
        """``Kind.AUDIO`` / ``Kind.VIDEO``, ``None`` for script data."""
        return {TAG_AUDIO: Kind.AUDIO, TAG_VIDEO: Kind.VIDEO}.get(self.type)

    def __bytes__(self) -> bytes:
        return tag_bytes(self.type, self.timestamp, self.body)


@dataclass(frozen=True, slots=True)
class FlvHeader:
    has_audio: bool = True
    has_video: bool = True
    version: int = 1

    def __bytes__(self) -> bytes:
        flags = (4 if self.has_audio else 0) | (1 if self.has_video else 0)
        return SIGNATURE + bytes([self.version, flags]) + struct.pack(">II", HEADER_SIZE, 0)


def tag_bytes(tag_type: int, timestamp: int, body: bytes) -> bytes:
    """One tag with its 11-byte header and the PreviousTagSize that follows it."""
    if len(body) > MAX_TAG_BODY:
        raise MediaError(f"FLV tag body of {len(body)} bytes exceeds {MAX_TAG_BODY}")
    ts = timestamp % (1 << 32)
    header = (
        bytes([tag_type])
        + len(body).to_bytes(3, "big")
        + (ts & 0xFFFFFF).to_bytes(3, "big")
        + bytes([ts >> 24])
        + b"\x00\x00\x00"
    )
    return header + body + struct.pack(">I", TAG_HEADER_SIZE + len(body))


def parse_header(data: bytes) -> tuple[FlvHeader, int]:
    """The FLV header and the offset of the first tag (after PreviousTagSize0)."""
    if len(data) < HEADER_SIZE:
        raise MediaError(f"FLV header is truncated: {len(data)} bytes, need {HEADER_SIZE}")
    if data[:3] != SIGNATURE:
        raise MediaError(f"not an FLV file: signature {data[:3]!r}, expected b'FLV'")
    offset = int.from_bytes(data[5:9], "big")
    if offset < HEADER_SIZE:
        raise MediaError(f"FLV header size {offset} is smaller than {HEADER_SIZE}")
    header = FlvHeader(has_audio=bool(data[4] & 4), has_video=bool(data[4] & 1), version=data[3])
    return header, offset + 4


def iter_tags(data: bytes) -> Iterator[FlvTag]:
    """The tags of a whole FLV file in memory; a truncated tag raises MediaError."""
    _, pos = parse_header(data)
    size = len(data)
    while pos < size:
        if pos + TAG_HEADER_SIZE > size:
            raise MediaError(f"FLV tag header at offset {pos} is truncated")
        first = data[pos]
        if first & 0x20:
            raise MediaError(f"FLV tag at offset {pos} is encrypted (filter bit): not supported")
        tag_type = first & 0x1F
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        start = pos + TAG_HEADER_SIZE
        if start + length > size:
            raise MediaError(
                f"FLV tag at offset {pos} is truncated: body of {length} bytes, {size - start} left"
            )
        yield FlvTag(tag_type, ts, data[start : start + length])
        pos = start + length + 4  # PreviousTagSize


def read_flv(source: str | bytes | BinaryIO) -> list[FlvTag]:
    """All tags of an FLV file given as a path, bytes or a binary file object."""
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str):
        with open(source, "rb") as fh:
            data = fh.read()
    else:
        data = source.read()
    return list(iter_tags(data))


class FlvWriter:
    """Accumulates an FLV file: header, then tags in the order given."""

    def __init__(self, has_audio: bool = True, has_video: bool = True) -> None:
        self._parts: list[bytes] = [bytes(FlvHeader(has_audio, has_video))]

    def write(self, kind: Kind | int, timestamp: int, body: bytes) -> None:
        """Append one tag; ``kind`` is a :class:`Kind` or a raw tag type."""
        tag_type = _KIND_TO_TYPE[kind] if isinstance(kind, Kind) else kind
        self._parts.append(tag_bytes(tag_type, timestamp, body))

    def write_metadata(self, values: Mapping[str, float | int | bool | str]) -> None:
        """Append an ``onMetaData`` script tag (AMF0 numbers, booleans and strings)."""
        self._parts.append(tag_bytes(TAG_SCRIPT, 0, metadata_body(values)))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def write_flv(
    tags: Iterable[tuple[Kind | int, int, bytes]],
    has_audio: bool = True,
    has_video: bool = True,
) -> bytes:
    """An FLV file from ``(kind, timestamp, body)`` tuples."""
    writer = FlvWriter(has_audio, has_video)
    for kind, timestamp, body in tags:
        writer.write(kind, timestamp, body)
    return writer.getvalue()


def _amf0_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise MediaError("AMF0 string longer than 65535 bytes")
    return struct.pack(">H", len(raw)) + raw


def metadata_body(values: Mapping[str, float | int | bool | str]) -> bytes:
    """AMF0 ``"onMetaData"`` + ECMA array: enough for players to read width, codec ids, ..."""
    out = bytearray(b"\x02" + _amf0_string("onMetaData"))
    out += b"\x08" + struct.pack(">I", len(values))
    for key, value in values.items():
        out += _amf0_string(key)
        if isinstance(value, bool):
            out += b"\x01" + bytes([value])
        elif isinstance(value, int | float):
            out += b"\x00" + struct.pack(">d", float(value))
        else:
            out += b"\x02" + _amf0_string(value)
    out += b"\x00\x00\x09"
    return bytes(out)
