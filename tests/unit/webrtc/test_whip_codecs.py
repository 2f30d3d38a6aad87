"""Which codecs a WHIP answer accepts: one video codec we forward (the offer's order) and Opus."""

from __future__ import annotations

import pytest
from aiortc.sdp import SessionDescription

from ingest.errors import InputError
from ingest.whip import choose_codecs, preferences
from tests.unit.webrtc.offers import CHROME


def without(sdp: str, *payload_types: int) -> str:
    """The offer without the given payload types' lines (and in no m= line)."""
    out = []
    for line in sdp.splitlines():
        if any(
            line.startswith(f"a={kind}:{pt} ")
            for pt in payload_types
            for kind in ("rtpmap", "fmtp", "rtcp-fb")
        ):
            continue
        if line.startswith("m="):
            fields = line.split(" ")
            line = " ".join(fields[:3] + [p for p in fields[3:] if int(p) not in payload_types])
        out.append(line)
    return "\n".join(out) + "\n"


def test_chrome_publishes_vp8_and_opus() -> None:
    chosen = choose_codecs(SessionDescription.parse(CHROME))
    assert chosen["video"].mimeType == "video/VP8"
    assert chosen["video"].payloadType == 96  # the offer's payload type
    assert chosen["audio"].mimeType == "audio/opus"
    assert chosen["audio"].payloadType == 111


def test_h264_with_packetization_mode_1_when_vp8_is_not_offered() -> None:
    chosen = choose_codecs(SessionDescription.parse(without(CHROME, 96, 97)))
    video = chosen["video"]
    assert video.mimeType == "video/H264"
    assert str(video.parameters["packetization-mode"]) == "1"
    assert video.payloadType == 102  # 42001f, mode 1: the first H.264 the offer lists that we take
    prefs = preferences(video)
    assert [p.mimeType for p in prefs] == ["video/H264", "video/rtx"]
    assert prefs[0].parameters == video.parameters


def test_an_offer_without_a_codec_we_forward_is_refused() -> None:
    all_video = [96, 97, 102, 103, 104, 105, 106, 107, 108, 109, 127, 125, 39, 40, 112, 113]
    only_g722 = without(CHROME, 111, 63, 0, 8, *all_video)
    with pytest.raises(InputError, match=r"send VP8 or H\.264"):
        choose_codecs(SessionDescription.parse(only_g722))
