"""The app in a real browser: Debian's Chromium, driven by Playwright, against gunicorn.

The server is started from the Procfile, as a PaaS starts it (gunicorn, gevent worker), and
the pages run exactly as shipped: htmx and its SSE extension, no test hooks in the app. What
the browser did is read from the outside (its requests, console and page errors, the DOM).

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; ``TICKER_CHROMIUM`` points at
another one) and the ``playwright`` package (``pip install -r requirements-dev.txt``). Without
them these tests skip, except on CI (``CI=true``), where they fail. Playwright never downloads
a browser here. Screenshots and the measured reconnect time go to ``artifacts/``.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest
from browser_support import (
    PHONE,
    Watch,
    assert_strict_csp,
    expect,
    is_page_or_static,
    row,
    screenshot,
    symbols_of,
    wait_for_new_tick,
)
from support import ROOT, TEST_ENV, Server

from ticker import Settings
from ticker.market.model import HISTORY_LEN, Market, make_universe
from ticker.market.news import NEWS_KEPT
from ticker.rendering.charts import SPARK_LEN

if TYPE_CHECKING:
    from playwright.sync_api import Page, Response

RECONNECT_REPORT = ROOT / "artifacts" / "reconnect.json"

MIN_SYMBOLS = 12
UPDATES_PER_ROW = 3
# An ordinary request while the table streams. What this guards against is a request
# that queues behind the stream (Chromium's six connections per host, all taken): that one
# never completes, so any finite bound tells them apart; this one leaves a busy machine room.
PROMPT_S = 10.0
# A row is stale STALE_AFTER_S (2 s at TICKER_INTERVAL=0.2) after its last swap; a busy
# browser may get there late, never early, so the wait has a wide margin on top.
STALE_AFTER_S = 2
STALE_WAIT_MS = (STALE_AFTER_S + 15) * 1000
RECONNECT_BUDGET_S = 10.0


# --- fixtures (the browser, pages and the gunicorn server are in conftest.py) ---------


@pytest.fixture
def table(gunicorn: Server, open_page) -> tuple[Page, Watch, Response]:
    """The market table, loaded on a desktop viewport."""
    page, watch = open_page(gunicorn)
    response = page.goto("/")
    return page, watch, response


# --- the table ------------------------------------------------------------------------


def test_table_opens_exactly_one_stream_and_every_row_updates_through_it(table):
    page, watch, response = table
    assert response.status == 200
    symbols = symbols_of(page)
    assert len(symbols) >= MIN_SYMBOLS, symbols
    first_prices = {s: row(page, s).locator(".last").inner_text() for s in symbols}

    # Round by round, every row must show a tick it did not show at the last look:
    # after UPDATES_PER_ROW rounds, each row has changed at least that many times.
    seen = {s: row(page, s).get_attribute("data-seq") for s in symbols}
    for _ in range(UPDATES_PER_ROW):
        for symbol in symbols:
            seen[symbol] = wait_for_new_tick(page, symbol, seen[symbol])

    prices = {s: row(page, s).locator(".last").inner_text() for s in symbols}
    assert prices != first_prices, "rows re-rendered but no price moved"

    streams = watch.streams()
    assert len(streams) == 1, [r.url for r in streams]
    (stream,) = streams
    assert stream.resource_type == "eventsource"
    assert urlsplit(stream.url).path == "/stream"
    requested = parse_qs(urlsplit(stream.url).query)["symbols"][0].split(",")
    assert requested == symbols
    # So every change above arrived through that one stream: nothing else was fetched.
    others = [p for p in watch.paths() if not p.startswith("/stream")]
    assert all(is_page_or_static(p) for p in others), others
    assert watch.errors == []
    screenshot(page, "table.png")


def test_table_page_sends_a_strict_csp_and_breaks_none_of_it(table):
    page, watch, response = table
    assert_strict_csp(response)
    symbol = symbols_of(page)[0]
    seq = row(page, symbol).get_attribute("data-seq")
    wait_for_new_tick(page, symbol, seq)  # swaps happened under the policy
    assert watch.errors == []


def test_a_csp_violation_would_be_reported(table):
    """The error watch is not blind: an inline style is refused and shows up as an error."""
    page, watch, _ = table
    heading = page.locator("h1")
    colour = heading.evaluate("h1 => getComputedStyle(h1).color")
    with page.expect_console_message(lambda m: "Content Security Policy" in m.text):
        heading.evaluate("h1 => h1.setAttribute('style', 'color: rgb(1, 2, 3)')")
    expect(heading).to_have_css("color", colour)
    assert any("Content Security Policy" in e for e in watch.errors), watch.errors


def test_other_requests_complete_promptly_while_the_table_streams(table, open_page):
    page, watch, _ = table
    symbol = symbols_of(page)[0]
    wait_for_new_tick(page, symbol, row(page, symbol).get_attribute("data-seq"))

    # A second tab of the same browser context shares the connection pool with the stream.
    other = page.context.new_page()
    started = time.monotonic()
    response = other.goto("/api/quotes", timeout=PROMPT_S * 1000)
    elapsed = time.monotonic() - started
    assert response.status == 200
    assert len(response.json()["quotes"]) >= MIN_SYMBOLS
    assert elapsed < PROMPT_S, f"/api/quotes took {elapsed:.2f}s beside the stream"
    assert len(watch.streams()) == 1
    # ... and the table kept streaming meanwhile.
    wait_for_new_tick(page, symbol, row(page, symbol).get_attribute("data-seq"))


def test_table_fits_a_phone_screen(gunicorn, open_page):
    page, watch = open_page(gunicorn, viewport=PHONE, is_mobile=True, has_touch=True)
    page.goto("/")
    symbol = symbols_of(page)[0]
    wait_for_new_tick(page, symbol, row(page, symbol).get_attribute("data-seq"))
    # Which columns a phone drops is a design choice; these three are the point of a row.
    for cell in (".symbol", ".last", ".change-pct"):
        expect(row(page, symbol).locator(cell)).to_be_in_viewport()
    # The table may scroll inside its box, the page itself must not scroll sideways.
    page_width = page.evaluate("document.documentElement.scrollWidth")
    assert page_width <= PHONE["width"], page_width
    assert watch.errors == []
    screenshot(page, "table-phone.png")


# --- a symbol's page ------------------------------------------------------------------


def test_symbol_page_updates_from_its_own_stream(gunicorn, open_page):
    symbol = gunicorn.get_json("/api/quotes")["quotes"][0]["symbol"]
    page, watch = open_page(gunicorn)
    response = page.goto(f"/symbols/{symbol}")
    assert response.status == 200
    assert_strict_csp(response)
    assert symbols_of(page) == [symbol]

    seq = row(page, symbol).get_attribute("data-seq")
    for _ in range(UPDATES_PER_ROW):
        seq = wait_for_new_tick(page, symbol, seq)

    streams = watch.streams()
    assert [urlsplit(r.url).path for r in streams] == [f"/stream/{symbol}"]
    assert streams[0].resource_type == "eventsource"
    others = [p for p in watch.paths() if not p.startswith("/stream")]
    assert all(is_page_or_static(p) for p in others), others
    assert watch.errors == []
    screenshot(page, "symbol.png")


def test_pages_name_an_icon_the_browser_can_load(table):
    """Without one, Chromium fetches /favicon.ico by itself and logs the 404 as an error."""
    page, _, _ = table
    icons = page.locator("link[rel~=icon]")
    href = icons.first.get_attribute("href") if icons.count() else "/favicon.ico"
    if not href.startswith("data:"):
        assert page.context.request.get(href).status == 200, href


# --- a restart under an open page -----------------------------------------------------


def test_table_resumes_with_a_fresh_snapshot_after_a_server_restart(
    tmp_path, open_page
):
    log_path = tmp_path / "restart.log"
    # Headlines every 10 minutes or so: what the strip shows after the restart is what the
    # new server started with, not news that broke since.
    old = Server.procfile(log_path, env=RARE_NEWS).start()
    new = None
    try:
        page, watch = open_page(old)
        page.goto("/")
        symbols = symbols_of(page)
        first = symbols[0]
        wait_for_new_tick(page, first, row(page, first).get_attribute("data-seq"))

        before = old.get_json("/api/quotes")["quotes"]
        sigterm_ms = time.time() * 1000
        old.stop()
        stopped_ms = time.time() * 1000
        new = Server.procfile(log_path, env=RARE_NEWS, port=old.port).start()
        ready_ms = time.time() * 1000
        ready = time.monotonic()

        # The first moment a row shows a quote of the new server: one ticked after the old
        # one exited. (Not "other than the one it showed at the stop": the old server's
        # last frame may still be on its way into the page then.) How many rows show one
        # at that moment:
        changed_at_once = page.wait_for_function(
            NEWER_ROWS_JS, arg=stopped_ms, timeout=RECONNECT_BUDGET_S * 1000
        ).json_value()
        reconnect_s = time.monotonic() - ready
        # A fresh snapshot comes as one write and is swapped in one go: by the time the
        # first changed row is seen, every row has changed. Ticks alone would trickle in.

        record_reconnect(
            reconnect_s,
            changed_at_once,
            len(symbols),
            watch,
            marks={
                "sigterm": sigterm_ms,
                "old_exited": stopped_ms,
                "new_ready": ready_ms,
            },
        )
        assert reconnect_s < RECONNECT_BUDGET_S
        assert changed_at_once == len(symbols), (changed_at_once, len(symbols))
        for symbol in symbols:  # ... and every row now shows the new server's market
            assert int(row(page, symbol).get_attribute("data-ts")) > stopped_ms
        assert watch.paths().count("/") == 1, "the page was reloaded"
        # One stream again, not one per retry that ever fired.
        new.wait_for(lambda h: h["streams"]["total"] == 1, "exactly one stream")
        # ... which is the market the old one served, gone on: a third market, made here,
        # computes the same quotes for the same moments, before and after the restart.
        shown = page.evaluate(ROWS_JS)
        old_seq = {q["symbol"]: q["seq"] for q in before}
        assert all(q["seq"] >= old_seq[q["symbol"]] for q in shown), "ids went back"
        assert_same_market(before, "before the restart")
        assert_same_market(shown, "after the restart")
        assert {q["symbol"] for q in shown} == set(symbols)
        seq = row(page, first).get_attribute("data-seq")
        wait_for_new_tick(page, first, seq)  # and it keeps updating
        # A page opened now, a moment after boot, shows the day so far: whole sparklines,
        # a whole chart, the latest headlines.
        fresh, _ = open_page(new)
        fresh.goto("/")
        lines = [
            path_points(d)
            for d in fresh.eval_on_selector_all(
                "tr.quote .spark-line", "paths => paths.map(p => p.getAttribute('d'))"
            )
        ]
        assert [len(points) for points in lines] == [SPARK_LEN] * len(symbols)
        assert_recent_headlines(fresh)
        fresh.goto(f"/symbols/{first}")
        chart = fresh.locator("#chart .chart-line").get_attribute("d")
        assert len(path_points(chart)) == HISTORY_LEN
    finally:
        old.stop()
        if new is not None:
            new.stop()


# How many rows show a quote ticked after ``stopped`` (falsy: none yet, keep waiting).
NEWER_ROWS_JS = """stopped => [...document.querySelectorAll('tr.quote')]
    .filter(row => Number(row.dataset.ts) > stopped).length"""

# Every row as the page shows it: symbol, tick time, sequence number, price, range, volume.
ROWS_JS = """() => [...document.querySelectorAll('tr.quote')].map(row => ({
    symbol: row.dataset.symbol,
    ts: Number(row.dataset.ts),
    seq: Number(row.dataset.seq),
    last: Number(row.querySelector('.last').lastChild.textContent.replace(/,/g, '')),
    high: Number(row.querySelector('.high').textContent.replace(/,/g, '')),
    low: Number(row.querySelector('.low').textContent.replace(/,/g, '')),
    volume: Number(row.querySelector('.volume').textContent.replace(/,/g, '')),
}))"""


RARE_NEWS = {"TICKER_NEWS_S": "600"}


def market_at(at_ms: float) -> Market:
    """The restart test's market, made in this process as it stands at ``at_ms``."""
    env = Settings.from_env({**TEST_ENV, **RARE_NEWS})
    companies = make_universe(env.ticker_seed, env.ticker_symbols)
    return Market(
        companies,
        env.ticker_seed,
        env.ticker_interval,
        env.ticker_news_s,
        clock=lambda: (at_ms + 0.5) / 1000,
    )


