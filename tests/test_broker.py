"""The in-process broker: snapshot on subscribe, conflation, order, bookkeeping."""

from __future__ import annotations

import socket

import gevent
import pytest

from ticker.broker import BROADCAST, Broker, StreamLimitReached, chunk


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
    assert broker._audiences == {}


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


def test_frames_gather_events_and_deliver_them_in_one_batch():
    broker = Broker(max_streams=10, frame_s=0.05)
    sub = broker.subscribe("multi", ["AAA", "BBB"])
    sub.take(0)  # the (empty) snapshot
    publish(broker, "AAA", 1)
    publish(broker, "BBB", 2)
    publish(broker, "AAA", 3)  # replaces seq 1 within the frame
    assert sub.take(0) == b"", "nothing goes out before the frame"
    assert sub.take(5) == b"<BBB:2><AAA:3>"
    assert broker.frames == 1


def caught_up_viewer(broker, topics):
    """A subscription writing straight to one end of a socket pair, as after its headers."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    sub = broker.subscribe("multi", topics)
    sub.take(0)
    sub.attach(ours.fileno(), chunked=True)
    sub.direct = True
    return sub, ours, theirs


def test_a_caught_up_viewer_gets_each_frame_written_to_its_socket_as_one_chunk():
    broker = Broker(max_streams=10)
    sub, ours, theirs = caught_up_viewer(broker, ["AAA"])
    with ours, theirs:
        publish(broker, "AAA", 1)
        assert theirs.recv(100) == chunk(b"<AAA:1>")
        assert sub.pending == 0 and sub.delivered == 1


def test_a_viewer_who_cannot_keep_up_falls_back_to_its_conflating_mailbox():
    broker = Broker(max_streams=10)
    sub, ours, theirs = caught_up_viewer(broker, ["AAA", "BBB"])
    with ours, theirs:
        big = b"x" * 100_000
        for seq in range(1, 200):
            broker.publish("AAA" if seq % 2 else "BBB", seq, big)
        assert not sub.direct and sub.writing_since is not None
        assert sub.pending <= 2, "at most one event per topic waits"
        # What reached the socket ends in a cut chunk whose rest is kept, in order.
        assert sub.backlog or sub.pending


def test_the_first_frame_skips_events_the_snapshot_already_had():
    broker = Broker(max_streams=10, frame_s=0.05)
    publish(broker, "AAA", 1)  # waiting for the frame when the viewer arrives
    sub = broker.subscribe("multi", ["AAA"])
    assert sub.take(0) == b"<AAA:1>"
    broker.flush()
    assert sub.take(0) == b"", "seq 1 again would repeat an id"
    publish(broker, "AAA", 2)
    broker.flush()
    assert sub.take(0) == b"<AAA:2>"


def test_a_frame_hook_ends_each_frame_and_flush_soon_never_cuts_a_frame_short():
    broker = Broker(max_streams=10, frame_s=0.05)
    broker.frame_hook = lambda: [("market", b"M")]
    sub = broker.subscribe("multi", ["AAA", "BBB", "market"])
    broker.publish("AAA", 1, b"a1")
    broker.flush_soon()  # a frame is due: this must leave it alone
    assert sub.take(0) == b"", "nothing before the frame closes"
    broker.publish("BBB", 2, b"b2")
    assert sub.take(1.0) == b"a1b2M", "the hook's events end the frame"
    broker.flush_soon()  # nothing due: flushes at once, and the hook still has its say
    assert sub.take(0) == b"M"
