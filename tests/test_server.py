"""The app as served for real: both ``python app.py`` and the Procfile's gunicorn command.

Each test talks HTTP to a server process on a free loopback port and parses the raw SSE
stream, so what is checked here is what a browser receives.
"""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import SSEClient, quote_events


def symbols_of(server) -> list[str]:
    return [q["symbol"] for q in server.get_json("/api/quotes")["quotes"]]


def test_stream_headers_say_event_stream_and_disable_caching_and_proxy_buffering(
    server,
):
    symbol = symbols_of(server)[0]
    with SSEClient(server.base, f"/stream/{symbol}") as client:
        assert client.status == 200
        assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert client.headers["Cache-Control"] == "no-cache"
        assert client.headers["X-Accel-Buffering"] == "no"


def test_one_symbol_stream_starts_with_retry_hint_and_snapshot_then_ticks_with_rising_ids(
    server,
):
    symbol = symbols_of(server)[3]
    with SSEClient(server.base, f"/stream/{symbol}") as client:
        first = client.next()
        assert first.retry == 1000
        hello = client.next()
        assert hello.comments and hello.comments[0].startswith("process ")
        snapshot = client.next()
        assert snapshot.event == symbol
        assert f'data-symbol="{symbol}"' in snapshot.data
        events = client.events_until(lambda ev: len(quote_events(ev)) >= 3)
    quotes = [snapshot, *quote_events(events)]
    assert {e.event for e in quotes} == {symbol}
    ids = [int(e.id) for e in quotes]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids


def test_fragments_are_whole_rows_with_symbol_and_tick_time(server):
    symbol = symbols_of(server)[0]
    with SSEClient(server.base, f"/stream/{symbol}") as client:
        event = client.events_until(lambda ev: quote_events(ev))[-1]
    html = event.data
    assert html.lstrip().startswith("<tr") and html.rstrip().endswith("</tr>")
    assert "\n" in html, "the fragment is multi-line, so framing every line matters"
    ts = int(re.search(r'data-ts="(\d+)"', html).group(1))
    api_ts = {q["symbol"]: q["ts"] for q in server.get_json("/api/quotes")["quotes"]}[
        symbol
    ]
    assert abs(api_ts - ts) < 60_000  # epoch milliseconds, not seconds
    assert f'sse-swap="{symbol}"' in html


def test_multi_stream_sends_a_snapshot_of_every_requested_symbol_at_once(server):
    wanted = symbols_of(server)[:5]
    with SSEClient(server.base, "/stream?symbols=" + ",".join(wanted)) as client:
        events = client.events_until(
            lambda ev: {e.event for e in quote_events(ev)} >= set(wanted), timeout=2.0
        )
        later = client.events_until(lambda ev: len(quote_events(ev)) >= 10)
    names = {e.event for e in quote_events(events + later)}
    assert names == set(wanted), "only the requested symbols are streamed"
    ids = [int(e.id) for e in quote_events(events + later)]
    assert ids == sorted(ids), "ids rise across symbols on one connection"


def test_stream_without_symbols_carries_the_whole_market(server):
    everyone = set(symbols_of(server))
    with SSEClient(server.base, "/stream") as client:
        events = client.events_until(
            lambda ev: {e.event for e in ev} >= everyone, timeout=3
        )
    assert {e.event for e in quote_events(events)} == everyone


def test_duplicate_and_lower_case_symbols_collapse_to_one_subscription(server):
    symbol = symbols_of(server)[1]
    path = f"/stream?symbols={symbol},{symbol.lower()},{symbol}"
    with SSEClient(server.base, path) as client:
        snapshot = client.next_quote()
        following = client.next_quote()
    assert snapshot.event == following.event == symbol
    assert int(following.id) > int(snapshot.id), "one snapshot, not three"


def test_heartbeat_comments_arrive(server):
    symbol = symbols_of(server)[0]
    with SSEClient(server.base, f"/stream/{symbol}") as client:
        events = client.events_until(
            lambda ev: sum("heartbeat" in c for e in ev for c in e.comments) >= 2,
            timeout=5,
        )
    beats = [i for i, e in enumerate(events) for c in e.comments if "heartbeat" in c]
    assert len(beats) == 2 and beats[1] > beats[0] + 1, "ticks flow between heartbeats"


