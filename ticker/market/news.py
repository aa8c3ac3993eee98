"""Made-up market news: Faker-written headlines about the fictional companies.

Every ``TICKER_NEWS_S`` or so (the schedule says exactly when) a headline breaks about one
company; good news nudges its price up on that company's next tick and bad news down, so the
news strip and the table tell the same story. The service keeps the latest few headlines
and sends them as the ``news`` event, which the page's news strip swaps in.
"""

from __future__ import annotations

from dataclasses import dataclass

from faker import Faker

from ticker.market.clock import Story
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
    """Writes headlines: the same seed and headline number give the same words, in any
    process, so a restarted app shows the news strip it showed before.

    What a headline is about, when it breaks and which way it moves the price are the
    schedule's (:class:`~ticker.market.clock.Story`); this only puts it into words, with
    Faker seeded by ``(seed, j)``, so writing headline ``j`` costs the same whichever
    headlines were written before it (a process that starts writes just the strip's five).
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._fake = Faker("en_US")

    def write(self, story: Story, company: Company) -> Headline:
        """The headline of ``story``, about ``company``."""
        self._fake.seed_instance(f"{self._seed}:news:{story.index}")
        templates = _GOOD if story.good else _BAD
        text = templates[story.template % len(templates)].format(
            name=company.name,
            symbol=company.symbol,
            bs=self._fake.bs(),
            phrase=self._fake.catch_phrase().lower(),
        )
        return Headline(company.symbol, text, "up" if story.good else "down", story.ts)
