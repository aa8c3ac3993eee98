"""Every live part of the page, rendered from the same partials the pages include.

One :class:`Fragments` per app holds the templates. Each method renders one partial and
frames it as the SSE event that the page's ``sse-swap`` for it waits on, so the markup of a
row, a chart, the summary or the news strip has exactly one source, whether it arrives with
the page or later over a stream.
"""

from __future__ import annotations

from collections.abc import Iterable

from jinja2 import Environment
from markupsafe import Markup

from ticker.market.model import Quote
from ticker.market.news import Headline
from ticker.rendering.sse import encode_event, encode_heartbeat
from ticker.rendering.summary import summarize

# Event names besides the symbols (a quote's event is its symbol): lower case, so they can
# never clash with one.
BROADCAST = "broadcast"  # the admin message (every stream)
MARKET = "market"  # the market summary (the table's stream)
NEWS = "news"  # the news strip (the table's stream)
CHART = "chart"  # a symbol's chart (its own stream)
HEARTBEAT = "heartbeat"  # the live marker, every HEARTBEAT_S (every stream)


class Fragments:
    """Renders the page's live parts, as HTML for a page and as SSE events for a stream."""

    def __init__(self, env: Environment) -> None:
        self._row = env.get_template("_quote_row.html")
        self._chart = env.get_template("_chart.html")
        self._summary = env.get_template("_market_summary.html")
        self._news = env.get_template("_news.html")
        self._banner = env.get_template("_banner.html")
        # A named event, so the page's live marker (which the heartbeat replaces) knows
        # the stream is alive; the comment line keeps it readable in a raw stream.
        self.heartbeat = encode_heartbeat(env.get_template("_live.html").render())

    def quote(self, quote: Quote) -> bytes:
        """The table row of ``quote``, named after its symbol, with its sequence number as
        the SSE ``id`` (so a reconnecting browser says where it was)."""
        html = self._row.render(q=quote)
        return encode_event(html, event=quote.symbol, id=quote.seq)

    def chart(self, quote: Quote) -> bytes:
        """The symbol page's chart of ``quote``'s history."""
        return encode_event(self._chart.render(q=quote), event=CHART)

    def summary_html(self, quotes: Iterable[Quote]) -> Markup:
        """The market summary (index and breadth) of ``quotes``, one per symbol."""
        return Markup(self._summary.render(summary=summarize(quotes)))

    def summary(self, quotes: Iterable[Quote]) -> bytes:
        """The summary as the ``market`` event: the page's header swaps it in."""
        return encode_event(self.summary_html(quotes), event=MARKET)

    def news_html(self, headlines: Iterable[Headline]) -> Markup:
        """The news strip, newest headline first."""
        return Markup(self._news.render(headlines=list(headlines)))

    def news(self, headlines: Iterable[Headline]) -> bytes:
        return encode_event(self.news_html(headlines), event=NEWS)

    def banner(self, message: str) -> bytes:
        """The admin message. No SSE ``id``: ids stay the market's sequence numbers, so
        they only ever increase."""
        return encode_event(self._banner.render(message=message), event=BROADCAST)
