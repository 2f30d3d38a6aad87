"""The bench's counting, the baseline's command line, and how ratios become "meets"."""

from __future__ import annotations

import struct
from typing import Any

from ingest.bench import apply_baseline
from ingest.bench.compare import (
    SRTP_SUITE,
    TARGET_RATIO_ONE_STREAM,
    TARGET_RATIO_PER_VIEWER,
    TARGET_RATIO_SCALE,
    TARGET_SCALE_STREAMS,
    Plan,
    Report,
    Sample,
    baseline_command,
    markdown,
)
from ingest.bench.probe import Counter


def rtp(seq: int, *, ssrc: int = 7, marker: bool = False, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, 0, ssrc) + b"x" * 20


def test_counter_counts_frames_and_gaps_across_the_wrap() -> None:
    c = Counter()
    for seq in (65533, 65534, 0, 1, 3):  # 65535 and 2 never arrive
        c.datagram(rtp(seq, marker=seq in (65534, 3)), video=True)
    assert c.video_packets == 5
    assert c.video_frames == 2
    assert c.lost == 2


def test_counter_late_packet_fills_its_gap_and_rtcp_is_not_rtp() -> None:
    c = Counter()
    for seq in (10, 12, 11):  # reordered, nothing lost
        c.datagram(rtp(seq), video=False)
    c.datagram(struct.pack("!BBH", 0x80, 200, 6) + bytes(24), video=False)  # RTCP SR
    c.datagram(b"\x16\xfe\xfd", video=False)  # not RTP at all
    assert c.audio_packets == 3
    assert c.lost == 0
    assert c.stats() == [0, 0, 3, 0]


def test_counter_keeps_ssrcs_apart() -> None:
    c = Counter()
    for seq in (1, 2, 4):
        c.datagram(rtp(seq, ssrc=1), video=True)
    for seq in (500, 501):
        c.datagram(rtp(seq, ssrc=2), video=True)
    assert c.lost == 1


def test_baseline_listens_once_and_sends_srtp_to_every_sink() -> None:
    one = baseline_command(1935, [[10, 11, 12, 13]], tee=False)
    assert one[one.index("-listen") + 1] == "1"
    assert "rtmp://127.0.0.1:1935/live/bench" in one
    assert one.count("-srtp_out_suite") == 2
    assert SRTP_SUITE in one
    assert one[one.index("-frame_duration") + 1] == "20"
    assert "srtp://127.0.0.1:10?rtcpport=11" in one
    assert "srtp://127.0.0.1:12?rtcpport=13" in one
    key = one[one.index("-srtp_out_params") + 1]
    assert len(key) == 40  # base64 of a 16-byte key and a 14-byte salt

    tee = baseline_command(1935, [[10, 11, 12, 13], [20, 21, 22, 23]], tee=True)
    assert tee[tee.index("-f", tee.index("-c:a")) + 1] == "tee"
    slaves = tee[-1].split("|")
    assert len(slaves) == 4
    assert slaves[0].startswith("[select=v:f=rtp:srtp_out_suite=")
    assert slaves[3].endswith("]srtp://127.0.0.1:22?rtcpport=23")
    assert tee.count("libopus") == 1  # Opus encoded once for every viewer


def sample(system: str, cpu: float, streams: int = 1, viewers: int = 1, lost: int = 0) -> Sample:
    return Sample(system, streams, viewers, cpu, 50.0, [30.0] * streams * viewers, lost, 0.5)


