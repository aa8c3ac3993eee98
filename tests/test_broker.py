"""The broker and one viewer's connection: snapshot, conflation, order, frames, caps.

Unit tests: the connections here have no socket (the plain path) unless a test gives them one
end of a socket pair, as the direct path has after its headers went out.
"""

from __future__ import annotations

import contextlib
import os
import socket

import gevent
import pytest

from ticker.delivery.broker import BROADCAST, Broker, StreamLimitReached, chunk
from ticker.delivery.connection import LAST_CHUNK, Connection, StreamRules

RULES = StreamRules(write_timeout_s=30, retry_ms=1000, process_id="test")


def publish(broker, topic, seq):
    broker.publish(topic, seq, f"<{topic}:{seq}>".encode())


def subscribe(broker, route, topics, client=""):
    viewer = Connection(broker, RULES, route, tuple(topics), client)
    broker.subscribe(viewer)
    return viewer


def read(viewer, timeout=0.0):
    """What the viewer has been handed and not yet sent: its snapshot, then its mailbox
    (waiting up to ``timeout`` for something to arrive); None once it has ended."""
    if viewer.snapshot is None and not viewer.pending and not viewer.ended:
        viewer._wake.wait(timeout)
    viewer._wake.clear()
    snapshot = viewer.snapshot.data if viewer.snapshot is not None else b""
    viewer.snapshot = None
    rest = viewer.take()
    return None if rest is None else snapshot + rest


def test_subscribe_prefills_the_latest_event_of_each_symbol_in_sequence_order():
    broker = Broker(max_streams=10)
    publish(broker, "BBB", 1)
    publish(broker, "AAA", 2)
    publish(broker, "BBB", 3)
    viewer = subscribe(broker, "multi", ["AAA", "BBB", "CCC"])
    assert read(viewer) == b"<AAA:2><BBB:3>"


def test_the_snapshot_is_joined_once_per_audience_and_renewed_when_a_topic_moves():
    broker = Broker(max_streams=10)
    publish(broker, "AAA", 1)
    first = subscribe(broker, "multi", ["AAA"])
    second = subscribe(broker, "multi", ["AAA"])
    assert first.snapshot is second.snapshot, "the same bytes, not a copy per viewer"
    publish(broker, "AAA", 2)
    third = subscribe(broker, "multi", ["AAA"])
    assert third.snapshot.data == b"<AAA:2>"


def test_stalled_subscriber_holds_only_the_latest_update_per_symbol():
    broker = Broker(max_streams=10)
    stalled = subscribe(broker, "multi", ["AAA", "BBB"])
    healthy = subscribe(broker, "multi", ["AAA"])
    for seq in range(1, 10_001):
        publish(broker, "AAA" if seq % 2 else "BBB", seq)
        if seq % 1000 == 0:
            assert read(healthy) == f"<AAA:{seq - 1}>".encode()
    # Ten thousand updates later, the stalled viewer's mailbox still has one entry per symbol.
    assert stalled.pending == 2
    assert read(stalled) == b"<AAA:9999><BBB:10000>"
    # Stalled: 10,000 offered, 2 kept. Healthy: 500 AAA updates per read, 1 kept, 10 reads.
    assert broker.conflated == (10_000 - 2) + 10 * (500 - 1)


def test_conflated_updates_keep_ids_increasing():
    broker = Broker(max_streams=10)
    viewer = subscribe(broker, "multi", ["AAA", "BBB"])
    publish(broker, "AAA", 1)
    publish(broker, "BBB", 2)
    publish(broker, "AAA", 3)
    assert read(viewer) == b"<BBB:2><AAA:3>"


def test_a_subscriber_only_gets_its_symbols_and_broadcasts():
    broker = Broker(max_streams=10)
    viewer = subscribe(broker, "symbol", ["AAA"])
    publish(broker, "BBB", 1)
    broker.publish(BROADCAST, 2, b"<banner>")
    publish(broker, "AAA", 3)
    assert read(viewer) == b"<banner><AAA:3>"


def test_a_viewer_waits_for_an_update():
    broker = Broker(max_streams=10)
    viewer = subscribe(broker, "symbol", ["AAA"])
    assert read(viewer, 0.01) == b""
    gevent.spawn_later(0.01, publish, broker, "AAA", 1)
    assert read(viewer, 5) == b"<AAA:1>"


def test_counts_streams_by_route_and_unsubscribe_is_idempotent():
    broker = Broker(max_streams=10)
    a = subscribe(broker, "symbol", ["AAA"])
    b = subscribe(broker, "multi", ["AAA", "BBB"])
    assert broker.open_streams == 2
    assert dict(broker.open_by_route) == {"symbol": 1, "multi": 1}
    assert broker.unsubscribe(a) is True
    assert broker.unsubscribe(a) is False
    assert dict(broker.open_by_route) == {"multi": 1}
    broker.unsubscribe(b)
    assert broker.open_streams == 0
    publish(broker, "AAA", 5)  # nobody left to deliver to
    assert broker._audiences == {}


