"""Everything a request may get wrong, checked in one place, and how errors look.

Bad input gets a clear 4xx with a readable message, never a 500, and never reflects what
the client sent unescaped: messages only ever repeat a value once it has been validated.
"""

from __future__ import annotations

import re

import gevent
from flask import Flask, Response, abort, current_app, render_template, request
from werkzeug.exceptions import HTTPException

from ticker.service import Service, get_service

_SYMBOL = re.compile(r"[A-Za-z]{2,5}", re.ASCII)
MAX_SYMBOLS_PER_STREAM = 100
MAX_BROADCAST_CHARS = 280
MAX_LIFETIME_S = 24 * 3600
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


def service() -> Service:
    """The running parts of the app serving this request."""
    return get_service(current_app)


def symbol(raw: str) -> str:
    """Validate one symbol (case-insensitive); abort with 400 or 404 otherwise."""
    if not _SYMBOL.fullmatch(raw.strip()):
        abort(400, "Malformed symbol: a symbol is 2 to 5 letters, like ABC.")
    sym = raw.strip().upper()
    if sym not in service().market.companies:
        # Safe to show: it is 2-5 ASCII letters by now.
        abort(404, f"Unknown symbol: {sym}.")
    return sym


def watchlist(raw: str | None) -> tuple[str, ...]:
    """Parse ``?symbols=A,B``; no value means every symbol. Duplicates collapse."""
    if raw is None or not raw.strip():
        return service().symbols
    entries = [e for e in raw.split(",") if e.strip()]
    if len(entries) > MAX_SYMBOLS_PER_STREAM:
        abort(400, f"Too many symbols: at most {MAX_SYMBOLS_PER_STREAM} per stream.")
    return tuple(dict.fromkeys(symbol(e) for e in entries))


def max_s(raw: str | None) -> int:
    """Validate ``?max_s=`` (0 or absent: the stream lasts until the client leaves)."""
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or not 0 <= int(raw) <= MAX_LIFETIME_S:
        abort(400, f"max_s must be a whole number of seconds, 0 to {MAX_LIFETIME_S}.")
    return int(raw)


def table_options(values: dict[str, str]) -> dict[str, str]:
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


def broadcast_message() -> str:
    """The admin message of a ``POST /broadcast``: JSON ``{"message": ...}`` or a form
    field, printable, one line, at most ``MAX_BROADCAST_CHARS``."""
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
    return message


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
    if error.code == 408:
        # The rest of the body may still come: close (gevent's server honours this;
        # gunicorn ignores it, and its keepalive bounds reading the rest instead).
        response.headers["Connection"] = "close"
    if error.code == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


# A request body must arrive within this long, as its head must (gunicorn's keepalive): a
# body trickled a byte a second would otherwise hold a worker connection for ever.
BODY_DEADLINE_S = 5.0


def read_body_in_time() -> None:
    """Read the request's body (at most MAX_CONTENT_LENGTH) before the view runs, within
    ``BODY_DEADLINE_S``; a body that takes longer gets 408 and the connection closes."""
    if not request.content_length and "chunked" not in request.headers.get(
        "Transfer-Encoding", ""
    ):
        return
    try:
        with gevent.Timeout(BODY_DEADLINE_S):
            request.get_data(cache=True)  # the form and JSON parsers reuse this
    except gevent.Timeout:
        abort(408, f"The request body did not arrive within {BODY_DEADLINE_S:g} s.")


def register(app: Flask) -> None:
    """Every request body arrives in time, and every HTTP error of ``app`` goes through
    :func:`http_error`."""
    app.before_request(read_body_in_time)
    app.register_error_handler(HTTPException, http_error)
