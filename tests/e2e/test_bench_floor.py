"""``ingest bench floor`` end to end, small and short: this server, the floor process and the
ffmpeg baseline, each fed by real ffmpeg publishers and counted by the same real viewers."""

from __future__ import annotations

import re

import pytest

from ingest.bench import floor
from ingest.bench.compare import Plan

pytestmark = pytest.mark.e2e

SMOKE = Plan(warmup=0.5, window=1.5, width=320, height=240, video_bit_rate="400k")


def test_floor_is_measured_beside_ours_and_ffmpeg_with_ratios() -> None:
    report = floor.run(streams=(2,), runs=1, plan=SMOKE)

    samples = report.samples[2]
    assert sorted(samples) == ["ffmpeg", "floor", "ingest"]
    for name, runs in samples.items():
        (s,) = runs
        assert (s.streams, s.viewers) == (2, 1), (name, s)
        assert s.cpu > 0, (name, s)  # a process that did the work
        assert len(s.fps) == 2, (name, s)
        # 30 fps input: every viewer got the video; the floor's RTP numbering has no gaps
        assert s.min_fps > 10, (name, s)
        assert s.lost == 0, (name, s)

    (row,) = report.rows()
    for key in ("ingest", "floor", "ffmpeg", "ingest/ffmpeg", "floor/ffmpeg", "ingest/floor"):
        value = row[key]
        assert value is not None, (key, row)
        assert value > 0, (key, row)
    assert row["ingest/floor"] == pytest.approx(row["ingest"] / row["floor"])

    text = floor.markdown(report)
    line = re.search(r"^\| 2 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
    assert line is not None, text
    assert float(line.group(2)) == pytest.approx(row["floor"], abs=0.01)
