"""The one pacing rule: something that changes with every tick goes out at most so often.

The market summary and each symbol's chart change with every tick, but a viewer's eyes need
them at most once a second, and sending them more often would cost every viewer bytes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import gevent


class Pacer:
    """Calls ``publish(key)`` at most once per ``every_s`` per key, and always after the
    latest poke: a poke inside the quiet period schedules one call at its end, so the last
    state is never left unsent."""

    def __init__(self, every_s: float, publish: Callable[[str], None]) -> None:
        self.every_s = every_s
        self.publish = publish
        self._last: dict[str, float] = {}
        self._timers: dict[str, gevent.Greenlet] = {}

    def poke(self, key: str) -> None:
        """``key`` changed: publish it now, or at the end of its quiet period."""
        if key in self._timers:
            return  # a call is already due, and it will send the latest state
        wait = self._last.get(key, -math.inf) + self.every_s - time.monotonic()
        if wait <= 0:
            self._fire(key)
        else:
            self._timers[key] = gevent.spawn_later(wait, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self._last[key] = time.monotonic()
        self.publish(key)

    def cancel(self) -> None:
        """Forget every scheduled call (the feed stopped here)."""
        gevent.killall(list(self._timers.values()))
        self._timers.clear()
