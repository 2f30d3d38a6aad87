"""Helpers of the HLS and recording tests: the REST API (ingest.client), events, ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import av
import httpx
import numpy as np

from ingest.app import App
from ingest.calls import wire as w
from ingest.calls.events import Subscription
from ingest.calls.tokens import create_token
from ingest.client import AsyncClient
from tests.conftest import API_KEY, API_SECRET

CALL = "livestream/hlsshow"
CID = "livestream:hlsshow"
CALL_TYPE, CALL_ID = CALL.split("/")


class Api:
    """The REST API through ``ingest.client`` with a server token, for the call ``CALL``; and a
    plain HTTP client (``http``) for what is not the API: playlists, parts, downloads."""

    def __init__(self, port: int, secret: str = API_SECRET, key: str = API_KEY) -> None:
        self.secret = secret
        self.client = AsyncClient(f"http://127.0.0.1:{port}", key, secret=secret, timeout=30)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        self.address = ""

    async def go_live(self, **flags: bool) -> w.CallStateResponse:
        return await self.client.go_live(CALL_TYPE, CALL_ID, **flags)

    async def stop_live(self) -> w.CallStateResponse:
        return await self.client.stop_live(CALL_TYPE, CALL_ID)

    async def end_call(self) -> None:
        await self.client.end_call(CALL_TYPE, CALL_ID)

    async def recordings(self) -> list[w.RecordingResponse]:
        return (await self.client.list_recordings(CALL_TYPE, CALL_ID)).recordings

    async def delete_recording(self, session_id: str, filename: str) -> None:
        await self.client.delete_recording(CALL_TYPE, CALL_ID, session_id, filename)

    async def setup(self, hosts: tuple[str, ...] = ("alice",)) -> str:
        """Users, the call with ``hosts`` as hosts; returns the first host's RTMP URL (the
        others': :meth:`rtmp_url`)."""
        await self.client.upsert_users(*(w.UserRequest(id=u) for u in (*hosts, "viewer")))
        got = await self.client.get_or_create_call(
            CALL_TYPE,
            CALL_ID,
            w.CallRequest(
                created_by_id=hosts[0],
                members=[w.MemberRequest(user_id=h, role="host") for h in hosts],
            ),
        )
        self.address = got.call.ingress.rtmp.address
        return self.rtmp_url(hosts[0])

    def rtmp_url(self, user_id: str) -> str:
        return f"{self.address}/{create_token(self.secret, user_id)}"

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.http.aclose()


@contextlib.asynccontextmanager
async def open_api(app: App) -> AsyncIterator[Api]:
    client = Api(app.http_port)
    try:
        yield client
    finally:
        await client.aclose()


async def wait_event(sub: Subscription, type_: str, within: float = 20) -> dict[str, Any]:
    async def loop() -> dict[str, Any]:
        while True:
            event = await sub.get()
            if event["type"] == type_:
                return event

    return await asyncio.wait_for(loop(), within)


async def ffprobe(*args: str) -> dict[str, Any]:
    """ffprobe's JSON (run without blocking the loop: the server under test is on it)."""
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-of", "json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, err.decode(errors="replace")
    data: dict[str, Any] = json.loads(out)
    return data


def analyse(data: bytes) -> tuple[float, float, list[float]]:
    """Colourfulness of the left and right halves of the last picture, and the two strongest
    audio frequencies (Hz) of the segment."""
    with av.open(io.BytesIO(data), "r", format="mp4") as container:
        frames = list(container.decode(video=0))
        planes = frames[-1].to_ndarray()  # yuv420p: Y rows, then U, then V
        h, w = frames[-1].height, frames[-1].width
        u = planes[h : h + h // 4].reshape(h // 2, w // 2).astype(np.int32) - 128
        v = planes[h + h // 4 :].reshape(h // 2, w // 2).astype(np.int32) - 128
        chroma = np.abs(u) + np.abs(v)
        left, right = float(chroma[:, : w // 4].mean()), float(chroma[:, w // 4 :].mean())
    with av.open(io.BytesIO(data), "r", format="mp4") as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
        rate = container.streams.audio[0].sample_rate
    spectrum = np.abs(np.fft.rfft(pcm))
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    peaks = []
    for _ in range(2):
        i = int(spectrum.argmax())
        peaks.append(float(freqs[i]))
        spectrum[max(0, i - 50) : i + 50] = 0
    return left, right, sorted(peaks)
