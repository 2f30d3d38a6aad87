"""``ingest bench``: benchmarks that ship with the product, so users can size their machines.

Rows are ``{name, value, unit, target, ok}`` (``ok``: whether the value meets the target, ``None``
for rows without one); rows compared with the ffmpeg baseline also carry ``baseline`` (its
value, measured in the same run) and ``ratio`` (ours / baseline), and their target is a ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .compare import (
    TARGET_RATIO_ONE_STREAM,
    TARGET_RATIO_PER_VIEWER,
    Baseline,
    Ours,
    Plan,
    Report,
)


def parser_rows(seconds: float = 2.0) -> list[dict[str, Any]]:
    from .rtmp import bench_parser

    results: list[dict[str, Any]] = []
    for chunk_size, target in ((128, 200.0), (4096, 1000.0)):
        r = bench_parser(chunk_size, seconds)
        value = float(r["mbit_per_s"])
        results.append(
            {
                "name": f"RTMP parser, chunk size {chunk_size}",
                "value": value,
                "unit": "Mbit/s",
                "target": f">= {target:.0f} Mbit/s per core",
                "ok": value >= target,
            }
        )
    return results


def apply_baseline(rows: list[dict[str, Any]], report: Report) -> None:
    """Give the rows marked ``compare_to`` (the bridge's CPU rows, WHIP forwarding's extra CPU
    per viewer) their ratio to the baseline measured in ``report``: ``"stream"``, the ffmpeg
    baseline's CPU at one stream and one viewer; ``"viewer"``, its ``tee`` fan-out's extra CPU
    per viewer.

    A row that also names ``judged_by`` keeps its ratio but is information only: the target is
    judged by that row of ``report``, which measures the same thing the way the targets are
    defined (the server in a process of its own). The bridge's in-process rows are such: they
    count the bench's own work and the latency probe with the server's, so two rows would
    otherwise give one target two verdicts."""
    base = report.medians(Baseline.name).get("cpu")
    per_viewer = report.per_viewer(Baseline.name)
    for row in rows:
        kind = row.pop("compare_to", None)
        judged_by = row.pop("judged_by", None)
        if kind == "stream":
            baseline, target = base, TARGET_RATIO_ONE_STREAM
        elif kind == "viewer":
            baseline, target = per_viewer, TARGET_RATIO_PER_VIEWER
        else:
            continue
        row["baseline"] = baseline
        row["ratio"] = row["value"] / baseline if baseline else None
        if judged_by:
            row["target"] = f"(info: in-process; judged by the {judged_by} row)"
            row["ok"] = None
            continue
        row["target"] = f"<= {target:g} x ffmpeg"
        row["ok"] = None if row["ratio"] is None else row["ratio"] <= target


def run_all(
    seconds: float = 2.0,
    *,
    plan: Plan | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], Report]:
    """Every benchmark: the parser, the bridge's latency / first frame / CPU rows, the B-frame
    first-frame row, the WHIP forwarding rows (:mod:`.forwarding`), the HLS rows (:mod:`.hls`),
    then ``compare`` and ``scale`` against the ffmpeg baseline. Every CPU row with a target is
    judged by its ratio to a baseline measured in this run: the bridge's and WHIP forwarding's
    to ``compare``/``scale``'s (set here), the HLS rows to the ffmpeg runs of :mod:`.hls`.
    Returns the rows measured here and the comparison's report (its own rows:
    ``report.rows()``)."""
    from . import compare
    from .bridge import bench_bridge, bench_first_frame_bframes
    from .forwarding import bench_forwarding
    from .hls import bench_hls

    say = log or (lambda _: None)
    rows = parser_rows(seconds)
    rows += bench_bridge(seconds, log=say)
    rows.append(bench_first_frame_bframes(say))
    rows += bench_forwarding(seconds, log=say)  # WHIP: forwarded as received
    rows += bench_hls(seconds, log=say)  # LL-HLS part latency; HLS CPU against ffmpeg's
    report = compare.run(plan, log=say)
    apply_baseline(rows, report)
    return rows, report


__all__ = ["Baseline", "Ours", "Plan", "Report", "apply_baseline", "parser_rows", "run_all"]
