"""RTMP chunk stream: :class:`ChunkReader` reassembles messages, :class:`ChunkWriter` splits them.

Header types: 0 (full, absolute timestamp), 1 (no stream id, timestamp delta), 2 (delta only),
3 (nothing: continuation of a message, or a new message that repeats the previous header, its
timestamp delta applied again; after a type-0 header the "delta" is that header's timestamp, as
the specification says). A timestamp field of 0xFFFFFF announces a 4-byte extended timestamp,
which then also follows every type-3 header on that chunk stream. Timestamps are 32-bit and wrap
mod 2**32.

The reader parses the bytes it is fed where they lie; only a partial chunk at the end is kept (in
one bytearray with an offset, compacted once per :meth:`ChunkReader.feed`) for the next feed. It
keeps one small state object per chunk stream and allocates per chunk only the slice it copies.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .error import RTMPError

DEFAULT_CHUNK_SIZE = 128
MAX_PEER_CHUNK_SIZE = 65536  # bytes; a larger Set Chunk Size from the peer is refused
MAX_MESSAGE_SIZE = 8 * 1024 * 1024  # bytes; refused as soon as a header announces more
MAX_CHUNK_STREAMS = 64  # distinct chunk stream ids per connection
MAX_PENDING_BYTES = 16 * 1024 * 1024  # announced bytes of partly received messages, all streams
MIN_CHUNK_STREAM_ID = 2
MAX_CHUNK_STREAM_ID = 65599

_MASK = 0xFFFFFFFF
_EXTENDED = 0xFFFFFF
_FMT1 = struct.Struct(">BHBHB")  # timestamp (3), length (3), type id (1)
_FMT2 = struct.Struct(">BH")  # timestamp (3)
_U32 = struct.Struct(">I")
_U32LE = struct.Struct("<I")


class ChunkMessage(NamedTuple):
    """One reassembled message."""

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes
    chunk_stream_id: int


class _ChunkStream:
    """Per chunk stream state: the last header's values and the message being reassembled."""

    __slots__ = (
        "acc",
        "delta",
        "ext",
        "kept",
        "length",
        "remaining",
        "stream_id",
        "timestamp",
        "type_id",
    )

    def __init__(self) -> None:
        self.timestamp = 0  # of the current/last message
        self.delta = 0  # timestamp field of the last header (absolute for type 0)
        self.ext = False  # the last header's timestamp field was extended
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.remaining = 0  # bytes still missing from the current message (0: none started)
        # The pieces of the message being reassembled: views of the bytes being parsed, joined
        # once when the message completes; views left at the end of a feed are joined into
        # one bytes object (the first ``kept`` pieces are bytes).
        self.acc: list[bytes | memoryview] = []
        self.kept = 0


