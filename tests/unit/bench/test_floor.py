"""The floor's stream-key routing and how its report turns samples into medians and ratios."""

from __future__ import annotations

import socket

import pytest

from ingest.bench.compare import Sample
from ingest.bench.floor import FloorHandler, FloorReport, markdown
from ingest.errors import MediaError
from ingest.rtmp.server import PublishRequest


def sample(system: str, streams: int, cpu: float, *, lost: int = 0, failed: str = "") -> Sample:
    return Sample(system, streams, 1, cpu, 50.0, [30.0] * streams, lost, 0.5, failed)


async def test_the_floor_refuses_stream_keys_it_has_no_sink_for() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        handler = FloorHandler([[5000, 5001, 5002, 5003]], sock, transport=None)
        for key in ("s1", "x", "s-1x"):
            with pytest.raises(MediaError, match="stream keys s0 to s0"):
                await handler.on_publish(PublishRequest("live", key, "127.0.0.1:1"), print)


def test_report_takes_medians_of_clean_runs_and_the_three_ratios() -> None:
    report = FloorReport()
    report.samples[8] = {
        "ingest": [sample("ingest", 8, 24.0), sample("ingest", 8, 28.0), sample("ingest", 8, 26.0)],
        "floor": [sample("floor", 8, 16.0), sample("floor", 8, 99.0, lost=3)],  # lossy: out
        "ffmpeg": [sample("ffmpeg", 8, 32.0), sample("ffmpeg", 8, float("nan"), failed="x")],
    }
    (row,) = report.rows()
    assert row["ingest"] == pytest.approx(26.0 / 8)
    assert row["floor"] == pytest.approx(2.0)
    assert row["ffmpeg"] == pytest.approx(4.0)
    assert row["ingest/ffmpeg"] == pytest.approx(3.25 / 4.0)
    assert row["floor/ffmpeg"] == pytest.approx(0.5)
    assert row["ingest/floor"] == pytest.approx(3.25 / 2.0)
    assert "| 8 | 3.25 | 2.00 | 4.00 | 0.81 | 0.50 | 1.62 |" in markdown(report)


def test_a_system_not_measured_leaves_its_ratios_empty() -> None:
    report = FloorReport()
    report.samples[1] = {"ingest": [sample("ingest", 1, 5.0)], "ffmpeg": []}
    (row,) = report.rows()
    assert (row["floor"], row["ingest/floor"], row["ingest/ffmpeg"]) == (None, None, None)
    assert "| 1 | 5.00 | - | - | - | - | - |" in markdown(report)
