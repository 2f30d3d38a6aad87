import hashlib
import hmac

import pytest

from ingest.rtmp.error import RTMPError
from ingest.rtmp.handshake import (
    C0C1_SIZE,
    FMS_KEY,
    FP_KEY,
    HANDSHAKE_SIZE,
    digest_offset,
    find_digest,
    server_response,
)

from .client import client_c1


def test_simple_handshake_echoes_c1() -> None:
    c1 = client_c1(digest=False)
    out = server_response(b"\x03" + c1)
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    assert out[0] == 3
    assert out[5:9] == bytes(4)  # S1 version zero: simple handshake
    assert out[1 + HANDSHAKE_SIZE :] == c1


def test_digest_handshake_signs_s1_and_s2() -> None:
    c1 = client_c1(digest=True)
    scheme, client_digest = find_digest(c1, FP_KEY[:30]) or (None, b"")
    assert scheme == 0
    out = server_response(b"\x03" + c1)
    s1, s2 = out[1 : 1 + HANDSHAKE_SIZE], out[1 + HANDSHAKE_SIZE :]
    assert find_digest(s1, FMS_KEY[:36]) is not None
    key = hmac.new(FMS_KEY, client_digest, hashlib.sha256).digest()
    assert hmac.new(key, s2[:-32], hashlib.sha256).digest() == s2[-32:]
    assert 12 <= digest_offset(s1, 0) <= 12 + 727


def test_version_without_digest_falls_back_to_echo() -> None:
    c1 = bytes(4) + b"\x09\x00\x7c\x02" + bytes(HANDSHAKE_SIZE - 8)
    out = server_response(b"\x03" + c1)
    assert out[1 + HANDSHAKE_SIZE :] == c1


@pytest.mark.parametrize(
    ("first", "hint"),
    [(b"G", "text, e.g. HTTP"), (b"\x16", "TLS"), (b"\x06", "RTMPE"), (b"\x00", "")],
)
def test_bad_version_byte(first: bytes, hint: str) -> None:
    with pytest.raises(RTMPError, match=f"C0 version byte is 0x{first[0]:02x}.*{hint}"):
        server_response(first + bytes(C0C1_SIZE - 1))
