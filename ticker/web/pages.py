"""The pages people look at: the market table, one company's page, and the watchlist.

The viewer's watchlist lives in a cookie (no server-side sessions), so any process can serve
any request. The pages are rendered from the same partials the streams send, so what a page
shows first and what the stream swaps in later are the same markup.
"""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    url_for,
)

from ticker.market.model import Quote
from ticker.web import validation
from ticker.web.validation import MAX_SYMBOLS_PER_STREAM, SORTS

bp = Blueprint("pages", __name__)

WATCHLIST_COOKIE = "watchlist"
# Symbols are letters; a comma would have to be quoted in a cookie.
WATCHLIST_SEPARATOR = "-"


def _viewer_watchlist() -> tuple[str, ...]:
    """The viewer's watchlist from its cookie; every symbol if there is none.

    A cookie is user input: entries that are not listed symbols (say, after the market's
    seed changed) are dropped, never an error.
    """
    service = validation.service()
    raw = request.cookies.get(WATCHLIST_COOKIE, "")
    known = service.market.companies
    symbols = [s for s in raw.upper().split(WATCHLIST_SEPARATOR) if s in known]
    return tuple(dict.fromkeys(symbols))[:MAX_SYMBOLS_PER_STREAM] or service.symbols


def _sorted(quotes: list[Quote], sort: str, direction: str) -> list[Quote]:
    if not sort:
        return quotes  # watchlist order
    key = SORTS[sort][0]
    return sorted(quotes, key=lambda q: getattr(q, key), reverse=direction == "desc")


def _sort_link(options: dict[str, str], column: str) -> str:
    """The link a column heading makes: sort by it, or flip it if it is the sort."""
    if options["sort"] == column:
        direction = "asc" if options["dir"] == "desc" else "desc"
    else:
        direction = SORTS[column][1]
    return _index_url(options, sort=column, dir=direction)


def _index_url(options: dict[str, str], **changes: str) -> str:
    merged = {**options, **changes}
    args = {k: v for k, v in merged.items() if v and (k, v) != ("streams", "one")}
    return url_for("pages.index", **args)


def _market_context(
    options: dict[str, str],
    watchlist: tuple[str, ...] | None = None,
    editing: bool = False,
) -> dict[str, object]:
    """What the market section (``_market.html``) needs, for the page and for htmx.
    ``watchlist`` defaults to the viewer's (from the cookie)."""
    service = validation.service()
    watchlist = watchlist or _viewer_watchlist()
    quotes = service.quotes
    return {
        "options": options,
        "quotes": _sorted(
            [quotes[s] for s in watchlist], options["sort"], options["dir"]
        ),
        "watchlist": watchlist,
        "symbols_total": len(service.symbols),
        "custom": watchlist != service.symbols,
        "addable": [
            service.market.companies[s] for s in service.symbols if s not in watchlist
        ],
        "summary_html": service.fragments.summary_html(
            quotes[s] for s in service.symbols
        ),
        "news_html": service.fragments.news_html(service.headlines),
        "stream_url": url_for("streams.stream_many", symbols=",".join(watchlist)),
        "sort_link": lambda column: _sort_link(options, column),
        "index_url": lambda **changes: _index_url(options, **changes),
        "editing": editing,
    }


@bp.get("/")
def index() -> str:
    """The market: the viewer's watchlist as a table, fed by one stream for all its rows
    (or, with ``?streams=per-symbol``, by one stream per row)."""
    options = validation.table_options(request.args)
    return render_template("index.html", **_market_context(options))


@bp.get("/symbols/<symbol>")
def symbol_page(symbol: str) -> str:
    """One company's page: its chart and row, fed by its own stream."""
    service = validation.service()
    symbol = validation.symbol(symbol)
    return render_template(
        "symbol.html",
        q=service.quotes[symbol],
        company=service.market.companies[symbol],
    )


def _watchlist_response(symbols: tuple[str, ...]) -> Response:
    """Store ``symbols`` and show the result: the re-rendered market section for htmx,
    which swaps it in (and so reconnects the table's one stream to the new list), or a
    redirect back to the page for a plain form post."""
    options = validation.table_options(request.values)
    if request.headers.get("HX-Request") == "true":
        context = _market_context(options, watchlist=symbols, editing=True)
        response = Response(render_template("_market.html", **context))
    else:
        response = redirect(_index_url(options), 303)
    if symbols == validation.service().symbols:
        response.delete_cookie(WATCHLIST_COOKIE)
    else:
        response.set_cookie(
            WATCHLIST_COOKIE,
            WATCHLIST_SEPARATOR.join(symbols),
            max_age=365 * 24 * 3600,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
        )
    return response


@bp.post("/watchlist")
def watchlist_add() -> Response:
    """Add the form's ``symbol`` to the viewer's watchlist (htmx ``hx-post``)."""
    raw = request.form.get("symbol", "")
    if not raw.strip():
        abort(400, "Choose a symbol to add.")
    symbol = validation.symbol(raw)
    watchlist = _viewer_watchlist()
    if len(watchlist) >= MAX_SYMBOLS_PER_STREAM and symbol not in watchlist:
        abort(400, f"A watchlist holds at most {MAX_SYMBOLS_PER_STREAM} symbols.")
    return _watchlist_response(tuple(dict.fromkeys((*watchlist, symbol))))


@bp.delete("/watchlist/<symbol>")
@bp.post("/watchlist/<symbol>/delete")  # the same, for a form without htmx
def watchlist_remove(symbol: str) -> Response:
    """Take ``symbol`` off the viewer's watchlist (htmx ``hx-delete``)."""
    symbol = validation.symbol(symbol)
    remaining = tuple(s for s in _viewer_watchlist() if s != symbol)
    if not remaining:
        abort(400, "A watchlist keeps at least one symbol.")
    return _watchlist_response(remaining)


@bp.delete("/watchlist")
@bp.post("/watchlist/reset")  # the same, for a form without htmx
def watchlist_reset() -> Response:
    """Back to the default watchlist: every symbol."""
    return _watchlist_response(validation.service().symbols)
