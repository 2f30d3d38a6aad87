"""Server side of the RTMP handshake: C0+C1 → S0+S1+S2, then C2.

A C1 whose version field is zero gets the simple handshake (S2 echoes C1). A C1 carrying a
Flash Player digest (the "complex" handshake of Flash-era clients and libavformat) gets an S1
with a server digest at the same scheme and an S2 signed with the key derived from the client
digest. A C1 with a version but no valid digest is answered like the simple handshake.
C2 is read and ignored: clients send an echo of S1 or a digest that nothing depends on.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from .error import RTMPError

RTMP_VERSION = 3
HANDSHAKE_SIZE = 1536  # C1, S1, C2, S2
C0C1_SIZE = 1 + HANDSHAKE_SIZE
DIGEST_SIZE = 32
SERVER_VERSION = bytes((0x0D, 0x0E, 0x0A, 0x0D))

_KEY_TAIL = bytes.fromhex("F0EEC24A8068BEE82E00D0D1029E7E576EEC5D2D29806FAB93B8E636CFEB31AE")
FP_KEY = b"Genuine Adobe Flash Player 001" + _KEY_TAIL  # 62 bytes; the first 30 sign C1
FMS_KEY = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL  # 68 bytes; the first 36 sign S1


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def digest_offset(block: bytes | bytearray, scheme: int) -> int:
    """Offset of the 32-byte digest in a C1/S1 (scheme 0: digest first, 1: key first)."""
    base = 8 if scheme == 0 else 772
    return sum(block[base : base + 4]) % 728 + base + 4


def find_digest(block: bytes, key: bytes) -> tuple[int, bytes] | None:
    """``(scheme, digest)`` if ``block`` carries a digest signed with ``key``, else ``None``."""
    for scheme in (0, 1):
        off = digest_offset(block, scheme)
        expected = _hmac(key, block[:off] + block[off + DIGEST_SIZE :])
        if hmac.compare_digest(expected, block[off : off + DIGEST_SIZE]):
            return scheme, block[off : off + DIGEST_SIZE]
    return None


def check_version(version: int) -> None:
    """Refuse anything but plain RTMP in C0 (RTMPE, HTTP or TLS land here first)."""
    if version != RTMP_VERSION:
        hint = ""
        if version in (6, 8, 9):
            hint = " (encrypted RTMPE is not supported)"
        elif version == 0x16:
            hint = " (a TLS ClientHello: use rtmp://, not rtmps://, on this port)"
        elif 0x41 <= version <= 0x5A:
            hint = " (looks like text, e.g. HTTP)"
        raise RTMPError(
            f"handshake: C0 version byte is 0x{version:02x}, expected 0x03 (plain RTMP){hint}"
        )


def server_response(c0c1: bytes, random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """S0+S1+S2 answering ``c0c1`` (exactly :data:`C0C1_SIZE` bytes)."""
    if len(c0c1) != C0C1_SIZE:
        raise ValueError(f"C0+C1 is {C0C1_SIZE} bytes, got {len(c0c1)}")
    check_version(c0c1[0])
    c1 = bytes(c0c1[1:])
    found = find_digest(c1, FP_KEY[:30]) if c1[4:8] != b"\x00\x00\x00\x00" else None
    if found is None:
        s1 = bytes(8) + random_bytes(HANDSHAKE_SIZE - 8)
        return bytes((RTMP_VERSION,)) + s1 + c1
    scheme, client_digest = found
    signed = bytearray(bytes(4) + SERVER_VERSION + random_bytes(HANDSHAKE_SIZE - 8))
    off = digest_offset(signed, scheme)
    signed[off : off + DIGEST_SIZE] = _hmac(
        FMS_KEY[:36], bytes(signed[:off] + signed[off + DIGEST_SIZE :])
    )
    s2 = random_bytes(HANDSHAKE_SIZE - DIGEST_SIZE)
    s2 += _hmac(_hmac(FMS_KEY, client_digest), s2)
    return bytes((RTMP_VERSION,)) + bytes(signed) + s2
