"""Chart geometry for the auditor console: computed here, drawn as inline SVG by the templates.

No JavaScript and no inline styles (the console's CSP forbids both): bars are ``<rect>``
elements placed here, coloured by CSS classes (``series-0`` … ``series-9``, ``series-other``),
each with a ``<title>`` that names its value; every chart also comes with the same numbers as a
table for keyboards and screen readers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from gateway.audit.insights import DayCount, ReasonCount

__all__ = [
    "Bar",
    "BarChart",
    "HBar",
    "HBarChart",
    "Legend",
    "Tick",
    "day_chart",
    "reason_chart",
]

MAX_SERIES: Final = 8
"""Series drawn on their own; the rest are added up as one ``other`` series."""
OTHER: Final = "other"

_WIDTH: Final = 960.0
_HEIGHT: Final = 260.0
_LEFT: Final = 48.0
_RIGHT: Final = 12.0
_TOP: Final = 12.0
_BOTTOM: Final = 40.0
_ROW: Final = 30.0
_LABEL_WIDTH: Final = 300.0


@dataclass(frozen=True, slots=True)
class Tick:
    """A gridline at ``pos`` (y for vertical charts, x for horizontal ones) with its label."""

    pos: float
    label: str


@dataclass(frozen=True, slots=True)
class Bar:
    """One rectangle: a series' count on one day."""

    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True, slots=True)
class Legend:
    key: str
    label: str
    css: str
    total: int


@dataclass(frozen=True, slots=True)
class BarChart:
    """Stacked bars per day. ``table`` rows are (day, counts in legend order, day total)."""

    width: float
    height: float
    left: float
    top: float
    plot_right: float
    baseline: float
    bars: tuple[Bar, ...]
    yticks: tuple[Tick, ...]
    xticks: tuple[Tick, ...]
    legend: tuple[Legend, ...]
    table: tuple[tuple[str, tuple[int, ...], int], ...]
    total: int


@dataclass(frozen=True, slots=True)
class HBar:
    """One horizontal bar: a reason, its label and count."""

    y: float
    width: float
    key: str
    label: str
    count: int


@dataclass(frozen=True, slots=True)
class HBarChart:
    width: float
    height: float
    left: float
    bar_height: float
    bars: tuple[HBar, ...]
    xticks: tuple[Tick, ...]
    total: int


def _nice_step(top: int, count: int = 4) -> int:
    """A round step (1, 2, 5 × 10^k) giving about ``count`` gridlines up to ``top``."""
    raw = max(top, 1) / count
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return max(1, int(factor * power))
    return max(1, int(10 * power))  # pragma: no cover - the loop always returns


def _scale(top: int) -> tuple[int, list[int]]:
    step = _nice_step(top)
    ceiling = step * max(1, math.ceil(top / step))
    return ceiling, list(range(0, ceiling + 1, step))


def day_chart(
    counts: Sequence[DayCount],
    *,
    first: date,
    days: int,
    label: Callable[[str], str],
    title: Callable[[date, str, int], str],
) -> BarChart:
    """Stacked bars for ``days`` days from ``first``: the ``MAX_SERIES`` largest keys on their
    own (largest at the bottom), the rest as ``OTHER``. ``label`` names a key (``OTHER``
    included) for the legend, ``title`` writes a bar's tooltip."""
    totals: dict[str, int] = defaultdict(int)
    for c in counts:
        totals[c.key] += c.count
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    shown = ranked[:MAX_SERIES]
    series = [*shown, OTHER] if len(ranked) > MAX_SERIES + 1 else ranked
    index = {key: i for i, key in enumerate(series)}
    grid: dict[tuple[date, int], int] = defaultdict(int)
    for c in counts:
        slot = index.get(c.key, index.get(OTHER))
        if slot is not None:
            grid[(c.day, slot)] += c.count
    day_list = [first + timedelta(days=i) for i in range(days)]
    day_totals = [sum(grid[(d, s)] for s in range(len(series))) for d in day_list]
    ceiling, steps = _scale(max(day_totals, default=0))
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    baseline = _TOP + plot_h
    slot_w = plot_w / max(days, 1)
    bar_w = max(1.0, slot_w * 0.72)
    bars: list[Bar] = []
    for i, d in enumerate(day_list):
        x = _LEFT + i * slot_w + (slot_w - bar_w) / 2
        y = baseline
        for s, key in enumerate(series):
            n = grid[(d, s)]
            if not n:
                continue
            h = plot_h * n / ceiling
            y -= h
            name = label(key)
            bars.append(
                Bar(round(x, 2), round(y, 2), round(bar_w, 2), round(h, 2), _css(key, s),
                    title(d, name, n))
            )  # fmt: skip
    yticks = tuple(Tick(round(baseline - plot_h * v / ceiling, 2), str(v)) for v in steps)
    every = max(1, math.ceil(days / 12))
    xticks = tuple(
        Tick(round(_LEFT + i * slot_w + slot_w / 2, 2), d.strftime("%m-%d"))
        for i, d in enumerate(day_list)
        if i % every == 0
    )
    legend = tuple(
        Legend(key, label(key), _css(key, s),
               sum(grid[(d, s)] for d in day_list))
        for s, key in enumerate(series)
    )  # fmt: skip
    table = tuple(
        (d.isoformat(), tuple(grid[(d, s)] for s in range(len(series))), t)
        for d, t in zip(day_list, day_totals, strict=True)
        if t
    )
    return BarChart(
        width=_WIDTH,
        height=_HEIGHT,
        left=_LEFT,
        top=_TOP,
        plot_right=_WIDTH - _RIGHT,
        baseline=baseline,
        bars=tuple(bars),
        yticks=yticks,
        xticks=xticks,
        legend=legend,
        table=table,
        total=sum(day_totals),
    )


def _css(key: str, slot: int) -> str:
    return "series-other" if key == OTHER else f"series-{slot}"


def reason_chart(counts: Sequence[ReasonCount], *, label: Callable[[str], str]) -> HBarChart:
    """One horizontal bar per refusal reason, largest first."""
    ordered = sorted(counts, key=lambda c: (-c.count, c.reason))
    ceiling, steps = _scale(max((c.count for c in ordered), default=0))
    plot_w = _WIDTH - _LABEL_WIDTH - _RIGHT - 40.0
    bar_h = _ROW * 0.66
    bars = tuple(
        HBar(
            y=round(_TOP + i * _ROW, 2),
            width=round(max(1.0, plot_w * c.count / ceiling), 2),
            key=c.reason,
            label=label(c.reason),
            count=c.count,
        )
        for i, c in enumerate(ordered)
    )
    height = _TOP + len(bars) * _ROW + 28.0
    xticks = tuple(Tick(round(_LABEL_WIDTH + plot_w * v / ceiling, 2), str(v)) for v in steps)
    return HBarChart(
        width=_WIDTH,
        height=round(height, 2),
        left=_LABEL_WIDTH,
        bar_height=round(bar_h, 2),
        bars=bars,
        xticks=xticks,
        total=sum(c.count for c in ordered),
    )
