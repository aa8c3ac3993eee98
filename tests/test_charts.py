"""Server-drawn charts, the market summary, the newsroom and the pacer, as plain units.

The geometry is checked by decoding the SVG path back into points, so what is asserted is
what a browser would draw, not how the string happens to be built.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from itertools import pairwise

import gevent
import pytest
from gevent.event import Event
from hypothesis import given
from hypothesis import strategies as st

from ticker.market.clock import Schedule
from ticker.market.model import HISTORY_LEN, Market, Quote, make_universe
from ticker.market.news import Newsroom
from ticker.rendering.charts import SPARK_LEN, chart, fit, position, sparkline
from ticker.rendering.pacing import Pacer
from ticker.rendering.summary import INDEX_BASE, summarize


def points(path: str) -> list[tuple[int, int]]:
    """Decode ``M x y l dx dy dx dy ...`` into absolute points."""
    match = re.fullmatch(r"M(-?\d+) (-?\d+)(?:l([-\d ]+)|h0)", path)
    assert match, path
    x, y = int(match.group(1)), int(match.group(2))
    out = [(x, y)]
    steps = [int(n) for n in (match.group(3) or "").split()]
    for dx, dy in zip(steps[::2], steps[1::2], strict=True):
        x, y = x + dx, y + dy
        out.append((x, y))
    return out


prices = st.lists(
    st.floats(min_value=0.01, max_value=10_000, allow_nan=False),
    min_size=1,
    max_size=400,
)


@given(prices=prices, stretch=st.booleans())
def test_a_line_keeps_the_order_of_prices_inside_its_box(prices, stretch):
    line = fit(prices, 120, 28, stretch=stretch)
    drawn = prices[-61:]
    pts = points(line.path)
    assert len(pts) == len(drawn)
    assert pts[-1] == (line.end_x, line.end_y) and line.end_x == 120
    assert all(0 <= x <= 120 and 1 <= y <= 27 for x, y in pts)
    xs = [x for x, _ in pts]
    assert xs == sorted(xs) and len(set(xs)) == len(xs), "time runs left to right"
    # Higher price, higher on screen (smaller y); equal prices, equal height.
    for (p, (_, y)), (q, (_, z)) in pairwise(zip(drawn, pts, strict=True)):
        if p < q:
            assert y >= z
        elif p > q:
            assert y <= z
        else:
            assert y == z


def test_extremes_touch_the_edges_and_a_flat_line_runs_through_the_middle():
    line = fit([10.0, 12.0, 11.0], 120, 28)
    assert [y for _, y in points(line.path)] == [27, 1, 14]
    assert [y for _, y in points(fit([5.0, 5.0], 120, 28).path)] == [14, 14]


def test_a_young_sparkline_grows_from_the_right_and_a_chart_stretches():
    assert [x for x, _ in points(fit([1.0, 2.0, 3.0], 120, 28).path)] == [116, 118, 120]
    assert [
        x for x, _ in points(fit([1.0, 2.0, 3.0], 600, 150, stretch=True).path)
    ] == [
        0,
        300,
        600,
    ]


def test_the_open_is_drawn_when_it_is_in_range_or_close_to_it():
    assert fit([10.0, 12.0], 120, 28, open_price=11.0).open_y == 14
    near = fit(
        [10.0, 12.0], 120, 28, open_price=9.5
    )  # within half the range: pulled in
    assert near.low == 9.5 and near.open_y == 27
    assert fit([10.0, 12.0], 120, 28, open_price=5.0).open_y is None


def test_sparkline_and_chart_draw_the_quotes_history():
    market = Market(make_universe(3, 2), 3)
    symbol = next(iter(market.companies))
    # Full from the start: a market begins with the last HISTORY_LEN prices of its path.
    quote = market.quotes[symbol]
    assert len(quote.history) == HISTORY_LEN and quote.history[-1] == quote.last
    for _ in range(50):
        quote = market.tick(symbol)
    assert len(quote.history) == HISTORY_LEN and quote.history[-1] == quote.last
    assert len(points(sparkline(quote).path)) == SPARK_LEN
    assert len(points(chart(quote).path)) == HISTORY_LEN
    # A quote restored from an old Redis message has no history: one point, no error.
    assert len(points(sparkline(replace(quote, history=())).path)) == 1


def test_a_quote_survives_the_round_trip_through_json():
    market = Market(make_universe(3, 1), 3)
    quote = market.tick(next(iter(market.companies)))
    assert Quote.from_dict(json.loads(json.dumps(asdict(quote)))) == quote


@pytest.mark.parametrize(
    ("value", "expected"), [(5, 50.0), (0, 0.0), (10, 100.0), (-3, 0.0), (12, 100.0)]
)
def test_position_is_a_clamped_percentage(value, expected):
    assert position(value, 0, 10) == expected
    assert position(3, 5, 5) == 50.0


def test_the_summary_is_an_equal_weighted_index_and_the_breadth():
    market = Market(make_universe(9, 3), 9)
    a, b, c = market.quotes.values()
    quotes = [
        replace(a, last=a.open * 1.10, ts=3),
        replace(b, last=b.open * 0.95, ts=5),
        replace(c, last=c.open, ts=4),
    ]
    s = summarize(quotes)
    assert s.level == pytest.approx(INDEX_BASE * (1.10 + 0.95 + 1.0) / 3, abs=0.01)
    assert (s.advancers, s.decliners, s.unchanged, s.ts) == (1, 1, 1, 5)
    assert s.direction == "up" and s.total == 3
    assert summarize([]).level == INDEX_BASE


def test_the_newsroom_is_seeded_per_headline_and_good_news_moves_the_price_up():
    companies = make_universe(4, 5)
    schedule = Schedule(11, len(companies), 1.0, 20.0)
    stories = [schedule.story(j) for j in range(90_000_000, 90_000_040)]
    first = [Newsroom(11).write(s, companies[s.company]) for s in stories]
    # Any order, any process: headline j's words depend on the seed and j alone.
    again = [Newsroom(11).write(s, companies[s.company]) for s in reversed(stories)]
    assert first == again[::-1]
    assert len({h.text for h in first}) == len(first)
    assert {h.tone for h in first} == {"up", "down"}
    for story, headline in zip(stories, first, strict=True):
        company = companies[story.company]
        shock = Market.shock(company, story)
        assert headline.symbol == company.symbol and headline.ts == story.ts
        assert (shock > 0) == (headline.tone == "up") == story.good
        assert 2 * company.volatility <= abs(shock) <= 5 * company.volatility
        assert company.name in headline.text or company.symbol in headline.text


def test_the_pacer_sends_at_once_then_at_most_once_per_period_and_always_the_latest():
    sent: list[tuple[str, int]] = []
    state = {"value": 0}
    done = Event()

    def publish(key: str) -> None:
        sent.append((key, state["value"]))
        if len(sent) == 2:
            done.set()

    pacer = Pacer(0.05, publish)
    for value in range(1, 6):
        state["value"] = value
        pacer.poke("k")
    assert sent == [("k", 1)], "the first poke goes out at once, the rest wait"
    assert done.wait(2.0)
    assert sent == [("k", 1), ("k", 5)], "one trailing send, with the latest state"
    pacer.poke("other")
    assert sent[-1] == ("other", 5), "keys are paced separately"
    pacer.poke("k")
    pacer.cancel()
    gevent.sleep(0.1)  # proving a cancelled send never happens: nothing to wait for
    assert sent.count(("k", 5)) == 1
