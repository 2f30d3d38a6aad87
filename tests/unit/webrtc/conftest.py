"""Fixtures of the WebRTC unit tests."""

from __future__ import annotations

import pytest

from tests.unit.webrtc.synth import chrome_like_h264


@pytest.fixture
def chrome_like(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's aiortc offers H.264 High like Chrome (for the viewer side)."""
    chrome_like_h264(monkeypatch)