def test_totals_count_events_of_open_and_closed_streams():
    broker = Broker(max_streams=10)
    viewer = subscribe(broker, "symbol", ["AAA"])
    publish(broker, "AAA", 1)
    assert read(viewer) == b"<AAA:1>"
    assert broker.totals()[0] == 1
    viewer.close()  # the server is done with the response: the connection is released
    assert broker.open_streams == 0 and broker.totals()[0] == 1


def test_max_streams_refuses_more_and_frees_up_when_one_leaves():
    broker = Broker(max_streams=2)
    a = subscribe(broker, "symbol", ["AAA"])
    subscribe(broker, "symbol", ["AAA"])
    with pytest.raises(StreamLimitReached):
        subscribe(broker, "symbol", ["AAA"])
    broker.unsubscribe(a)
    subscribe(broker, "symbol", ["AAA"])


def test_the_per_client_cap_counts_each_address_on_its_own():
    broker = Broker(max_streams=10, max_per_client=2)
    for _ in range(2):
        subscribe(broker, "multi", ["AAA"], client="192.0.2.1")
    with pytest.raises(StreamLimitReached):
        subscribe(broker, "multi", ["AAA"], client="192.0.2.1")
    subscribe(broker, "multi", ["AAA"], client="192.0.2.2")


def test_close_ends_every_stream_and_refuses_new_ones():
    broker = Broker(max_streams=10)
    viewers = [subscribe(broker, "symbol", ["AAA"]) for _ in range(3)]
    for v in viewers:
        read(v)
    waiting = [gevent.spawn(read, v, 30) for v in viewers]
    gevent.sleep(0)
    broker.close()
    assert (
        gevent.joinall(waiting, timeout=5) and [g.value for g in waiting] == [None] * 3
    )
    with pytest.raises(StreamLimitReached):
        subscribe(broker, "symbol", ["AAA"])


def test_frames_gather_events_and_deliver_them_in_one_batch():
    broker = Broker(max_streams=10, frame_s=0.05)
    viewer = subscribe(broker, "multi", ["AAA", "BBB"])
    assert read(viewer) == b""  # the (empty) snapshot
    publish(broker, "AAA", 1)
    publish(broker, "BBB", 2)
    publish(broker, "AAA", 3)  # replaces seq 1 within the frame
    assert read(viewer) == b"", "nothing goes out before the frame"
    assert read(viewer, 5) == b"<BBB:2><AAA:3>"
    assert broker.frames == 1


