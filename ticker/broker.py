"""Who gets what: in-process publish/subscribe of ready-encoded events, in frames.

A topic is a symbol (or ``broadcast`` for the admin message). The publisher hands over the
bytes of an event already encoded, so the work is done once per tick whatever the number of
viewers. Events are gathered for ``frame_s`` and then fanned out as one frame: viewers who
watch the same topics (an *audience*: usually everyone watching the whole table) share the
frame's bytes, joined once, and each viewer gets one write per frame.

A viewer whose socket keeps up is written to straight from the fan-out loop, without waking
its greenlet: that is what makes ten thousand viewers affordable on one core. One that falls
behind gets a conflating mailbox instead, holding at most the latest event per topic, and its
own greenlet catches it up; so a stalled viewer costs bounded memory and never slows anyone
else down.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

if TYPE_CHECKING:
    from ticker.feed import Quote

# Topics besides the symbols: lower case, so they can never clash with one.
BROADCAST = "broadcast"  # the admin message (every stream)
MARKET = "market"  # the market summary (the table's stream)
NEWS = "news"  # the news strip (the table's stream)


CHART_PREFIX = "chart:"


def chart_topic(symbol: str) -> str:
    """The topic of ``symbol``'s chart (its own stream, which feeds its page)."""
    return CHART_PREFIX + symbol


Item = tuple[int, int, str, bytes]  # (seq, publish number, topic, encoded event)


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk, for bytes written past the WSGI server."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class StreamLimitReached(Exception):
    """The process already holds ``max_streams`` open streams."""


class ClientLimitReached(StreamLimitReached):
    """This client address already holds ``max_per_client`` open streams."""


class Subscription:
    """One viewer: a conflating mailbox, and optionally a socket to write frames to."""

    __slots__ = (
        "_pending",
        "_wake",
        "backlog",
        "chunked",
        "client",
        "closed",
        "delivered",
        "direct",
        "fd",
        "floor",
        "on_stall",
        "route",
        "sent_bytes",
        "topics",
        "writing_since",
    )

    def __init__(self, route: str, topics: tuple[str, ...], client: str = "") -> None:
        self.route = route
        self.topics = topics
        self.client = client
        # Insertion-ordered: re-inserting on update keeps events in sequence order, so the
        # SSE ids a client sees only ever increase.
        self._pending: dict[str, tuple[int, bytes]] = {}
        self._wake = Event()
        self.closed = False
        self.delivered = 0  # events handed to the stream
        self.sent_bytes = 0
        # Since when the viewer's socket has refused our bytes; see ``Broker.stalled``.
        self.writing_since: float | None = None
        self.on_stall: Callable[[], None] | None = None
        # Direct writing (see ``attach``): the socket, whether the server chunks the
        # response, whether the viewer is caught up, and the rest of a half-written chunk.
        self.fd: int | None = None
        self.chunked = True
        self.direct = False
        self.backlog = b""
        # Events published before the snapshot was taken are in it already: the first
        # frame must skip them (they are numbered by the broker's ``published`` count).
        self.floor = 0

    def attach(self, fd: int, chunked: bool) -> None:
        """Let frames be written straight to ``fd`` once the stream's headers are out."""
        self.fd, self.chunked = fd, chunked

    def offer(self, topic: str, seq: int, payload: bytes) -> bool:
        """Queue ``payload``; return True if it replaced an undelivered one (conflation)."""
        replaced = self._pending.pop(topic, None) is not None
        self._pending[topic] = (seq, payload)
        self._wake.set()
        return replaced

    def push(self, items: list[Item], data: bytes, framed: bytes) -> int:
        """Deliver one frame (``data``, or ``framed`` as a chunk); return updates conflated.

        A caught-up viewer gets one non-blocking write; whatever does not fit goes to the
        mailbox (or, if a chunk was cut in half, its rest to ``backlog``) and the viewer's
        own greenlet is woken to finish the job when the socket drains.
        """
        if self.floor and items:
            floor, self.floor = self.floor, 0
            items = [item for item in items if item[1] > floor]
            if not items:
                return 0
            data = b"".join(item[3] for item in items)
            framed = chunk(data)
        if self.direct:
            buf = framed if self.chunked else data
            try:
                written = os.write(self.fd, buf)
            except BlockingIOError:
                written = 0
            except OSError:  # the client is gone
                self.close()
                return 0
            if written:
                self.delivered += len(items)
                self.sent_bytes += written
                if written == len(buf):
                    return 0
                self.backlog = buf[written:]
            self.direct = False
            self.writing_since = time.monotonic()
            self._wake.set()
            if written:
                return 0
        return sum(self.offer(topic, seq, payload) for seq, _, topic, payload in items)

    def take(self, timeout: float | None) -> bytes | None:
        """Wait up to ``timeout`` s; return pending bytes (maybe b""), or None once closed."""
        if not self._pending and not self.closed and not self.backlog:
            self._wake.wait(timeout)
        self._wake.clear()
        if self.closed:
            return None
        if not self._pending:
            return b""
        data = b"".join(payload for _, payload in self._pending.values())
        self.delivered += len(self._pending)
        self.sent_bytes += len(data)
        self._pending.clear()
        return data

    def wait(self, timeout: float | None) -> None:
        """Sleep until the fan-out needs this viewer's greenlet, or ``timeout`` passes."""
        self._wake.wait(timeout)
        self._wake.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self.closed = True
        self._wake.set()


