"""Workshop exercise 4: price alerts as a stream, ``GET /alerts?symbol=X&above=P&below=Q``.

Run it with ``pytest tests -m exercise_4``. The stream sends an ``alert`` event each time
the symbol's price crosses a threshold: from at or under ``above`` to over it, or from at or
over ``below`` to under it (the price when the viewer connects is where it starts from).
Each alert's fragment carries ``data-symbol``, ``data-kind`` (``above`` or ``below``),
``data-threshold`` and ``data-price`` (the price that crossed). Like every stream, it sends
a heartbeat every ``HEARTBEAT_S`` seconds. Bad input gets ``400`` (``404`` for a symbol that
is not listed) with a one-line reason. The check's market ticks each symbol about twice a
second, so a price read from ``/api/quotes`` is almost always where a new stream starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from support import Event, Server, SSEClient
from workshop_support import by_attr, parse_html

pytestmark = pytest.mark.exercise_4

EVENT = "alert"
CENT = Decimal("0.01")
# Each symbol ticks about every 0.5 s: a stream opened right after reading the price almost
# always starts from that price, and its symbol's next tick comes soon.
MARKET = {"TICKER_INTERVAL": "0.5"}
ATTEMPTS = (
    20  # fresh streams to see both kinds of alert (each comes first half the time)
)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("alerts") / "procfile.log"
    with Server.procfile(log_path, env=MARKET).start() as server:
        yield server


def first_quote(server: Server) -> dict:
    """The priciest symbol's quote: its ticks move it by the most cents."""
    return max(server.get_json("/api/quotes")["quotes"], key=lambda q: q["last"])


def alerts_path(**query: object) -> str:
    return "/alerts?" + urlencode(query)


def open_alerts(server: Server, path: str, gzip: bool = False) -> SSEClient:
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    client = SSEClient(server.base, path, headers=headers)
    assert client.status == 200, (
        f"GET {path} answered {client.status}: add the /alerts route (in "
        "ticker/web/streams.py, or a blueprint of its own)"
    )
    kind = client.headers["Content-Type"]
    assert kind.startswith("text/event-stream"), f"{path} sends {kind}"
    if gzip:  # like every stream, compressed for a viewer that asks (Connection._own)
        encoding = client.headers.get("Content-Encoding")
        assert encoding == "gzip", f"{path} with Accept-Encoding: gzip sent {encoding}"
    return client


def assert_the_route_streams(server: Server) -> None:
    """A good request streams: the reason to believe a 400 or 404 is the route's own."""
    quote = first_quote(server)
    open_alerts(
        server, alerts_path(symbol=quote["symbol"], above=quote["last"])
    ).close()


def read(client: SSEClient) -> Event:
    try:
        return client.next()
    except TimeoutError:
        pytest.fail(
            "the alert stream sent nothing for 5 s: like every stream, it must send a "
            "heartbeat every HEARTBEAT_S seconds (0.5 s here)"
        )


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ({"above": "10"}, "no symbol"),
        ({"symbol": "1X", "above": "10"}, "a malformed symbol"),
        ({"symbol": "{symbol}"}, "no threshold"),
        ({"symbol": "{symbol}", "above": "ten"}, "a threshold that is not a number"),
        ({"symbol": "{symbol}", "above": "-5"}, "a negative price"),
        ({"symbol": "{symbol}", "below": "0"}, "a zero price"),
        ({"symbol": "{symbol}", "above": "nan"}, "not a number, spelled as one"),
        ({"symbol": "{symbol}", "above": "inf"}, "an infinite price"),
        ({"symbol": "{symbol}", "below": "1e400"}, "a price too large for a float"),
        ({"symbol": "{symbol}", "above": "10", "below": "20"}, "below over above"),
    ],
)
def test_bad_input_gets_400_with_a_one_line_reason(market: Server, query, why):
    assert_the_route_streams(market)
    symbol = first_quote(market)["symbol"]
    path = alerts_path(**{k: v.format(symbol=symbol) for k, v in query.items()})
    status, _, body = market.request(path)
    assert status == 400, f"GET {path} ({why}) answered {status}, not 400"
    reason = body.decode().strip()
    assert reason and "\n" not in reason, f"say why in one line, not {reason!r}"


def test_a_symbol_that_is_not_listed_gets_404(market: Server):
    assert_the_route_streams(market)
    listed = {q["symbol"] for q in market.get_json("/api/quotes")["quotes"]}
    unlisted = next(s for s in ("ZZZZ", "QQQQ", "XXXX") if s not in listed)
    status, _, _ = market.request(alerts_path(symbol=unlisted, above=10))
    assert status == 404, f"an unlisted symbol answered {status}"


def first_alert(client: SSEClient, within_s: float) -> Event | None:
    """The stream's first ``alert`` event, or None if none comes within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        event = read(client)
        if event.event == EVENT:
            return event
    return None


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_alerts_fire_when_the_price_crosses_either_way(market: Server, gzip: bool):
    """Thresholds a cent either side of the price: the symbol's next tick crosses one.
    Fresh streams until both kinds have come (or ``ATTEMPTS`` streams), plain and gzip."""
    kinds: set[str] = set()
    silent = 0
    for _ in range(ATTEMPTS):
        quote = first_quote(market)
        last = Decimal(str(quote["last"]))
        above, below = last + CENT, last - CENT
        path = alerts_path(symbol=quote["symbol"], above=above, below=below)
        with open_alerts(market, path, gzip) as client:
            event = first_alert(client, within_s=3)
        if event is None:  # a tick slipped in before the stream began: rare
            silent += 1
            assert silent < 3, (
                f"no alert in 3 s on {path}, three times, although "
                f"{quote['symbol']} ticks about twice a second and each tick crosses "
                "one threshold or the other"
            )
            continue
        (alert,) = parse_html(event.data).find_all(by_attr("data-kind"))
        kind = alert.attrs["data-kind"]
        assert alert.attrs.get("data-symbol") == quote["symbol"], alert
        assert kind in ("above", "below"), alert
        threshold = Decimal(alert.attrs["data-threshold"])
        assert threshold == (above if kind == "above" else below), alert
        price = Decimal(alert.attrs["data-price"])
        crossed = price > threshold if kind == "above" else price < threshold
        assert crossed, f"an alert for a price that did not cross: {alert}"
        kinds.add(kind)
        if kinds == {"above", "below"}:
            return
    pytest.fail(f"in {ATTEMPTS} streams, only alerts of kind {kinds} came")


def test_no_alert_while_the_price_stays_on_one_side(market: Server):
    """Edges, not levels: a price already beyond a threshold, or well inside the band,
    raises nothing, however many times it ticks."""
    quote = first_quote(market)
    last = Decimal(str(quote["last"]))
    already_above = alerts_path(symbol=quote["symbol"], above=last / 2)
    inside = alerts_path(symbol=quote["symbol"], above=last * 2, below=last / 2)
    clients = [open_alerts(market, already_above), open_alerts(market, inside)]
    try:
        seen, ticks = quote["seq"], 0
        while ticks < 5:  # the symbol ticked five times while both streams were read
            for client in clients:
                event = read(client)
                assert event.event != EVENT, (
                    f"an alert although the price never crossed: {event.data!r} "
                    f"(alert on the tick that crosses, not on every tick beyond)"
                )
            seq = first_quote(market)["seq"]
            ticks, seen = ticks + (seq != seen), seq
    finally:
        for client in clients:
            client.close()
