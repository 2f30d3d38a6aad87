"""A WHEP viewer child process that takes its ICE servers from the server (``Link`` headers).

``python -m tests.e2e.ice_viewer WHEP_URL TOKEN [relay]``: OPTIONS on the WHEP URL for the ICE
servers (RFC 9725 ``rel="ice-server"`` links), gathers (relay candidates only with ``relay``),
POSTs the offer, and once a video frame has been decoded prints
``first-frame <local candidate type> <remote address>`` of the nominated pair, then runs until
killed. Errors go to stderr with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import re
import sys

import httpx
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy

TIMEOUT = 45.0
_LINK = re.compile(r"<(?P<url>[^>]+)>\s*;(?P<params>[^<]*)")
_PARAM = re.compile(r'(\w[\w-]*)="([^"]*)"')


def ice_servers(link_header: str) -> list[RTCIceServer]:
    servers = []
    for m in _LINK.finditer(link_header):
        params = dict(_PARAM.findall(m["params"]))
        if params.get("rel") != "ice-server":
            continue
        servers.append(
            RTCIceServer(
                urls=m["url"], username=params.get("username"), credential=params.get("credential")
            )
        )
    return servers


async def run(url: str, token: str, relay: bool) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        options = await http.options(url)
        servers = ice_servers(options.headers.get("link", ""))
        if relay and not servers:
            raise SystemExit("the server announced no ICE servers")
        policy = RTCIceTransportPolicy.RELAY if relay else RTCIceTransportPolicy.ALL
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        frame = asyncio.get_running_loop().create_future()
        readers: list[asyncio.Task[None]] = []

        @pc.on("track")
        def on_track(track: object) -> None:
            async def first() -> None:
                await track.recv()  # type: ignore[attr-defined]
                if not frame.done():
                    frame.set_result(None)

            if getattr(track, "kind", "") == "video":
                readers.append(asyncio.create_task(first()))

        await pc.setLocalDescription(await pc.createOffer())
        resp = await http.post(
            url,
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
        )
        if resp.status_code != 201:
            raise SystemExit(f"WHEP POST: {resp.status_code} {resp.text}")
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
        await asyncio.wait_for(frame, TIMEOUT)
        # which path carried it (aioice's nominated pair: test-only use of a private name)
        pair = pc.getTransceivers()[0].receiver.transport.transport._connection._nominated[1]
        remote = f"{pair.remote_candidate.host}:{pair.remote_candidate.port}"
        print("first-frame", pair.local_candidate.type, remote, flush=True)
        await asyncio.Event().wait()


def main() -> None:
    asyncio.run(run(sys.argv[1], sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "relay"))


if __name__ == "__main__":
    main()
