"""The market's model: fictional companies, their quotes, and how one tick moves a price.

``make_universe`` turns a seed into the same companies and symbols on every machine (Faker,
seeded). ``Market`` moves prices with a random walk in log space. Nothing here knows about
time passing: when ticks happen is ``ticker.market.feed``'s business.
"""

from __future__ import annotations

import math
import random
import re
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from faker import Faker

SECTORS = (
    "Technology",
    "Health Care",
    "Financials",
    "Energy",
    "Industrials",
    "Consumer Staples",
    "Consumer Discretionary",
    "Utilities",
    "Materials",
    "Real Estate",
    "Communication",
)
# Words that make poor ticker letters ("Smith, Jones and Brown PLC" -> SJB, not SJABP).
_NOT_IN_SYMBOL = {"AND", "INC", "LLC", "LTD", "PLC", "GROUP", "SONS", "CO"}
SYMBOL_RE = re.compile(r"[A-Z]{2,5}")
# Prices a quote remembers: five minutes at the default of one tick per second. The row's
# sparkline draws the last SPARK_LEN of them, the symbol page's chart all of them.
HISTORY_LEN = 300


@dataclass(frozen=True, slots=True)
class Company:
    """A listed fictional company and the character of its stock."""

    symbol: str
    name: str
    sector: str
    reference_price: float
    volatility: float  # standard deviation of one tick's log return
    drift: float  # mean of one tick's log return


@dataclass(frozen=True, slots=True)
class Quote:
    """The state of one symbol right after a tick. Immutable: a tick makes a new one."""

    symbol: str
    name: str
    sector: str
    last: float
    previous: float
    open: float
    high: float
    low: float
    volume: int
    ts: int  # epoch milliseconds of the tick
    seq: int  # market-wide sequence number: later ticks have larger numbers
    # The latest prices, oldest first, ending with ``last`` (at most HISTORY_LEN): what the
    # sparklines and the symbol page's chart are drawn from. It travels with the quote, so
    # a process that joins late (or a new leader, through Redis) draws the same lines.
    history: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Quote:
        """The inverse of ``dataclasses.asdict`` (JSON turns the history into a list)."""
        return cls(**{**data, "history": tuple(data.get("history") or ())})  # type: ignore[arg-type]

    @property
    def change(self) -> float:
        return round(self.last - self.open, 2)

    @property
    def change_pct(self) -> float:
        return round(100.0 * (self.last - self.open) / self.open, 2)

    @property
    def direction(self) -> str:
        """How the last tick moved the price: ``up``, ``down`` or ``flat``."""
        if self.last > self.previous:
            return "up"
        if self.last < self.previous:
            return "down"
        return "flat"

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view, including the derived fields."""
        return {
            "symbol": self.symbol,
            "name": self.name,
            "sector": self.sector,
            "last": self.last,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "change": self.change,
            "change_pct": self.change_pct,
            "direction": self.direction,
            "volume": self.volume,
            "ts": self.ts,
            "seq": self.seq,
        }


def _symbol_candidates(name: str) -> list[str]:
    words = [w.upper() for w in re.findall(r"[A-Za-z]+", name)]
    words = [w for w in words if w not in _NOT_IN_SYMBOL] or words
    first = words[0]
    candidates = []
    if len(words) >= 2:
        candidates.append("".join(w[0] for w in words)[:5])
        candidates.append(first[:3] + words[1][0])
    candidates += [first[:4], first[:3], first[:5], first[:2] + first[-1]]
    return [c for c in candidates if SYMBOL_RE.fullmatch(c)]


def make_universe(seed: int, count: int) -> list[Company]:
    """Make ``count`` companies with unique 2-5 letter symbols, the same for the same seed.

    Faker is seeded per instance (not globally) so nothing else in the process disturbs it,
    and its locale is fixed because symbols are derived from the generated names.
    """
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    companies: list[Company] = []
    taken: set[str] = set()
    names: set[str] = set()
    while len(companies) < count:
        name = fake.company()
        if name in names:
            continue
        symbol = next((c for c in _symbol_candidates(name) if c not in taken), None)
        while symbol is None or symbol in taken:
            symbol = "".join(rng.choices(string.ascii_uppercase, k=4))
        names.add(name)
        taken.add(symbol)
        companies.append(
            Company(
                symbol=symbol,
                name=name,
                sector=rng.choice(SECTORS),
                # Log-uniform between $8 and $400: a few pricey stocks, many cheap ones.
                reference_price=round(
                    math.exp(rng.uniform(math.log(8), math.log(400))), 2
                ),
                volatility=rng.uniform(0.0008, 0.004),
                drift=rng.uniform(-0.00005, 0.0001),
            )
        )
    return companies


class Market:
    """Current quotes of a universe, moved one symbol at a time by :meth:`tick`."""

    def __init__(
        self,
        companies: list[Company],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.companies = {c.symbol: c for c in companies}
        self._rng = rng or random.Random()
        self._clock = clock
        now = self._now_ms()
        self.seq = 0
        self.quotes: dict[str, Quote] = {}
        for c in companies:
            self.seq += 1
            p = c.reference_price
            self.quotes[c.symbol] = Quote(
                c.symbol, c.name, c.sector, p, p, p, p, p, 0, now, self.seq, (p,)
            )

    def restore(self, quotes: dict[str, Quote]) -> None:
        """Continue from ``quotes`` (e.g. the last published ones) instead of the open."""
        for symbol, quote in quotes.items():
            if symbol in self.companies:
                self.quotes[symbol] = quote
                self.seq = max(self.seq, quote.seq)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def tick(self, symbol: str, shock: float = 0.0) -> Quote:
        """Move ``symbol`` one step (plus ``shock``, a log return: news) and return its
        new quote."""
        company = self.companies[symbol]
        q = self.quotes[symbol]
        step = self._rng.gauss(company.drift, company.volatility) + shock
        # Rounding to cents could reach zero for a penny stock: a price is never <= 0.
        last = max(0.01, round(q.last * math.exp(step), 2))
        self.seq += 1
        q = replace(
            q,
            last=last,
            previous=q.last,
            high=max(q.high, last),
            low=min(q.low, last),
            volume=q.volume + 100 * self._rng.randint(1, 50),
            ts=self._now_ms(),
            seq=self.seq,
            history=(*q.history[1 - HISTORY_LEN :], last),
        )
        self.quotes[symbol] = q
        return q
