"""The HLS rows of ``ingest bench`` run end to end (briefly) and measure something real."""

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
    composite = rows["HLS composite CPU, two 720p30 hosts"]["value"]
    assert composite > 5  # decoding two 720p30 streams and encoding one costs real CPU
