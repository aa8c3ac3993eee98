"""Workshop exercise 6: scale out with Redis: how many are watching, on every instance.

Run it with ``pytest tests -m exercise_6``. The table's stream (``/stream``) carries a
named event ``viewers`` whose fragment has ``data-count="N"``: the streams open on every
process that shares the market through Redis (with no ``REDIS_URL``, on this process). It
comes with the snapshot and again within a couple of seconds whenever the number changes;
a process that dies stops counting within seconds too. The market page shows it.

Two instances of the app (the Procfile's gunicorn) share a throwaway ``redis-server``, as
in ``tests/test_redis.py``; without Redis this skips, except on CI (``CI=true``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from support import Event, Server, SSEClient
from test_redis import HOW_TO_ENABLE, REDIS_SERVER, RedisServer
from workshop_support import by_attr, parse_html, require

pytestmark = pytest.mark.exercise_6

EVENT = "viewers"
SETTLE_S = 10.0  # the count must be right within this long after a change
SNAPSHOT_S = 3.0  # the snapshot (and so the first count) comes at once


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[Server, Server]]:
    """Instances A and B of the app, one worker each, sharing one Redis."""
    ok = REDIS_SERVER and os.access(REDIS_SERVER, os.X_OK)
    require([] if ok else ["redis-server not found"], HOW_TO_ENABLE)
    logs = tmp_path_factory.mktemp("viewers")
    redis = RedisServer(logs).start()
    env = {"REDIS_URL": redis.url}
    a = Server.procfile(logs / "a.log", env=env).start()
    b = Server.procfile(logs / "b.log", env=env).start()
    yield a, b
    a.stop()
    b.stop()
    redis.stop()


class Viewer:
    """A table stream, and the latest count its ``viewers`` events said."""

    def __init__(self, server: Server) -> None:
        self.client = SSEClient(server.base, "/stream")
        self.said: list[int] = []
        try:
            self.client.events_until(lambda ev: self.read(ev) or self.said, SNAPSHOT_S)
        except AssertionError:
            self.close()
            pytest.fail(
                f"no {EVENT!r} event came with the snapshot of /stream: send the count "
                "on the table's stream",
                pytrace=False,
            )

    def read(self, events: list[Event]) -> None:
        """Note the count of the newest event, if it is a ``viewers`` event."""
        if events and events[-1].event == EVENT:
            (element,) = parse_html(events[-1].data).find_all(by_attr("data-count"))
            self.said.append(int(element.attrs["data-count"]))

    def wait_for(self, want: int) -> None:
        """Until the latest count says ``want`` (within ``SETTLE_S``)."""

        def done(events: list[Event]) -> bool:
            self.read(events)
            return self.said[-1:] == [want]

        try:
            self.client.events_until(done, SETTLE_S)
        except AssertionError:
            pytest.fail(
                f"the viewers count never said {want} in {SETTLE_S:.0f} s; it said "
                f"{self.said}",
                pytrace=False,
            )

    def close(self) -> None:
        self.client.close()


def test_the_count_adds_up_the_streams_of_every_instance(cluster):
    a, b = cluster
    viewers: list[Viewer] = []
    try:
        viewers += [Viewer(a), Viewer(a), Viewer(b)]
        for viewer in viewers:
            viewer.wait_for(3)
        viewers.pop(0).close()
        for viewer in viewers:
            viewer.wait_for(2)
    finally:
        for viewer in viewers:
            viewer.close()


def test_the_market_page_shows_the_count(cluster):
    a, _ = cluster
    status, _, body = a.request("/")
    assert status == 200
    targets = parse_html(body.decode()).find_all(by_attr("sse-swap", EVENT))
    assert len(targets) == 1, f'the market page needs one sse-swap="{EVENT}" element'
    assert any("sse-connect" in e.attrs for e in targets[0].ancestors()), (
        f'the sse-swap="{EVENT}" element must sit inside the sse-connect element'
    )


def test_an_instance_that_dies_stops_counting(cluster):
    """Killed at once, it cannot say goodbye: what it wrote to Redis must expire."""
    a, b = cluster
    viewers: list[Viewer] = []
    try:
        viewers += [Viewer(a), Viewer(b)]
        viewers[0].wait_for(2)
        os.killpg(b.process.pid, signal.SIGKILL)
        viewers[0].wait_for(1)
    finally:
        for viewer in viewers:
            viewer.close()
