"""Recordings through ingest.client: listed with a download URL, deleted, refused when missing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from ingest.app import App
from ingest.calls.events import Subscription
from ingest.client import ApiError
from tests.conftest import api, user_token
from tests.e2e.calls import livestream
from tests.e2e.media import MEDIA_DIR, finish, make_flv, push

pytestmark = pytest.mark.e2e


async def until(sub: Subscription, type_: str) -> dict[str, Any]:
    while (event := await asyncio.wait_for(sub.get(), 30))["type"] != type_:
        pass
    return event


async def test_recordings_are_listed_downloaded_and_deleted(server: App) -> None:
    MEDIA_DIR.mkdir(exist_ok=True)
    src = make_flv(MEDIA_DIR / "baseline-bf0.flv", profile="baseline")
    async with livestream(server, "livestream", "rec") as call:
        client = call.client
        with server.bus.subscribe("livestream:rec") as sub:
            live = await client.go_live("livestream", "rec", start_recording=True)
            assert live.call.recording is True
            proc = await push(f"{call.address}/{user_token('alice')}", src, realtime=True)
            await until(sub, "call.recording_started")
            code, err = await finish(proc)
            assert code == 0, err
            stopped = await client.stop_live("livestream", "rec")
            assert stopped.call.recording is False
            await until(sub, "call.recording_ready")
        (rec,) = (await client.list_recordings("livestream", "rec")).recordings
        assert rec.filename.endswith(".mp4")
        assert rec.end_time is not None
        assert rec.end_time > rec.start_time
        assert rec.url.startswith(f"http://127.0.0.1:{server.http_port}/")
        async with httpx.AsyncClient() as http:
            got = await http.get(rec.url, headers={"Authorization": user_token("viewer")})
        assert got.status_code == 200
        assert got.content[4:8] == b"ftyp"  # an MP4 file

        async with api(server, token=user_token("viewer")) as viewer:
            with pytest.raises(ApiError) as e:  # a viewer may not delete recordings
                await viewer.delete_recording("livestream", "rec", rec.session_id, rec.filename)
            assert e.value.status == 403
        await client.delete_recording("livestream", "rec", rec.session_id, rec.filename)
        assert (await client.list_recordings("livestream", "rec")).recordings == []
        with pytest.raises(ApiError) as e:
            await client.delete_recording("livestream", "rec", rec.session_id, rec.filename)
        assert e.value.status == 404
        assert "list them with GET .../recordings" in e.value.message
