"""Server-drawn charts: plain SVG shapes computed here, so no chart script is needed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    """One minute's stacked bar: succeeded (bottom) and failed (top), in SVG units."""

    x: float
    width: float
    ok_y: float
    ok_height: float
    fail_y: float
    fail_height: float
    title: str


def throughput_bars(points: list[tuple[dt.datetime, int, int]], *, width: float = 180,
                    height: float = 32) -> list[Bar]:
    """Bars for ``(minute, succeeded, failed)`` points, scaled to the busiest minute."""
    if not points:
        return []
    peak = max(ok + failed for _, ok, failed in points) or 1
    step = width / len(points)
    bars = []
    for i, (minute, ok, failed) in enumerate(points):
        ok_h = height * ok / peak
        fail_h = height * failed / peak
        bars.append(Bar(
            x=round(i * step, 2), width=round(max(step - 0.6, 0.5), 2),
            ok_y=round(height - ok_h, 2), ok_height=round(ok_h, 2),
            fail_y=round(height - ok_h - fail_h, 2), fail_height=round(fail_h, 2),
            title=f"{minute:%H:%M} UTC: {ok:,} succeeded, {failed:,} failed",
        ))
    return bars
