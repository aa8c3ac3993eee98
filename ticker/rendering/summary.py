"""The market at a glance: an index over every symbol, and how many rise and fall.

A pure function of the current quotes, so the leader can render it with every tick (the
``market`` event that feeds the page's header) and any process can render it for a page,
and both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ticker.market.model import Quote

INDEX_BASE = 1000.0


@dataclass(frozen=True, slots=True)
class MarketSummary:
    """An equal-weighted index (``INDEX_BASE`` at the open) and the market's breadth."""

    level: float
    change: float
    change_pct: float
    advancers: int  # symbols above their open
    decliners: int  # symbols below it
    unchanged: int
    ts: int  # epoch milliseconds of the newest tick
    seq: int  # its sequence number

    @property
    def total(self) -> int:
        return self.advancers + self.decliners + self.unchanged

    @property
    def direction(self) -> str:
        return "up" if self.change > 0 else "down" if self.change < 0 else "flat"


def summarize(quotes: Iterable[Quote]) -> MarketSummary:
    """Summarize ``quotes`` (one per symbol).

    Equal-weighted, like a price-relative index: each symbol counts for its move since the
    open, not its price, so a $400 stock does not drown out a $9 one.
    """
    quotes = list(quotes)
    if not quotes:
        return MarketSummary(INDEX_BASE, 0.0, 0.0, 0, 0, 0, 0, 0)
    level = INDEX_BASE * sum(q.last / q.open for q in quotes) / len(quotes)
    return MarketSummary(
        level=round(level, 2),
        change=round(level - INDEX_BASE, 2),
        change_pct=round(100.0 * (level - INDEX_BASE) / INDEX_BASE, 2),
        advancers=sum(q.change > 0 for q in quotes),
        decliners=sum(q.change < 0 for q in quotes),
        unchanged=sum(q.change == 0 for q in quotes),
        ts=max(q.ts for q in quotes),
        seq=max(q.seq for q in quotes),
    )
