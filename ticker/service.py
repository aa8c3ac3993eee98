"""The running parts of one process, wired together: market -> rendering -> delivery.

The leader's feed ticks the market; each tick is rendered here, once, into the events the
pages swap in (the symbol's row, and at most once a second its chart), and handed to the bus.
The bus hands every event back to every process (:meth:`Service.receive`), which keeps the
quote (the pages and ``/api/quotes`` are served from :attr:`Service.quotes`) and gives the
bytes to its broker. The market summary is the one event each process renders itself, from
the quotes it delivers, as the frame it ends goes out, so the header always agrees with the
rows on screen.

``create_app`` builds a :class:`Service` without starting anything, so importing the app
does no work. Whoever serves the app calls :meth:`Service.start` once the process is ready
to serve (gunicorn's ``post_worker_init`` hook, or ``python app.py``), and
:meth:`Service.leave` when it shuts down, which ends every open stream at once and then
the process.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from typing import NoReturn

import gevent
from flask import Flask

from ticker import logfmt
from ticker.config import Settings
from ticker.delivery.broker import Broker, chart_topic
from ticker.delivery.bus import Bus, LocalBus, RedisBus
from ticker.delivery.connection import StreamRules
from ticker.market.clock import SEQ_PER_MS
from ticker.market.feed import Feed
from ticker.market.model import Market, Quote, make_universe
from ticker.market.news import NEWS_KEPT, Headline, Newsroom
from ticker.rendering.fragments import BROADCAST, MARKET, NEWS, Fragments
from ticker.rendering.pacing import Pacer

log = logging.getLogger(__name__)

# The market summary and each chart go out at most this often.
PACE_S = 1.0


class Service:
    """Owns the market, its feed, the bus, the broker and the market's current state."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.settings = settings
        self.companies = make_universe(settings.ticker_seed, settings.ticker_symbols)
        self.symbols = tuple(c.symbol for c in self.companies)
        # The market as it stands now: every process computes the same one from the seed
        # and the clock, so a restart continues it (see ticker/market/model.py).
        self.market = Market(
            self.companies,
            settings.ticker_seed,
            settings.ticker_interval,
            settings.ticker_news_s,
        )
        self.newsroom = Newsroom(settings.ticker_seed)
        self.fragments = Fragments(app.jinja_env)
        self.broker = Broker(
            settings.max_streams,
            settings.max_streams_per_client,
            settings.frame_ms / 1000,
        )
        self.bus: Bus = (
            RedisBus(
                settings.redis_url,
                _namespace(settings),
                self.receive,
                tls_verify=bool(settings.redis_tls_verify),
            )
            if settings.redis_url
            else LocalBus(self.receive)
        )
        self.feed = Feed(
            self.market,
            self.publish_quote,
            newsroom=self.newsroom,
            publish_news=self.publish_news,
        )
        # Names this process in logs, /healthz and each stream's first comment, so "which
        # worker am I on?" has an answer without exposing anything about the host.
        self.process_id = uuid.uuid4().hex[:8]
        self.stream_rules = StreamRules(
            write_timeout_s=settings.write_timeout_s,
            retry_ms=settings.retry_ms,
            process_id=self.process_id,
        )
        # The market as this process delivers it: the latest quote of every symbol.
        self.quotes: dict[str, Quote] = {}
        self.last_quote_at: float | None = None  # time.time() of the newest quote
        # The news strip, newest first: the latest headlines up to now (text is written
        # for these five only).
        self.headlines: deque[Headline] = deque(maxlen=NEWS_KEPT)
        for story in self.market.recent_stories(NEWS_KEPT):
            company = self.market.companies[self.market.symbol_of(story)]
            self.headlines.appendleft(self.newsroom.write(story, company))
        # Every tick changes the summary and its symbol's chart, but they go out at most
        # once a second each: the summary goes to every viewer of the table, and a chart
        # (kilobytes, and the costliest thing to render) only needs to keep up with eyes.
        self._charts = Pacer(PACE_S, self._publish_chart)
        self._summaries = Pacer(PACE_S, self._publish_summary)
        self._published: dict[str, Quote] = {}  # the leader's latest quote, per symbol
        self.broadcasts = 0
        self._heart: gevent.Greenlet | None = None
        self.started_at = time.time()
        # The current quotes and news, so pages and streams have a full snapshot (whole
        # sparklines and charts, the day's range, the strip) before the first tick, and,
        # with Redis, whether or not a leader is publishing.
        for quote in self.market.quotes.values():
            self.quotes[quote.symbol] = quote
            self.broker.remember(quote.symbol, quote.seq, self.fragments.quote(quote))
            self.broker.remember(
                chart_topic(quote.symbol), quote.seq, self.fragments.chart(quote)
            )
        if self.headlines:
            self.broker.remember(
                NEWS, _news_seq(self.headlines[0]), self.fragments.news(self.headlines)
            )
        self.broker.remember(MARKET, self.market.seq, self._summary())

    # --- the leader's side: render each tick once and publish it ----------------------

    def publish_quote(self, quote: Quote) -> None:
        """Render a tick's row once and publish it. Its sequence number comes with it
        (from its time, so every process numbers it alike); the bus refuses it if this
        process no longer leads."""
        self.bus.publish(quote.symbol, quote.seq, self.fragments.quote(quote), quote)
        self._published[quote.symbol] = quote
        self._charts.poke(quote.symbol)

    def publish_news(self, headline: Headline) -> None:
        """Add ``headline`` to the news strip and publish the strip."""
        self.headlines.appendleft(headline)
        self.bus.publish(NEWS, _news_seq(headline), self.fragments.news(self.headlines))

    def broadcast(self, message: str) -> int:
        """Show ``message`` to every viewer (of every process); return local open streams."""
        self.broadcasts += 1
        log.info(
            logfmt.event("broadcast", streams=self.broker.open_streams, message=message)
        )
        payload = self.fragments.banner(message)
        self.bus.publish(BROADCAST, self.broker.last_seq, payload)
        return self.broker.open_streams

    # --- every process's side: what the bus hands on ----------------------------------

    def receive(
        self, topic: str, seq: int, payload: bytes, quote: Quote | None
    ) -> None:
        """Keep the quote an event carries, and give its bytes to the broker."""
        if topic != BROADCAST and seq < self.broker.latest_seq(topic):
            # Older than what this process computed at start (a Redis hash written
            # before the leader went away): the newer one stays.
            return
        late_s = time.time() - quote.ts / 1000 if quote is not None else 0.0
        self.broker.publish(topic, seq, payload, late_s)
        if quote is not None:
            self.quotes[topic] = quote
            self.last_quote_at = time.time()
            # After the quote's own bytes: the summary must never describe a price that
            # has not been sent.
            self._summaries.poke(MARKET)

    def _publish_chart(self, symbol: str) -> None:
        """The leader publishes a symbol's chart, when the pacer says it is time."""
        quote = self._published[symbol]
        self.bus.publish(chart_topic(symbol), quote.seq, self.fragments.chart(quote))

    def _publish_summary(self, topic: str) -> None:
        """Each process makes its own summary, last in the frame that goes out next."""
        self.broker.publish_at_flush(topic, self._summary)

    def _summary(self) -> bytes:
        return self.fragments.summary(self.quotes[s] for s in self.symbols)

    # --- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Join the bus (which starts the feed here if this process leads) and start the
        heartbeat. Idempotent."""
        self.bus.start(self._on_elected, self._on_deposed)
        if self._heart is None:
            self._heart = gevent.spawn(self._beat)

    def _beat(self) -> None:
        """Every ``HEARTBEAT_S``, a heartbeat on every stream: proxies and PaaS routers,
        which cut idle connections, see bytes, and the page's live marker stays live."""
        while True:
            gevent.sleep(self.settings.heartbeat_s)
            self.broker.beat(self.fragments.heartbeat)

    def _on_elected(self) -> None:
        # Nothing to restore: the feed moves the market to the present as it starts, and
        # the present is the same for every process (ticker/market/clock.py).
        log.info(
            logfmt.event(
                "feed.start",
                symbols=len(self.symbols),
                interval_s=self.settings.ticker_interval,
            )
        )
        self.feed.start()

    def _on_deposed(self) -> None:
        self.feed.stop()
        self._charts.cancel()

    def stop(self) -> None:
        """End all streams, the feed and the bus (the process is shutting down)."""
        streams = self.broker.open_streams
        self.broker.close(self.stream_rules.spread_retry)
        log.info(
            logfmt.event(
                "shutdown",
                streams=streams,
                ended_at_once=streams - self.broker.open_streams,
            )
        )
        self.feed.stop()
        self._charts.cancel()
        self._summaries.cancel()
        self.bus.stop()
        if self._heart is not None:
            self._heart.kill()
            self._heart = None

    def leave(self, wait_s: float) -> NoReturn:
        """Stop, give the streams that end themselves at most ``wait_s``, and end the
        process at once.

        What a process going away has left to do once every viewer has its last bytes is
        to unwind a greenlet per stream through the server's stack, each to find its
        socket already shut: for 10,000 viewers that was 3.6 s of CPU, on the core the next
        process needs right then to take them back. ``os._exit`` leaves that to the kernel.
        """
        self.stop()
        deadline = time.monotonic() + wait_s
        while self.broker.open_streams and time.monotonic() < deadline:
            gevent.sleep(0.05)
        log.info(logfmt.event("exit", streams_cut=self.broker.open_streams))
        logging.shutdown()  # flush every handler: nothing runs after this
        os._exit(0)


def _news_seq(headline: Headline) -> int:
    """The news strip's sequence number: its newest headline's time, on the ticks' scale
    (it has no SSE id; this orders it among the ticks in frames and snapshots)."""
    return headline.ts * SEQ_PER_MS


def _namespace(settings: Settings) -> str:
    """Redis key prefix: processes share a market only if they make the same universe."""
    return f"ticker:{settings.ticker_seed}:{settings.ticker_symbols}"


def get_service(app: Flask) -> Service:
    """The :class:`Service` that ``create_app`` attached to ``app``."""
    return app.extensions["ticker"]