def caught_up_viewer(broker, topics):
    """A connection writing straight to one end of a socket pair, as after its headers."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(2)  # a viewer sent nothing fails the test rather than hanging it
    viewer = Connection(broker, RULES, "multi", tuple(topics), "", ours, direct=True)
    broker.subscribe(viewer)
    viewer.snapshot = None
    viewer.direct = True
    return viewer, ours, theirs


def test_a_caught_up_viewer_gets_each_frame_written_to_its_socket_as_one_chunk():
    broker = Broker(max_streams=10)
    viewer, ours, theirs = caught_up_viewer(broker, ["AAA"])
    with ours, theirs:
        publish(broker, "AAA", 1)
        assert theirs.recv(100) == chunk(b"<AAA:1>")
        assert viewer.pending == 0 and viewer.delivered == 1


def test_a_viewer_who_cannot_keep_up_falls_back_to_its_conflating_mailbox():
    broker = Broker(max_streams=10)
    viewer, ours, theirs = caught_up_viewer(broker, ["AAA", "BBB"])
    with ours, theirs:
        big = b"x" * 100_000
        for seq in range(1, 200):
            broker.publish("AAA" if seq % 2 else "BBB", seq, big)
        assert not viewer.direct
        assert viewer.pending <= 2, "at most one event per topic waits"
        # What reached the socket ends in a cut chunk whose rest is kept, in order.
        assert viewer.backlog or viewer.pending


def test_the_first_frame_skips_events_the_snapshot_already_had():
    broker = Broker(max_streams=10, frame_s=0.05)
    publish(broker, "AAA", 1)  # waiting for the frame when the viewer arrives
    viewer = subscribe(broker, "multi", ["AAA"])
    assert read(viewer) == b"<AAA:1>"
    broker.flush()
    assert read(viewer) == b"", "seq 1 again would repeat an id"
    publish(broker, "AAA", 2)
    broker.flush()
    assert read(viewer) == b"<AAA:2>"


def test_a_first_frame_wholly_in_the_snapshot_leaves_a_caught_up_viewer_direct():
    broker = Broker(max_streams=10, frame_s=0.05)
    publish(broker, "AAA", 1)  # waiting for the frame when the viewer arrives
    viewer, ours, theirs = caught_up_viewer(broker, ["AAA"])
    with ours, theirs:
        broker.flush()  # nothing in it the snapshot did not have
        assert viewer.direct, "the fan-out must go on writing to this viewer"
        publish(broker, "AAA", 2)
        broker.flush()
        assert theirs.recv(100) == chunk(b"<AAA:2>")


def fill(sock):
    """Write to ``sock`` until its send buffer (and the peer's receive buffer) is full."""
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(sock.fileno(), b"x" * 65536)


def test_closing_ends_a_caught_up_viewer_at_once_and_wakes_one_that_is_behind():
    broker = Broker(max_streams=10)
    ready, ours, theirs = caught_up_viewer(broker, ["AAA"])
    behind, ours2, theirs2 = caught_up_viewer(broker, ["AAA"])
    with ours, theirs, ours2, theirs2:
        fill(ours2)
        broker.close(lambda: b"<bye>")
        # One write: the farewell, then the end of the chunked body; nothing after it.
        assert theirs.recv(100) == chunk(b"<bye>") + LAST_CHUNK
        assert theirs.recv(100) == b"", "its socket is shut: nothing can follow"
        # The other's socket took nothing: its own greenlet is woken to end it.
        assert ready.ended and not ready._wake.is_set(), "ended here, not woken"
        assert broker.open_streams == 1
        assert behind.ended and behind.farewell == b"<bye>" and behind._wake.is_set()


def test_a_gzip_viewer_not_ended_at_once_keeps_its_checksum_for_its_own_ending():
    broker = Broker(max_streams=10)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    viewer = Connection(broker, RULES, "multi", ("AAA",), "", ours, True, True, True)
    broker.subscribe(viewer)
    viewer.snapshot, viewer.direct = None, True
    with ours, theirs:
        fill(ours)
        before = viewer.crc, viewer.size
        assert not viewer.end_now(b"<bye>")
        assert (viewer.crc, viewer.size) == before, "the trailer would not check out"


def test_an_event_published_at_flush_is_rendered_as_the_frame_goes_out_and_ends_it():
    broker = Broker(max_streams=10, frame_s=0.05)
    viewer = subscribe(broker, "multi", ["AAA", "BBB", "market"])
    seen = []
    broker.publish("AAA", 1, b"a1")
    broker.publish_at_flush("market", lambda: b"M%d" % len(seen.append(1) or seen))
    assert read(viewer) == b"", "nothing before the frame closes"
    broker.publish("BBB", 2, b"b2")  # after the summary was asked for, before the frame
    assert read(viewer, 1.0) == b"a1b2M1", "rendered once, last, with the frame"
    assert seen == [1]
    broker.publish_at_flush("market", lambda: b"M2")  # a frame of its own
    assert read(viewer, 1.0) == b"M2"


def test_a_snapshot_renders_the_at_flush_event_anew_and_last_so_it_agrees_with_the_rest():
    broker = Broker(max_streams=10, frame_s=0.05)
    state = {"AAA": 1}
    broker.publish("AAA", 1, b"<AAA:1>")
    broker.publish_at_flush("market", lambda: b"<market of AAA:%d>" % state["AAA"])
    broker.flush()
    broker.publish("AAA", 2, b"<AAA:2>")  # a newer row, still waiting for its frame
    state["AAA"] = 2
    viewer = subscribe(broker, "multi", ["AAA", "market"])
    assert read(viewer) == b"<AAA:2><market of AAA:2>"


# --- gzip: compressed once per audience ---------------------------------------------------


def gzip_viewer(broker, topics):
    """A gzip viewer on one end of a socket pair, its stream driven by a greenlet the way
    the server drives it: the first yield (hello) goes through "the server", the rest the
    connection writes itself."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    viewer = Connection(
        broker, RULES, "multi", tuple(topics), "", ours, direct=True, gzip=True
    )
    broker.subscribe(viewer)
    body = iter(viewer)
    first = next(body)
    runner = gevent.spawn(lambda: list(body))
    gevent.sleep(0)  # it writes the snapshot and becomes caught up
    return viewer, ours, theirs, first, runner


def drain(sock):
    sock.setblocking(False)
    data = b""
    while True:
        try:
            piece = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not piece:
            return data
        data += piece


def unchunk(data):
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        out, data = out + rest[:n], rest[n + 2 :]
    return out


@pytest.fixture
def short_epochs(monkeypatch):
    from ticker.delivery import compression

    monkeypatch.setattr(compression, "EPOCH_FRAMES", 3)


def test_gzip_viewers_of_one_audience_get_the_same_bytes_once_joined(short_epochs):
    import zlib

    broker = Broker(max_streams=10)
    publish(broker, "AAA", 1)
    a, a_ours, a_theirs, a_first, _ = gzip_viewer(broker, ["AAA"])
    for seq in range(2, 6):
        publish(broker, "AAA", seq)
    b, b_ours, b_theirs, b_first, _ = gzip_viewer(broker, ["AAA"])
    for seq in range(6, 9):  # b reaches the end of an epoch and joins
        publish(broker, "AAA", seq)
    assert a.joined and b.joined
    got = {"a": drain(a_theirs), "b": drain(b_theirs)}
    publish(broker, "AAA", 9)
    last_a, last_b = drain(a_theirs), drain(b_theirs)
    assert last_a == last_b, "one compressed frame for both"
    broker.close()
    gevent.sleep(0.01)
    for first, received in (
        (a_first, got["a"] + last_a + drain(a_theirs)),
        (b_first, got["b"] + last_b + drain(b_theirs)),
    ):
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = inflate.decompress(first) + inflate.decompress(unchunk(received))
        assert inflate.eof and not inflate.unused_data, "CRC and length check out"
        assert text.endswith(b"<AAA:8><AAA:9>")
    a_ours.close(), b_ours.close()


def test_a_gzip_viewer_that_falls_behind_mid_epoch_rejoins_and_ends_as_valid_gzip(
    short_epochs,
):
    import zlib

    broker = Broker(max_streams=10)
    viewer, ours, theirs, first, runner = gzip_viewer(broker, ["AAA", "BBB"])
    received = b""
    for seq in range(1, 5):  # joins after the first epoch
        publish(broker, "AAA" if seq % 2 else "BBB", seq)
    received += drain(theirs)
    assert viewer.joined
    # In the middle of an epoch, a frame too big for the socket: it falls behind.
    broker.publish("AAA", 5, b"<AAA:5 %s>" % os.urandom(300_000).hex().encode())
    assert not viewer.direct and not viewer.joined
    for seq in range(6, 9):
        publish(broker, "AAA" if seq % 2 else "BBB", seq)
    while not viewer.direct:  # its greenlet catches it up as the socket drains
        received += drain(theirs)
        gevent.sleep(0.001)
    assert not viewer.joined, "caught up, not yet rejoined"
    for seq in range(9, 16):
        publish(broker, "AAA" if seq % 2 else "BBB", seq)
    assert viewer.joined, "rejoined at an epoch's end"
    viewer.end()  # its own greenlet ends it (broker.close would, at once: see below)
    runner.join(timeout=5)
    received += drain(theirs)
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    text = inflate.decompress(first) + inflate.decompress(unchunk(received))
    assert inflate.eof and not inflate.unused_data, "CRC and length check out"
    assert text.endswith(b"<AAA:15>")
    assert b"<BBB:6>" not in text and b"<AAA:7><BBB:8>" in text, "the mailbox conflated"
    ours.close()


def test_a_gzip_audience_grows_its_compressor_only_when_it_is_big(short_epochs):
    """A custom watchlist's audience of one gets a small compressor (32 KB, not 256 KB);
    the switch happens at an epoch's end, and viewers on either side decode it all."""
    import zlib

    from ticker.delivery.compression import BIG_AUDIENCE

    broker = Broker(max_streams=100)
    first = gzip_viewer(broker, ["AAA"])
    assert not first[0].deflate.big
    others = [gzip_viewer(broker, ["AAA"]) for _ in range(BIG_AUDIENCE - 1)]
    for seq in range(1, 8):  # two epochs: the switch, then a viewer joined on each side
        publish(broker, "AAA", seq)
    assert first[0].deflate.big and first[0].joined
    broker.close()
    assert broker.open_streams == 0, "every caught-up viewer is ended at once"
    for viewer, ours, theirs, head, runner in [first, *others]:
        runner.kill()  # left waiting: the process would exit now
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = inflate.decompress(head) + inflate.decompress(unchunk(drain(theirs)))
        assert inflate.eof and text.endswith(b"<AAA:7>")
        ours.close()


def test_a_frame_closes_frame_s_after_its_first_events_moment_not_its_arrival(
    monkeypatch,
):
    """An event that arrives late (its tick could only be made once a long fan-out let the
    feed run) waits only what is left of its frame, not a whole frame more."""
    from ticker.delivery import broker as broker_module

    waits = []
    monkeypatch.setattr(
        broker_module.gevent, "spawn_later", lambda wait, _: waits.append(wait)
    )
    Broker(max_streams=10, frame_s=0.5).publish("AAA", 1, b"<AAA:1>", late_s=0.4)
    Broker(max_streams=10, frame_s=0.5).publish("AAA", 1, b"<AAA:1>", late_s=0.9)
    Broker(max_streams=10, frame_s=0.5).publish("AAA", 1, b"<AAA:1>")
    assert waits == [pytest.approx(0.1), 0.0, 0.5]