def path_points(d: str) -> list[tuple[int, int]]:
    """The points of an SVG path ``M x y l dx dy dx dy ...`` (or ``M x y h0``)."""
    numbers = [int(n) for n in re.findall(r"-?\d+", d.replace("h0", ""))]
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def assert_same_market(quotes: list[dict], when: str) -> None:
    """Each quote is what the seed and its tick's time say it is: a server that started
    the market again (from the reference price, or from an empty history) fails this."""
    for quote in quotes:
        expected = market_at(quote["ts"]).quotes[quote["symbol"]]
        got = {k: quote[k] for k in ("ts", "seq", "last", "high", "low", "volume")}
        wanted = {k: getattr(expected, k) for k in got}
        assert got == wanted, (when, quote["symbol"], got, wanted)


def assert_recent_headlines(page: Page) -> None:
    """The news strip holds the latest headlines of the market, not "no headlines yet"."""
    items = page.locator("#news li.headline")
    expect(items).to_have_count(NEWS_KEPT)
    stamps = [
        int(ts)
        for ts in items.evaluate_all("items => items.map(i => i.dataset.publishedTs)")
    ]
    symbols = items.evaluate_all("items => items.map(i => i.dataset.symbol)")
    market = market_at(stamps[0])
    schedule = market.schedule
    newest = schedule.story_at(stamps[0])
    stories = [schedule.story(j) for j in range(newest, newest - NEWS_KEPT, -1)]
    assert stamps == [s.ts for s in stories]
    assert symbols == [market.symbol_of(s) for s in stories]


