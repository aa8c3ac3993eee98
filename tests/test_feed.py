"""The simulated market: deterministic companies, a sane random walk, a supervised feed."""

from __future__ import annotations

import random
import re

import gevent
import pytest
from gevent.event import Event

from ticker.market.feed import Feed
from ticker.market.model import Market, make_universe


def test_same_seed_gives_same_companies_and_symbols():
    assert make_universe(42, 30) == make_universe(42, 30)


def test_different_seeds_give_different_companies():
    assert [c.name for c in make_universe(1, 12)] != [
        c.name for c in make_universe(2, 12)
    ]


@pytest.mark.parametrize("count", [1, 12, 200])
def test_symbols_are_unique_two_to_five_uppercase_letters(count):
    companies = make_universe(2026, count)
    symbols = [c.symbol for c in companies]
    assert len(symbols) == count == len(set(symbols))
    assert all(re.fullmatch(r"[A-Z]{2,5}", s) for s in symbols), symbols
    assert all(c.sector and c.reference_price > 0 for c in companies)


def test_prices_stay_positive_and_in_cents_over_a_long_walk():
    companies = make_universe(3, 5)
    market = Market(companies, rng=random.Random(3))
    for i in range(20_000):
        q = market.tick(companies[i % 5].symbol)
        assert q.last > 0
        assert round(q.last, 2) == q.last
        assert q.low <= q.last <= q.high
        assert q.low <= q.open <= q.high


def test_a_tick_updates_volume_sequence_time_and_change():
    companies = make_universe(5, 3)
    clock = iter(range(1_000, 2_000)).__next__
    market = Market(companies, rng=random.Random(5), clock=lambda: float(clock()))
    symbol = companies[0].symbol
    before = market.quotes[symbol]
    after = market.tick(symbol)
    assert after.seq == market.seq > before.seq
    assert after.volume > before.volume
    assert after.ts > before.ts
    assert after.previous == before.last
    assert after.change == round(after.last - after.open, 2)
    assert after.change_pct == round(100 * (after.last - after.open) / after.open, 2)
    assert after.direction in {"up", "down", "flat"}


def test_random_walk_is_reproducible_with_the_same_rng():
    companies = make_universe(9, 4)
    walks = []
    for _ in range(2):
        market = Market(companies, rng=random.Random(11))
        walks.append([market.tick(c.symbol).last for c in companies * 50])
    assert walks[0] == walks[1]


def test_volatility_differs_between_symbols():
    companies = make_universe(13, 12)
    assert len({round(c.volatility, 6) for c in companies}) == 12


def test_every_symbol_ticks_spread_out_over_time():
    companies = make_universe(1, 6)
    market = Market(companies, rng=random.Random(1))
    seen: list[str] = []
    done = Event()

    def publish(quote):
        seen.append(quote.symbol)
        if len(seen) >= 60:
            done.set()

    feed = Feed(market, publish, interval=0.02, rng=random.Random(1))
    feed.start()
    try:
        assert done.wait(10), "feed did not tick"
    finally:
        feed.stop()
    assert set(seen) == {c.symbol for c in companies}
    # Jitter: the order of symbols is not one fixed round-robin.
    rounds = [tuple(seen[i : i + 6]) for i in range(0, 60, 6)]
    assert len(set(rounds)) > 1


def test_feed_that_raises_is_logged_and_restarted(caplog):
    companies = make_universe(1, 3)
    market = Market(companies, rng=random.Random(1))
    published: list[int] = []
    recovered = Event()
    calls = 0

    def publish(quote):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("injected fault")
        published.append(quote.seq)
        if calls > 6:
            recovered.set()

    feed = Feed(market, publish, interval=0.01)
    feed.start()
    try:
        assert recovered.wait(10), "feed did not recover after the fault"
    finally:
        feed.stop()
    assert feed.restarts == 1
    assert "injected fault" in caplog.text
    assert published == sorted(published)


def test_starting_twice_runs_one_feed():
    market = Market(make_universe(1, 2))
    feed = Feed(market, lambda q: None, interval=0.05)
    feed.start()
    first = feed._greenlet
    feed.start()
    try:
        assert feed._greenlet is first
    finally:
        feed.stop()
    gevent.sleep(0)
    assert not feed.running
