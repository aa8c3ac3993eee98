"""HTTP routes: the pages, the SSE streams, the watchlist, the JSON snapshot, health and
broadcast (``/metrics`` is added by the app factory).

Routes stay short: they validate input, ask the service's broker for a subscription and turn
it into a response. They never know how quotes are produced or fanned out. The viewer's
watchlist lives in a cookie (no server-side sessions), so any process can serve any request.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Iterable

import gevent
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from ticker import logfmt, streams
from ticker.broker import (
    MARKET,
    NEWS,
    ClientLimitReached,
    StreamLimitReached,
    chart_topic,
)
from ticker.clients import HangupWatch, client_address, client_socket
from ticker.feed import Quote
from ticker.service import Service, get_service
from ticker.sse import encode_comment, encode_retry
from ticker.summary import summarize

log = logging.getLogger(__name__)
bp = Blueprint("views", __name__)

_SYMBOL = re.compile(r"[A-Za-z]{2,5}", re.ASCII)
MAX_SYMBOLS_PER_STREAM = 100
MAX_BROADCAST_CHARS = 280


def _service() -> Service:
    return get_service(current_app)


def _symbol(raw: str) -> str:
    """Validate one symbol (case-insensitive); abort with 400 or 404 otherwise."""
    if not _SYMBOL.fullmatch(raw.strip()):
        abort(400, "Malformed symbol: a symbol is 2 to 5 letters, like ABC.")
    symbol = raw.strip().upper()
    if symbol not in _service().market.companies:
        # Safe to show: it is 2-5 ASCII letters by now.
        abort(404, f"Unknown symbol: {symbol}.")
    return symbol


def _watchlist(raw: str | None) -> tuple[str, ...]:
    """Parse ``?symbols=A,B``; no value means every symbol. Duplicates collapse."""
    if raw is None or not raw.strip():
        return _service().symbols
    entries = [e for e in raw.split(",") if e.strip()]
    if len(entries) > MAX_SYMBOLS_PER_STREAM:
        abort(400, f"Too many symbols: at most {MAX_SYMBOLS_PER_STREAM} per stream.")
    return tuple(dict.fromkeys(_symbol(e) for e in entries))


WATCHLIST_COOKIE = "watchlist"
WATCHLIST_SEPARATOR = (
    "-"  # symbols are letters; a comma would have to be quoted in a cookie
)
# Sortable columns: what each sorts by, and the order a first click gives (biggest first
# for numbers, A to Z for names).
SORTS: dict[str, tuple[str, str]] = {
    "symbol": ("symbol", "asc"),
    "company": ("name", "asc"),
    "last": ("last", "desc"),
    "change": ("change", "desc"),
    "change_pct": ("change_pct", "desc"),
    "high": ("high", "desc"),
    "low": ("low", "desc"),
    "volume": ("volume", "desc"),
}
VIEWS = ("one", "per-symbol")  # ?streams=: one stream for the table, or one per row


def _viewer_watchlist() -> tuple[str, ...]:
    """The viewer's watchlist from its cookie; every symbol if there is none.

    A cookie is user input: entries that are not listed symbols (say, after the market's
    seed changed) are dropped, never an error.
    """
    service = _service()
    raw = request.cookies.get(WATCHLIST_COOKIE, "")
    known = service.market.companies
    symbols = [s for s in raw.upper().split(WATCHLIST_SEPARATOR) if s in known]
    return tuple(dict.fromkeys(symbols))[:MAX_SYMBOLS_PER_STREAM] or service.symbols


def _table_options(values: dict[str, str]) -> dict[str, str]:
    """Validated ``sort``, ``dir`` and ``streams`` from a query string or form."""
    sort = values.get("sort") or ""
    if sort and sort not in SORTS:
        abort(400, f"Unknown sort: choose one of {', '.join(SORTS)}.")
    direction = values.get("dir") or (SORTS[sort][1] if sort else "")
    if direction not in ("", "asc", "desc"):
        abort(400, "Unknown sort direction: use dir=asc or dir=desc.")
    streams = values.get("streams") or "one"
    if streams not in VIEWS:
        abort(400, "Unknown view: use streams=one or streams=per-symbol.")
    return {"sort": sort, "dir": direction if sort else "", "streams": streams}


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
    return url_for("views.index", **args)


def _market_context(
    options: dict[str, str],
    watchlist: tuple[str, ...] | None = None,
    editing: bool = False,
) -> dict[str, object]:
    """What the market section (``_market.html``) needs, for the page and for htmx.
    ``watchlist`` defaults to the viewer's (from the cookie)."""
    service = _service()
    watchlist = watchlist or _viewer_watchlist()
    quotes = service.broker.quotes
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
        "summary": summarize(quotes[s] for s in service.symbols),
        "headlines": list(service.headlines),
        "stream_url": url_for("views.stream_many", symbols=",".join(watchlist)),
        "sort_link": lambda column: _sort_link(options, column),
        "index_url": lambda **changes: _index_url(options, **changes),
        "editing": editing,
    }


