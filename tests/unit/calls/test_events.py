from __future__ import annotations

import hashlib
import hmac

from ingest.calls.events import SUBSCRIBER_QUEUE_DEFAULT, EventBus, sign


def test_a_slow_subscriber_loses_its_oldest_events_only() -> None:
    bus = EventBus()
    slow = bus.subscribe("livestream:a", maxsize=3)
    default = bus.subscribe()
    for i in range(5):
        bus.emit("custom", "livestream:a", n=i)
    got = [e["n"] for e in iter(slow.get_nowait, None)]
    assert got == [2, 3, 4]
    assert slow.dropped == 2
    assert [e["n"] for e in iter(default.get_nowait, None)] == [0, 1, 2, 3, 4]
    assert default.dropped == 0


def test_default_subscriber_bound() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    for i in range(SUBSCRIBER_QUEUE_DEFAULT + 10):
        bus.emit("custom", None, n=i)
    assert sub.dropped == 10
    first = sub.get_nowait()
    assert first is not None
    assert first["n"] == 10


def test_subscribers_see_only_their_call() -> None:
    bus = EventBus()
    a = bus.subscribe("livestream:a")
    bus.emit("custom", "livestream:b")
    assert a.get_nowait() is None
    a.close()
    bus.emit("custom", "livestream:a")
    assert a.get_nowait() is None


def test_signature_is_hex_hmac_sha256_of_the_body() -> None:
    body = b'{"type":"custom"}'
    assert sign(body, "secret") == hmac.new(b"secret", body, hashlib.sha256).hexdigest()
