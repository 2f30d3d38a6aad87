"""AMF0 (Action Message Format 0) values: the encoding of RTMP commands and metadata.

Python mapping: number ↔ ``float`` (``int`` encodes as number), boolean ↔ ``bool``, string and
long string ↔ ``str`` (the encoder picks by length), object ↔ ``dict[str, object]``, ECMA array ↔
:class:`ECMAArray`, strict array ↔ ``list`` (``tuple`` encodes too), null ↔ ``None``, undefined and
unsupported ↔ :data:`UNDEFINED` / :data:`UNSUPPORTED`, date ↔ :class:`Date`, XML document ↔
:class:`XMLDocument`, typed object ↔ :class:`TypedObject`. References decode to the same Python
object; the encoder emits a reference when it meets the same container object again.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .error import RTMPError

MAX_AMF_DEPTH = 32  # nesting levels of objects/arrays in one value

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
MOVIECLIP = 0x04  # reserved
NULL = 0x05
UNDEFINED_MARKER = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED_MARKER = 0x0D
RECORDSET = 0x0E  # reserved
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10
AVMPLUS = 0x11  # switch to AMF3

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE = struct.Struct(">dh")


class Special(enum.Enum):
    """AMF0 values without content."""

    UNDEFINED = "undefined"
    UNSUPPORTED = "unsupported"


UNDEFINED = Special.UNDEFINED
UNSUPPORTED = Special.UNSUPPORTED


class ECMAArray(dict[str, object]):
    """An AMF0 ECMA (associative) array: a ``dict`` that encodes with marker 0x08."""


class XMLDocument(str):
    """An AMF0 XML document: a ``str`` that encodes with marker 0x0F."""

    __slots__ = ()


@dataclass(frozen=True)
class Date:
    """An AMF0 date: milliseconds since the Unix epoch (UTC) and a (reserved) timezone."""

    milliseconds: float
    timezone: int = 0


@dataclass
class TypedObject:
    """An AMF0 typed object: a class name and its properties."""

    class_name: str
    properties: dict[str, object] = field(default_factory=dict)


class _Decoder:
    __slots__ = ("data", "refs")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.refs: list[object] = []

    def _need(self, pos: int, n: int, what: str) -> None:
        if pos + n > len(self.data):
            raise RTMPError(
                f"AMF0 {what} at offset {pos} needs {n} bytes, only {len(self.data) - pos} left"
            )

    def _string(self, pos: int, long: bool, what: str) -> tuple[str, int]:
        if long:
            self._need(pos, 4, what + " length")
            (n,) = _U32.unpack_from(self.data, pos)
            pos += 4
        else:
            self._need(pos, 2, what + " length")
            (n,) = _U16.unpack_from(self.data, pos)
            pos += 2
        self._need(pos, n, what)
        try:
            text = self.data[pos : pos + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise RTMPError(
                f"AMF0 {what} at offset {pos} is not valid UTF-8 ({e.reason})"
            ) from None
        return text, pos + n

    def _properties(self, pos: int, target: dict[str, object], depth: int) -> int:
        data = self.data
        while True:
            self._need(pos, 3, "property name or object end")
            if data[pos] == 0 and data[pos + 1] == 0 and data[pos + 2] == OBJECT_END:
                return pos + 3
            key, pos = self._string(pos, False, "property name")
            value, pos = self.value(pos, depth)
            target[key] = value

    def value(self, pos: int, depth: int) -> tuple[object, int]:
        data = self.data
        if pos >= len(data):
            raise RTMPError(f"AMF0 value expected at offset {pos}, but the data ends there")
        marker = data[pos]
        start = pos
        pos += 1
        if marker == NUMBER:
            self._need(pos, 8, "number")
            return _DOUBLE.unpack_from(data, pos)[0], pos + 8
        if marker == STRING:
            return self._string(pos, False, "string")
        if marker == BOOLEAN:
            self._need(pos, 1, "boolean")
            return data[pos] != 0, pos + 1
        if marker == NULL:
            return None, pos
        if marker in (OBJECT, ECMA_ARRAY, STRICT_ARRAY, TYPED_OBJECT):
            if depth >= MAX_AMF_DEPTH:
                raise RTMPError(
                    f"AMF0 value at offset {start} nests deeper than {MAX_AMF_DEPTH} levels"
                )
            if marker == OBJECT:
                obj: dict[str, object] = {}
                self.refs.append(obj)
                return obj, self._properties(pos, obj, depth + 1)
            if marker == ECMA_ARRAY:
                self._need(pos, 4, "ECMA array count")
                arr = ECMAArray()
                self.refs.append(arr)
                return arr, self._properties(pos + 4, arr, depth + 1)
            if marker == STRICT_ARRAY:
                self._need(pos, 4, "strict array count")
                (count,) = _U32.unpack_from(data, pos)
                pos += 4
                if count > len(data) - pos:
                    raise RTMPError(
                        f"AMF0 strict array at offset {start} announces {count} elements "
                        f"but only {len(data) - pos} bytes follow"
                    )
                items: list[object] = []
                self.refs.append(items)
                for _ in range(count):
                    item, pos = self.value(pos, depth + 1)
                    items.append(item)
                return items, pos
            name, pos = self._string(pos, False, "typed object class name")
            typed = TypedObject(name)
            self.refs.append(typed)
            return typed, self._properties(pos, typed.properties, depth + 1)
        if marker == UNDEFINED_MARKER:
            return UNDEFINED, pos
        if marker == REFERENCE:
            self._need(pos, 2, "reference")
            (index,) = _U16.unpack_from(data, pos)
            if index >= len(self.refs):
                raise RTMPError(
                    f"AMF0 reference at offset {start} points to object {index}, "
                    f"but only {len(self.refs)} were seen"
                )
            return self.refs[index], pos + 2
        if marker == DATE:
            self._need(pos, 10, "date")
            ms, tz = _DATE.unpack_from(data, pos)
            return Date(ms, tz), pos + 10
        if marker == LONG_STRING:
            return self._string(pos, True, "long string")
        if marker == UNSUPPORTED_MARKER:
            return UNSUPPORTED, pos
        if marker == XML_DOCUMENT:
            text, pos = self._string(pos, True, "XML document")
            return XMLDocument(text), pos
        if marker == OBJECT_END:
            raise RTMPError(f"AMF0 object-end marker 0x09 at offset {start} outside an object")
        if marker in (MOVIECLIP, RECORDSET):
            kind = "movieclip" if marker == MOVIECLIP else "recordset"
            raise RTMPError(
                f"AMF0 marker 0x{marker:02x} ({kind}) at offset {start} is reserved, not supported"
            )
        if marker == AVMPLUS:
            raise RTMPError(
                f"AMF0 marker 0x11 at offset {start} switches to AMF3, which is not supported"
            )
        raise RTMPError(f"unknown AMF0 type marker 0x{marker:02x} at offset {start}")


def decode(data: bytes, offset: int = 0) -> tuple[object, int]:
    """Decode one value at ``offset``; return it and the offset after it."""
    return _Decoder(data).value(offset, 0)


def decode_all(data: bytes, offset: int = 0) -> list[object]:
    """Decode consecutive values up to the end of ``data`` (references span the whole run)."""
    decoder = _Decoder(data)
    values: list[object] = []
    pos = offset
    while pos < len(data):
        value, pos = decoder.value(pos, 0)
        values.append(value)
    return values


class _Encoder:
    __slots__ = ("out", "refs")

    def __init__(self) -> None:
        self.out = bytearray()
        self.refs: dict[int, int] = {}

    def _utf8(self, text: str, long: bool) -> None:
        raw = text.encode("utf-8")
        if long:
            self.out += _U32.pack(len(raw))
        else:
            if len(raw) > 0xFFFF:
                raise ValueError(f"AMF0 property name of {len(raw)} bytes exceeds 65535")
            self.out += _U16.pack(len(raw))
        self.out += raw

    def _properties(self, props: dict[str, object], depth: int) -> None:
        for key, item in props.items():
            if not isinstance(key, str):
                raise TypeError(f"AMF0 object keys must be str, got {type(key).__name__}")
            self._utf8(key, False)
            self.value(item, depth)
        self.out += b"\x00\x00\x09"

    def value(self, value: object, depth: int) -> None:
        out = self.out
        if value is None:
            out.append(NULL)
        elif isinstance(value, bool):
            out += bytes((BOOLEAN, 1 if value else 0))
        elif isinstance(value, int | float):
            out.append(NUMBER)
            out += _DOUBLE.pack(float(value))
        elif isinstance(value, XMLDocument):
            out.append(XML_DOCUMENT)
            self._utf8(value, True)
        elif isinstance(value, str):
            if len(value) <= 0x3FFF or len(value.encode("utf-8")) <= 0xFFFF:
                out.append(STRING)
                self._utf8(value, False)
            else:
                out.append(LONG_STRING)
                self._utf8(value, True)
        elif isinstance(value, Special):
            out.append(UNDEFINED_MARKER if value is UNDEFINED else UNSUPPORTED_MARKER)
        elif isinstance(value, Date):
            out.append(DATE)
            out += _DATE.pack(value.milliseconds, value.timezone)
        elif isinstance(value, dict | list | tuple | TypedObject):
            index = self.refs.get(id(value))
            if index is not None:
                out.append(REFERENCE)
                out += _U16.pack(index)
                return
            if depth >= MAX_AMF_DEPTH:
                raise ValueError(f"AMF0 value nests deeper than {MAX_AMF_DEPTH} levels")
            if len(self.refs) <= 0xFFFF:
                self.refs[id(value)] = len(self.refs)
            if isinstance(value, ECMAArray):
                out.append(ECMA_ARRAY)
                out += _U32.pack(len(value))
                self._properties(value, depth + 1)
            elif isinstance(value, dict):
                out.append(OBJECT)
                self._properties(value, depth + 1)
            elif isinstance(value, TypedObject):
                out.append(TYPED_OBJECT)
                self._utf8(value.class_name, False)
                self._properties(value.properties, depth + 1)
            else:
                out.append(STRICT_ARRAY)
                out += _U32.pack(len(value))
                for item in value:
                    self.value(item, depth + 1)
        else:
            raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def encode(value: object) -> bytes:
    """Encode one value."""
    encoder = _Encoder()
    encoder.value(value, 0)
    return bytes(encoder.out)


def encode_all(values: Iterable[object]) -> bytes:
    """Encode consecutive values (one reference table for the run, like :func:`decode_all`)."""
    encoder = _Encoder()
    for value in values:
        encoder.value(value, 0)
    return bytes(encoder.out)