@bp.get("/")
def index() -> str:
    """The market: the viewer's watchlist as a table, fed by one stream for all its rows
    (or, with ``?streams=per-symbol``, by one stream per row)."""
    options = _table_options(request.args)
    return render_template("index.html", **_market_context(options))


def _watchlist_response(symbols: tuple[str, ...]) -> Response:
    """Store ``symbols`` and show the result: the re-rendered market section for htmx,
    which swaps it in (and so reconnects the table's one stream to the new list), or a
    redirect back to the page for a plain form post."""
    options = _table_options(request.values)
    default = symbols == _service().symbols
    if request.headers.get("HX-Request") == "true":
        context = _market_context(options, watchlist=symbols, editing=True)
        response = Response(render_template("_market.html", **context))
    else:
        response = redirect(_index_url(options), 303)
    if default:
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
    symbol = _symbol(raw)
    watchlist = _viewer_watchlist()
    if len(watchlist) >= MAX_SYMBOLS_PER_STREAM and symbol not in watchlist:
        abort(400, f"A watchlist holds at most {MAX_SYMBOLS_PER_STREAM} symbols.")
    return _watchlist_response(tuple(dict.fromkeys((*watchlist, symbol))))


@bp.delete("/watchlist/<symbol>")
@bp.post("/watchlist/<symbol>/delete")  # the same, for a form without htmx
def watchlist_remove(symbol: str) -> Response:
    """Take ``symbol`` off the viewer's watchlist (htmx ``hx-delete``)."""
    symbol = _symbol(symbol)
    watchlist = _viewer_watchlist()
    remaining = tuple(s for s in watchlist if s != symbol)
    if not remaining:
        abort(400, "A watchlist keeps at least one symbol.")
    return _watchlist_response(remaining)


@bp.delete("/watchlist")
@bp.post("/watchlist/reset")  # the same, for a form without htmx
def watchlist_reset() -> Response:
    """Back to the default watchlist: every symbol."""
    return _watchlist_response(_service().symbols)


@bp.get("/symbols/<symbol>")
def symbol_page(symbol: str) -> str:
    """One company's page: its chart and row, fed by its own stream."""
    service = _service()
    symbol = _symbol(symbol)
    return render_template(
        "symbol.html",
        q=service.broker.quotes[symbol],
        company=service.market.companies[symbol],
    )


def _refuse(status: int, message: str) -> Response:
    response = Response(message + "\n", status=status, mimetype="text/plain")
    response.headers["Retry-After"] = "5"
    return response


