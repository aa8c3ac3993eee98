"""The ticker-10 workload for the Python peers: the same companies, row markup and schedule as
``workload.json`` (which the Express peer reads too), so every server sends events of the same
size as the app's.

``Market.tick(symbol)`` moves one price and returns the row (HTML) with ``data-ts`` set to the
tick's epoch milliseconds; ``encode`` frames it as one SSE event; ``schedule`` yields, forever,
how long to sleep and which symbol ticks next (symbol i at i/10 s into every second).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

WORKLOAD = json.loads((Path(__file__).with_name("workload.json")).read_text())
INTERVAL = float(WORKLOAD["interval_s"])
SYMBOLS = tuple(c["symbol"] for c in WORKLOAD["companies"])
ROW = "\n".join(WORKLOAD["row"])
ARROWS = {"up": ("▲", "up"), "down": ("▼", "down"), "flat": ("·", "unchanged")}


class Market:
    """A random walk per symbol; only what the row needs."""

    def __init__(self, seed: int = 2026) -> None:
        self._rng = random.Random(seed)
        self.seq = 0
        self.state = {
            c["symbol"]: {
                "name": c["name"],
                "open": c["price"],
                "last": c["price"],
                "high": c["price"],
                "low": c["price"],
                "volume": 0,
            }
            for c in WORKLOAD["companies"]
        }

    def tick(self, symbol: str) -> tuple[int, str]:
        """Move ``symbol`` one step; return its sequence number and its row."""
        s = self.state[symbol]
        previous = s["last"]
        s["last"] = max(0.01, round(previous * (1 + self._rng.gauss(0, 0.002)), 2))
        s["high"], s["low"] = max(s["high"], s["last"]), min(s["low"], s["last"])
        s["volume"] += 100 * self._rng.randint(1, 50)
        self.seq += 1
        now = time.time()
        ts = int(now * 1000)
        direction = (
            "up" if s["last"] > previous else "down" if s["last"] < previous else "flat"
        )
        change = s["last"] - s["open"]
        stamp = datetime.fromtimestamp(now, UTC)
        row = ROW.format(
            symbol=symbol,
            name=s["name"],
            direction=direction,
            trend="gain" if change > 0 else "loss" if change < 0 else "unchanged",
            ts=ts,
            seq=self.seq,
            arrow=ARROWS[direction][0],
            word=ARROWS[direction][1],
            last=f"{s['last']:.2f}",
            change=f"{change:+.2f}",
            change_pct=f"{100 * change / s['open']:+.2f}",
            high=f"{s['high']:.2f}",
            low=f"{s['low']:.2f}",
            volume=f"{s['volume']:,}",
            iso=stamp.isoformat(timespec="milliseconds"),
            clock=stamp.strftime("%H:%M:%S"),
        )
        return self.seq, row


def encode(symbol: str, seq: int, row: str) -> bytes:
    """One SSE event, every line of the row with its own ``data:`` prefix."""
    data = "".join(f"data: {line}\n" for line in row.split("\n"))
    return f"event: {symbol}\nid: {seq}\n{data}\n".encode()


def schedule() -> Iterator[tuple[float, str]]:
    """(seconds to sleep, symbol) forever: each symbol once per interval, evenly spread."""
    step = INTERVAL / len(SYMBOLS)
    due = time.monotonic()
    while True:
        for symbol in SYMBOLS:
            due += step
            yield max(0.0, due - time.monotonic()), symbol
