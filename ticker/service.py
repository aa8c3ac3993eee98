"""The running parts of one process, wired together: feed -> rendered fragment -> broker.

``create_app`` builds a :class:`Service` without starting anything, so importing the app
does no work. Whoever serves the app calls :meth:`Service.start` once the process is ready
to serve (gunicorn's ``post_worker_init`` hook, or ``python app.py``), and
:meth:`Service.stop` when it shuts down, which ends every open stream at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace

import gevent
from flask import Flask
from markupsafe import escape

from ticker.broker import BROADCAST, Broker
from ticker.bus import Bus, LocalBus, RedisBus
from ticker.clients import parse_trusted
from ticker.config import Settings
from ticker.feed import Feed, Market, Quote, make_universe
from ticker.sse import encode_event

log = logging.getLogger(__name__)


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
            RedisBus(settings.redis_url, _namespace(settings), self.broker)
            if settings.redis_url
            else LocalBus(self.broker)
        )
        self.trusted_proxies = parse_trusted(settings.forwarded_allow_ips)
        self.feed = Feed(self.market, self.publish_quote, settings.ticker_interval)
        self._row = app.jinja_env.get_template("_quote_row.html")
        self._banner = app.jinja_env.get_template("_banner.html")
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

    def render_row(self, quote: Quote) -> str:
        """The table row for ``quote``: the same partial the pages include."""
        return self._row.render(q=quote)

    def encode_quote(self, quote: Quote) -> bytes:
        return encode_event(self.render_row(quote), event=quote.symbol, id=quote.seq)

    def publish_quote(self, quote: Quote) -> None:
        """Give a tick its sequence number, render and encode it once, and publish it."""
        seq = self.bus.claim_seq(quote.seq)
        if seq is None:
            return  # no longer the leader: the bus is about to stop this feed
        quote = replace(quote, seq=seq)
        self.bus.publish(quote.symbol, seq, self.encode_quote(quote), quote)

    def broadcast(self, message: str) -> int:
        """Show ``message`` to every viewer (of every process); return local open streams."""
        self.broadcasts += 1
        log.info(
            "broadcast to %d local streams: %s",
            self.broker.open_streams,
            escape(message),
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
            "feed starting: %d symbols, one tick per %.2fs each",
            len(self.symbols),
            self.settings.ticker_interval,
        )
        self.feed.start()

    def _on_deposed(self) -> None:
        self.feed.stop()

    def stop(self) -> None:
        """End all streams, the feed and the bus (the process is shutting down)."""
        log.info("shutting down: closing %d streams", self.broker.open_streams)
        self.broker.close()
        self.feed.stop()
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
                    "dropping stalled stream client=%s route=%s", sub.client, sub.route
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
