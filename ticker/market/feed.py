"""The feed: waits for the market's clock and hands every tick (and headline) on.

``Feed`` runs in one supervised greenlet. It does not decide when the market moves (the
:class:`~ticker.market.clock.Schedule` does, from the seed) nor how (the
:class:`~ticker.market.model.Market`); it sleeps until the next tick or headline is due,
makes it, and passes it to a publisher. It knows nothing about HTML or HTTP.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable

import gevent

from ticker import logfmt
from ticker.market.clock import Story
from ticker.market.model import Market, Quote
from ticker.market.news import Headline, Newsroom

log = logging.getLogger(__name__)

# A feed this far behind its schedule (a stalled process, a suspended laptop) skips to the
# present instead of publishing the backlog: the market went on meanwhile either way.
CATCH_UP_MS = 2_000


class Feed:
    """Publishes each tick of a :class:`Market` when it is due, in one greenlet.

    Each symbol keeps its own rhythm (the schedule jitters every tick), so updates arrive
    spread out like a real market's instead of in one burst per second. Ticks go out in
    time order, which is sequence order. Starting (again) first moves the market silently
    to the present: a new leader, or a feed restarted after a crash, continues the market
    from where it stands now, not from where this process last looked. If anything
    raises, the error is logged and the loop restarts after a short pause: a crash never
    leaves the streams silently frozen.
    """

    def __init__(
        self,
        market: Market,
        publish: Callable[[Quote], None],
        newsroom: Newsroom | None = None,
        publish_news: Callable[[Headline], None] | None = None,
    ) -> None:
        self.market = market
        self.publish = publish
        # News: headlines when the schedule has them (TICKER_NEWS_S > 0), published as
        # they break; the price moves on the company's next tick.
        self.newsroom = newsroom
        self.publish_news = publish_news
        self.news = bool(newsroom and publish_news and market.schedule.news_ms)
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

    def _sleep_until(self, t_ms: int) -> None:
        # Behind schedule, still yield: a feed that never sleeps would starve every
        # stream and request.
        gevent.sleep(max(0.0, (t_ms - self.market.now_ms()) / 1000))

    def _run(self) -> None:
        market = self.market
        now = market.now_ms()
        market.advance_to(now)
        # (when, index, symbol): the index breaks ties as sequence numbers do.
        due = [(market.next_tick_ms(s), i, s) for i, s in enumerate(market.symbols)]
        heapq.heapify(due)
        schedule = market.schedule
        story = schedule.story(schedule.story_at(now) + 1) if self.news else None
        while True:
            when, i, symbol = due[0]
            headline = (
                story is not None and story.ts <= when
            )  # news first, then its tick
            at = story.ts if headline and story is not None else when
            if market.now_ms() - at > CATCH_UP_MS:
                behind = market.now_ms() - at
                log.warning(logfmt.event("feed.behind", behind_ms=behind))
                return  # the supervisor runs it again, from the present
            self._sleep_until(at)
            if headline and story is not None:
                self._headline(story)
                story = schedule.story(story.index + 1)
                continue
            quote = market.tick(symbol)
            self.ticks += 1
            self.last_tick_at = time.time()
            self.publish(quote)
            heapq.heapreplace(due, (market.next_tick_ms(symbol), i, symbol))

    def _headline(self, story: Story) -> None:
        assert self.newsroom is not None and self.publish_news is not None
        company = self.market.companies[self.market.symbol_of(story)]
        self.publish_news(self.newsroom.write(story, company))