def _open_stream(
    route: str, symbols: tuple[str, ...], extra: tuple[str, ...]
) -> Response:
    service = _service()
    broker, settings = service.broker, service.settings
    client = client_address(request.environ, service.trusted_proxies)
    if broker.closing:
        # This process is shutting down. A refusal would make the browser's SSE extension
        # back off for seconds; an empty stream with a retry hint brings it back in one,
        # by then to the new process.
        return _sse_response(iter([encode_retry(settings.retry_ms)]))
    max_s = _max_s(request.args.get("max_s"))
    try:
        sub = broker.subscribe(route, (*symbols, *extra), client)
    except ClientLimitReached:
        log.warning(
            logfmt.event(
                "stream.refused",
                reason="client_cap",
                status=429,
                client=client,
                route=route,
                limit=broker.max_per_client,
            )
        )
        return _refuse(
            429, "Too many open streams from your address; close some and retry."
        )
    except StreamLimitReached:
        log.warning(
            logfmt.event(
                "stream.refused",
                reason="server_cap",
                status=503,
                client=client,
                route=route,
                limit=broker.max_streams,
            )
        )
        return _refuse(503, "Too many open streams on this server; try again shortly.")
    opened = time.monotonic()
    log.info(
        logfmt.event(
            "stream.open",
            client=client,
            route=route,
            symbols=len(symbols),
            open=broker.open_streams,
        )
    )

    sock = client_socket(request.environ)
    watch = HangupWatch(sock, sub.close) if sock is not None else None
    if sock is not None:
        # Shutting the socket down fails the stuck write, and the server then closes us.
        sub.on_stall = lambda: _shutdown(sock, socket.SHUT_RDWR)
        if request.method == "GET" and not isinstance(sock, ssl.SSLSocket):
            # Frames may go straight to the socket once the headers are out; the server
            # chunks an HTTP/1.1 response of unknown length, so frames must be chunks too.
            sub.attach(
                sock.fileno(), request.environ.get("SERVER_PROTOCOL") != "HTTP/1.0"
            )

    # ?max_s=N: end the stream after N seconds; the browser reconnects after `retry`.
    # The per-symbol view needs it: over HTTP/1.1 its six streams hold every connection
    # the browser allows, and only a stream that ends lets a click on a link through.
    lifetime = gevent.spawn_later(max_s, sub.close) if max_s else None

    def release() -> None:
        if lifetime is not None:
            lifetime.kill(block=False)
        if watch is not None:
            watch.stop()
        if sock is not None:
            # A stream's connection is never reused: once the server has written the
            # final chunk it closes, instead of idling in keep-alive (which would also
            # hold a shutting-down worker for the whole keep-alive timeout).
            _shutdown(sock, socket.SHUT_RD)
        if broker.unsubscribe(sub):
            log.info(
                logfmt.event(
                    "stream.close",
                    client=client,
                    route=route,
                    duration_s=round(time.monotonic() - opened, 3),
                    events=sub.delivered,
                    bytes=sub.sent_bytes,
                    open=broker.open_streams,
                )
            )

    hello = encode_retry(settings.retry_ms) + encode_comment(
        f"process {service.process_id}"
    )
    body = streams.events(
        sub, settings.heartbeat_s, service.heartbeat, hello, release, sock
    )
    return _sse_response(streams.Body(body, release))


def _sse_response(body: Iterable[bytes]) -> Response:
    # direct_passthrough: the server gets our body as it is, without Werkzeug's wrappers.
    response = Response(body, mimetype="text/event-stream", direct_passthrough=True)
    response.headers["Cache-Control"] = "no-cache"
    # nginx (and routers built on it) buffer responses unless told not to.
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _shutdown(sock: socket.socket, how: int) -> None:
    """Shut the connection down (``how``: SHUT_RD or SHUT_RDWR) without closing it.

    Done through a duplicate descriptor: gevent's own ``shutdown`` cancels any greenlet
    waiting on the socket with EBADF, which gunicorn logs as an unexpected error. Shut
    down underneath it, a stuck write fails with a quiet EPIPE instead.
    """
    try:
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
            dup.shutdown(how)
    except OSError:
        pass  # already gone


MAX_LIFETIME_S = 24 * 3600


def _max_s(raw: str | None) -> int:
    """Validate ``?max_s=`` (0 or absent: the stream lasts until the client leaves)."""
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or not 0 <= int(raw) <= MAX_LIFETIME_S:
        abort(400, f"max_s must be a whole number of seconds, 0 to {MAX_LIFETIME_S}.")
    return int(raw)


