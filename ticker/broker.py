"""Who gets what: in-process publish/subscribe of ready-encoded events, keyed by topic.

A topic is a symbol (or ``broadcast`` for the admin message). The publisher hands over the
bytes of an event already encoded, so the work is done once per tick whatever the number of
viewers. Each subscriber has a conflating mailbox: at most the latest event per topic, so a
stalled viewer costs a bounded amount of memory and never slows anyone else down.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gevent.event import Event

if TYPE_CHECKING:
    from ticker.feed import Quote

BROADCAST = "broadcast"  # lower case, so it can never clash with a symbol


class StreamLimitReached(Exception):
    """The process already holds ``max_streams`` open streams."""


class Subscription:
    """One viewer's mailbox. ``take`` hands over everything pending as one write."""

    __slots__ = (
        "_pending",
        "_wake",
        "closed",
        "delivered",
        "route",
        "sent_bytes",
        "topics",
    )

    def __init__(self, route: str, topics: tuple[str, ...]) -> None:
        self.route = route
        self.topics = topics
        # Insertion-ordered: re-inserting on update keeps events in sequence order, so the
        # SSE ids a client sees only ever increase.
        self._pending: dict[str, tuple[int, bytes]] = {}
        self._wake = Event()
        self.closed = False
        self.delivered = 0  # events handed to the stream
        self.sent_bytes = 0

    def offer(self, topic: str, seq: int, payload: bytes) -> bool:
        """Queue ``payload``; return True if it replaced an undelivered one (conflation)."""
        replaced = self._pending.pop(topic, None) is not None
        self._pending[topic] = (seq, payload)
        self._wake.set()
        return replaced

    def take(self, timeout: float | None) -> bytes | None:
        """Wait up to ``timeout`` s; return pending bytes (maybe b""), or None once closed."""
        if not self._pending and not self.closed:
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

    def close(self) -> None:
        self.closed = True
        self._wake.set()


class Broker:
    """In-process fan-out. Also keeps the latest event and quote of every topic."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._subscribers: dict[str, set[Subscription]] = {}
        self._open: set[Subscription] = set()
        # Totals of streams already closed; live ones are summed when asked (see ``totals``).
        self._closed_delivered = 0
        self._closed_bytes = 0
        self._latest: dict[str, tuple[int, bytes]] = {}
        self.quotes: dict[str, Quote] = {}
        self.open_by_route: Counter[str] = Counter()
        self.conflated = 0  # updates replaced by a newer one before a viewer read them
        self.published = 0
        self.closing = False

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
        """Deliver ``payload`` to every subscriber of ``topic`` and remember it as latest."""
        self._latest[topic] = (seq, payload)
        if quote is not None:
            self.quotes[topic] = quote
        self.published += 1
        for sub in self._subscribers.get(topic, ()):
            if sub.offer(topic, seq, payload):
                self.conflated += 1

    def subscribe(self, route: str, symbols: Iterable[str]) -> Subscription:
        """Open a mailbox for ``symbols`` (and broadcasts), pre-filled with their latest events.

        The pre-fill is the snapshot a new viewer needs at once; it is ordered by sequence
        number, and nothing can slip in between taking it and subscribing (no greenlet switch
        happens in here).
        """
        if self.closing or self.open_streams >= self.max_streams:
            raise StreamLimitReached
        topics = (*dict.fromkeys(symbols), BROADCAST)
        sub = Subscription(route, topics)
        for seq, topic in sorted(
            (self._latest[t][0], t) for t in topics if t in self._latest
        ):
            sub.offer(topic, seq, self._latest[topic][1])
        for topic in topics:
            self._subscribers.setdefault(topic, set()).add(sub)
        self._open.add(sub)
        self.open_by_route[route] += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> bool:
        """Forget ``sub``; return False if it was already gone (safe to call twice)."""
        sub.close()
        if sub not in self._open:
            return False
        self._open.discard(sub)
        for topic in sub.topics:
            self._subscribers[topic].discard(sub)
        self.open_by_route[sub.route] -= 1
        if self.open_by_route[sub.route] <= 0:
            del self.open_by_route[sub.route]
        self._closed_delivered += sub.delivered
        self._closed_bytes += sub.sent_bytes
        return True

    def close(self) -> None:
        """End every stream (the process is shutting down) and refuse new ones."""
        self.closing = True
        for sub in list(self._open):
            sub.close()
