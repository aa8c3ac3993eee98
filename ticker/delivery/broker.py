"""Who gets what: topics, audiences, frames and caps, in bytes only.

A topic is a symbol (or ``broadcast``, ``market``, ``news``, ``chart:<SYMBOL>``). Whoever
publishes hands over an event already encoded, so the work is done once per tick whatever
the number of viewers. Events are gathered for ``frame_s`` and then fanned out as one frame:
viewers who watch the same topics (an *audience*: usually everyone watching the whole table)
share the frame's bytes, joined once, and each viewer gets them with one call of its
:meth:`~ticker.delivery.connection.Connection.deliver`.

An audience with viewers who take gzip also has one compressor (``compression.py``): each
frame is compressed once for all of them, however many they are. The heartbeat goes out in
the frames too, to every stream at once.

The broker also keeps the latest event of every topic: that is the snapshot a new viewer
gets first, joined (and compressed) once per audience, not once per viewer. It knows nothing of quotes,
prices or HTML; the caps (``MAX_STREAMS``, ``MAX_STREAMS_PER_CLIENT``) are enforced here,
where every stream is counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

import gevent

from ticker.delivery.compression import SharedDeflate, standalone
from ticker.rendering.fragments import BROADCAST, HEARTBEAT

CHART_PREFIX = "chart:"


def chart_topic(symbol: str) -> str:
    """The topic of ``symbol``'s chart (its own stream, which feeds its page)."""
    return CHART_PREFIX + symbol


Item = tuple[int, int, str, bytes]  # (seq, publish number, topic, encoded event)


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk, for bytes written past the WSGI server."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Viewer(Protocol):
    """What the broker needs of a viewer (one
    :class:`~ticker.delivery.connection.Connection`): whom it counts, what it watches, and
    the one verb of the fan-out, :meth:`deliver`."""

    route: str
    client: str
    topics: tuple[str, ...]
    delivered: int  # events handed to it
    sent_bytes: int
    gzip: bool  # whether it takes a compressed stream
    # Set on subscribe: what it is sent first, the compressor whose bytes it will join, and
    # the publish number up to which its first frame's events are in the snapshot already.
    snapshot: Snapshot
    deflate: SharedDeflate | None
    floor: int

    @property
    def pending(self) -> int: ...
    def deliver(self, frame: Frame) -> int: ...
    def end(self, farewell: bytes = b"") -> None: ...
    def end_now(self, farewell: bytes = b"") -> bool: ...


class StreamLimitReached(Exception):
    """The process already holds ``max_streams`` open streams."""


class ClientLimitReached(StreamLimitReached):
    """This client address already holds ``max_per_client`` open streams."""


class Snapshot:
    """What a new viewer of an audience gets first: the latest event of each topic."""

    __slots__ = ("_gzip", "data", "events")

    def __init__(self, data: bytes, events: int) -> None:
        self.data, self.events = data, events
        self._gzip: bytes | None = None

    def gzip(self) -> bytes:
        """Compressed on its own, once, for every gzip viewer who gets this snapshot."""
        if self._gzip is None:
            self._gzip = standalone(self.data)
        return self._gzip


class Frame:
    """One frame of one audience: its events, and its bytes in each encoding, made once
    for every viewer of the audience."""

    __slots__ = (
        "_alone",
        "crc_after",
        "crc_before",
        "data",
        "epoch_end",
        "events",
        "framed",
        "gzip",
        "gzip_framed",
        "items",
        "size_after",
        "size_before",
    )

    def __init__(self, items: list[Item], deflate: SharedDeflate | None = None) -> None:
        self.items = items
        self.data = b"".join(item[3] for item in items)
        self.framed = chunk(self.data)
        self.events = sum(
            item[2] != HEARTBEAT for item in items
        )  # heartbeats don't count
        self._alone: bytes | None = None
        self.epoch_end = False
        if deflate is not None:
            self.crc_before, self.size_before = deflate.crc, deflate.size
            self.gzip, self.epoch_end = deflate.encode(self.data)
            self.gzip_framed = chunk(self.gzip)
            self.crc_after, self.size_after = deflate.crc, deflate.size

    def alone(self) -> bytes:
        """Compressed on its own, for gzip viewers who have not joined the shared stream."""
        if self._alone is None:
            self._alone = standalone(self.data)
        return self._alone


