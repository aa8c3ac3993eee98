"""Prometheus metrics, read from the live objects when scraped.

Nothing on the streaming path touches a metrics library: the broker and feed keep plain
integer counters, and this collector turns them into Prometheus families on each scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ticker.service import Service


class TickerCollector(Collector):
    """Exports the feed's and the broker's counters."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        feed, broker = self.service.feed, self.service.broker
        streams = GaugeMetricFamily(
            "ticker_open_streams",
            "SSE streams open in this process, by route",
            labels=["route"],
        )
        for route in ("symbol", "multi"):
            streams.add_metric([route], broker.open_by_route.get(route, 0))
        yield streams
        events, sent = broker.totals()
        counters = {
            "ticker_ticks": (
                "Price ticks made by this process's feed (0 where another leads it)",
                feed.ticks,
            ),
            "ticker_feed_restarts": (
                "Times the feed crashed and was restarted",
                feed.restarts,
            ),
            "ticker_events_published": (
                "Events handed to the broker",
                broker.published - broker.beats,
            ),
            "ticker_events_sent": (
                "Events written to SSE streams, snapshots included, heartbeats not",
                events,
            ),
            "ticker_bytes_sent": ("Bytes written to SSE streams", sent),
            "ticker_updates_conflated": (
                "Updates dropped for a newer one before a slow viewer read them",
                broker.conflated,
            ),
            "ticker_broadcasts": (
                "Admin broadcasts sent through this process",
                self.service.broadcasts,
            ),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        bus = self.service.bus.status()
        yield GaugeMetricFamily(
            "ticker_bus_connected",
            "1 if the bus (Redis, if used) is connected",
            value=int(bus["connected"]),
        )
        yield GaugeMetricFamily(
            "ticker_feed_leader",
            "1 if this process runs the feed",
            value=int(bus["leader"]),
        )
        if feed.last_tick_at is not None:
            yield GaugeMetricFamily(
                "ticker_last_tick_age_seconds",
                "Seconds since the feed last ticked",
                value=time.time() - feed.last_tick_at,
            )


def make_registry(service: Service) -> CollectorRegistry:
    """A registry per app, so several apps in one process (as in tests) never collide."""
    registry = CollectorRegistry()
    registry.register(TickerCollector(service))
    ProcessCollector(registry=registry)
    return registry
