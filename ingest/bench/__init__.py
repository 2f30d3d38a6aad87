"""``ingest bench``: benchmarks that ship with the product, so users can size their machines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run_all(
    seconds: float = 2.0, *, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run every benchmark; each result is {name, value, unit, target, ok} (``ok``: whether the
    value meets the target, ``None`` for rows without one)."""
    from .bridge import bench_bridge
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
    results += bench_bridge(seconds, log=log)
    return results
