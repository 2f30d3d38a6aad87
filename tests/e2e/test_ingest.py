"""RTMP ingest end to end: real encoders push into a running server, media units come out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ingest.app import App
from ingest.calls import wire
from ingest.calls.events import Subscription
from ingest.calls.tokens import create_token
from ingest.client import AsyncClient
from ingest.media.hub import Reader, TrackAdded, TrackEndedError
from ingest.media.units import Kind, MediaUnit
from tests.conftest import API_KEY, API_SECRET, api
from tests.e2e.media import MEDIA_DIR, expected_from_file, finish, got_from_unit, make_flv, push

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def media() -> Path:
    MEDIA_DIR.mkdir(exist_ok=True)
    return MEDIA_DIR


@dataclass
class Call:
    app: App
    client: AsyncClient
    address: str

    def key(self, user_id: str, ttl: int | None = 3600) -> str:
        return create_token(API_SECRET, user_id, ttl=ttl)

    def url(self, user_id: str) -> str:
        return f"{self.address}/{self.key(user_id)}"


@pytest.fixture
async def call(server: App) -> AsyncIterator[Call]:
    async with api(server) as client:
        await client.upsert_users(
            wire.UserRequest(id="alice"), wire.UserRequest(id="bob"), wire.UserRequest(id="viewer")
        )
        resp = await client.get_or_create_call(
            "livestream",
            "show",
            wire.CallRequest(
                created_by_id="alice",
                members=[
                    wire.MemberRequest(user_id="alice", role="host"),
                    wire.MemberRequest(user_id="bob", role="host"),
                ],
            ),
        )
        yield Call(server, client, resp.call.ingress.rtmp.address)


async def wait_event(
    sub: Subscription, type_: str, within: float = 15, **match: Any
) -> dict[str, Any]:
    async def loop() -> dict[str, Any]:
        while True:
            event = await sub.get()
            if event["type"] == type_ and all(event.get(k) == v for k, v in match.items()):
                return event

    return await asyncio.wait_for(loop(), within)


async def collect(app: App, cid: str = "livestream:show") -> list[MediaUnit]:
    """Every unit of the next publisher in the call, until its tracks end."""
    units: list[MediaUnit] = []
    with app.hub.watch(cid) as watch:
        readers: list[Reader] = []
        while len(readers) < 2:
            event = await asyncio.wait_for(watch.get(), 15)
            if isinstance(event, TrackAdded):
                readers.append(event.track.subscribe(max_queue=100_000))

    async def drain(reader: Any) -> None:
        with contextlib.suppress(TrackEndedError):
            while True:
                units.append(await reader.get())

    await asyncio.wait_for(asyncio.gather(*(drain(r) for r in readers)), 60)
    return units


def compare(units: list[MediaUnit], path: Path, offset_ms: int = 0) -> None:
    expected = expected_from_file(path, offset_ms)
    for kind in ("video", "audio"):
        want = [e for e in expected if e.kind == kind]
        got = [got_from_unit(u) for u in units if u.kind.value == kind]
        assert len(got) == len(want), f"{kind}: {len(got)} units, file has {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == w, f"{kind} unit {i} differs: dts {g.dts}/{w.dts} pts {g.pts}/{w.pts}"


@pytest.mark.parametrize(("profile", "bframes"), [("high", 2), ("baseline", 0)])
async def test_ffmpeg_push_units_match_the_flv_tags(
    call: Call, media: Path, profile: str, bframes: int
) -> None:
    src = make_flv(media / f"{profile}-bf{bframes}.flv", bframes=bframes, profile=profile)
    collecting = asyncio.create_task(collect(call.app))
    # Real time, like OBS: a subscriber that joins mid-burst would start at the cached GOP.
    code, err = await finish(await push(call.url("alice"), src, realtime=True))
    assert code == 0, err
    units = await collecting
    compare(units, src)
    video = [u for u in units if u.kind is Kind.VIDEO]
    assert video[0].keyframe
    assert any(u.pts != u.dts for u in video) == (bframes > 0)
    # Every IDR carries its parameter sets in band (Annex B, SPS then PPS first).
    for u in video:
        if u.keyframe:
            assert u.data.startswith(b"\x00\x00\x00\x01\x67") or u.data[4] & 0x1F == 7


async def test_libavformat_client_through_pyav(call: Call) -> None:
    """PyAV's own RTMP client (libavformat's rtmpproto) publishes frames encoded in memory."""
    collecting = asyncio.create_task(collect(call.app))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.pyav_publisher", call.url("alice"),
        cwd=str(Path(__file__).parents[2]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    sent = json.loads(out)
    units = await collecting
    shifts = set()
    for kind in ("video", "audio"):
        got = [u.dts for u in units if u.kind.value == kind]
        want = sorted(ts for k, ts in sent if k == kind)
        assert len(got) == len(want) > 0
        # libavformat shifts every stream by the AAC priming delay (no negative timestamps);
        # beyond that one shift, shared by audio and video, every dts survives.
        shifts |= {g - w for g, w in zip(got, want, strict=True)}
    assert max(shifts) - min(shifts) <= 1  # each stream's own time base rounds to ms
    assert 0 <= min(shifts) <= 50
    assert next(u for u in units if u.kind is Kind.VIDEO).keyframe


async def test_extended_timestamps_past_4_66_hours(call: Call, media: Path) -> None:
    """A stream crossing 0xFFFFFF ms (4.66 h), where RTMP switches to extended timestamps.

    The 32-bit wrap itself (49.7 days) cannot come from ffmpeg, whose FLV muxer keeps 31 bits;
    tests/unit/rtmp and tests/unit/media/test_timeline.py cover it.
    """
    offset_s = 16777  # the stream starts 215 ms before the boundary
    src = make_flv(media / "baseline-bf0.flv", profile="baseline")
    collecting = asyncio.create_task(collect(call.app))
    proc = await push(
        call.url("alice"), src, realtime=True, extra=["-output_ts_offset", str(offset_s)]
    )
    code, err = await finish(proc)
    assert code == 0, err
    units = await collecting
    compare(units, src, offset_ms=offset_s * 1000)
    assert min(u.dts for u in units) < 0xFFFFFF < max(u.dts for u in units)


async def test_takeover_same_user_new_connection_wins(call: Call, media: Path) -> None:
    src = make_flv(media / "baseline-bf0.flv", profile="baseline")
    with call.app.bus.subscribe("livestream:show") as sub:
        first = await push(call.url("alice"), src, realtime=True, loop=True)
        joined1 = await wait_event(sub, "call.session_participant_joined")
        second = await push(call.url("alice"), src, realtime=True, loop=True)
        left = await wait_event(sub, "call.session_participant_left")
        joined2 = await wait_event(sub, "call.session_participant_joined")
        assert left["participant"]["user_session_id"] == joined1["participant"]["user_session_id"]
        assert (
            joined2["participant"]["user_session_id"] != joined1["participant"]["user_session_id"]
        )
        code, err = await finish(first)  # the old connection was closed by the server
        assert code != 0 or "Broken pipe" in err or "I/O error" in err or err
        parts = call.app.calls.list_participants("livestream:show")
        assert [p.session_id for p in parts] == [joined2["participant"]["user_session_id"]]
        second.terminate()
        await finish(second)


async def test_two_hosts_publish_at_once(call: Call, media: Path) -> None:
    src = make_flv(media / "baseline-bf0.flv", profile="baseline")
    with call.app.bus.subscribe("livestream:show") as sub:
        procs = [await push(call.url(u), src, realtime=True, loop=True) for u in ("alice", "bob")]
        ids = {(await wait_event(sub, "ingress.started"))["user"]["id"] for _ in range(2)}
        assert ids == {"alice", "bob"}
        resp = await call.client.participants("livestream", "show")
        assert sorted(p.user.id for p in resp.participants) == ["alice", "bob"]
        for p in procs:
            p.terminate()
            await finish(p)
        stopped = {(await wait_event(sub, "ingress.stopped"))["user"]["id"] for _ in range(2)}
        assert stopped == {"alice", "bob"}


@pytest.mark.parametrize(
    ("who", "path", "reason"),
    [
        ("garbage", "show", "not a valid JWT"),
        ("expired", "show", "expired at"),
        ("viewer", "show", "not a member of livestream:show"),
        ("alice", "missing", "livestream:missing does not exist"),
        ("alice", "wrongkey", "this server's key"),
    ],
)
async def test_refusals_are_fast_and_say_why(
    call: Call, media: Path, who: str, path: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    src = make_flv(media / "baseline-bf0.flv", profile="baseline")
    key = {
        "garbage": "not-a-token",
        "expired": create_token(API_SECRET, "alice", ttl=1, now=time.time() - 3600),
        "viewer": call.key("viewer"),
        "alice": call.key("alice"),
    }[who]
    address = call.address.replace(".show", f".{path}")
    if path == "wrongkey":
        address = call.address.replace(API_KEY, "otherkey")
    with call.app.bus.subscribe() as sub:
        started = time.monotonic()
        code, err = await finish(await push(f"{address}/{key}", src))
        elapsed = time.monotonic() - started
    assert code != 0
    assert reason in err, err[-800:]
    assert elapsed < 3.0
    assert all(e["type"] != "ingress.started" for e in iter(sub.get_nowait, None))
    assert caplog.records, "the refusal is logged"
    assert all(key not in r.getMessage() for r in caplog.records)  # never the key itself


async def test_backstage_needs_join_backstage(server: App, media: Path) -> None:
    async with api(server) as client:
        await client.upsert_users(wire.UserRequest(id="carol"))
        await client.create_call_type(
            wire.CreateCallTypeRequest(
                name="stage",
                grants={"performer": ["read-call", "join-call", "send-audio", "send-video"]},
                settings=wire.CallSettingsRequest(
                    backstage=wire.BackstageSettingsRequest(enabled=True)
                ),
            )
        )
        resp = await client.get_or_create_call(
            "stage",
            "gig",
            wire.CallRequest(
                created_by_id="carol",
                members=[wire.MemberRequest(user_id="carol", role="performer")],
            ),
        )
        url = f"{resp.call.ingress.rtmp.address}/{create_token(API_SECRET, 'carol')}"
        src = make_flv(media / "baseline-bf0.flv", profile="baseline")
        code, err = await finish(await push(url, src))
        assert code != 0
        assert "in backstage" in err
        await client.go_live("stage", "gig")
    code, err = await finish(await push(url, src))
    assert code == 0, err


@pytest.mark.parametrize("how", ["kick", "remove_member", "revoke"])
async def test_kick_remove_and_revoke_end_the_publish(call: Call, media: Path, how: str) -> None:
    src = make_flv(media / "baseline-bf0.flv", profile="baseline")
    with call.app.bus.subscribe("livestream:show") as sub:
        proc = await push(call.url("alice"), src, realtime=True, loop=True)
        await wait_event(sub, "ingress.started")
        started = time.monotonic()
        if how == "kick":
            await call.client.kick_user("livestream", "show", "alice")
        elif how == "remove_member":
            await call.client.update_call_members("livestream", "show", remove=["alice"])
        else:
            from datetime import UTC, datetime

            await call.client.revoke_tokens("alice", datetime.now(UTC))
        await wait_event(sub, "call.session_participant_left", within=5)
        await finish(proc, within=5)
        assert time.monotonic() - started < 5
    assert call.app.calls.list_participants("livestream:show") == []


async def test_health_reaches_the_api_and_metrics(call: Call, media: Path) -> None:
    import httpx

    src = make_flv(media / "health-bf2-gop150.flv", bframes=2, gop=150, seconds=6)
    with call.app.bus.subscribe("livestream:show") as sub:
        proc = await push(call.url("alice"), src, realtime=True, loop=True)
        await wait_event(sub, "ingress.started")
        # Wait (event-driven) until the hub has seen six seconds of video: two keyframes apart.
        track = None
        with call.app.hub.watch("livestream:show") as watch:
            while track is None:
                ev = await asyncio.wait_for(watch.get(), 10)
                if isinstance(ev, TrackAdded) and ev.kind is Kind.VIDEO:
                    track = ev.track
        reader = track.subscribe(max_queue=10_000)
        keyframes = 0
        while keyframes < 2:
            unit = await asyncio.wait_for(reader.get(), 15)
            keyframes += unit.keyframe
        resp = await call.client.participants("livestream", "show")
        async with api(call.app, token=create_token(API_SECRET, "alice")) as host:
            as_host = await host.participants("livestream", "show")  # a host sees health too
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{call.app.http_port}/metrics")).text
        proc.terminate()
        await finish(proc)
    assert [p.user.id for p in resp.participants] == ["alice"]
    health = as_host.participants[0].health
    assert health is not None
    assert health.transport == "rtmp"
    assert health.video is not None
    assert health.video.resolution == "320x240"
    assert health.video.profile_level is not None
    assert health.video.profile_level.startswith("High")
    assert health.video.b_frames is True
    assert health.video.keyframe_interval_s == pytest.approx(5.0, abs=0.1)
    assert health.audio is not None
    assert health.audio.sample_rate == 44100
    assert any("keyframe interval 5.0 s" in h for h in health.hints)
    assert any("B-frames" in h for h in health.hints)
    assert 'ingest_publisher_b_frames{call_cid="livestream:show",user_id="alice"} 1.0' in metrics
    assert "ingest_rtmp_connections 1.0" in metrics


async def test_reconnect_continues_the_participants_timeline(call: Call, media: Path) -> None:
    src = make_flv(media / "baseline-bf0.flv", profile="baseline")
    first = asyncio.create_task(collect(call.app))
    code, err = await finish(await push(call.url("alice"), src, realtime=True))
    assert code == 0, err
    before = await first
    second = asyncio.create_task(collect(call.app))
    code, err = await finish(await push(call.url("alice"), src, realtime=True))
    assert code == 0, err
    after = await second
    # The encoder restarts at 0, the participant's timeline does not go back.
    end = max(u.dts for u in before)
    assert min(u.dts for u in after) > end
    assert min(u.dts for u in after) - end < 100
    # One constant shift for the whole second connection (audio that came before the first
    # video frame is clamped to the new start, so only audio after it is compared exactly).
    want = expected_from_file(src)
    got = [got_from_unit(u) for u in after]
    want_v = [e for e in want if e.kind == "video"]
    got_v = [g for g in got if g.kind == "video"]
    shift = got_v[0].dts - want_v[0].dts
    assert [(g.dts, g.pts, g.payload) for g in got_v] == [
        (w.dts + shift, w.pts + shift, w.payload) for w in want_v
    ]
    want_a = [e for e in want if e.kind == "audio"]
    got_a = [g for g in got if g.kind == "audio"]
    assert len(got_a) == len(want_a)
    late = [
        (g.dts, w.dts + shift) for g, w in zip(got_a, want_a, strict=True) if g.dts > got_v[0].dts
    ]
    assert late
    assert all(a == b for a, b in late)


@pytest.mark.parametrize(
    ("codec_args", "reason"),
    [
        (["-c:v", "flv", "-c:a", "aac"], "Sorenson H.263"),
        (["-c:v", "libx264", "-c:a", "libmp3lame"], "MP3"),
    ],
)
async def test_unsupported_codec_is_refused_with_ingress_error(
    call: Call, media: Path, tmp_path: Path, codec_args: list[str], reason: str
) -> None:
    bad = tmp_path / "bad.flv"
    await asyncio.to_thread(
        subprocess.run,
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2",
         *codec_args, str(bad)],
        check=True, timeout=60,
    )  # fmt: skip
    good = make_flv(media / "baseline-bf0.flv", profile="baseline")
    with call.app.bus.subscribe("livestream:show") as sub:
        bob = await push(call.url("bob"), good, realtime=True, loop=True)
        await wait_event(sub, "ingress.started", user={"id": "bob"})
        code, _ = await finish(await push(call.url("alice"), bad, realtime=True))
        error = await wait_event(sub, "ingress.error")
        assert error["user"]["id"] == "alice"
        assert reason in error["error"]
        assert "OBS" in error["error"]  # says what to change
        assert code != 0
        # Bob's stream was not disturbed.
        assert [p.user_id for p in call.app.calls.list_participants("livestream:show")] == ["bob"]
        bob.terminate()
        await finish(bob)
