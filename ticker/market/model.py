"""The market's model: fictional companies, their quotes, and how a price moves.

``make_universe`` turns a seed into the same companies and symbols on every machine (Faker,
seeded). ``Market`` is a random walk in log space that is a pure function of the seed and
the tick: any process computes the same quote for the same moment, so a restarted app
continues the market instead of starting it again. When ticks and headlines happen is
``ticker.market.clock``'s business; waiting for them is ``ticker.market.feed``'s.
"""

from __future__ import annotations

import math
import random
import re
import string
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from statistics import NormalDist

from faker import Faker

from ticker.market.clock import BLOCK, DAY_TICKS, Schedule, Story, draws

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
                # A day is 86,400 ticks: this drifts a price by -2 % to +4 % a day.
                drift=rng.uniform(-0.00000025, 0.0000005),
            )
        )
    return companies


# One tick's log return is ``drift + volatility * z``: z is one of 256 levels of a standard
# normal (quantiles, scaled to variance 1), picked by one byte of the hash. Fine enough for
# any chart, and it lets a whole day be replayed as a table lookup per tick, in C.
_Z = [NormalDist().inv_cdf((b + 0.5) / 256) for b in range(256)]
_Z = [z / math.sqrt(math.fsum(z * z for z in _Z) / 256) for z in _Z]
# Shares traded in one tick: 100 to 5,200 in lots of 20, ``20 * (5 + byte)``, so a day's
# volume is a plain sum of bytes (C, a few ns a tick).
_LOT = 20
_MIN_LOTS = 5
# A day opens near the reference price: reference * exp(N(0, OPEN_SPREAD)).
OPEN_SPREAD = 0.02


def _price(x: float) -> float:
    """The price of log price ``x``, in cents; rounding could reach zero for a penny
    stock, and a price is never <= 0. Monotonic, so the day's high is the price of its
    highest log price."""
    return max(0.01, round(math.exp(x), 2))


@dataclass(slots=True)
class _Walk:
    """Where one symbol's path stands: its latest tick, and its day so far (log prices)."""

    k: int
    day: int
    open: float
    x: float
    high_x: float
    low_x: float
    volume: int
    history: deque[float]
    block: int = -1  # the block whose steps are below
    steps: list[float] = field(default_factory=list)
    volumes: bytes = b""