def record_reconnect(
    seconds: float, at_once: int, row_count: int, watch: Watch, marks: dict[str, float]
) -> None:
    """Print and keep what the reconnect took, with every stream attempt the page made.

    Times are seconds after the SIGTERM, from the browser's own request timing.
    """
    zero = marks["sigterm"]
    attempts = []
    for request in watch.streams():
        response = None if request.failure else request.response()
        started = request.timing["startTime"]
        attempts.append(
            {
                "at_s": round((started - zero) / 1000, 2) if started > 0 else None,
                "status": response.status if response else None,
                "failure": request.failure,
                "last_event_id": request.all_headers().get("last-event-id"),
            }
        )
    report = {
        "seconds_from_server_ready_to_first_row_update": round(seconds, 3),
        "rows_changed_at_first_update": at_once,
        "rows": row_count,
        "marks_s": {k: round((v - zero) / 1000, 2) for k, v in marks.items()},
        "stream_attempts": attempts,
    }
    RECONNECT_REPORT.parent.mkdir(parents=True, exist_ok=True)
    RECONNECT_REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nreconnect: first row update {seconds:.2f}s after the new server was ready"
    )


# --- what a viewer sees while rows change -----------------------------------------------

ARROW_MISMATCHES_JS = """() => [...document.querySelectorAll('tr.quote')].filter(row => {
    const arrow = row.querySelector('.arrow').textContent.trim();
    const wanted = row.classList.contains('tick-up') ? '\u25b2'
        : row.classList.contains('tick-down') ? '\u25bc' : '\u00b7';
    return arrow !== wanted;
}).length"""


