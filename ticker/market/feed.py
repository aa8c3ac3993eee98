"""When the market moves: the feed ticks each symbol on its own rhythm and writes the news.

``Feed`` runs a :class:`~ticker.market.model.Market` in one supervised greenlet and hands
every new quote (and headline) to a publisher; it knows nothing about HTML or HTTP.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from collections.abc import Callable

import gevent

from ticker import logfmt
from ticker.market.model import Market, Quote
from ticker.market.news import Headline, Newsroom

log = logging.getLogger(__name__)


class Feed:
    """Ticks a :class:`Market` in one greenlet and passes each new quote to ``publish``.

    Each symbol keeps its own rhythm: its next tick is due ``interval`` seconds later on
    average, jittered by +/-50 %, so updates arrive spread out like a real market's instead
    of in one burst per second. If anything raises, the error is logged and the loop
    restarts after a short pause: a crash never leaves the streams silently frozen.
    """

    def __init__(
        self,
        market: Market,
        publish: Callable[[Quote], None],
        interval: float,
        rng: random.Random | None = None,
        newsroom: Newsroom | None = None,
        publish_news: Callable[[Headline], None] | None = None,
        news_s: float = 0.0,
    ) -> None:
        self.market = market
        self.publish = publish
        self.interval = interval
        self._rng = rng or random.Random()
        # News: every ``news_s`` seconds on average (0: none), a headline about a random
        # company, published right after the tick that it moved.
        self.newsroom = newsroom
        self.publish_news = publish_news
        self.news_s = news_s if newsroom is not None and publish_news else 0.0
        self._greenlet: gevent.Greenlet | None = None
        self.ticks = 0
        self.restarts = 0
        self.last_tick_at: float | None = None  # time.time() of the latest tick
        self.started_at: float | None = None

    @property
    def running(self) -> bool:
        return self._greenlet is not None and not self._greenlet.dead

    def start(self) -> None:
        """Start the feed greenlet; calling it again while it runs does nothing."""
        if not self.running:
            self.started_at = time.time()
            self._greenlet = gevent.spawn(self._supervise)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True)
            self._greenlet = None

    def _supervise(self) -> None:
        while True:
            try:
                self._run()
            except Exception as exc:
                self.restarts += 1
                error = f"{type(exc).__name__}: {exc}"
                log.exception(
                    logfmt.event("feed.restart", restarts=self.restarts, error=error)
                )
                gevent.sleep(min(5.0, 0.1 * 2 ** min(self.restarts, 6)))

    def _next_due(self, now: float) -> float:
        return now + self.interval * self._rng.uniform(0.5, 1.5)

    def _run(self) -> None:
        now = time.monotonic()
        # First ticks spread over one interval, so a fresh process does not tick in a burst.
        due = [
            (now + self.interval * self._rng.random(), s) for s in self.market.quotes
        ]
        heapq.heapify(due)
        news_due = (
            now + self.news_s * self._rng.uniform(0.5, 1.5) if self.news_s else math.inf
        )
        while True:
            when, symbol = due[0]
            if news_due < when:
                gevent.sleep(max(0.0, news_due - time.monotonic()))
                self._news()
                news_due = time.monotonic() + self.news_s * self._rng.uniform(0.5, 1.5)
                continue
            wait = when - time.monotonic()
            # Behind schedule (more ticks asked for than this process can make), still
            # yield: a feed that never sleeps would starve every stream and request.
            gevent.sleep(max(0.0, wait))
            self._tick(symbol)
            heapq.heapreplace(
                due, (self._next_due(max(when, time.monotonic() - 1)), symbol)
            )

    def _tick(self, symbol: str, shock: float = 0.0) -> None:
        quote = self.market.tick(symbol, shock)
        self.ticks += 1
        self.last_tick_at = time.time()
        self.publish(quote)

    def _news(self) -> None:
        """A headline about a random company, after the tick it causes."""
        assert self.newsroom is not None and self.publish_news is not None
        company = self.market.companies[self._rng.choice(list(self.market.companies))]
        headline, shock = self.newsroom.write(company)
        self._tick(company.symbol, shock)
        self.publish_news(headline)
