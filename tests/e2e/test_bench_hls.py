"""The HLS rows of ``ingest bench`` run end to end (briefly) and measure something real, ours and
the ffmpeg baseline's alike."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.e2e


def test_hls_rows() -> None:
    from ingest.bench.hls import bench_hls

    rows = {r["name"]: r for r in bench_hls(seconds=1.0)}
    p50 = rows["LL-HLS: frame arrival -> its part downloadable, p50"]["value"]
    assert not math.isnan(p50)
    assert 0 < p50 < 5000  # a part is cut within its duration plus scheduling, not minutes
    assert rows["LL-HLS remux CPU, one 1080p30 stream"]["value"] >= 0
    assert rows["HLS composite CPU, two 720p30 hosts"]["value"] > 5

    remux = rows["LL-HLS: server CPU, one 1080p30 stream in, LL-HLS out"]
    composite = rows["HLS composite: server CPU, two 720p30 hosts in, HLS out"]
    assert remux["baseline"] > 0  # ffmpeg received the push and wrote HLS: CPU was spent
    # decoding two 720p30 streams and encoding one costs real CPU, in both systems
    assert composite["value"] > 5
    assert composite["baseline"] > 5
    for row in (remux, composite):  # judged by the ratio to this run's ffmpeg, not by %
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"])
        assert row["target"].endswith("x ffmpeg")
        assert row["ok"] is (row["ratio"] <= float(row["target"].split()[1]))