def test_arrow_and_its_colour_always_agree_while_rows_swap(table):
    page, _, _ = table
    seq = row(page, symbols_of(page)[0]).get_attribute("data-seq")
    wait_for_new_tick(page, symbols_of(page)[0], seq)
    # htmx's default attribute settling would show each new row with the old row's classes
    # for 20 ms; sample the whole table many times while it updates.
    samples = [page.evaluate(ARROW_MISMATCHES_JS) for _ in range(200)]
    assert sum(samples) == 0, samples


def test_rows_say_they_are_stale_when_updates_stop(tmp_path, open_page):
    server = Server.procfile(tmp_path / "stale.log").start()
    try:
        page, _ = open_page(server)
        page.goto("/")
        flags = page.locator("tr.quote .stale-flag")
        symbol = symbols_of(page)[0]
        wait_for_new_tick(page, symbol, row(page, symbol).get_attribute("data-seq"))
        for i in range(flags.count()):
            expect(flags.nth(i)).to_be_hidden()
    finally:
        server.stop()
    # No more ticks: with TICKER_INTERVAL=0.2 a row is stale after 2 s without an update,
    # and the page shows it with CSS alone.
    for i in range(flags.count()):
        expect(flags.nth(i)).to_be_visible(timeout=STALE_WAIT_MS)
    screenshot(page, "table-stale.png")
