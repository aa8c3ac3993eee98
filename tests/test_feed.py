"""The simulated market: deterministic companies, a walk that is a function of the seed and
the time (so a restart continues it), and a supervised feed."""

from __future__ import annotations

import re
import time
from itertools import pairwise

import gevent
import pytest
from gevent.event import Event

from ticker.market.clock import DAY_TICKS, SEQ_PER_MS
from ticker.market.feed import Feed
from ticker.market.model import HISTORY_LEN, Market, Quote, make_universe
from ticker.market.news import Headline, Newsroom


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


# A moment late in a UTC day, as epoch seconds: most tests pin the market's clock to it.
T0 = 1_796_290_000.0


def market_at(t: float, companies=None, interval=1.0, news_s=0.0, seed=7) -> Market:
    companies = companies or make_universe(seed, 6)
    return Market(companies, seed, interval, news_s, clock=lambda: t)


def run(market: Market, until_ms: int) -> list[Quote]:
    """Tick ``market`` as the feed does, in time order, up to ``until_ms``."""
    published = []
    while True:
        when, _, symbol = min(
            (market.next_tick_ms(s), i, s) for i, s in enumerate(market.symbols)
        )
        if when > until_ms:
            return published
        published.append(market.tick(symbol))


def test_prices_stay_positive_and_in_cents_over_a_long_walk():
    market = market_at(T0, make_universe(3, 5), seed=3)
    symbols = market.symbols
    for i in range(20_000):
        q = market.tick(symbols[i % 5])
        assert q.last > 0
        assert round(q.last, 2) == q.last
        assert q.low <= q.last <= q.high
        assert q.low <= q.open <= q.high


def test_a_tick_updates_volume_sequence_time_and_change():
    market = market_at(T0)
    symbol = market.symbols[0]
    before = market.quotes[symbol]
    after = market.tick(symbol)
    assert after.seq == market.seq > before.seq
    assert after.volume > before.volume
    assert after.ts > before.ts
    assert after.previous == before.last
    assert after.history == (*before.history[1:], after.last)
    assert after.change == round(after.last - after.open, 2)
    assert after.change_pct == round(100 * (after.last - after.open) / after.open, 2)
    assert after.direction in {"up", "down", "flat"}


def test_two_markets_made_at_different_moments_agree_on_the_same_tick():
    early, late = market_at(T0, news_s=20), market_at(T0 + 600, news_s=20)
    until = int((T0 + 900) * 1000)
    ticks = {(q.symbol, q.seq): q for q in run(early, until)}
    later = run(late, until)
    assert len(later) > 1000
    for quote in later:  # same price, time, sequence number, range, volume, history
        assert ticks[(quote.symbol, quote.seq)] == quote
    assert early.quotes == late.quotes


def test_a_market_booted_later_continues_the_path_of_one_that_ran():
    ran = market_at(T0, news_s=20)
    run(ran, int((T0 + 300) * 1000))
    booted = market_at(T0 + 300, news_s=20)  # a restart: no state passed, only the time
    assert booted.quotes == ran.quotes
    # ... and goes on exactly as the one that kept running.
    assert run(booted, int((T0 + 330) * 1000)) == run(ran, int((T0 + 330) * 1000))


def test_ticks_come_on_a_jittered_rhythm_in_sequence_order_across_symbols():
    market = market_at(T0, make_universe(7, 12), interval=0.02)
    ticks = run(market, int((T0 + 60) * 1000))
    seqs = [q.seq for q in ticks]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(
        q.seq == q.ts * SEQ_PER_MS + market.symbols.index(q.symbol) for q in ticks
    )
    assert all(seq < 2**53 for seq in seqs), "exact as a JavaScript number"
    gaps = [
        b.ts - a.ts
        for s in market.symbols
        for a, b in pairwise([q for q in ticks if q.symbol == s])
    ]
    assert min(gaps) >= 1 and max(gaps) <= 40, (min(gaps), max(gaps))
    assert 19.5 < sum(gaps) / len(gaps) < 20.5, "one interval on average"
    assert len(set(gaps)) > 20, "jittered, not a fixed period"


def day_start(interval: float, day: int) -> float:
    return day * DAY_TICKS * interval


def test_open_high_low_and_volume_are_the_days():
    interval = 0.02  # a day of 86,400 ticks is 28.8 minutes
    day = int(T0 / (DAY_TICKS * interval))
    start = day_start(interval, day)
    market = market_at(start + 0.001, interval=interval, news_s=5)
    symbol = market.symbols[0]
    first = market.quotes[symbol]
    assert market.schedule.tick_at(symbol, first.ts) == day * DAY_TICKS
    prices = [first.last, *(market.tick(symbol).last for _ in range(5000))]
    last = market.quotes[symbol]
    booted = market_at(last.ts / 1000, interval=interval, news_s=5).quotes[symbol]
    assert booted == last
    assert booted.open == first.open == market.day_open(symbol, day)
    assert booted.high == max(first.open, *prices)
    assert booted.low == min(first.open, *prices)
    assert (
        booted.volume
        == sum(b.volume - a.volume for a, b in pairwise([first, last])) + first.volume
    )


def test_history_is_full_at_boot_even_right_after_the_open():
    interval = 0.02
    day = int(T0 / (DAY_TICKS * interval))
    for t in (T0, day_start(interval, day) + 0.001, day_start(interval, day) + 3):
        market = market_at(t, interval=interval)
        for quote in market.quotes.values():
            assert len(quote.history) == HISTORY_LEN
            assert quote.history[-1] == quote.last
            assert quote.history[-2] == quote.previous


