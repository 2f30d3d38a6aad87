"""A real browser for the e2e tests: the system's Chromium driven by Playwright.

Playwright's PyPI package bundles its driver (Node); the browser is Debian's ``chromium``
(``/usr/bin/chromium``, installed by ``scripts/test``), never a downloaded one. Headless, no GPU,
no network services of its own (the test machine has no internet), a fresh profile per launch.

The player is ``samples/whep-player.html``, served by a tiny static server of its own on
127.0.0.1 (another port, so another origin than the ingest server: its WHEP requests are
cross-origin like a real deployment's and the WHEP router's CORS headers are part of what is
tested). It must be a loopback address: Chromium's Local Network Access checks block a page of a
public origin (e.g. one served by ``page.route`` on a made-up host) from fetching 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import BrowserContext, Page, async_playwright

PLAYER = Path(__file__).parents[2] / "samples" / "whep-player.html"

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
]


def chromium_path() -> str:
    """The system Chromium (``INGEST_CHROMIUM`` overrides), or an error saying how to get it."""
    path = os.environ.get("INGEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise RuntimeError(
            f"no Chromium at {path}: `apt-get install chromium` (scripts/test does it), "
            "or set INGEST_CHROMIUM to a Chromium/Chrome binary"
        )
    return path


@asynccontextmanager
async def static_page(body: bytes, path: str = "/whep-player.html") -> AsyncIterator[str]:
    """Serve ``body`` (HTML) at ``path`` on 127.0.0.1 (a free port); yields its URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            found = method == "GET" and target.split("?", 1)[0] == path
            status, content = ("200 OK", body) if found else ("404 Not Found", b"not found")
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Length: {len(content)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n".encode()
                + content
            )
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Browser:
    context: BrowserContext
    player_url: str
    """Where samples/whep-player.html is served."""

    async def open_player(self) -> Page:
        page = await self.context.new_page()
        await page.goto(self.player_url)
        return page


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium with a fresh profile, and the player page served for it."""
    async with (
        static_page(PLAYER.read_bytes()) as player_url,
        async_playwright() as pw,
    ):
        with tempfile.TemporaryDirectory(prefix="ingest-chromium-") as profile:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=chromium_path(),
                headless=True,
                args=CHROMIUM_ARGS,
            )
            try:
                yield Browser(context, player_url)
            finally:
                await context.close()


async def play(
    page: Page, *, server: str, call_type: str, call_id: str, user: str, token: str
) -> None:
    """Fill in the player's form and press Play, like a person would."""
    await page.fill("#server", server)
    await page.fill("#type", call_type)
    await page.fill("#id", call_id)
    await page.fill("#user", user)
    await page.fill("#token", token)
    await page.click("#play")


async def receiver_capabilities(page: Page) -> dict[str, list[dict[str, Any]]]:
    """``RTCRtpReceiver.getCapabilities`` of both kinds: what this browser can decode."""
    caps: dict[str, list[dict[str, Any]]] = await page.evaluate(
        """() => Object.fromEntries(['video', 'audio'].map(kind => [kind,
              RTCRtpReceiver.getCapabilities(kind).codecs.map(c => ({
                  mimeType: c.mimeType, sdpFmtpLine: c.sdpFmtpLine || ''}))]))"""
    )
    return caps


async def stats(page: Page) -> dict[str, dict[str, Any]]:
    """The player's inbound-rtp summary (per kind, with the codec), read now."""
    summary: dict[str, dict[str, Any]] | None = await page.evaluate("() => window.summarize()")
    return summary or {}


async def picture(page: Page) -> list[int]:
    """The video's current picture as 64x36 luma values (0-255), drawn through a canvas."""
    luma: list[int] = await page.evaluate(
        """() => {
            const canvas = document.createElement('canvas');
            canvas.width = 64; canvas.height = 36;
            const ctx = canvas.getContext('2d', {willReadFrequently: true});
            ctx.drawImage(window.player.video, 0, 0, 64, 36);
            const rgba = ctx.getImageData(0, 0, 64, 36).data;
            const out = [];
            for (let i = 0; i < rgba.length; i += 4)
                out.push(Math.round(0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2]));
            return out;
        }"""
    )
    return luma


def fmtp(line: str) -> dict[str, str]:
    """``a=fmtp`` parameters (``k=v;k=v``) as a dict."""
    return dict(p.split("=", 1) for p in line.split(";") if "=" in p)


def offered_h264(sdp: str) -> list[str]:
    """The ``profile-level-id`` of every H.264 entry with ``packetization-mode=1`` in an SDP."""
    pts = {
        line.split(":", 1)[1].split()[0]
        for line in sdp.splitlines()
        if line.startswith("a=rtpmap:") and " H264/" in line
    }
    out = []
    for line in sdp.splitlines():
        if not line.startswith("a=fmtp:"):
            continue
        pt, _, params = line[len("a=fmtp:") :].partition(" ")
        values = fmtp(params.strip())
        if pt in pts and values.get("packetization-mode") == "1":
            out.append(values.get("profile-level-id", "42001f").lower())
    return out
