"""HTTP/2, as the article promises: the per-symbol view behind ``docs/nginx-http2.conf``.

The article says SSE works with HTTP/2 and that many streams multiplex over one HTTP/2
connection. Here headless Chromium (Debian's, through Playwright) opens
``/?streams=per-symbol`` (one EventSource per row, to ``/stream/<SYM>?max_s=10``) through a
real nginx running the shipped sample ``docs/nginx-http2.conf`` (TLS with a self-signed
certificate, accepted by the browser context's ``ignore_https_errors``), in front of the
Procfile's gunicorn with ``TEST_ENV`` (12 symbols, a tick every ~0.2 s each). It proves:

- every one of the twelve rows has its own EventSource and updates, and the server holds
  twelve symbol streams (over HTTP/1.1 only six do: test_viewer.py, and below through nginx
  with ``docs/nginx.conf``);
- the page and every stream came over ``h2`` (the navigation's ``nextHopProtocol``; each
  stream's protocol as Chromium's DevTools protocol reports it);
- links and forms are answered at once beside the twelve open streams: a row's symbol link,
  going back, removing a symbol and adding it again (hx-delete, hx-post), each well inside
  the 10 s after which a stream of this view ends (over HTTP/1.1 they wait for that);
- the streams arrive gzip-compressed by the app, through nginx untouched;
- no console error and no Content Security Policy violation, except the one htmx logs each
  time a stream of this view ends at its ``max_s`` (that is how it frees a connection).

And for the table (one stream for every row): its stream comes gzip-compressed and every
row updates, straight from gunicorn, through ``docs/nginx.conf`` and through
``docs/nginx-http2.conf``.

Skipped without Chromium, playwright, nginx or openssl; failed instead under ``CI=true``.
The screenshot goes to ``artifacts/screenshots/per-symbol-http2.png``.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from browser_support import (
    assert_strict_csp,
    changed_rows,
    expect,
    row,
    rows,
    screenshot,
    seqs,
    symbols_of,
    wait_for_changed_rows,
    wait_for_new_tick,
)
from http2_support import (
    Site,
    StreamResponses,
    http2_site,
    make_certificate,
    proxy,
    require_nginx_and_openssl,
)
from support import Server, free_port
from test_proxy import sample_site

if TYPE_CHECKING:
    from browser_support import Watch
    from playwright.sync_api import Page

SYMBOLS = 12  # TEST_ENV's TICKER_SYMBOLS
PER_SYMBOL = "/?streams=per-symbol"
MAX_S = 10  # the per-symbol view's streams end (and reconnect) after this: ?max_s=10
# Chromium's limit of open HTTP/1.1 connections to one host.
HTTP1_CONNECTIONS_PER_HOST = 6
# A click, a back or a form beside the open streams must be answered within this. Normally
# it takes tens of milliseconds; over HTTP/1.1 with six streams open it waits for one of
# them to end (up to MAX_S). Below MAX_S, far above normal on a loaded machine.
ANSWER_MS = 5_000
# Ticks each connected row shows before the starved ones are judged (over HTTP/1.1).
STARVED_PROOF_TICKS = 3


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[Server]:
    """The app as the Procfile runs it (gunicorn, gevent worker), with the tests' market."""
    with Server.procfile(
        tmp_path_factory.mktemp("h2app") / "procfile.log"
    ).start() as s:
        yield s


@pytest.fixture(scope="module")
def h2(app, tmp_path_factory) -> Iterator[Site]:
    """nginx running docs/nginx-http2.conf: ``https://127.0.0.1:<port>`` (TLS, HTTP/2)."""
    require_nginx_and_openssl()
    prefix = tmp_path_factory.mktemp("nginx-h2")
    cert, key = make_certificate(prefix)
    tls_port, plain_port = free_port(), free_port()
    site = http2_site(app.port, tls_port, plain_port, cert, key)
    nginx = proxy(prefix, site, [tls_port, plain_port]).start()
    try:
        yield Site(f"https://127.0.0.1:{tls_port}", plain_port)
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def h1(app, tmp_path_factory) -> Iterator[Site]:
    """nginx running docs/nginx.conf: ``http://127.0.0.1:<port>`` (HTTP/1.1)."""
    require_nginx_and_openssl()
    port = free_port()
    nginx = proxy(
        tmp_path_factory.mktemp("nginx-h1"), sample_site(app.port, port), [port]
    ).start()
    try:
        yield Site(f"http://127.0.0.1:{port}")
    finally:
        nginx.stop()