@bp.get("/stream/<symbol>")
def stream_symbol(symbol: str) -> Response:
    """SSE for one symbol: its row (the event name is the symbol) and its chart."""
    symbol = _symbol(symbol)
    return _open_stream("symbol", (symbol,), (chart_topic(symbol),))


@bp.get("/stream")
def stream_many() -> Response:
    """SSE for ``?symbols=A,B`` (default: every symbol) over one connection, with the
    market summary and the news that the table's page shows around it."""
    return _open_stream(
        "multi", _watchlist(request.args.get("symbols")), (MARKET, NEWS)
    )


@bp.get("/api/quotes")
def api_quotes() -> Response:
    """The current quote of every symbol, as JSON."""
    service = _service()
    return jsonify(
        seq=service.broker.last_seq,
        quotes=[service.broker.quotes[s].as_dict() for s in service.symbols],
    )


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness plus what an operator wants at a glance: is the market moving (here, or
    through Redis), is the bus connected, who is watching."""
    service = _service()
    feed, broker, bus = service.feed, service.broker, service.bus.status()
    now = time.time()
    # Quiet since the last quote arrived, or since start if none has yet.
    quiet = now - (broker.last_quote_at or service.started_at)
    fresh = quiet < max(5.0, 5 * service.settings.ticker_interval)
    return jsonify(
        status="ok" if fresh and bus["connected"] else "degraded",
        pid=os.getpid(),
        process=service.process_id,
        bus=bus,
        feed={
            "running": feed.running,
            "ticks": feed.ticks,
            "restarts": feed.restarts,
            "last_quote_age_s": round(quiet, 3),
            "symbols": len(service.symbols),
        },
        streams={
            "total": broker.open_streams,
            "by_route": dict(broker.open_by_route),
            "clients": len(broker.open_by_client),
            "pending_events": broker.pending_events(),
        },
    )


@bp.post("/broadcast")
def broadcast() -> tuple[Response, int]:
    """Admin message to every viewer. Body: JSON ``{"message": ...}`` or a form field."""
    service = _service()
    token = service.settings.admin_token
    if not token:
        abort(403, "Broadcast is disabled: the server has no ADMIN_TOKEN set.")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        abort(401, "A valid 'Authorization: Bearer <ADMIN_TOKEN>' header is required.")
    _refuse_oversized_body()
    if request.is_json:
        data = request.get_json(silent=True)
        message = data.get("message") if isinstance(data, dict) else None
    else:
        message = request.form.get("message")
    if not isinstance(message, str) or not message.strip():
        abort(400, 'Send a non-empty text "message" (JSON or form field).')
    message = " ".join(message.split())
    if len(message) > MAX_BROADCAST_CHARS or not message.isprintable():
        abort(
            400,
            f"The message must be printable text of at most {MAX_BROADCAST_CHARS} chars.",
        )
    streams = service.broadcast(message)
    return jsonify(sent=True, streams=streams), 202


def _refuse_oversized_body() -> None:
    """413 for a body over MAX_CONTENT_LENGTH, however it was sent.

    Werkzeug refuses an oversized Content-Length itself, but a chunked body it silently
    cuts at the limit: reading one byte past what it let through tells the two apart.
    """
    data = request.get_data(cache=True)  # the form and JSON parsers reuse this
    if len(data) >= current_app.config["MAX_CONTENT_LENGTH"] and request.environ[
        "wsgi.input"
    ].read(1):
        abort(413, "The message body is too large.")


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    """Short, readable errors: plain text for machines, a small page for browsers."""
    machine = request.path.startswith(
        ("/stream", "/api", "/broadcast", "/healthz", "/metrics")
    )
    if not machine and request.accept_mimetypes.accept_html:
        body = render_template("error.html", error=error)
        response = Response(body, status=error.code, mimetype="text/html")
    else:
        text = f"{error.code} {error.name}: {error.description}\n"
        response = Response(text, status=error.code, mimetype="text/plain")
    if error.code == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response