def test_ratios_decide_meets() -> None:
    assert (TARGET_RATIO_ONE_STREAM, TARGET_RATIO_SCALE, TARGET_RATIO_PER_VIEWER) == (1.0, 0.7, 0.8)
    report = Report(Plan())
    report.compare = [
        sample("ingest", 4.0),
        sample("ffmpeg", 5.0),
        sample("ingest", 9.0),  # a noisy run: the median of the ratios ignores it
        sample("ffmpeg", 3.0),
        sample("ingest", 4.5),
        sample("ffmpeg", 5.0),
    ]
    n = TARGET_SCALE_STREAMS
    report.scale = [sample("ingest", 8.0 * n, n), sample("ffmpeg", 5.0 * n, n, lost=3)]
    report.fanout = [
        sample("ingest", 4.0),
        sample("ffmpeg", 5.0),
        sample("ingest", 14.0, viewers=21),
        sample("ffmpeg", 25.0, viewers=21),
    ]
    one = next(r for r in report.rows() if r["name"].startswith("Compare: server CPU"))
    assert one["ratio"] == 0.9  # median of 0.8, 3.0, 0.9
    assert one["ok"] is True  # target: at most 1.0
    scale = next(r for r in report.rows() if r["name"].startswith("Scale: server CPU"))
    assert scale["ratio"] == 8.0 / 5.0
    assert scale["ok"] is False  # target: at most 0.7
    viewer = next(r for r in report.rows() if r["name"].startswith("Fan-out"))
    assert viewer["value"] == 0.5
    assert viewer["baseline"] == 1.0
    assert viewer["ok"] is True  # target: at most 0.8
    assert report.largest_ok("ingest") == n
    assert report.largest_ok("ffmpeg") == 0  # it lost packets at N
    text = markdown(report)  # both systems' medians, and what they do differently
    assert "| ingest | 4.5 |" in text
    assert "| ffmpeg | 5.0 |" in text
    assert "What the two setups do differently" in text


def test_bridge_cpu_rows_get_their_ratio_from_the_same_run() -> None:
    report = Report(Plan())
    report.compare = [sample("ingest", 4.0), sample("ffmpeg", 4.0)]
    report.fanout = [sample("ffmpeg", 4.0), sample("ffmpeg", 6.0, viewers=5)]
    rows = [
        {"name": "one", "value": 5.0, "unit": "% core", "target": "", "ok": None,
         "compare_to": "stream"},
        {"name": "viewer", "value": 0.4, "unit": "% core", "target": "", "ok": None,
         "compare_to": "viewer"},
        {"name": "other", "value": 1.0, "unit": "ms", "target": "< 2 ms", "ok": True},
    ]  # fmt: skip
    apply_baseline(rows, report)
    assert rows[0]["ratio"] == 1.25
    assert rows[0]["ok"] is False
    assert rows[1]["baseline"] == 0.5
    assert rows[1]["ratio"] == 0.8
    assert rows[1]["ok"] is True
    assert "ratio" not in rows[2]
    assert rows[2]["ok"] is True
    assert all("compare_to" not in r for r in rows)


def test_an_in_process_cpu_row_shows_its_ratio_but_leaves_the_verdict_to_the_judging_row() -> None:
    report = Report(Plan())
    report.compare = [sample("ingest", 4.0), sample("ffmpeg", 4.0)]
    report.fanout = [sample("ffmpeg", 4.0), sample("ffmpeg", 6.0, viewers=5)]
    rows: list[dict[str, Any]] = [
        {"name": "one", "value": 5.0, "unit": "% core", "target": "", "ok": None,
         "compare_to": "stream", "judged_by": "Compare"},
        {"name": "viewer", "value": 0.9, "unit": "% core", "target": "", "ok": None,
         "compare_to": "viewer", "judged_by": "Fan-out"},
    ]  # fmt: skip
    apply_baseline(rows, report)
    assert rows[0]["ratio"] == 1.25  # over the 1.0 target: still not a verdict of its own
    assert rows[0]["ok"] is None
    assert rows[0]["target"] == "(info: in-process; judged by the Compare row)"
    assert abs(rows[1]["ratio"] - 1.8) < 1e-9  # 0.9 against tee's (6 - 4) / 4
    assert rows[1]["ok"] is None
    assert "Fan-out" in rows[1]["target"]
    assert all("judged_by" not in r and "compare_to" not in r for r in rows)
    judging = {r["name"].split(":")[0] for r in report.rows() if r["ok"] is not None}
    assert "Compare" in judging  # the row the verdict is left to is in the same report


def test_a_step_not_measured_falls_behind_and_stays_out_of_the_medians() -> None:
    nan = float("nan")
    failed = Sample("ingest", 8, 1, nan, nan, [], 0, 1.0, "WHEP answered 404")
    assert not failed.ok()
    report = Report(Plan())
    report.compare = [sample("ingest", 4.0), sample("ffmpeg", 5.0), failed, sample("ffmpeg", 4.0)]
    assert report.medians("ingest")["cpu"] == 4.0
    assert report.compare_ratio() == 0.8
    report.scale = [failed, sample("ffmpeg", 32.0, 8)]
    assert "not measured" in markdown(report)
    row = next(r for r in report.rows() if r["name"].startswith("Scale: server CPU"))
    assert row["ok"] is False
