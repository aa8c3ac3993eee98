"""When the market moves: the time of every tick and every headline, from the seed alone.

Nothing here keeps state that matters. Symbol ``s``'s ``k``-th tick is at
``(k + u) * TICKER_INTERVAL`` seconds since the epoch, ``u`` drawn from a hash of
``(seed, s, k)``; headline ``j`` is at ``(j + v) * TICKER_NEWS_S``, with its company, tone
and size drawn from a hash of ``(seed, j)``. So every process, at any moment, agrees on
which ticks and headlines have happened and can list the past ones without having seen
them: a restart, or a new Redis leader, continues the same market instead of starting a
new one.

Why a module of its own rather than part of ``feed.py``: both the feed (which waits for
the next tick) and the model (which replays the past ticks to know today's prices) need
these times, and the model must not import the feed's greenlet machinery. ``feed.py`` is
the loop that waits on this clock; ``model.py`` is how a price moves at each tick.

The randomness is SHAKE-256 (``hashlib``) over a text key, one digest per block of
``BLOCK`` ticks or headlines: counter-based (any index is reachable without computing the
ones before it), the same on every platform and Python version, and fast in C.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from dataclasses import dataclass
from functools import lru_cache
from sys import byteorder

# Ticks (or headlines) per digest: enough that a whole day is a few dozen C calls.
BLOCK = 1024
# A trading day is this many ticks of one symbol: a UTC day at the default interval of one
# second, shorter with faster ticks (20 minutes at 0.02 s). Counting the day in ticks keeps
# a process's start-up cost (replaying today) the same whatever the interval is.
DAY_TICKS = 86_400
# Sequence numbers are the tick's epoch milliseconds times this, plus the symbol's index
# (at most 500 symbols), so they grow with time on every process and stay below 2**53
# (exact in JavaScript's numbers) until the 2250s.
SEQ_PER_MS = 1000


def draws(*key: object, size: int) -> bytes:
    """``size`` pseudo-random bytes that are a pure function of ``key``."""
    text = ":".join(str(part) for part in key)
    return hashlib.shake_256(text.encode()).digest(size)


def _uint16(data: bytes) -> array:
    values = array("H", data)
    if byteorder == "big":  # the digest's pairs are read little-endian everywhere
        values.byteswap()
    return values


@lru_cache(maxsize=2048)
def _tick_offsets(seed: int, symbol: str, block: int) -> array:
    """The jitter of ticks ``block * BLOCK ...`` of ``symbol``, as 16-bit numbers."""
    return _uint16(draws(seed, "time", symbol, block, size=2 * BLOCK))


@dataclass(frozen=True, slots=True)
class Story:
    """A headline's facts, before anyone writes its text: which company, when, which way.

    ``size`` in [0, 1) says how big its price move is, between the company's smallest and
    largest (the model turns it into a log return); ``template`` picks the sentence.
    """

    index: int  # j: the headline's number since the epoch
    ts: int  # epoch milliseconds
    company: int  # index into the universe
    good: bool
    size: float
    template: int


class Schedule:
    """The times of every symbol's ticks and of every headline (see the module docstring).

    Ticks of one symbol keep their order and are at least a millisecond apart: the jitter
    ``u`` is drawn from [-0.5, 0.5) narrowed by half a millisecond on each side. So gaps
    average one interval and range from about 0 to 2 intervals, as a jittered timer's
    would. Below 2 ms per tick two ticks of a symbol could share a millisecond (and a
    sequence number); the settings refuse such intervals.
    """

    def __init__(
        self, seed: int, symbols: int, interval_s: float, news_s: float = 0.0
    ) -> None:
        self.seed = seed
        self.symbols = symbols
        self.interval_ms = interval_s * 1000.0
        self.news_ms = news_s * 1000.0
        self._tick_margin = min(0.25, 0.5 / self.interval_ms)
        self._news_margin = min(0.25, 0.5 / self.news_ms) if self.news_ms else 0.0

    # --- ticks --------------------------------------------------------------------------

    def tick_ms(self, symbol: str, k: int) -> int:
        """Epoch milliseconds of ``symbol``'s tick ``k``."""
        raw = _tick_offsets(self.seed, symbol, k // BLOCK)[k % BLOCK]
        m = self._tick_margin
        u = m - 0.5 + (1.0 - 2.0 * m) * raw / 65536.0
        return math.floor((k + u) * self.interval_ms)

    def tick_at(self, symbol: str, t_ms: int) -> int:
        """Index of ``symbol``'s latest tick at or before ``t_ms``."""
        k = math.floor(t_ms / self.interval_ms + 0.5) + 1
        while self.tick_ms(symbol, k) > t_ms:
            k -= 1
        return k

    def first_tick_from(self, symbol: str, t_ms: int) -> int:
        """Index of ``symbol``'s first tick at or after ``t_ms``."""
        k = math.floor(t_ms / self.interval_ms - 0.5) - 1
        while self.tick_ms(symbol, k) < t_ms:
            k += 1
        return k

    @staticmethod
    def seq(ts_ms: int, index: int) -> int:
        """The sequence number of a tick at ``ts_ms`` of the ``index``-th symbol."""
        return ts_ms * SEQ_PER_MS + index

    # --- headlines ----------------------------------------------------------------------

    def story(self, j: int) -> Story:
        """Headline ``j``'s facts."""
        return _news_block(self, j // BLOCK)[0][j % BLOCK]

    def story_at(self, t_ms: int) -> int:
        """Index of the latest headline at or before ``t_ms`` (news must be on)."""
        j = math.floor(t_ms / self.news_ms + 0.5) + 1
        while self.story(j).ts > t_ms:
            j -= 1
        return j

    def stories_of(self, company: int, after_ms: int, until_ms: int) -> list[Story]:
        """Headlines about ``company`` in ``(after_ms, until_ms]``, oldest first."""
        if not self.news_ms:
            return []
        first = math.floor(after_ms / self.news_ms - 0.5) - 1
        last = math.floor(until_ms / self.news_ms + 0.5) + 1
        found: list[Story] = []
        for block in range(first // BLOCK, last // BLOCK + 1):
            for story in _news_block(self, block)[1].get(company, ()):
                if after_ms < story.ts <= until_ms:
                    found.append(story)
        return found

    def _make_news_block(
        self, block: int
    ) -> tuple[list[Story], dict[int, list[Story]]]:
        data = draws(self.seed, "news", block, size=8 * BLOCK)
        words = _uint16(data[: 6 * BLOCK])
        m = self._news_margin
        stories = []
        by_company: dict[int, list[Story]] = {}
        for n in range(BLOCK):
            j = block * BLOCK + n
            v = m - 0.5 + (1.0 - 2.0 * m) * words[3 * n] / 65536.0
            story = Story(
                index=j,
                ts=math.floor((j + v) * self.news_ms),
                company=words[3 * n + 1] % self.symbols,
                good=data[6 * BLOCK + 2 * n] < 128,
                size=words[3 * n + 2] / 65536.0,
                template=data[6 * BLOCK + 2 * n + 1],
            )
            stories.append(story)
            by_company.setdefault(story.company, []).append(story)
        return stories, by_company


@lru_cache(maxsize=64)
def _news_block(
    schedule: Schedule, block: int
) -> tuple[list[Story], dict[int, list[Story]]]:
    return schedule._make_news_block(block)