class Audience:
    """The viewers who watch exactly the same topics, and so share every frame's bytes
    and the snapshot's."""

    __slots__ = (
        "deflate",
        "gzip_viewers",
        "snapshot",
        "snapshot_at",
        "topics",
        "viewers",
    )

    def __init__(self, topics: frozenset[str]) -> None:
        self.topics = topics
        self.viewers: set[Viewer] = set()
        self.gzip_viewers = 0
        self.deflate: SharedDeflate | None = None  # while any viewer takes gzip
        self.snapshot = Snapshot(b"", 0)
        self.snapshot_at = (
            -1
        )  # the broker's version of the latest events it was joined at


class Broker:
    """In-process fan-out of encoded events, in frames, to audiences of viewers."""

    def __init__(
        self, max_streams: int, max_per_client: int = 0, frame_s: float = 0.0
    ) -> None:
        self.max_streams = max_streams
        self.max_per_client = max_per_client  # 0: no per-client cap
        self.frame_s = frame_s  # 0: deliver every event at once (tests, tiny setups)
        self.open_by_client: Counter[str] = Counter()
        self.open_by_route: Counter[str] = Counter()
        self._audiences: dict[frozenset[str], Audience] = {}
        self._open: set[Viewer] = set()
        self._frame: dict[str, Item] = {}
        self._at_flush: dict[str, Callable[[], bytes]] = {}
        # Topics published at flush, and how to render each: a snapshot renders them anew.
        self._renderers: dict[str, Callable[[], bytes]] = {}
        self._frame_due = False
        # Totals of streams already closed; live ones are summed when asked (see ``totals``).
        self._closed_delivered = 0
        self._closed_bytes = 0
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._version = 0  # bumped whenever a latest event changes: snapshots go stale
        self.conflated = 0  # updates replaced by a newer one before a viewer read them
        self.published = 0  # events handed to the broker (heartbeats in ``beats``)
        self.beats = 0
        self.frames = 0
        self.last_seq = 0  # the newest sequence number seen on any topic
        self.closing = False

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def totals(self) -> tuple[int, int]:
        """Events and bytes handed to streams so far. Counted per write, summed only here,
        so the hot path pays for two integer additions and nothing more."""
        events = self._closed_delivered + sum(c.delivered for c in self._open)
        sent = self._closed_bytes + sum(c.sent_bytes for c in self._open)
        return events, sent

    def publish(
        self, topic: str, seq: int, payload: bytes, late_s: float = 0.0
    ) -> None:
        """Remember ``payload`` as the latest of ``topic`` and send it with the next frame.

        ``late_s``: how long after its moment the event arrives (a tick the feed could
        only make once the fan-out let it run, or one that crossed Redis). The frame it
        opens closes ``frame_s`` after that moment, not after the arrival: what made it
        late is counted into the frame's wait instead of added to it."""
        self.remember(topic, seq, payload)
        self.published += 1
        self._frame[topic] = (seq, self.published, topic, payload)
        self._schedule(late_s)

    def beat(self, heartbeat: bytes) -> None:
        """Send ``heartbeat`` to every stream with the next frame (and keep it out of
        snapshots). One for all, in the frames: a gzip viewer's bytes must be exactly its
        audience's, so nothing may be slipped in between for one viewer alone."""
        self.published += 1
        self.beats += 1
        self._frame[HEARTBEAT] = (self.last_seq, self.published, HEARTBEAT, heartbeat)
        self._schedule()

    def publish_at_flush(self, topic: str, render: Callable[[], bytes]) -> None:
        """Send ``render()`` last in the next frame, rendered as that frame goes out.

        For an event that describes the frame's final state (the market summary): made any
        earlier, it could describe prices that the same frame's conflation replaced.
        """
        self._at_flush[topic] = render
        self._renderers[topic] = render
        self._schedule()

    def _schedule(self, late_s: float = 0.0) -> None:
        if self.frame_s <= 0:
            self.flush()
        elif not self._frame_due:
            # A frame closes frame_s after its first event. (A steady clock instead halves
            # the median wait, but not the worst one, and measured 37 % more CPU per
            # update at 10,000 viewers: more frames, each carrying fewer events.)
            self._frame_due = True
            gevent.spawn_later(max(0.0, self.frame_s - late_s), self.flush)

    def remember(self, topic: str, seq: int, payload: bytes) -> None:
        """Keep ``payload`` as the latest of ``topic`` (what new viewers get first), without
        sending it to anyone: for the opening state, before anything runs."""
        self._latest[topic] = (seq, payload)
        self._version += 1
        self.last_seq = max(self.last_seq, seq)

    def flush(self) -> None:
        """Fan the events gathered since the last frame out to every audience."""
        self._frame_due = False
        at_flush, self._at_flush = self._at_flush, {}
        for topic, render in at_flush.items():
            self.remember(topic, self.last_seq, render())
            self.published += 1
            self._frame[topic] = (
                self.last_seq,
                self.published,
                topic,
                self._latest[topic][1],
            )
        if not self._frame:
            return
        items = sorted(self._frame.values())
        self._frame = {}
        self.frames += 1
        for audience in list(self._audiences.values()):
            mine = [item for item in items if item[2] in audience.topics]
            if not mine:
                continue
            frame = Frame(mine, audience.deflate)
            conflated = 0
            for viewer in list(audience.viewers):
                conflated += viewer.deliver(frame)
            self.conflated += conflated

    def latest_seq(self, topic: str) -> int:
        """Sequence number of the latest event of ``topic`` (0 if none yet)."""
        latest = self._latest.get(topic)
        return 0 if latest is None else latest[0]

    def subscribe(self, viewer: Viewer) -> None:
        """Count ``viewer`` in (or raise if a cap says no) and hand it the snapshot.

        The snapshot is the latest event of each of its topics, in sequence order; nothing
        can slip in between taking it and subscribing (no greenlet switch happens in here).
        Events already in it but still waiting in the current frame are skipped in the
        viewer's first frame (``viewer.floor``).
        """
        if self.closing or self.open_streams >= self.max_streams:
            raise StreamLimitReached
        client = viewer.client
        if self.max_per_client and self.open_by_client[client] >= self.max_per_client:
            raise ClientLimitReached
        key = frozenset(viewer.topics)
        audience = self._audiences.get(key)
        if audience is None:
            audience = self._audiences[key] = Audience(key)
        if audience.snapshot_at != self._version:
            audience.snapshot = self._snapshot(key)
            audience.snapshot_at = self._version
        viewer.snapshot = audience.snapshot
        viewer.floor = self.published if self._frame else 0
        if viewer.gzip:
            audience.gzip_viewers += 1
            if audience.deflate is None:
                audience.deflate = SharedDeflate()
            audience.deflate.viewers = audience.gzip_viewers
            viewer.deflate = audience.deflate
        audience.viewers.add(viewer)
        self._open.add(viewer)
        self.open_by_route[viewer.route] += 1
        self.open_by_client[client] += 1

    def _snapshot(self, topics: frozenset[str]) -> Snapshot:
        """The latest event of each of ``topics`` in sequence order, joined, and how many.

        An event published at flush (the market summary) describes the state of the others:
        it is rendered anew from that state and comes last, so it agrees with the events
        before it, which may be newer than its last frame.
        """
        latest = sorted(
            (self._latest[t][0], t)
            for t in topics
            if t in self._latest and t not in self._renderers
        )
        parts = [self._latest[t][1] for _, t in latest]
        parts += [render() for t, render in self._renderers.items() if t in topics]
        return Snapshot(b"".join(parts), len(parts))

    def unsubscribe(self, viewer: Viewer) -> bool:
        """Forget ``viewer``; return False if it was already gone (safe to call twice)."""
        if viewer not in self._open:
            return False
        self._open.discard(viewer)
        key = frozenset(viewer.topics)
        audience = self._audiences[key]
        audience.viewers.discard(viewer)
        if viewer.gzip:
            audience.gzip_viewers -= 1
            if not audience.gzip_viewers:
                audience.deflate = None  # its memory goes with the last gzip viewer
            else:
                audience.deflate.viewers = audience.gzip_viewers  # type: ignore[union-attr]
        if not audience.viewers:
            del self._audiences[key]
        for counter, name in (
            (self.open_by_route, viewer.route),
            (self.open_by_client, viewer.client),
        ):
            counter[name] -= 1
            if counter[name] <= 0:
                del counter[name]
        self._closed_delivered += viewer.delivered
        self._closed_bytes += viewer.sent_bytes
        return True

    def pending_events(self) -> int:
        """Events waiting in all mailboxes: at most one per topic per stream (conflation)."""
        return sum(c.pending for c in self._open)

    def close(self, farewell: Callable[[], bytes] | None = None) -> None:
        """End every stream (the process is shutting down) and refuse new ones; each
        ends with ``farewell()``, if given (say, a retry hint of its own).

        A caught-up viewer is ended here and now, in one write
        (:meth:`~ticker.delivery.connection.Connection.end_now`); any other is woken to
        end itself, and is counted in ``open_streams`` until it has.
        """
        self.closing = True
        for viewer in list(self._open):
            last = farewell() if farewell is not None else b""
            if not viewer.end_now(last):
                viewer.end(last)


def with_broadcasts(topics: Iterable[str]) -> tuple[str, ...]:
    """``topics`` without duplicates, plus what every stream carries: the admin message
    and the heartbeat."""
    return (*dict.fromkeys(topics), BROADCAST, HEARTBEAT)
