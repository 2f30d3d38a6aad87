"""H.264 answer codecs: the stream's profile-level-id on the offer's matching payload type."""

from __future__ import annotations

import logging

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from ingest.webrtc.negotiation import h264_answer_codecs, opus_preferences
from tests.unit.webrtc.offers import CHROME, FIREFOX


def video_codecs(offer: str) -> list[RTCRtpCodecParameters]:
    media = next(m for m in SessionDescription.parse(offer).media if m.kind == "video")
    return media.rtp.codecs


def test_high_stream_takes_chromes_high_payload_type() -> None:
    choice = h264_answer_codecs(video_codecs(CHROME), "640028")
    assert choice is not None
    h264, rtx = choice.codecs
    assert h264.payloadType == 112  # Chrome's 64001f entry
    assert h264.parameters == {
        "level-asymmetry-allowed": 1,
        "packetization-mode": 1,
        "profile-level-id": "640028",
    }
    assert (rtx.name, rtx.payloadType, rtx.parameters["apt"]) == ("rtx", 113, 112)
    assert choice.profile_level_id == "640028"
    assert choice.exact
    # only feedback aiortc handles; transport-cc / ccm fir are not answered
    assert {(f.type, f.parameter) for f in h264.rtcpFeedback} == {
        ("nack", None),
        ("nack", "pli"),
        ("goog-remb", None),
    }


@pytest.mark.parametrize(
    ("stream", "payload_type"),
    [
        ("42e01f", 106),  # constrained baseline (the B-frame-free re-encode)
        ("42001f", 102),  # baseline
        ("4d0029", 127),  # main
        ("640c1f", 112),  # constrained high: played by a High decoder
    ],
)
def test_each_profile_finds_its_payload_type(stream: str, payload_type: int) -> None:
    choice = h264_answer_codecs(video_codecs(CHROME), stream)
    assert choice is not None
    assert choice.codecs[0].payloadType == payload_type
    assert choice.codecs[0].parameters["profile-level-id"] == stream
    assert choice.codecs[0].parameters["packetization-mode"] == 1


def test_packetization_mode_0_entries_are_never_chosen() -> None:
    codecs = [c for c in video_codecs(CHROME) if c.parameters.get("packetization-mode") != "1"]
    assert h264_answer_codecs(codecs, "42e01f") is None


def test_firefox_offers_no_high_so_the_answer_repeats_its_entry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "ingest.webrtc"):
        choice = h264_answer_codecs(video_codecs(FIREFOX), "640028")
    assert choice is not None
    assert not choice.exact
    assert choice.codecs[0].payloadType == 126
    assert choice.codecs[0].parameters["profile-level-id"] == "42e01f"
    assert choice.profile_level_id == "42e01f"
    assert [c.payloadType for c in choice.codecs] == [126, 127]
    assert "no H.264 profile able to decode 640028" in caplog.text


def test_no_h264_offered() -> None:
    vp8_only = [c for c in video_codecs(CHROME) if c.name in ("VP8", "rtx")]
    assert h264_answer_codecs(vp8_only, "640028") is None


def test_unparsable_stream_profile_falls_back() -> None:
    choice = h264_answer_codecs(video_codecs(CHROME), "zzzzzz")
    assert choice is not None
    assert not choice.exact
    assert choice.codecs[0].payloadType == 106


def test_opus_preferences() -> None:
    assert [c.mimeType for c in opus_preferences()] == ["audio/opus"]


def test_mdns_candidates_are_dropped_and_others_kept() -> None:
    from ingest.webrtc.negotiation import without_mdns_candidates

    sdp = (
        "v=0\r\n"
        "a=candidate:1 1 udp 2122260223 3f1c2d4e-1111-2222-3333-4444.local 54321 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 192.0.2.7 54322 typ host\r\n"
        "a=candidate:3 1 udp 1686052607 198.51.100.9 40000 typ srflx raddr 0.0.0.0 rport 0\r\n"
        "a=end-of-candidates\r\n"
    )
    out = without_mdns_candidates(sdp)
    assert ".local" not in out
    assert "192.0.2.7 54322" in out
    assert "198.51.100.9" in out
    assert out.endswith("a=end-of-candidates\r\n")
