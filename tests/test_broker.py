"""The in-process broker: snapshot on subscribe, conflation, order, bookkeeping."""

from __future__ import annotations

import gevent
import pytest

from ticker.broker import BROADCAST, Broker, StreamLimitReached


def publish(broker, topic, seq):
    broker.publish(topic, seq, f"<{topic}:{seq}>".encode())


def test_subscribe_prefills_the_latest_event_of_each_symbol_in_sequence_order():
    broker = Broker(max_streams=10)
    publish(broker, "BBB", 1)
    publish(broker, "AAA", 2)
    publish(broker, "BBB", 3)
    sub = broker.subscribe("multi", ["AAA", "BBB", "CCC"])
    assert sub.take(0) == b"<AAA:2><BBB:3>"


def test_stalled_subscriber_holds_only_the_latest_update_per_symbol():
    broker = Broker(max_streams=10)
    stalled = broker.subscribe("multi", ["AAA", "BBB"])
    healthy = broker.subscribe("multi", ["AAA"])
    for seq in range(1, 10_001):
        publish(broker, "AAA" if seq % 2 else "BBB", seq)
        if seq % 1000 == 0:
            assert healthy.take(0) == f"<AAA:{seq - 1}>".encode()
    # Ten thousand updates later, the stalled viewer's mailbox still has one entry per symbol.
    assert len(stalled._pending) == 2
    assert stalled.take(0) == b"<AAA:9999><BBB:10000>"
    # Stalled: 10,000 offered, 2 kept. Healthy: 500 AAA updates per read, 1 kept, 10 reads.
    assert broker.conflated == (10_000 - 2) + 10 * (500 - 1)


def test_conflated_updates_keep_ids_increasing():
    broker = Broker(max_streams=10)
    sub = broker.subscribe("multi", ["AAA", "BBB"])
    publish(broker, "AAA", 1)
    publish(broker, "BBB", 2)
    publish(broker, "AAA", 3)
    assert sub.take(0) == b"<BBB:2><AAA:3>"


def test_a_subscriber_only_gets_its_symbols_and_broadcasts():
    broker = Broker(max_streams=10)
    sub = broker.subscribe("symbol", ["AAA"])
    publish(broker, "BBB", 1)
    broker.publish(BROADCAST, 2, b"<banner>")
    publish(broker, "AAA", 3)
    assert sub.take(0) == b"<banner><AAA:3>"


def test_take_waits_for_an_update_and_times_out_with_empty_bytes():
    broker = Broker(max_streams=10)
    sub = broker.subscribe("symbol", ["AAA"])
    assert sub.take(0.01) == b""
    gevent.spawn_later(0.01, publish, broker, "AAA", 1)
    assert sub.take(5) == b"<AAA:1>"


def test_counts_streams_by_route_and_unsubscribe_is_idempotent():
    broker = Broker(max_streams=10)
    a = broker.subscribe("symbol", ["AAA"])
    b = broker.subscribe("multi", ["AAA", "BBB"])
    assert broker.open_streams == 2
    assert dict(broker.open_by_route) == {"symbol": 1, "multi": 1}
    assert broker.unsubscribe(a) is True
    assert broker.unsubscribe(a) is False
    assert dict(broker.open_by_route) == {"multi": 1}
    broker.unsubscribe(b)
    assert broker.open_streams == 0
    publish(broker, "AAA", 5)  # nobody left to deliver to
    assert all(not subs for subs in broker._subscribers.values())


def test_totals_count_events_and_bytes_of_open_and_closed_streams():
    broker = Broker(max_streams=10)
    sub = broker.subscribe("symbol", ["AAA"])
    publish(broker, "AAA", 1)
    data = sub.take(0)
    assert broker.totals() == (1, len(data))
    broker.unsubscribe(sub)
    assert broker.totals() == (1, len(data))


def test_max_streams_refuses_more_and_frees_up_when_one_leaves():
    broker = Broker(max_streams=2)
    a = broker.subscribe("symbol", ["AAA"])
    broker.subscribe("symbol", ["AAA"])
    with pytest.raises(StreamLimitReached):
        broker.subscribe("symbol", ["AAA"])
    broker.unsubscribe(a)
    broker.subscribe("symbol", ["AAA"])


def test_close_wakes_every_waiting_stream_and_refuses_new_ones():
    broker = Broker(max_streams=10)
    subs = [broker.subscribe("symbol", ["AAA"]) for _ in range(3)]
    for s in subs:
        s.take(0)
    waiting = [gevent.spawn(s.take, 30) for s in subs]
    gevent.sleep(0)
    broker.close()
    assert (
        gevent.joinall(waiting, timeout=5) and [g.value for g in waiting] == [None] * 3
    )
    with pytest.raises(StreamLimitReached):
        broker.subscribe("symbol", ["AAA"])
