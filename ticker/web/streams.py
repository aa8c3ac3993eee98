"""The SSE routes: one symbol's stream, and many symbols over one connection.

Each route validates its input, names its topics and says whether the client takes gzip
(``Accept-Encoding``, q-values honoured: ``identity;q=1, *;q=0`` or none at all means a
plain stream); a
:class:`~ticker.delivery.connection.Connection` does everything after that.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from ticker.delivery.broker import chart_topic
from ticker.delivery.connection import Connection
from ticker.rendering.fragments import MARKET, NEWS
from ticker.web import validation
from ticker.web.clients import client_address, parse_trusted

bp = Blueprint("streams", __name__)


def _open(route: str, topics: tuple[str, ...]) -> Response:
    service = validation.service()
    return Connection.open(
        service.broker,
        service.stream_rules,
        request.environ,
        route,
        topics,
        client_address(
            request.environ, parse_trusted(service.settings.forwarded_allow_ips)
        ),
        validation.max_s(request.args.get("max_s")),
        gzip=bool(service.settings.compress_streams)
        and request.accept_encodings["gzip"] > 0,
    )


@bp.get("/stream/<symbol>")
def stream_symbol(symbol: str) -> Response:
    """SSE for one symbol: its row (the event name is the symbol) and its chart."""
    symbol = validation.symbol(symbol)
    return _open("symbol", (symbol, chart_topic(symbol)))


@bp.get("/stream")
def stream_many() -> Response:
    """SSE for ``?symbols=A,B`` (default: every symbol) over one connection, with the
    market summary and the news that the table's page shows around it."""
    symbols = validation.watchlist(request.args.get("symbols"))
    return _open("multi", (*symbols, MARKET, NEWS))