class ChunkReader:
    """Feed bytes, get complete messages; Set Chunk Size and Abort apply as they arrive."""

    def __init__(
        self, *, max_message_size: int = MAX_MESSAGE_SIZE, max_pending: int = MAX_PENDING_BYTES
    ) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._streams: dict[int, _ChunkStream] = {}
        self._chunk_size = DEFAULT_CHUNK_SIZE
        self._pending = 0
        self._error: RTMPError | None = None
        self.max_message_size = max_message_size
        """Largest message a header may announce; the owner may change it between feeds (a
        server keeps it small until the peer is authenticated)."""
        self.max_pending = max_pending
        """Announced bytes of partly received messages, all chunk streams together."""
        self.stop_after_command = False
        """Stop parsing after each complete command message (AMF0/AMF3), leaving the rest
        buffered (:attr:`stopped`); ``feed(b"")`` continues."""
        self._stopped = False

    @property
    def chunk_size(self) -> int:
        """The peer's current chunk size."""
        return self._chunk_size

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (at most one partial chunk)."""
        return len(self._buf) - self._pos

    @property
    def stopped(self) -> bool:
        """The last :meth:`feed` stopped after a command message with bytes left to parse."""
        return self._stopped

    def hold(self, data: bytes | memoryview) -> None:
        """Buffer ``data`` without parsing it (the next :meth:`feed` parses it first)."""
        if self._error is None:
            self._buf += data

    @property
    def pending(self) -> int:
        """Announced size of the messages being reassembled."""
        return self._pending

    def feed(
        self, data: bytes | bytearray | memoryview, out: list[ChunkMessage] | None = None
    ) -> list[ChunkMessage]:
        """Consume ``data``; append the messages it completes to ``out`` and return it.

        ``data`` is parsed where it lies when nothing is buffered (only a trailing partial chunk
        is copied), so it may be a view of a buffer the caller reuses once this returns.
        Raises :class:`RTMPError` on a protocol violation; messages completed before it are
        in ``out`` already. After an error every call raises it again.
        """
        if out is None:
            out = []
        if self._error is not None:
            raise self._error
        self._stopped = False
        buf = self._buf
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            src = data
        pos = 0
        try:
            pos = self._parse(src, out)
        except RTMPError as e:
            self._error = e
            raise
        finally:
            if src is buf:
                if pos >= len(buf):
                    buf.clear()  # nothing left to parse: hold no memory until the next feed
                else:
                    self._pos = pos
            elif pos < len(src):
                buf += memoryview(src)[pos:]  # the unparsed rest: a partial chunk at most
        return out

    def _open(self, csid: int, fmt: int) -> _ChunkStream:
        if fmt != 0:
            raise RTMPError(
                f"chunk stream {csid} starts with a type-{fmt} header; its first chunk must be "
                "type 0"
            )
        if len(self._streams) >= MAX_CHUNK_STREAMS:
            raise RTMPError(
                f"chunk stream {csid} would be the {len(self._streams) + 1}th on this connection; "
                f"the limit is {MAX_CHUNK_STREAMS}"
            )
        st = self._streams[csid] = _ChunkStream()
        return st

    def _control(self, type_id: int, payload: bytes) -> None:
        if type_id == 1:
            if len(payload) < 4:
                raise RTMPError(f"Set Chunk Size message needs 4 bytes, got {len(payload)}")
            size = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
            if size < 1:
                raise RTMPError("Set Chunk Size 0 is invalid (must be at least 1)")
            if size > MAX_PEER_CHUNK_SIZE:
                raise RTMPError(
                    f"Set Chunk Size {size} exceeds the limit of {MAX_PEER_CHUNK_SIZE} bytes"
                )
            self._chunk_size = size
        elif type_id == 2:
            if len(payload) < 4:
                raise RTMPError(f"Abort message needs 4 bytes, got {len(payload)}")
            st = self._streams.get(_U32.unpack_from(payload)[0])
            if st is not None and st.remaining:
                self._pending -= st.length
                st.remaining = 0
                st.acc = []
                st.kept = 0

    def _parse(self, buf: bytes | bytearray | memoryview, out: list[ChunkMessage]) -> int:
        """Parse ``buf`` from its start; return the offset parsing stopped at."""
        end = len(buf)
        pos = 0
        streams = self._streams
        cs = self._chunk_size
        mv = memoryview(buf)
        try:
            while pos < end:
                b0 = buf[pos]
                fmt = b0 >> 6
                csid = b0 & 0x3F
                p = pos + 1
                if csid < 2:
                    if csid == 0:
                        if p >= end:
                            break
                        csid = buf[p] + 64
                        p += 1
                    else:
                        if p + 2 > end:
                            break
                        csid = buf[p] + (buf[p + 1] << 8) + 64
                        p += 2
                st = streams.get(csid)
                if st is None:
                    st = self._open(csid, fmt)
                rem = st.remaining
                if fmt == 3 and rem:
                    # continuation chunk of the message in progress
                    if st.ext:
                        p += 4
                    n = rem if rem < cs else cs
                    q = p + n
                    if q > end:
                        break
                    acc = st.acc
                    acc.append(mv[p:q])
                    rem -= n
                else:
                    if fmt == 3:
                        # a new message repeating the previous header; its delta applies again
                        if st.ext:
                            p += 4
                            if p > end:
                                break
                        length = st.length
                        field = st.delta
                        ext = st.ext
                        ts = (st.timestamp + field) & _MASK
                        type_id = st.type_id
                        sid = st.stream_id
                    else:
                        if fmt == 0:
                            if p + 11 > end:
                                break
                            t_hi, t_lo, l_hi, l_lo, type_id = _FMT1.unpack_from(buf, p)
                            sid = _U32LE.unpack_from(buf, p + 7)[0]
                            length = (l_hi << 16) | l_lo
                            p += 11
                        elif fmt == 1:
                            if p + 7 > end:
                                break
                            t_hi, t_lo, l_hi, l_lo, type_id = _FMT1.unpack_from(buf, p)
                            sid = st.stream_id
                            length = (l_hi << 16) | l_lo
                            p += 7
                        else:
                            if p + 3 > end:
                                break
                            t_hi, t_lo = _FMT2.unpack_from(buf, p)
                            type_id = st.type_id
                            sid = st.stream_id
                            length = st.length
                            p += 3
                        if rem:
                            raise RTMPError(
                                f"chunk stream {csid}: type-{fmt} header while a {st.length}-byte "
                                f"message still misses {rem} bytes"
                            )
                        if length > self.max_message_size:
                            raise RTMPError(
                                f"chunk stream {csid}: message of {length} bytes exceeds the "
                                f"limit of {self.max_message_size}"
                            )
                        field = (t_hi << 16) | t_lo
                        ext = field == _EXTENDED
                        if ext:
                            if p + 4 > end:
                                break
                            field = _U32.unpack_from(buf, p)[0]
                            p += 4
                        ts = field if fmt == 0 else (st.timestamp + field) & _MASK
                    if length > cs and self._pending + length > self.max_pending:
                        raise RTMPError(
                            f"chunk stream {csid}: a {length}-byte message would bring partly "
                            f"received messages to {self._pending + length} bytes, limit "
                            f"{self.max_pending}"
                        )
                    n = length if length < cs else cs
                    q = p + n
                    if q > end:
                        break
                    st.timestamp = ts
                    st.delta = field
                    st.ext = ext
                    st.length = length
                    st.type_id = type_id
                    st.stream_id = sid
                    if n == length:
                        pos = q
                        payload = mv[p:q].tobytes()
                        out.append(ChunkMessage(type_id, sid, ts, payload, csid))
                        if type_id <= 2:
                            self._control(type_id, payload)
                            cs = self._chunk_size
                        elif (type_id == 20 or type_id == 17) and self.stop_after_command:
                            self._stopped = pos < end
                            break
                        continue
                    self._pending += length
                    acc = st.acc = [mv[p:q]]
                    st.kept = 0
                    rem = length - n
                pos = q
                if rem and csid < 64:
                    # fast path: the following chunks continue this message
                    hb = 0xC0 | csid
                    skip = 5 if st.ext else 1
                    while pos < end and buf[pos] == hb:
                        p = pos + skip
                        n = rem if rem < cs else cs
                        q = p + n
                        if q > end:
                            break
                        acc.append(mv[p:q])
                        rem -= n
                        pos = q
                        if not rem:
                            break
                st.remaining = rem
                if not rem:
                    self._pending -= st.length
                    st.acc = []
                    st.kept = 0
                    payload = b"".join(acc)
                    del acc
                    out.append(ChunkMessage(st.type_id, st.stream_id, st.timestamp, payload, csid))
                    if st.type_id <= 2:
                        self._control(st.type_id, payload)
                        cs = self._chunk_size
                    elif (st.type_id == 20 or st.type_id == 17) and self.stop_after_command:
                        self._stopped = pos < end
                        break
        finally:
            if self._pending:  # messages in progress keep no view of ``buf``
                for st in streams.values():
                    pieces = st.acc
                    if st.remaining and st.kept < len(pieces):
                        pieces[st.kept :] = [b"".join(pieces[st.kept :])]
                        st.kept = len(pieces)
            mv.release()
        return pos


def basic_header(fmt: int, csid: int) -> bytes:
    """Encode a chunk basic header (1, 2 or 3 bytes, chosen by ``csid``)."""
    if csid < MIN_CHUNK_STREAM_ID or csid > MAX_CHUNK_STREAM_ID:
        raise ValueError(f"chunk stream id {csid} outside {MIN_CHUNK_STREAM_ID}..65599")
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    v = csid - 64
    return bytes(((fmt << 6) | 1, v & 0xFF, v >> 8))


class ChunkWriter:
    """Split outgoing messages into chunks, choosing the smallest header that is correct."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self._chunk_size = chunk_size
        # per chunk stream: [timestamp, field, length, type_id, stream_id]
        self._last: dict[int, list[int]] = {}

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, size: int) -> None:
        """Use ``size`` for the chunks that follow (send a Set Chunk Size message first)."""
        if not 1 <= size <= 0x7FFFFFFF:
            raise ValueError(f"chunk size {size} outside 1..2**31-1")
        self._chunk_size = size

    def write(
        self,
        csid: int,
        type_id: int,
        stream_id: int,
        timestamp: int,
        payload: bytes,
        *,
        fmt: int | None = None,
    ) -> bytes:
        """Chunks carrying one message. ``fmt`` forces a header type (tests only)."""
        ts = timestamp & _MASK
        length = len(payload)
        if length > 0xFFFFFF:
            raise ValueError(f"message of {length} bytes does not fit the 24-bit length field")
        last = self._last.get(csid)
        if last is None or last[4] != stream_id or ts < last[0]:
            choice, field = 0, ts
        else:
            delta = ts - last[0]
            if length != last[2] or type_id != last[3]:
                choice, field = 1, delta
            elif delta != last[1]:
                choice, field = 2, delta
            else:
                choice, field = 3, delta
        if fmt is not None and fmt != choice:
            if fmt == 0:
                field = ts
            elif last is None:
                raise ValueError(f"type-{fmt} header on unused chunk stream {csid}")
            else:
                field = (ts - last[0]) & _MASK
                if fmt == 3 and field != last[1]:
                    raise ValueError(f"type-3 header repeats delta {last[1]}, not {field}")
            choice = fmt
        ext = field >= _EXTENDED
        tfield = _EXTENDED if ext else field
        out = bytearray(basic_header(choice, csid))
        if choice == 0:
            out += _FMT1.pack(tfield >> 16, tfield & 0xFFFF, length >> 16, length & 0xFFFF, type_id)
            out += _U32LE.pack(stream_id)
        elif choice == 1:
            out += _FMT1.pack(tfield >> 16, tfield & 0xFFFF, length >> 16, length & 0xFFFF, type_id)
        elif choice == 2:
            out += _FMT2.pack(tfield >> 16, tfield & 0xFFFF)
        ext_bytes = _U32.pack(field) if ext else b""
        out += ext_bytes
        self._last[csid] = [ts, field, length, type_id, stream_id]
        cs = self._chunk_size
        view = memoryview(payload)
        out += view[:cs]
        if length > cs:
            cont = basic_header(3, csid) + ext_bytes
            for i in range(cs, length, cs):
                out += cont
                out += view[i : i + cs]
        return bytes(out)