class Audience:
    """The viewers who watch exactly the same topics, and so share every frame's bytes."""

    __slots__ = ("subs", "topics")

    def __init__(self, topics: frozenset[str]) -> None:
        self.topics = topics
        self.subs: set[Subscription] = set()


class Broker:
    """In-process fan-out. Also keeps the latest event and quote of every topic."""

    def __init__(
        self, max_streams: int, max_per_client: int = 0, frame_s: float = 0.0
    ) -> None:
        self.max_streams = max_streams
        self.max_per_client = max_per_client  # 0: no per-client cap
        self.frame_s = (
            frame_s  # 0: deliver every event at once (tests, tiny deployments)
        )
        self.open_by_client: Counter[str] = Counter()
        self.open_by_route: Counter[str] = Counter()
        self._audiences: dict[frozenset[str], Audience] = {}
        self._open: set[Subscription] = set()
        self._frame: dict[str, Item] = {}
        self._frame_due = False
        # Totals of streams already closed; live ones are summed when asked (see ``totals``).
        self._closed_delivered = 0
        self._closed_bytes = 0
        self._latest: dict[str, tuple[int, bytes]] = {}
        self.quotes: dict[str, Quote] = {}
        self.conflated = 0  # updates replaced by a newer one before a viewer read them
        self.published = 0
        self.frames = 0
        self.last_seq = 0  # the newest sequence number seen on any topic
        self.last_quote_at: float | None = None  # time.time() of the newest quote
        self.closing = False
        # Called at the start of every flush; returns (topic, payload) events to end it with.
        self.frame_hook: Callable[[], list[tuple[str, bytes]]] | None = None

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def totals(self) -> tuple[int, int]:
        """Events and bytes handed to streams so far. Counted per write, summed only here,
        so the hot path pays for two integer additions and nothing more."""
        events = self._closed_delivered + sum(s.delivered for s in self._open)
        sent = self._closed_bytes + sum(s.sent_bytes for s in self._open)
        return events, sent

    def publish(
        self, topic: str, seq: int, payload: bytes, quote: Quote | None = None
    ) -> None:
        """Remember ``payload`` as the latest of ``topic`` and send it with the next frame."""
        self.remember(topic, seq, payload, quote)
        self.published += 1
        self._frame[topic] = (seq, self.published, topic, payload)
        if self.frame_s <= 0:
            self.flush()
        elif not self._frame_due:
            # A frame closes frame_s after its first event. (A steady clock instead halves
            # the median wait, but not the worst one, and measured 37 % more CPU per
            # update at 10,000 viewers: more frames, each carrying fewer events.)
            self._frame_due = True
            gevent.spawn_later(self.frame_s, self.flush)

    def remember(
        self, topic: str, seq: int, payload: bytes, quote: Quote | None = None
    ) -> None:
        """Keep ``payload`` as the latest of ``topic`` (what new viewers get first), without
        sending it to anyone: for the opening quotes, before anything runs."""
        self._latest[topic] = (seq, payload)
        self.last_seq = max(self.last_seq, seq)
        if quote is not None:
            self.quotes[topic] = quote
            self.last_quote_at = time.time()

    def flush(self) -> None:
        """Fan the events gathered since the last frame out to every audience.

        ``frame_hook`` may add events that describe the frame's final state (the market
        summary): they go last, so a viewer never sees a summary of prices that the same
        frame's conflation replaced before they were shown.
        """
        self._frame_due = False
        if self.frame_hook is not None:
            for topic, payload in self.frame_hook():
                self.remember(topic, self.last_seq, payload)
                self.published += 1
                self._frame[topic] = (self.last_seq, self.published, topic, payload)
        if not self._frame:
            return
        items = sorted(self._frame.values())
        self._frame = {}
        self.frames += 1
        for audience in list(self._audiences.values()):
            mine = [item for item in items if item[2] in audience.topics]
            if not mine:
                continue
            data = b"".join(item[3] for item in mine)
            framed = chunk(data)
            conflated = 0
            for sub in list(audience.subs):
                conflated += sub.push(mine, data, framed)
            self.conflated += conflated

    def flush_soon(self) -> None:
        """Flush now, unless a frame is already due: its flush comes soon enough, and an
        early one would cut that frame (and the next) short of ``frame_s``."""
        if not self._frame_due:
            self.flush()

    def latest_seq(self, topic: str) -> int:
        """Sequence number of the latest event of ``topic`` (0 if none yet)."""
        latest = self._latest.get(topic)
        return 0 if latest is None else latest[0]

    def subscribe(
        self, route: str, topics: Iterable[str], client: str = ""
    ) -> Subscription:
        """Open a mailbox for ``topics`` (and broadcasts), pre-filled with their latest events.

        The pre-fill is the snapshot a new viewer needs at once; it is ordered by sequence
        number, and nothing can slip in between taking it and subscribing (no greenlet switch
        happens in here).
        """
        if self.closing or self.open_streams >= self.max_streams:
            raise StreamLimitReached
        if self.max_per_client and self.open_by_client[client] >= self.max_per_client:
            raise ClientLimitReached
        topics = (*dict.fromkeys(topics), BROADCAST)
        sub = Subscription(route, topics, client)
        sub.floor = self.published if self._frame else 0
        for seq, topic in sorted(
            (self._latest[t][0], t) for t in topics if t in self._latest
        ):
            sub.offer(topic, seq, self._latest[topic][1])
        key = frozenset(topics)
        audience = self._audiences.get(key)
        if audience is None:
            audience = self._audiences[key] = Audience(key)
        audience.subs.add(sub)
        self._open.add(sub)
        self.open_by_route[route] += 1
        self.open_by_client[client] += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> bool:
        """Forget ``sub``; return False if it was already gone (safe to call twice)."""
        sub.close()
        if sub not in self._open:
            return False
        self._open.discard(sub)
        key = frozenset(sub.topics)
        audience = self._audiences[key]
        audience.subs.discard(sub)
        if not audience.subs:
            del self._audiences[key]
        for counter, name in (
            (self.open_by_route, sub.route),
            (self.open_by_client, sub.client),
        ):
            counter[name] -= 1
            if counter[name] <= 0:
                del counter[name]
        self._closed_delivered += sub.delivered
        self._closed_bytes += sub.sent_bytes
        return True

    def pending_events(self) -> int:
        """Events waiting in all mailboxes: at most one per topic per stream (conflation)."""
        return sum(s.pending for s in self._open)

    def stalled(self, now: float, timeout: float) -> list[Subscription]:
        """Streams whose socket has refused our bytes for over ``timeout`` seconds."""
        return [
            s
            for s in self._open
            if s.writing_since is not None and now - s.writing_since > timeout
        ]

    def close(self) -> None:
        """End every stream (the process is shutting down) and refuse new ones."""
        self.closing = True
        for sub in list(self._open):
            sub.close()
