"""A web app on another origin calls the API from Chromium with a user's token (CORS)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from ingest.app import App
from ingest.calls import wire as w
from tests.conftest import API_KEY, api, user_token
from tests.e2e.browser import chromium, static_page

pytestmark = pytest.mark.e2e

PAGE = b"""<!doctype html><meta charset="utf-8"><title>host app</title>
<script>
// What a host page does: go live with the signed-in host's own token.
window.goLive = async (server, apiKey, token) => {
  const url = `${server}/api/v2/video/call/livestream/show/go_live?api_key=${apiKey}`;
  const resp = await fetch(url, {
    method: "POST",
    headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"},
    body: JSON.stringify({start_hls: false}),
  });
  return {status: resp.status, body: await resp.json()};
};
</script>"""


async def test_a_host_page_on_another_origin_goes_live(app_factory: Any) -> None:
    async with static_page(PAGE, "/host.html") as page_url:
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(page_url))
        server: App = await app_factory(cors_allowed_origins=origin)
        async with api(server) as client:
            await client.upsert_users(w.UserRequest(id="alice"), w.UserRequest(id="viewer"))
            await client.get_or_create_call(
                "livestream",
                "show",
                w.CallRequest(
                    created_by_id="alice",
                    members=[w.MemberRequest(user_id="alice", role="host")],
                ),
            )
        base = f"http://127.0.0.1:{server.http_port}"
        async with chromium() as browser:
            page = await browser.context.new_page()
            await page.goto(page_url)
            refused = await page.evaluate(
                "([s, k, t]) => goLive(s, k, t)", [base, API_KEY, user_token("viewer")]
            )
            assert refused["status"] == 403
            assert "user 'viewer' may not update call" in refused["body"]["message"]
            ok = await page.evaluate(
                "([s, k, t]) => goLive(s, k, t)", [base, API_KEY, user_token("alice")]
            )
            assert ok["status"] == 200, ok
            assert ok["body"]["call"]["backstage"] is False
        async with api(server) as client:
            assert (await client.get_call("livestream", "show")).call.backstage is False
