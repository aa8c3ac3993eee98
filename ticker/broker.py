"""Who gets what: in-process publish/subscribe of ready-encoded events, keyed by topic.

A topic is a symbol (or ``broadcast`` for the admin message). The publisher hands over the
bytes of an event already encoded, so the work is done once per tick whatever the number of
viewers. Each subscriber has a conflating mailbox: at most the latest event per topic, so a
stalled viewer costs a bounded amount of memory and never slows anyone else down.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from gevent.event import Event

if TYPE_CHECKING:
    from ticker.feed import Quote

BROADCAST = "broadcast"  # lower case, so it can never clash with a symbol


class StreamLimitReached(Exception):
    """The process already holds ``max_streams`` open streams."""


class ClientLimitReached(StreamLimitReached):
    """This client address already holds ``max_per_client`` open streams."""


class Subscription:
    """One viewer's mailbox. ``take`` hands over everything pending as one write."""

    __slots__ = (
        "_pending",
        "_wake",
        "client",
        "closed",
        "delivered",
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
        # Set by the stream while the server writes to a client; see ``Broker.stalled``.
        self.writing_since: float | None = None
        self.on_stall: Callable[[], None] | None = None

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

    def __init__(self, max_streams: int, max_per_client: int = 0) -> None:
        self.max_streams = max_streams
        self.max_per_client = max_per_client  # 0: no per-client cap
        self.open_by_client: Counter[str] = Counter()
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
        self.last_seq = 0  # the newest sequence number seen on any topic
        self.last_quote_at: float | None = None  # time.time() of the newest quote
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
        self.last_seq = max(self.last_seq, seq)
        if quote is not None:
            self.quotes[topic] = quote
            self.last_quote_at = time.time()
        self.published += 1
        for sub in self._subscribers.get(topic, ()):
            if sub.offer(topic, seq, payload):
                self.conflated += 1

    def latest_seq(self, topic: str) -> int:
        """Sequence number of the latest event of ``topic`` (0 if none yet)."""
        latest = self._latest.get(topic)
        return 0 if latest is None else latest[0]

    def subscribe(
        self, route: str, symbols: Iterable[str], client: str = ""
    ) -> Subscription:
        """Open a mailbox for ``symbols`` (and broadcasts), pre-filled with their latest events.

        The pre-fill is the snapshot a new viewer needs at once; it is ordered by sequence
        number, and nothing can slip in between taking it and subscribing (no greenlet switch
        happens in here).
        """
        if self.closing or self.open_streams >= self.max_streams:
            raise StreamLimitReached
        if self.max_per_client and self.open_by_client[client] >= self.max_per_client:
            raise ClientLimitReached
        topics = (*dict.fromkeys(symbols), BROADCAST)
        sub = Subscription(route, topics, client)
        for seq, topic in sorted(
            (self._latest[t][0], t) for t in topics if t in self._latest
        ):
            sub.offer(topic, seq, self._latest[topic][1])
        for topic in topics:
            self._subscribers.setdefault(topic, set()).add(sub)
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
        for topic in sub.topics:
            self._subscribers[topic].discard(sub)
        for counter, key in (
            (self.open_by_route, sub.route),
            (self.open_by_client, sub.client),
        ):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        self._closed_delivered += sub.delivered
        self._closed_bytes += sub.sent_bytes
        return True

    def pending_events(self) -> int:
        """Events waiting in all mailboxes: at most one per symbol per stream (conflation)."""
        return sum(len(s._pending) for s in self._open)

    def stalled(self, now: float, timeout: float) -> list[Subscription]:
        """Streams whose current write has waited on the client for over ``timeout`` s."""
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
