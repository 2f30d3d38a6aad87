"""The pixel-block time code of the glass-to-glass bench survives a round trip and lossy video."""

from __future__ import annotations

import av
import numpy as np
import pytest

from ingest.glass import HEIGHT, WIDTH, WRAP, Row, draw_code, read_code, summarize


@pytest.mark.parametrize("ms", [0, 1, 1_764_000_000_123, WRAP - 1, 0xA5A5A5A5])
def test_code_round_trip(ms: int) -> None:
    img = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
    draw_code(img, ms)
    assert read_code(img) == ms % WRAP


def test_no_code_reads_as_none() -> None:
    assert read_code(np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)) is None
    assert read_code(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)) is None


def test_code_survives_h264_and_scaling() -> None:
    """Encoded at a low quality and decoded at another size, every frame still reads."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "35"}  # low quality
    dec = av.CodecContext.create("h264", "r")
    sent, got = [], []
    for i in range(20):
        img = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        img[:, :, 0] = np.linspace(0, 255, WIDTH, dtype=np.uint8)  # a gradient that moves
        img[:, :, 1] = (np.arange(HEIGHT)[:, None] + 8 * i) % 256
        ms = 1_764_000_000_000 + i * 33
        draw_code(img, ms)
        sent.append(ms % WRAP)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in enc.encode(frame):
            for out in dec.decode(packet):
                got.append(read_code(out.reformat(1280, 720).to_ndarray(format="rgb24")))
    for packet in enc.encode(None):
        for out in dec.decode(packet):
            got.append(read_code(out.reformat(1280, 720).to_ndarray(format="rgb24")))
    assert got == sent


def test_rows_need_enough_frames_and_judge_p50() -> None:
    rows = summarize(
        {"rtmp -> WebRTC": [100.0] * 40, "whip -> WebRTC": [10.0] * 3}, {"whip -> WebRTC": 2}
    )
    by = {r.name: r for r in rows}
    assert by["rtmp -> WebRTC"] == Row("rtmp -> WebRTC", 40, 0, 100.0, 100.0, 250.0)
    assert by["rtmp -> WebRTC"].meets is True
    assert by["whip -> WebRTC"].p50_ms is None  # 3 frames: not measured
    assert by["whip -> WebRTC"].meets is None
    assert by["rtmp -> LL-HLS"].frames == 0
