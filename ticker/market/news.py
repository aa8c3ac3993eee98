"""Made-up market news: Faker-written headlines about the fictional companies.

Every so often the feed asks the :class:`Newsroom` for a headline about one company; good
news nudges its price up on the same tick and bad news down, so the news strip and the table
tell the same story. The service keeps the latest few headlines and sends them as the
``news`` event, which the page's news strip swaps in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from faker import Faker

from ticker.market.model import Company

NEWS_KEPT = 5  # headlines in the strip

_GOOD: tuple[str, ...] = (
    "{name} beats estimates as it moves to {bs}",
    "{name} wins a contract to {bs}",
    "Analysts upgrade {symbol}, citing its {phrase}",
    "{name} unveils its {phrase}",
    "{name} raises guidance on plans to {bs}",
)
_BAD: tuple[str, ...] = (
    "{name} misses estimates; now plans to {bs}",
    "Regulators look into {name} over its {phrase}",
    "{symbol} downgraded as {name} delays its {phrase}",
    "{name} cuts guidance after failing to {bs}",
    "Chief financial officer of {name} resigns",
)


@dataclass(frozen=True, slots=True)
class Headline:
    """One headline about one company. ``tone`` is ``up`` or ``down``."""

    symbol: str
    text: str
    tone: str
    ts: int  # epoch milliseconds


class Newsroom:
    """Writes headlines; the same seed gives the same news in the same order."""

    def __init__(self, seed: int, clock: Callable[[], float]) -> None:
        self._fake = Faker("en_US")
        self._fake.seed_instance(seed)
        self._rng = random.Random(seed)
        self._clock = clock

    def write(self, company: Company) -> tuple[Headline, float]:
        """A headline about ``company`` and the price move it causes (a log return of
        two to five times the stock's usual tick, up for good news, down for bad)."""
        good = self._rng.random() < 0.5
        template = self._rng.choice(_GOOD if good else _BAD)
        text = template.format(
            name=company.name,
            symbol=company.symbol,
            bs=self._fake.bs(),
            phrase=self._fake.catch_phrase().lower(),
        )
        size = company.volatility * self._rng.uniform(2.0, 5.0)
        headline = Headline(
            company.symbol, text, "up" if good else "down", int(self._clock() * 1000)
        )
        return headline, size if good else -size