# --- helpers ---------------------------------------------------------------------------


def reconnects(watch: Watch) -> list[str]:
    """A stream that ends is, to EventSource, an error before it reconnects, and htmx logs
    each as "[object Event]": the per-symbol view's streams do it every MAX_S."""
    return [e for e in watch.errors if e.startswith("console: [object Event] (")]


def other_errors(watch: Watch) -> list[str]:
    return [e for e in watch.errors if e not in reconnects(watch)]


def open_per_symbol(page: Page) -> dict[str, str]:
    """Open the per-symbol view; return the rows' seqs as first rendered."""
    response = page.goto(PER_SYMBOL)
    assert response.ok, response.status
    assert_strict_csp(response)
    bodies = page.locator("table.quotes tbody[sse-connect]")
    expect(bodies).to_have_count(SYMBOLS)
    for body in bodies.all():
        (symbol,) = [
            r.get_attribute("data-symbol") for r in body.locator("tr.quote").all()
        ]
        assert body.get_attribute("sse-connect") == f"/stream/{symbol}?max_s={MAX_S}"
    return seqs(page)


def navigation_protocol(page: Page) -> str:
    return page.evaluate(
        "performance.getEntriesByType('navigation')[0].nextHopProtocol"
    )


def timed(what: str, timings: dict[str, float], action) -> None:
    started = time.monotonic()
    action()
    timings[what] = round(time.monotonic() - started, 3)


# --- the per-symbol view over HTTP/2 ----------------------------------------------------


def test_per_symbol_view_over_http2_every_row_gets_its_own_gzip_stream_and_updates(
    app, h2, open_page
):
    page, watch = open_page(h2, ignore_https_errors=True)
    streams = StreamResponses(page)
    seen = open_per_symbol(page)

    # Every row moves: twelve streams got through, not six.
    changed = wait_for_changed_rows(page, seen, SYMBOLS)
    assert sorted(changed) == sorted(seen)
    assert navigation_protocol(page) == "h2"
    app.wait_for(
        lambda h: h["streams"]["by_route"].get("symbol") == SYMBOLS,
        f"{SYMBOLS} per-symbol streams",
    )
    # And they keep moving: the last row (well past the sixth) shows more ticks.
    last = symbols_of(page)[-1]
    latest = row(page, last).get_attribute("data-seq")
    for _ in range(3):
        latest = wait_for_new_tick(page, last, latest)

    responses = streams.wait_for(SYMBOLS)
    paths = sorted(urlsplit(r["url"]).path for r in responses)
    assert paths == sorted(f"/stream/{s}" for s in seen), paths
    assert {r["type"] for r in responses} == {"EventSource"}, responses
    assert {r["protocol"] for r in responses} == {"h2"}, responses
    assert {r["headers"].get("content-encoding") for r in responses} == {"gzip"}, [
        r["headers"] for r in responses
    ]
    assert {r["headers"].get("content-type") for r in responses} == {
        "text/event-stream; charset=utf-8"
    }

    path = screenshot(page, "per-symbol-http2.png")
    print(f"\nscreenshot: {path}")
    assert other_errors(watch) == [], watch.errors


