"""The market page's live parts over real HTTP: summary, news, charts, heartbeats, the
watchlist cookie and its routes, sorting and the per-symbol view.

One gunicorn server (the Procfile's command) for the module; streams are read with the raw
SSE client, pages and forms with plain HTTP, so what is checked is what a browser gets. The
browser's side of the same features (swaps, animations, the six-connection limit) is in
``test_viewer.py``.
"""

from __future__ import annotations

import html
import http.client
import itertools
import re
import time
from http.cookies import SimpleCookie

import pytest
from support import Server, SSEClient, quote_events

HX = {"HX-Request": "true"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server.procfile(
        tmp_path_factory.mktemp("market") / "server.log"
    ).start() as srv:
        yield srv


@pytest.fixture(scope="module")
def quotes(server) -> dict[str, dict]:
    return {q["symbol"]: q for q in server.get_json("/api/quotes")["quotes"]}


def rows(page: str) -> list[str]:
    """The symbols of the table's rows, in page order."""
    return re.findall(r'<tr id="quote-[A-Z]+"[^>]*\sdata-symbol="([A-Z]+)"', page)


def cell(row_html: str, name: str) -> float:
    text = re.search(rf'<td class="num {name}">(.*?)</td>', row_html, re.DOTALL).group(
        1
    )
    return float(re.sub(r"<[^>]+>|[^0-9.+-]", "", text.split(">")[-1] or text))


def row_html(page: str, symbol: str) -> str:
    return re.search(rf'<tr id="quote-{symbol}".*?</tr>', page, re.DOTALL).group(0)


def cookie_of(headers: dict[str, str]) -> SimpleCookie:
    jar = SimpleCookie()
    jar.load(headers.get("Set-Cookie", ""))
    return jar


def post_without_following(
    server: Server, path: str, body: str, headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    """POST as a plain form does, and look at the redirect instead of following it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", path, body=body.encode(), headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.headers)
    finally:
        conn.close()


def get_page(server: Server, path: str, cookie: str = "") -> str:
    headers = {"Cookie": f"watchlist={cookie}"} if cookie else {}
    status, _, body = server.request(path, headers=headers)
    assert status == 200, (status, body[:300])
    return body.decode()


# --- The table's stream: summary, news, heartbeats ----------------------------------------


def test_the_table_stream_carries_the_market_summary_news_and_named_heartbeats(
    server, quotes
):
    with SSEClient(server.base, "/stream") as client:
        events = client.events_until(
            lambda ev: (
                {"market", "news", "heartbeat"} <= {e.event for e in ev}
                and len([e for e in ev if e.event == "market"]) >= 2
            ),
            timeout=10,
        )
    market = [e for e in events if e.event == "market"]
    summary = market[-1].data
    assert 'id="market-summary"' in summary and 'sse-swap="market"' in summary
    counts = [
        int(n)
        for n in re.findall(r"<b>(\d+)</b> (?:advancing|declining|unchanged)", summary)
    ]
    assert len(counts) == 3 and sum(counts) == len(quotes), summary
    level = float(
        re.search(r'summary-level">([\d,.]+)<', summary).group(1).replace(",", "")
    )
    # The index is 1,000 x the mean of each symbol's last / open, so it lies between the
    # smallest and the largest of those among the rows this stream sent before it. (Not a
    # fixed band around 1,000: the market goes on through its trading day across restarts,
    # and a day is long enough for prices to wander far from the open.)
    latest = {}
    for event in events[: events.index(market[-1])]:
        if event.event in quotes:
            latest[event.event] = cell(event.data, "last") / (
                cell(event.data, "last") - cell(event.data, "change")
            )
    assert len(latest) == len(quotes), "the snapshot had every row"
    ratios = [1000 * r for r in latest.values()]
    assert min(ratios) - 0.01 <= level <= max(ratios) + 0.01, (level, ratios)
    assert 'class="live stale-after-' in summary, "the live marker rides along"
    assert all(e.id is None for e in market), "ids stay the quotes' sequence numbers"

    news = [e for e in events if e.event == "news"][-1].data
    headlines = re.findall(
        r'<li class="headline tone-(up|down)" data-symbol="([A-Z]+)"', news
    )
    assert 1 <= len(headlines) <= 5, news
    assert {s for _, s in headlines} <= set(quotes)
    stamps = [int(t) for t in re.findall(r'data-published-ts="(\d+)"', news)]
    assert stamps == sorted(stamps, reverse=True), "newest headline first"

    beat = next(e for e in events if e.event == "heartbeat")
    assert "heartbeat" in beat.comments, "the comment line proxies see is still there"
    assert (
        beat.data.startswith('<span class="live stale-after-')
        and 'sse-swap="heartbeat"' in beat.data
    )


def test_the_summary_is_paced_to_about_once_a_second_while_quotes_flow(server):
    # TICKER_INTERVAL=0.2 with 12 symbols: about 60 quotes a second, the summary at most 1.
    with SSEClient(server.base, "/stream") as client:
        events = client.events_until(
            lambda ev: len([e for e in ev if e.event == "market"]) >= 4, timeout=10
        )
    market_at = [i for i, e in enumerate(events) if e.event == "market"]
    between = [len(quote_events(events[a:b])) for a, b in itertools.pairwise(market_at)]
    # About 60 quotes between summaries; a frame boundary can shift one pair, not all.
    assert between and sum(between) / len(between) >= 30, between


def test_a_symbol_stream_carries_its_row_and_its_chart_but_not_the_summary(
    server, quotes
):
    symbol = min(quotes)
    with SSEClient(server.base, f"/stream/{symbol}") as client:
        events = client.events_until(
            lambda ev: len([e for e in ev if e.event == "chart"]) >= 2, timeout=10
        )
    names = {e.event for e in events if e.data}
    assert names <= {symbol, "chart", "heartbeat"}, names
    chart = [e for e in events if e.event == "chart"][-1].data
    assert f'data-symbol="{symbol}"' in chart and re.search(
        r'data-tick-ts="\d{13}"', chart
    )
    assert re.search(r'<path class="chart-line" d="M\d+ \d+l[-\d ]+"', chart), chart
    # The day range is the quote's own: the low and high of the row with the same seq.
    rows_by_seq = {e.id: e.data for e in events if e.event == symbol}
    matched = [
        c.data
        for c in events
        if c.event == "chart"
        and re.search(r'data-seq="(\d+)"', c.data).group(1) in rows_by_seq
    ]
    assert matched, "a chart for a tick whose row this stream also carried"
    chart = matched[-1]
    row = rows_by_seq[re.search(r'data-seq="(\d+)"', chart).group(1)]
    for edge in ("low", "high"):
        shown = float(re.search(rf'class="num day-{edge}">([\d.]+)<', chart).group(1))
        assert shown == cell(row, edge), (edge, shown)


def test_rows_carry_a_sparkline_that_ends_at_the_last_price(server, quotes):
    symbol = sorted(quotes)[1]
    with SSEClient(server.base, f"/stream?symbols={symbol}") as client:
        row = quote_events(client.events_until(lambda ev: len(quote_events(ev)) >= 5))[
            -1
        ].data
    path = re.search(r'<path class="spark-line" d="M(\d+) (\d+)((?:l[-\d ]+)?)"', row)
    assert path, row
    x, y = int(path.group(1)), int(path.group(2))
    steps = [int(n) for n in path.group(3).removeprefix("l").split()]
    for dx, dy in zip(steps[::2], steps[1::2], strict=True):
        x, y = x + dx, y + dy
    assert x == 120 and 0 <= y <= 28, (
        "the newest price is at the right edge, in the box"
    )
    assert 'aria-hidden="true"' in row.split('class="spark"')[1].split(">")[0]


# --- Pages: sorting and views ----------------------------------------------------------------


@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_sorting_by_a_column_orders_the_rows_by_it(server, direction):
    page = get_page(server, f"/?sort=change_pct&dir={direction}")
    order = rows(page)
    values = [cell(row_html(page, s), "change-pct") for s in order]
    assert values == sorted(values, reverse=direction == "desc"), values
    heading = re.search(
        r'<th scope="col" class="num" aria-sort="(\w+)"><a class="sort" href="([^"]+)">Change %',
        page,
    )
    assert heading, "the sorted heading says so"
    assert heading.group(1) == ("ascending" if direction == "asc" else "descending")
    flipped = "asc" if direction == "desc" else "desc"
    assert html.unescape(heading.group(2)) == f"/?sort=change_pct&dir={flipped}"


@pytest.mark.parametrize(
    "query", ["sort=price", "sort=last&dir=sideways", "streams=many", "sort=%3Cb%3E"]
)
def test_a_bad_sort_or_view_is_a_readable_400(server, query):
    status, _headers, body = server.request(
        f"/?{query}", headers={"Accept": "text/plain"}
    )
    assert status == 400, status
    assert b"<b>" not in body and len(body) < 300, body


def test_the_per_symbol_view_gives_every_row_its_own_stream_and_says_why_not_to(
    server, quotes
):
    page = get_page(server, "/?streams=per-symbol")
    connects = re.findall(r'<tbody sse-connect="/stream/([A-Z]+)\?max_s=10">', page)
    assert sorted(connects) == sorted(quotes)
    assert 'id="market" class="market">' in page, "no table-wide stream in this view"
    note = re.search(
        r'<aside class="callout" id="per-symbol-note">(.*?)</aside>', page, re.DOTALL
    )
    assert note and "six connections" in note.group(1) and "HTTP/2" in note.group(1)
    default = get_page(server, "/")
    assert (
        default.count("sse-connect=") == 1
        and 'sse-connect="/stream?symbols=' in default
    )


# --- The watchlist ------------------------------------------------------------------------


def test_adding_and_removing_symbols_keeps_the_list_in_a_cookie_and_the_stream_follows(
    server, quotes
):
    symbols = list(quotes)
    keep = symbols[:2]
    # Remove all but two, the way the page's forms do with htmx.
    cookie = ""
    for symbol in symbols[2:]:
        status, headers, body = server.request(
            f"/watchlist/{symbol}",
            method="DELETE",
            headers={**HX, **({"Cookie": f"watchlist={cookie}"} if cookie else {})},
        )
        assert status == 200, (status, body[:200])
        cookie = cookie_of(headers)["watchlist"].value
    assert cookie.split("-") == keep
    fragment = body.decode()
    assert fragment.startswith('<div id="market"'), "htmx swaps the whole section"
    assert f'sse-connect="/stream?symbols={",".join(keep)}"' in fragment
    assert rows(fragment) == keep and " open>" in fragment, "the editor stays open"

    morsel = cookie_of(headers)["watchlist"]
    assert (
        morsel["httponly"]
        and morsel["samesite"] == "Lax"
        and int(morsel["max-age"]) > 0
    )

    # The page, with the cookie: only those rows, and one stream for exactly them.
    page = get_page(server, "/", cookie)
    assert rows(page) == keep
    # Adding one back (a plain form post without htmx gets a redirect instead).
    status, headers = post_without_following(
        server,
        "/watchlist",
        f"symbol={symbols[5].lower()}&sort=last&dir=asc",
        {**FORM, "Cookie": f"watchlist={cookie}"},
    )
    assert status == 303 and headers["Location"] == "/?sort=last&dir=asc"
    assert cookie_of(headers)["watchlist"].value.split("-") == [*keep, symbols[5]]

    # The stream the page opens carries exactly the watchlist's rows.
    with SSEClient(server.base, f"/stream?symbols={','.join(keep)}") as client:
        seen = {
            e.event
            for e in quote_events(
                client.events_until(lambda ev: len(quote_events(ev)) >= 10)
            )
        }
    assert seen == set(keep)


def test_the_last_symbol_cannot_be_removed_and_reset_forgets_the_cookie(server, quotes):
    only = next(iter(quotes))
    status, _, body = server.request(
        f"/watchlist/{only}",
        method="DELETE",
        headers={**HX, "Cookie": f"watchlist={only}"},
    )
    assert status == 400 and b"at least one symbol" in body
    status, headers, body = server.request(
        "/watchlist", method="DELETE", headers={**HX, "Cookie": f"watchlist={only}"}
    )
    assert status == 200 and rows(body.decode()) == list(quotes)
    assert cookie_of(headers)["watchlist"]["max-age"] == "0", "the cookie is deleted"


@pytest.mark.parametrize(
    ("symbol", "status", "message"),
    [
        ("", 400, b"Choose a symbol"),
        ("ZZZZZ", 404, b"Unknown symbol: ZZZZZ."),
        ("<script>", 400, b"Malformed symbol"),
    ],
)
def test_adding_a_bad_symbol_is_a_readable_4xx(server, symbol, status, message):
    got, _, body = server.request(
        "/watchlist",
        method="POST",
        body=f"symbol={symbol}".encode(),
        headers={**FORM, **HX},
    )
    assert got == status and message in body, (got, body)
    assert b"<script>" not in body


def test_a_cookie_of_junk_is_ignored_not_an_error(server, quotes):
    known = sorted(quotes)[3]
    page = get_page(server, "/", f"NOPE-{known}-{known}-%3Cx%3E-")
    assert rows(page) == [known]
    assert rows(get_page(server, "/", "NOPE-ALSO")) == list(quotes), (
        "nothing valid: all"
    )


def test_max_s_ends_a_stream_cleanly_so_the_browser_reconnects(server, quotes):
    symbol = sorted(quotes)[2]
    # A stream that ignored max_s would go on for ever (heartbeats keep it open): read it
    # for at most this long. Ending early is the bug to catch; ending late, load.
    give_up_after_s = 15
    with SSEClient(server.base, f"/stream/{symbol}?max_s=1") as client:
        started = time.monotonic()
        events = []
        with pytest.raises(EOFError):
            while time.monotonic() - started < give_up_after_s:
                events.append(client.next())
        lasted = time.monotonic() - started
    assert 0.9 < lasted < give_up_after_s, lasted
    assert events[0].retry == 1000, "the browser is told how soon to come back"
    assert len(quote_events(events)) >= 2
    server.wait_for(lambda h: h["streams"]["total"] == 0, "the ended stream freed")


@pytest.mark.parametrize("value", ["-1", "1.5", "ten", "86401", "%D9%A1"])
def test_a_bad_max_s_is_a_readable_400(server, quotes, value):
    status, _, body = server.request(f"/stream/{min(quotes)}?max_s={value}")
    assert status == 400 and b"max_s must be" in body, (status, body)
