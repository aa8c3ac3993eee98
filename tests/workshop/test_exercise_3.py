"""Workshop exercise 3: a new page, ``/movers``, fed by a new stream of the day's movers.

Run it with ``pytest tests -m exercise_3``. The page connects to the stream its
``sse-connect`` names; the stream sends a ``movers`` event at once and again as prices
move. Each event is a fragment with the top gainers (inside an element of class
``gainers``: up to five symbols with the highest change %, highest first, only those up on
the day) and the top losers (class ``losers``: up to five, lowest change % first, only those
down), one element with ``data-symbol`` per mover.

Right after each event the check reads ``/api/quotes`` and works the movers out itself;
they must agree (on a calm market, so that no tick falls in between most of the time).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import Event, Server, SSEClient
from workshop_support import Element, by_attr, by_class, parse_html

pytestmark = pytest.mark.exercise_3

EVENT = "movers"
TOP = 5
# Twelve symbols ticking every ~2 s and every event sent at once (no frames): a fresh
# /api/quotes almost always shows the market the event was made from.
CALM = {"TICKER_INTERVAL": "2.0", "FRAME_MS": "0"}
# A market that never ticks in practice (see tests/test_proxy.py), and without news: at
# start-up the market replays a day of ticks with the headlines between them, and a day of
# ticks 1e9 s apart holds more headlines than a process could ever replay.
STILL = {"TICKER_INTERVAL": "1e9", "TICKER_NEWS_S": "0"}


@pytest.fixture(scope="module")
def calm(tmp_path_factory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("movers") / "procfile.log"
    with Server.procfile(log_path, env=CALM).start() as server:
        yield server


def movers_page(server: Server) -> Element:
    status, headers, body = server.request("/movers")
    assert status == 200, (
        f"GET /movers answered {status}: add the page's route (in "
        "ticker/web/pages.py, or a blueprint of its own) and its template"
    )
    assert headers["Content-Type"].startswith("text/html"), headers["Content-Type"]
    return parse_html(body.decode())


def stream_path(page: Element) -> str:
    connects = page.find_all(by_attr("sse-connect"))
    assert len(connects) == 1, (
        f"/movers should have one element with sse-connect, found {len(connects)}"
    )
    return connects[0].attrs["sse-connect"]


def movers_events(server: Server, path: str) -> Iterator[Event]:
    """The ``movers`` events of ``path``, as they arrive (other events are skipped)."""
    with SSEClient(server.base, path) as client:
        assert client.status == 200, (
            f"the page's stream {path} answered {client.status}"
        )
        kind = client.headers["Content-Type"]
        assert kind.startswith("text/event-stream"), f"{path} sends {kind}"
        while True:
            event = client.next()
            if event.event == EVENT:
                yield event


def listed(fragment: Element, side: str) -> list[str]:
    boxes = fragment.find_all(by_class(side))
    assert len(boxes) == 1, (
        f'a movers fragment needs one element of class "{side}"; found {len(boxes)}'
    )
    return [e.attrs["data-symbol"] for e in boxes[0].find_all(by_attr("data-symbol"))]


def expected(quotes: list[dict], side: str) -> list[float]:
    """The change % values the movers of ``side`` must have, in order."""
    values = [q["change_pct"] for q in quotes]
    if side == "gainers":
        return sorted((v for v in values if v > 0), reverse=True)[:TOP]
    return sorted(v for v in values if v < 0)[:TOP]


def test_the_page_connects_to_its_stream_and_shows_the_movers(app_server: Server):
    page = movers_page(app_server)
    stream_path(page)
    targets = page.find_all(by_attr("sse-swap", EVENT))
    assert len(targets) == 1, (
        f'/movers needs one element with sse-swap="{EVENT}" for the stream to fill'
    )
    assert any("sse-connect" in a.attrs for a in targets[0].ancestors()), (
        f'the sse-swap="{EVENT}" element must sit inside the sse-connect element'
    )
    for side in ("gainers", "losers"):
        listed(page, side)  # rendered with the page, not only once the stream speaks


def test_the_stream_sends_new_movers_as_prices_move(app_server: Server):
    path = stream_path(movers_page(app_server))
    events = movers_events(app_server, path)
    try:
        fragments = {next(events).data for _ in range(4)}
    finally:
        events.close()
    assert len(fragments) > 1, "the movers never changed while prices moved"


def test_a_new_viewer_gets_the_movers_at_once(tmp_path):
    """On a market that never ticks, only the stream's snapshot can bring them."""
    server = Server.procfile(tmp_path / "still.log", env=STILL).start()
    try:
        path = stream_path(movers_page(server))
        with SSEClient(server.base, path) as client:
            try:
                client.events_until(lambda ev: any(e.event == EVENT for e in ev), 3)
            except AssertionError:
                pytest.fail(
                    "no movers event came before any tick: send the latest movers "
                    "with the stream's snapshot (the broker keeps the latest event of "
                    "every topic for new viewers)"
                )
    finally:
        server.stop()


def test_the_movers_are_the_top_five_up_and_down(calm: Server):
    """Each event against /api/quotes read right after it: at least three must agree."""
    path = stream_path(movers_page(calm))
    agreed, last_difference = 0, ""
    events = movers_events(calm, path)
    try:
        for _ in range(20):
            fragment = parse_html(next(events).data)
            quotes = calm.get_json("/api/quotes")["quotes"]
            pct = {q["symbol"]: q["change_pct"] for q in quotes}
            shown = {side: listed(fragment, side) for side in ("gainers", "losers")}
            if all(
                [pct.get(s) for s in shown[side]] == expected(quotes, side)
                for side in shown
            ):
                agreed += 1
                if agreed == 3:
                    return
            else:
                last_difference = (
                    f"the event listed {shown}, with change % "
                    f"{ {side: [pct.get(s) for s in shown[side]] for side in shown} }, "
                    f"but the market's top movers have change % "
                    f"{ {side: expected(quotes, side) for side in shown} }"
                )
    finally:
        events.close()
    pytest.fail(
        f"only {agreed} of 20 movers events matched the market; {last_difference}"
    )