def test_a_closed_client_is_released(server):
    server.wait_for(lambda h: h["streams"]["total"] == 0, "no streams before the test")
    clients = [SSEClient(server.base, "/stream") for _ in range(3)]
    for client in clients:
        client.next()
    health = server.wait_for(lambda h: h["streams"]["total"] == 3, "three open streams")
    assert health["streams"]["by_route"] == {"multi": 3}
    for client in clients:
        client.close()
    server.wait_for(
        lambda h: h["streams"]["total"] == 0, "streams released after close"
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/stream/ZZZZZ", 404),
        ("/stream/TOOLONG", 400),
        ("/stream/%3Cscript%3E", 400),
        ("/stream?symbols=ZZZZZ", 404),
        ("/stream?symbols=A1,B2", 400),
        ("/symbols/ZZZZZ", 404),
        ("/symbols/%3Cimg%20src=x%3E", 400),
    ],
)
def test_unknown_or_malformed_symbols_get_a_short_readable_4xx(server, path, status):
    code, _headers, body = server.request(path, headers={"Accept": "text/html"})
    assert code == status
    text = body.decode()
    assert len(text) < 5000 and "<script>" not in text and "<img" not in text
    assert ("Unknown symbol" if status == 404 else "Malformed symbol") in text


def test_table_page_has_one_row_per_symbol_and_one_stream_for_all(server):
    status, headers, body = server.request("/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    symbols = symbols_of(server)
    assert page.count("sse-connect=") == 1
    for symbol in symbols:
        assert f'data-symbol="{symbol}"' in page and f'sse-swap="{symbol}"' in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_symbol_page_is_fed_by_its_own_stream(server):
    symbol = symbols_of(server)[2]
    status, _, body = server.request(f"/symbols/{symbol}")
    assert status == 200
    assert f'sse-connect="/stream/{symbol}"' in body.decode()


def test_api_quotes_and_healthz_describe_the_live_market(server):
    quotes = server.get_json("/api/quotes")["quotes"]
    assert len(quotes) == 12
    assert {
        "symbol",
        "name",
        "last",
        "change",
        "change_pct",
        "volume",
        "ts",
        "seq",
    } <= set(quotes[0])
    health = server.get_json("/healthz")
    assert health["status"] == "ok" and health["feed"]["running"]
    assert health["feed"]["ticks"] > 0


# What an operator is promised on /metrics, and the kind of each: a gauge goes up and down,
# a counter only rises. tests/test_ops.py proves that each one moves when it should.
OPERATOR_METRICS = {
    "ticker_open_streams": "gauge",
    "ticker_events_sent": "counter",
    "ticker_bytes_sent": "counter",
    "ticker_updates_conflated": "counter",
    "ticker_ticks": "counter",
    "ticker_feed_restarts": "counter",
    "ticker_broadcasts": "counter",
}


def test_metrics_are_prometheus_text_with_every_operator_figure(server):
    status, headers, body = server.request("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name, kind in OPERATOR_METRICS.items():
        assert families[name].type == kind, name
        assert len(families[name].documentation) > 10, f"{name} says what it counts"
    routes = {s.labels["route"] for s in families["ticker_open_streams"].samples}
    assert routes == {"symbol", "multi"}


def test_broadcast_needs_the_admin_token_and_reaches_open_streams(server):
    body = json.dumps({"message": "Market closes <early> today"}).encode()
    headers = {"Content-Type": "application/json"}
    assert server.request("/broadcast", "POST", body, headers)[0] == 401
    wrong = {**headers, "Authorization": "Bearer nope"}
    assert server.request("/broadcast", "POST", body, wrong)[0] == 401
    symbol = symbols_of(server)[0]
    with SSEClient(server.base, f"/stream/{symbol}") as client:
        client.next()
        good = {**headers, "Authorization": "Bearer test-admin-token"}
        assert server.request("/broadcast", "POST", body, good)[0] == 202
        events = client.events_until(lambda ev: any(e.event == "broadcast" for e in ev))
    banner = next(e for e in events if e.event == "broadcast").data
    assert "Market closes &lt;early&gt; today" in banner
