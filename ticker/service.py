"""The running parts of one process, wired together: feed -> rendered fragment -> broker.

``create_app`` builds a :class:`Service` without starting anything, so importing the app
does no work. Whoever serves the app calls :meth:`Service.start` once the process is ready
to serve (gunicorn's ``post_worker_init`` hook, or ``python app.py``), and
:meth:`Service.stop` when it shuts down, which ends every open stream at once.
"""

from __future__ import annotations

import logging
import time

import gevent
from flask import Flask
from markupsafe import escape

from ticker.broker import BROADCAST, Broker
from ticker.clients import parse_trusted
from ticker.config import Settings
from ticker.feed import Feed, Market, Quote, make_universe
from ticker.sse import encode_event

log = logging.getLogger(__name__)


class Service:
    """Owns the market, its feed and the broker for one app."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.settings = settings
        self.companies = make_universe(settings.ticker_seed, settings.ticker_symbols)
        self.symbols = tuple(c.symbol for c in self.companies)
        self.market = Market(self.companies)
        self.broker = Broker(settings.max_streams, settings.max_streams_per_client)
        self.trusted_proxies = parse_trusted(settings.forwarded_allow_ips)
        self.feed = Feed(self.market, self.publish_quote, settings.ticker_interval)
        self._row = app.jinja_env.get_template("_quote_row.html")
        self._banner = app.jinja_env.get_template("_banner.html")
        self.broadcast_message = ""
        self.broadcasts = 0
        self.started_at = time.time()
        self._reaper: gevent.Greenlet | None = None
        for quote in self.market.quotes.values():
            self.publish_quote(quote)

    def render_row(self, quote: Quote) -> str:
        """The table row for ``quote``: the same partial the pages include."""
        return self._row.render(q=quote)

    def publish_quote(self, quote: Quote) -> None:
        """Render and encode ``quote`` once, then hand the bytes to the broker."""
        payload = encode_event(self.render_row(quote), event=quote.symbol, id=quote.seq)
        self.broker.publish(quote.symbol, quote.seq, payload, quote)

    def render_banner(self, message: str) -> str:
        return self._banner.render(message=message)

    def broadcast(self, message: str) -> int:
        """Show ``message`` to every viewer; return how many streams it was queued to."""
        self.broadcast_message = message
        self.broadcasts += 1
        log.info(
            "broadcast to %d streams: %s", self.broker.open_streams, escape(message)
        )
        # No SSE id: ids stay the market's sequence numbers, so they only ever increase.
        payload = encode_event(self.render_banner(message), event=BROADCAST)
        self.broker.publish(BROADCAST, self.market.seq, payload)
        return self.broker.open_streams

    def start(self) -> None:
        """Start the feed. Idempotent: a second call while it runs does nothing."""
        if not self.feed.running:
            log.info(
                "feed starting: %d symbols, one tick per %.2fs each",
                len(self.symbols),
                self.settings.ticker_interval,
            )
        self.feed.start()
        if self._reaper is None:
            self._reaper = gevent.spawn(self._drop_stalled_streams)

    def stop(self) -> None:
        """End all streams and the feed (the process is shutting down)."""
        log.info("shutting down: closing %d streams", self.broker.open_streams)
        self.broker.close()
        self.feed.stop()
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


def get_service(app: Flask) -> Service:
    """The :class:`Service` that ``create_app`` attached to ``app``."""
    return app.extensions["ticker"]