def test_over_http2_links_and_forms_answer_at_once_beside_the_streams(
    app, h2, open_page
):
    page, watch = open_page(h2, ignore_https_errors=True)
    seen = open_per_symbol(page)
    # The precondition: all twelve streams are open and flowing.
    wait_for_changed_rows(page, seen, SYMBOLS)
    last = symbols_of(page)[-1]
    timings: dict[str, float] = {}

    def follow_link() -> None:
        with page.expect_navigation(url=f"**/symbols/{last}", timeout=ANSWER_MS):
            row(page, last).locator("th.symbol a").click()

    timed("symbol link", timings, follow_link)
    expect(page.locator("h1")).to_contain_text(last)

    def go_back() -> None:
        response = page.go_back(timeout=ANSWER_MS)
        assert response is None or response.ok
        expect(rows(page)).to_have_count(SYMBOLS, timeout=ANSWER_MS)

    timed("back", timings, go_back)
    assert urlsplit(page.url).query == "streams=per-symbol"
    # Back on the view, its last row is live again.
    wait_for_new_tick(page, last, row(page, last).get_attribute("data-seq"))

    page.locator("details.watchlist > summary").click()
    expect(page.locator("details.watchlist")).to_have_attribute("open", "")

    def remove() -> None:
        with page.expect_response(
            lambda r: urlsplit(r.url).path == f"/watchlist/{last}", timeout=ANSWER_MS
        ) as done:
            page.get_by_role("button", name=f"Remove {last} from the watchlist").click()
        assert done.value.request.method == "DELETE" and done.value.ok
        expect(rows(page)).to_have_count(SYMBOLS - 1, timeout=ANSWER_MS)

    timed("remove (hx-delete)", timings, remove)

    def add() -> None:
        page.locator("select#watch-symbol").select_option(last)
        with page.expect_response(
            lambda r: urlsplit(r.url).path == "/watchlist", timeout=ANSWER_MS
        ) as done:
            page.locator("form.watch-add").get_by_role(
                "button", name="Add to watchlist"
            ).click()
        assert done.value.request.method == "POST" and done.value.ok
        expect(rows(page)).to_have_count(SYMBOLS, timeout=ANSWER_MS)

    timed("add (hx-post)", timings, add)
    print(f"\nanswered in (s): {timings}")
    # Still the per-symbol view, and the re-added row streams again.
    expect(page.locator("table.quotes tbody[sse-connect]")).to_have_count(SYMBOLS)
    wait_for_new_tick(page, last, row(page, last).get_attribute("data-seq"))
    assert navigation_protocol(page) == "h2"
    assert other_errors(watch) == [], watch.errors


def test_the_http2_sample_sends_plain_http_to_https(h2):
    conn = http.client.HTTPConnection("127.0.0.1", h2.plain_port, timeout=5)
    try:
        conn.request("GET", "/?streams=per-symbol", headers={"Host": "ticker.test"})
        response = conn.getresponse()
        assert response.status == 301
        assert (
            response.getheader("Location") == "https://ticker.test/?streams=per-symbol"
        )
    finally:
        conn.close()


# --- the same view over HTTP/1.1, through nginx ------------------------------------------


def test_per_symbol_view_over_http1_through_nginx_still_starves_rows_past_the_sixth(
    app, h1, open_page
):
    """Why the table uses one stream: through docs/nginx.conf (HTTP/1.1), as straight from
    gunicorn (test_viewer.py), only six of the twelve rows get a connection."""
    page, watch = open_page(h1)
    seen = open_per_symbol(page)
    assert navigation_protocol(page) == "http/1.1"
    connected = wait_for_changed_rows(page, seen, HTTP1_CONNECTIONS_PER_HOST)
    app.wait_for(
        lambda h: h["streams"]["by_route"].get("symbol") == HTTP1_CONNECTIONS_PER_HOST,
        "six per-symbol streams",
    )
    # Once every connected row showed more ticks, a row that never changed has no stream.
    latest = {s: row(page, s).get_attribute("data-seq") for s in connected}
    for _ in range(STARVED_PROOF_TICKS):
        for symbol in connected:
            latest[symbol] = wait_for_new_tick(page, symbol, latest[symbol])
    assert len(changed_rows(page, seen)) == HTTP1_CONNECTIONS_PER_HOST
    assert other_errors(watch) == [], watch.errors


# --- the table's one stream, compressed, every way in -------------------------------------


@pytest.mark.parametrize("route", ["direct", "nginx", "nginx_http2"])
def test_the_tables_one_stream_comes_gzip_compressed_and_updates_every_row(
    app, route, request, open_page
):
    site, protocol = {
        "direct": (lambda: app, "http/1.1"),
        "nginx": (lambda: request.getfixturevalue("h1"), "http/1.1"),
        "nginx_http2": (lambda: request.getfixturevalue("h2"), "h2"),
    }[route]
    page, watch = open_page(site(), ignore_https_errors=True)
    streams = StreamResponses(page)
    response = page.goto("/")
    assert response.ok
    expect(rows(page)).to_have_count(SYMBOLS)
    seen = seqs(page)
    changed = wait_for_changed_rows(page, seen, SYMBOLS)
    assert sorted(changed) == sorted(seen)

    (stream,) = streams.wait_for(1)
    assert urlsplit(stream["url"]).path == "/stream", stream
    assert stream["protocol"] == protocol, stream
    assert stream["headers"].get("content-encoding") == "gzip", stream["headers"]
    assert navigation_protocol(page) == protocol
    assert watch.errors == []