def test_a_new_day_opens_near_the_reference_price():
    interval = 0.02
    day = int(T0 / (DAY_TICKS * interval))
    market = market_at(day_start(interval, day + 1) - 0.5, interval=interval)
    for symbol in market.symbols:
        company = market.companies[symbol]
        closing = market.quotes[symbol]
        tomorrow = (day + 1) * DAY_TICKS  # the index of its first tick
        while market.schedule.tick_at(symbol, market.next_tick_ms(symbol)) < tomorrow:
            closing = market.tick(symbol)
        opening = market.tick(symbol)  # the day's first tick
        assert opening.open == market.day_open(symbol, day + 1) != closing.open
        assert opening.previous == closing.last, "the line runs on across the night"
        assert opening.low <= opening.open <= opening.high
        assert opening.volume < closing.volume, "the day's volume starts again"
        opens = [market.day_open(symbol, d) for d in range(day, day + 200)]
        ref = company.reference_price
        assert all(0.94 * ref <= p <= 1.065 * ref for p in opens), (ref, opens)
        assert len(set(opens)) > 20, "a different open every day"


def test_a_headline_moves_its_companys_next_tick_and_no_other():
    quiet = market_at(T0, news_s=0)
    newsy = market_at(T0, news_s=20)
    story = newsy.schedule.story(newsy.schedule.story_at(int(T0 * 1000)) + 1)
    symbol = newsy.symbol_of(story)
    run(quiet, story.ts - 1)
    run(newsy, story.ts - 1)
    # Earlier news set the two markets apart; this headline adds its shock, once.
    apart = {s: newsy._walks[s].x - quiet._walks[s].x for s in newsy.symbols}
    run(quiet, story.ts + 5000)
    run(newsy, story.ts + 5000)
    for s in newsy.symbols:
        k = newsy.schedule.first_tick_from(s, story.ts)
        moved = newsy._walks[s].x - quiet._walks[s].x - apart[s]
        if s == symbol:
            assert newsy.schedule.tick_ms(s, k) >= story.ts
            assert moved == pytest.approx(Market.shock(newsy.companies[s], story))
            assert (moved > 0) == story.good
        else:
            assert moved == pytest.approx(0, abs=1e-12)


def test_the_news_at_boot_are_the_last_five():
    market = market_at(T0, news_s=20)
    stories = market.recent_stories(5)
    now = int(T0 * 1000)
    assert [s.index for s in stories] == list(
        range(stories[0].index, stories[0].index + 5)
    )
    assert all(s.ts <= now for s in stories)
    assert market.schedule.story(stories[-1].index + 1).ts > now
    assert stories == market_at(T0, news_s=20).recent_stories(5)
    assert market_at(T0, news_s=0).recent_stories(5) == []


def test_volatility_differs_between_symbols():
    companies = make_universe(13, 12)
    assert len({round(c.volatility, 6) for c in companies}) == 12


def test_every_symbol_ticks_spread_out_over_time():
    companies = make_universe(1, 6)
    market = Market(companies, 1, interval=0.02)
    seen: list[str] = []
    done = Event()

    def publish(quote):
        seen.append(quote.symbol)
        if len(seen) >= 60:
            done.set()

    feed = Feed(market, publish)
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
    market = Market(companies, 1, interval=0.01)
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

    feed = Feed(market, publish)
    feed.start()
    try:
        assert recovered.wait(10), "feed did not recover after the fault"
    finally:
        feed.stop()
    assert feed.restarts == 1
    assert "injected fault" in caplog.text
    assert published == sorted(published)


def test_starting_twice_runs_one_feed():
    market = Market(make_universe(1, 2), 1, interval=0.05)
    feed = Feed(market, lambda q: None)
    feed.start()
    first = feed._greenlet
    feed.start()
    try:
        assert feed._greenlet is first
    finally:
        feed.stop()
    gevent.sleep(0)
    assert not feed.running


def test_a_feed_starts_from_the_present_and_publishes_news_before_the_tick_it_moves():
    companies = make_universe(1, 3)
    market = Market(companies, 1, interval=0.02, news_s=0.05)
    made = market.quotes.copy()
    gevent.sleep(0.3)  # the market goes on while nobody publishes it (a follower)
    started_ms = time.time() * 1000
    events: list[object] = []
    done = Event()

    def publish(item):
        events.append(item)
        if sum(isinstance(e, Headline) for e in events) >= 3:
            done.set()

    feed = Feed(market, publish, Newsroom(1), publish)
    feed.start()
    try:
        assert done.wait(10), "no news"
    finally:
        feed.stop()
    ticks = [e for e in events if isinstance(e, Quote)]
    first = {}
    for q in ticks:
        first.setdefault(q.symbol, q)
    for symbol, q in first.items():  # no backlog: the first tick is one due after start
        assert q.ts > started_ms - 1, (q.ts, started_ms)
        assert q.seq > made[symbol].seq
    seqs = [q.seq for q in ticks]
    assert seqs == sorted(seqs)
    for n, item in enumerate(events):
        if isinstance(item, Headline):
            nxt = next(
                (
                    q
                    for q in events[n + 1 :]
                    if isinstance(q, Quote) and q.symbol == item.symbol
                ),
                None,
            )
            assert nxt is None or nxt.ts >= item.ts, "the headline breaks first"