class Market:
    """The market as a function of the seed and the time: ask it at any moment, in any
    process, and it gives the same quotes.

    Symbol ``s``'s price at its tick ``k`` is its day's open times the exponential of the
    sum of the day's log returns up to ``k``; each return is drawn from a hash of
    ``(seed, s, k)`` (per block of ticks: :func:`~ticker.market.clock.draws`), plus the
    shock of any headline about it since its previous tick. When ticks and headlines happen
    is the :class:`~ticker.market.clock.Schedule`'s business. A market made at time ``t``
    replays each symbol's day up to ``t`` (C-level table lookups and
    ``itertools.accumulate``, about 0.1 µs a tick), so it starts exactly where any other
    process's market stands, with the day's open, high, low and volume and a full history;
    :meth:`tick` then moves one symbol to its next tick, by the very same arithmetic
    (float additions in the same order), so a replayed path and a ticked one are equal to
    the last bit, which is what lets two processes agree.

    Why replay rather than hand the state over (through Redis, say): nothing has to be
    saved, a single process without Redis continues just the same, and a new leader or a
    process that lost Redis cannot continue from a stale or missing copy. Why a day counted
    in ticks (``DAY_TICKS``): the replay, at most about one day of ticks (early in a day,
    yesterday's path is replayed for the chart, but not its range), costs the same whatever
    ``TICKER_INTERVAL`` is, and the day's range means something: it opens near the
    reference price instead of drifting away for ever.
    """

    def __init__(
        self,
        companies: list[Company],
        seed: int,
        interval: float = 1.0,
        news_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.seed = seed
        self.schedule = Schedule(seed, len(companies), interval, news_s)
        self._clock = clock
        self.companies = {c.symbol: c for c in companies}
        self.symbols = tuple(self.companies)
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self._steps = {
            c.symbol: [c.drift + c.volatility * z for z in _Z] for c in companies
        }
        now = self.now_ms()
        self._walks = {s: self._replay(s, now) for s in self.symbols}
        self.quotes: dict[str, Quote] = {s: self._quote(s) for s in self.symbols}
        self.seq = max(q.seq for q in self.quotes.values())

    def now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    # --- the path -------------------------------------------------------------------------

    def day_open(self, symbol: str, day: int) -> float:
        """The price ``symbol`` opens ``day`` at: near its reference, whatever yesterday did."""
        raw = int.from_bytes(draws(self.seed, "open", symbol, day, size=8), "little")
        z = max(-3.0, min(3.0, NormalDist().inv_cdf((raw + 0.5) / 2**64)))
        reference = self.companies[symbol].reference_price
        return max(0.01, round(reference * math.exp(OPEN_SPREAD * z), 2))

    @staticmethod
    def shock(company: Company, story: Story) -> float:
        """The log return a headline adds to its company's next tick: two to five times
        the stock's usual tick, up for good news, down for bad."""
        size = company.volatility * (2.0 + 3.0 * story.size)
        return size if story.good else -size

    def _block(self, symbol: str, block: int) -> tuple[list[float], bytes]:
        """Log returns (news included) and volume bytes of ticks ``block * BLOCK ...``."""
        data = draws(self.seed, "walk", symbol, block, size=2 * BLOCK)
        steps = list(map(self._steps[symbol].__getitem__, data[:BLOCK]))
        schedule = self.schedule
        if schedule.news_ms:
            first = block * BLOCK
            company = self.companies[symbol]
            for story in schedule.stories_of(
                self._index[symbol],
                schedule.tick_ms(symbol, first - 1),
                schedule.tick_ms(symbol, first + BLOCK - 1),
            ):
                k = schedule.first_tick_from(symbol, story.ts)
                steps[k - first] += self.shock(company, story)
        return steps, data[BLOCK:]

    def _day(self, symbol: str, day: int, last: int, whole: bool = True) -> _Walk:
        """``symbol``'s day ``day`` from its open up to its tick ``last``; with ``whole``
        false, only its path (yesterday, for the chart), not its range and volume."""
        opening = self.day_open(symbol, day)
        x = high = low = math.log(opening)
        volume = 0
        tail: list[float] = []
        start = day * DAY_TICKS
        steps: list[float] = []
        volumes = b""
        for block in range(start // BLOCK, last // BLOCK + 1):
            steps, volumes = self._block(symbol, block)
            a = max(start - block * BLOCK, 0)
            b = min(last - block * BLOCK + 1, BLOCK)
            xs = list(accumulate(steps[a:b], initial=x))
            x = xs[-1]
            if whole:
                high, low = max(high, max(xs)), min(low, min(xs))
                volume += _LOT * (_MIN_LOTS * (b - a) + sum(volumes[a:b]))
            # The chart needs the day's last HISTORY_LEN prices only.
            if last - block * BLOCK < BLOCK + HISTORY_LEN:
                tail = (tail + xs[1:])[-HISTORY_LEN:]
        history = deque(map(_price, tail), maxlen=HISTORY_LEN)
        return _Walk(
            last,
            day,
            opening,
            x,
            high,
            low,
            volume,
            history,
            last // BLOCK,
            steps,
            volumes,
        )

    def _replay(self, symbol: str, t_ms: int) -> _Walk:
        """Where ``symbol`` stands at ``t_ms``, computed from its day's first tick."""
        k = self.schedule.tick_at(symbol, t_ms)
        day = k // DAY_TICKS
        walk = self._day(symbol, day, k)
        if (
            len(walk.history) < HISTORY_LEN
        ):  # early in the day: the chart starts yesterday
            yesterday = self._day(symbol, day - 1, day * DAY_TICKS - 1, whole=False)
            walk.history = deque(
                [*yesterday.history, *walk.history][-HISTORY_LEN:], maxlen=HISTORY_LEN
            )
        return walk

    def _quote(self, symbol: str) -> Quote:
        walk, company = self._walks[symbol], self.companies[symbol]
        ts = self.schedule.tick_ms(symbol, walk.k)
        history = tuple(walk.history)
        return Quote(
            symbol,
            company.name,
            company.sector,
            history[-1],
            history[-2] if len(history) > 1 else walk.open,
            walk.open,
            _price(walk.high_x),
            _price(walk.low_x),
            walk.volume,
            ts,
            Schedule.seq(ts, self._index[symbol]),
            history,
        )

    # --- moving on --------------------------------------------------------------------------

    def next_tick_ms(self, symbol: str) -> int:
        """When ``symbol`` ticks next."""
        return self.schedule.tick_ms(symbol, self._walks[symbol].k + 1)

    def tick(self, symbol: str) -> Quote:
        """Move ``symbol`` to its next tick and return its new quote."""
        walk = self._walks[symbol]
        k = walk.k + 1
        day = k // DAY_TICKS
        if day != walk.day:  # a new day opens near the reference price
            walk.day, walk.open = day, self.day_open(symbol, day)
            walk.x = walk.high_x = walk.low_x = math.log(walk.open)
            walk.volume = 0
        block = k // BLOCK
        if block != walk.block:
            walk.steps, walk.volumes = self._block(symbol, block)
            walk.block = block
        i = k - block * BLOCK
        walk.x += walk.steps[i]
        walk.high_x = max(walk.high_x, walk.x)
        walk.low_x = min(walk.low_x, walk.x)
        walk.volume += _LOT * (_MIN_LOTS + walk.volumes[i])
        walk.k = k
        walk.history.append(_price(walk.x))
        quote = self.quotes[symbol] = self._quote(symbol)
        self.seq = max(self.seq, quote.seq)
        return quote

    def advance_to(self, t_ms: int) -> None:
        """Move every symbol to its latest tick at or before ``t_ms``, publishing nothing:
        for a feed that starts (or falls behind) while the market went on without it."""
        for symbol in self.symbols:
            walk = self._walks[symbol]
            k = self.schedule.tick_at(symbol, t_ms)
            if k - walk.k > BLOCK:  # far behind: replaying is cheaper than stepping
                self._walks[symbol] = self._replay(symbol, t_ms)
                quote = self.quotes[symbol] = self._quote(symbol)
                self.seq = max(self.seq, quote.seq)
            else:
                while walk.k < k:
                    self.tick(symbol)

    # --- news ---------------------------------------------------------------------------

    def symbol_of(self, story: Story) -> str:
        return self.symbols[story.company]

    def recent_stories(self, count: int) -> list[Story]:
        """The latest ``count`` headlines up to now, oldest first (none if news is off)."""
        if not self.schedule.news_ms:
            return []
        j = self.schedule.story_at(self.now_ms())
        return [self.schedule.story(i) for i in range(j - count + 1, j + 1)]
