"""The running parts of one process, wired together: feed -> rendered fragments -> broker.

Every tick is rendered here, once, into the events the pages swap in: the symbol's table
row (event named after the symbol) and its chart (``chart``, for its own page); a headline
re-renders the news strip (``news``). Each goes to the bus as a topic, and from there to
every process's broker. The market summary (``market``, the table's header) is the one
exception: each process renders it from the quotes it delivers, at the end of a frame.

``create_app`` builds a :class:`Service` without starting anything, so importing the app
does no work. Whoever serves the app calls :meth:`Service.start` once the process is ready
to serve (gunicorn's ``post_worker_init`` hook, or ``python app.py``), and
:meth:`Service.stop` when it shuts down, which ends every open stream at once.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace

import gevent
from flask import Flask

from ticker import logfmt
from ticker.broker import BROADCAST, CHART_PREFIX, MARKET, NEWS, Broker, chart_topic
from ticker.bus import Bus, LocalBus, RedisBus
from ticker.clients import parse_trusted
from ticker.config import Settings
from ticker.feed import Feed, Market, Quote, make_universe
from ticker.news import NEWS_KEPT, Headline, Newsroom
from ticker.sse import encode_event, encode_heartbeat
from ticker.summary import summarize

log = logging.getLogger(__name__)

# The market summary and each chart go out at most this often.
PACE_S = 1.0


class Pacer:
    """Calls ``publish(key)`` at most once per ``every_s`` per key, and always after the
    latest poke: a poke inside the quiet period schedules one call at its end, so the last
    state is never left unsent."""

    def __init__(self, every_s: float, publish: Callable[[str], None]) -> None:
        self.every_s = every_s
        self.publish = publish
        self._last: dict[str, float] = {}
        self._timers: dict[str, gevent.Greenlet] = {}

    def poke(self, key: str) -> None:
        if key in self._timers:
            return  # a call is already due, and it will send the latest state
        wait = self._last.get(key, -math.inf) + self.every_s - time.monotonic()
        if wait <= 0:
            self._fire(key)
        else:
            self._timers[key] = gevent.spawn_later(wait, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self._last[key] = time.monotonic()
        self.publish(key)

    def cancel(self) -> None:
        """Forget every scheduled call (the feed stopped here)."""
        gevent.killall(list(self._timers.values()))
        self._timers.clear()


class Service:
    """Owns the market, its feed, the broker and the bus between them for one app."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.settings = settings
        self.companies = make_universe(settings.ticker_seed, settings.ticker_symbols)
        self.symbols = tuple(c.symbol for c in self.companies)
        self.market = Market(self.companies)
        self.broker = Broker(
            settings.max_streams,
            settings.max_streams_per_client,
            settings.frame_ms / 1000,
        )
        self.bus: Bus = (
            RedisBus(
                settings.redis_url,
                _namespace(settings),
                self.broker,
                tls_verify=bool(settings.redis_tls_verify),
            )
            if settings.redis_url
            else LocalBus(self.broker)
        )
        self.trusted_proxies = parse_trusted(settings.forwarded_allow_ips)
        self.feed = Feed(
            self.market,
            self.publish_quote,
            settings.ticker_interval,
            newsroom=Newsroom(settings.ticker_seed, time.time),
            publish_news=self.publish_news,
            news_s=settings.ticker_news_s,
        )
        self.headlines: deque[Headline] = deque(maxlen=NEWS_KEPT)
        env = app.jinja_env
        self._row = env.get_template("_quote_row.html")
        self._banner = env.get_template("_banner.html")
        self._chart = env.get_template("_chart.html")
        self._summary = env.get_template("_market_summary.html")
        self._news = env.get_template("_news.html")
        # A named event, so the page's live marker (which the heartbeat replaces) knows
        # the stream is alive; the comment line keeps it readable in a raw stream.
        self.heartbeat = encode_heartbeat(env.get_template("_live.html").render())
        self._seq = 0  # the latest sequence number this process published a tick with
        self._latest: dict[str, Quote] = {}  # the latest quote published, per symbol
        # Every tick changes the summary and its symbol's chart, but they go out at most
        # once a second each: the summary goes to every viewer of the table, and a chart
        # (kilobytes, and the costliest thing to render) only needs to keep up with eyes.
        self._pacer = Pacer(PACE_S, self._publish_paced)
        self._summary_at = 0.0  # time.monotonic() of the latest summary
        self._summary_seq = 0  # the sequence number it was made at
        self._summary_timer: gevent.Greenlet | None = None
        self.broker.frame_hook = self._summary_for_frame
        self.broadcasts = 0
        self.started_at = time.time()
        # Names this process in logs, /healthz and each stream's first comment, so "which
        # worker am I on?" has an answer without exposing anything about the host.
        self.process_id = uuid.uuid4().hex[:8]
        self._reaper: gevent.Greenlet | None = None
        # Opening quotes, so pages and streams have a snapshot before the first tick (with
        # Redis, until the current market arrives from it).
        for quote in self.market.quotes.values():
            self.broker.remember(
                quote.symbol, quote.seq, self.encode_quote(quote), quote
            )
            self.broker.remember(
                chart_topic(quote.symbol), quote.seq, self.encode_chart(quote)
            )
        self.broker.remember(
            MARKET, self.market.seq, self.encode_summary(self.market.quotes.values())
        )

    def render_row(self, quote: Quote) -> str:
        """The table row for ``quote``: the same partial the pages include."""
        return self._row.render(q=quote)

    def encode_quote(self, quote: Quote) -> bytes:
        return encode_event(self.render_row(quote), event=quote.symbol, id=quote.seq)

    def encode_chart(self, quote: Quote) -> bytes:
        return encode_event(self._chart.render(q=quote), event="chart")

    def encode_summary(self, quotes: Iterable[Quote]) -> bytes:
        return encode_event(
            self._summary.render(summary=summarize(quotes)), event=MARKET
        )

    def publish_quote(self, quote: Quote) -> None:
        """Give a tick its sequence number, render its events once, and publish them."""
        seq = self.bus.claim_seq(quote.seq)
        if seq is None:
            return  # no longer the leader: the bus is about to stop this feed
        self._seq = seq
        quote = replace(quote, seq=seq)
        self.bus.publish(quote.symbol, seq, self.encode_quote(quote), quote)
        self._latest[quote.symbol] = quote
        self._pacer.poke(chart_topic(quote.symbol))

    def _publish_paced(self, topic: str) -> None:
        """Publish a chart, when the pacer says it is time."""
        quote = self._latest[topic.removeprefix(CHART_PREFIX)]
        self.bus.publish(topic, quote.seq, self.encode_chart(quote))

    def _summary_for_frame(self) -> list[tuple[str, bytes]]:
        """The market summary to end this frame with, when one is due (the broker's
        ``frame_hook``). Every process renders its own from the quotes it delivers, so the
        header always agrees with the rows on the page; at most once per ``PACE_S``, and a
        timer flushes once more so that the last change is never left out."""
        if self.broker.last_seq == self._summary_seq:
            return []  # nothing moved since the last one
        wait = self._summary_at + PACE_S - time.monotonic()
        if wait > 0:
            if self._summary_timer is None:
                self._summary_timer = gevent.spawn_later(wait, self._summary_due)
            return []
        self._summary_at = time.monotonic()
        self._summary_seq = self.broker.last_seq
        quotes = self.broker.quotes
        return [(MARKET, self.encode_summary(quotes[s] for s in self.symbols))]

    def _summary_due(self) -> None:
        self._summary_timer = None
        self.broker.flush_soon()

    def publish_news(self, headline: Headline) -> None:
        """Add ``headline`` to the news strip and publish the strip."""
        self.headlines.appendleft(headline)
        strip = self._news.render(headlines=list(self.headlines))
        self.bus.publish(NEWS, self._seq, encode_event(strip, event=NEWS))

    def broadcast(self, message: str) -> int:
        """Show ``message`` to every viewer (of every process); return local open streams."""
        self.broadcasts += 1
        log.info(
            logfmt.event("broadcast", streams=self.broker.open_streams, message=message)
        )
        # No SSE id: ids stay the market's sequence numbers, so they only ever increase.
        payload = encode_event(self._banner.render(message=message), event=BROADCAST)
        self.bus.publish(BROADCAST, self.broker.last_seq, payload)
        return self.broker.open_streams

    def start(self) -> None:
        """Join the bus (which starts the feed here if this process leads) and start
        dropping stalled streams. Idempotent."""
        self.bus.start(self._on_elected, self._on_deposed)
        if self._reaper is None:
            self._reaper = gevent.spawn(self._drop_stalled_streams)

    def _on_elected(self) -> None:
        # Continue from the last published prices (no jump back to the open), and never
        # hand out a sequence number below one that viewers have already seen.
        state = self.bus.load_quotes() or dict(self.broker.quotes)
        self.market.restore(state)
        self.bus.raise_seq_floor(self.broker.last_seq)
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
        self._pacer.cancel()

    def stop(self) -> None:
        """End all streams, the feed and the bus (the process is shutting down)."""
        log.info(logfmt.event("shutdown", streams=self.broker.open_streams))
        self.broker.close()
        self.feed.stop()
        self._pacer.cancel()
        if self._summary_timer is not None:
            self._summary_timer.kill()
        self.bus.stop()
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper = None

    def _drop_stalled_streams(self) -> None:
        """Once a second, drop viewers whose socket has accepted nothing for too long.

        Their mailboxes stay small anyway (conflation); this frees the slot, the socket and
        the greenlet of a client that is gone without saying so, or never reads.
        """
        timeout = self.settings.write_timeout_s
        while True:
            gevent.sleep(min(1.0, timeout / 2))
            for sub in self.broker.stalled(time.monotonic(), timeout):
                log.warning(
                    logfmt.event(
                        "stream.drop",
                        reason="stalled",
                        client=sub.client,
                        route=sub.route,
                        timeout_s=timeout,
                    )
                )
                callback, sub.on_stall = sub.on_stall, None  # once is enough
                if callback is not None:
                    callback()


def _namespace(settings: Settings) -> str:
    """Redis key prefix: processes share a market only if they make the same universe."""
    return f"ticker:{settings.ticker_seed}:{settings.ticker_symbols}"


def get_service(app: Flask) -> Service:
    """The :class:`Service` that ``create_app`` attached to ``app``."""
    return app.extensions["ticker"]
