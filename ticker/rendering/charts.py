"""Price lines as inline SVG, drawn on the server: a sparkline per row and a symbol's chart.

The page runs no JavaScript of ours, so a chart is markup like any other: each tick renders
the row (and, for the symbol page, the chart) once, and the same bytes go to every viewer.
This module does the geometry (prices -> an SVG path in a fixed view box); the templates
``_sparkline.html`` and ``_chart.html`` wrap it in markup and CSS gives it colour.

Paths use relative line-to steps with integer coordinates: a 60-point sparkline is about
250 bytes, which matters because it is sent to every viewer on every tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from ticker.market.model import Quote

SPARK_LEN = 60  # about the last minute at the default of one tick per second


@dataclass(frozen=True, slots=True)
class Line:
    """A price line fitted into a ``width`` x ``height`` view box."""

    width: int
    height: int
    path: str  # the ``d`` of an SVG path, from the oldest price to the newest
    area: str  # the same line closed along the bottom edge, for a filled area
    low: float  # the prices at the bottom and top edges
    high: float
    open_y: int | None  # where the open price runs, if it is within the range drawn
    end_x: int  # where the line ends (the newest price)
    end_y: int


def fit(
    prices: Sequence[float],
    width: int,
    height: int,
    open_price: float | None = None,
    stretch: bool = False,
) -> Line:
    """Scale ``prices`` (oldest first) into the view box, newest at the right edge.

    Two units per price, so a line with fewer prices than fit is drawn from the right and
    grows leftwards as ticks come in (a sparkline that sprawled while young would look like
    a different stock each second); with ``stretch``, a young line spans the whole width
    instead. A flat line is drawn through the middle; one unit of padding keeps the stroke
    inside.
    """
    prices = list(prices[-(width // 2 + 1) :]) or [open_price or 0.0]
    low, high = min(prices), max(prices)
    if open_price is not None and (high - low) > 0:
        # Keep the open in view when it is close, so "above/below the open" reads at a glance.
        span = high - low
        if low - span * 0.5 <= open_price < low:
            low = open_price
        elif high < open_price <= high + span * 0.5:
            high = open_price
    span = high - low
    inner = height - 2

    def y(price: float) -> int:
        if span <= 0:
            return height // 2
        return 1 + round((high - price) / span * inner)

    last = len(prices) - 1
    if stretch and last:
        xs = [round(i * width / last) for i in range(len(prices))]
    else:
        xs = [width - 2 * (last - i) for i in range(len(prices))]
    ys = [y(p) for p in prices]
    moves = " ".join(
        f"{x1 - x0} {y1 - y0}"
        for (x0, y0), (x1, y1) in pairwise(zip(xs, ys, strict=True))
    )
    path = f"M{xs[0]} {ys[0]}" + (f"l{moves}" if moves else "h0")
    end_x = xs[-1]
    area = f"{path}V{height}H{xs[0]}Z"
    open_y = (
        y(open_price) if open_price is not None and low <= open_price <= high else None
    )
    return Line(width, height, path, area, low, high, open_y, end_x, ys[-1])


def sparkline(quote: Quote) -> Line:
    """The row's sparkline: the last ``SPARK_LEN`` prices in a 120 x 28 box."""
    history = quote.history or (quote.last,)
    return fit(history[-SPARK_LEN:], 120, 28, quote.open)


def chart(quote: Quote) -> Line:
    """The symbol page's chart: every price the quote remembers, across a 600 x 150 box."""
    return fit(quote.history or (quote.last,), 600, 150, quote.open, stretch=True)


def position(value: float, low: float, high: float) -> float:
    """Where ``value`` sits between ``low`` and ``high``, as a percentage (0-100)."""
    if high <= low:
        return 50.0
    return round(max(0.0, min(100.0, 100.0 * (value - low) / (high - low))), 1)
