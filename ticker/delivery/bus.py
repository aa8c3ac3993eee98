"""How ticks reach every process: in-process, or through Redis.

The service hands each rendered tick to a bus; the bus hands it on to the ``receive``
callback of every process that serves viewers (the service, which keeps the quote and
gives the bytes to its broker). The bus never looks into what it carries.
:class:`LocalBus` is one process talking to itself.
:class:`RedisBus` makes many processes (gunicorn workers, PaaS instances) one market:

- exactly one process runs the feed: the holder of a Redis lock that expires unless its
  holder renews it, so when a leader dies or hangs another takes over within seconds;
- the latest event of every topic is kept in a Redis hash, so a process that starts (or
  reconnects) hands its viewers what the leader last published;
- every process subscribes to one pub/sub channel and hands on what it hears.

The leader's writes are fenced: a Lua script checks the lock before every publish, so a
leader that hung past its lock's expiry cannot publish over its successor.

Neither bus has anything to do for the market's continuity or its sequence numbers: the
market is a function of the seed and the time, and a tick's sequence number is its time
(``ticker.market.clock``), so a new leader, or a restarted single process, continues the
same market with ids above every one viewers have seen, and two processes number the same
tick alike.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

import gevent

from ticker import logfmt
from ticker.market.model import Quote
from ticker.rendering.fragments import BROADCAST

log = logging.getLogger(__name__)

# Where a bus hands each event on: (topic, seq, encoded event, the quote if it is one).
Receive = Callable[[str, int, bytes, "Quote | None"], None]


class Bus(Protocol):
    """What the service needs from a bus; both implementations provide it."""

    kind: str

    def start(
        self, on_elected: Callable[[], None], on_deposed: Callable[[], None]
    ) -> None: ...
    def stop(self) -> None: ...
    def publish(
        self, topic: str, seq: int, payload: bytes, quote: Quote | None = None
    ) -> None: ...
    def status(self) -> dict[str, object]: ...


class LocalBus:
    """One process: it is always the leader, and publishing is a local call."""

    kind = "local"

    def __init__(self, receive: Receive) -> None:
        self.receive = receive

    def start(
        self, on_elected: Callable[[], None], on_deposed: Callable[[], None]
    ) -> None:
        on_elected()

    def stop(self) -> None:
        """Nothing to release."""

    def publish(
        self, topic: str, seq: int, payload: bytes, quote: Quote | None = None
    ) -> None:
        self.receive(topic, seq, payload, quote)

    def status(self) -> dict[str, object]:
        return {"kind": self.kind, "leader": True, "connected": True}


# KEYS[1] = lock, ARGV[1] = our token, ARGV[2] = ttl ms: renew only a lock we still hold.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS = lock, latest, channel; ARGV = token, topic, message: remember and publish, fenced.
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""


class RedisBus:
    """Many processes, one market, through Redis (see the module docstring)."""

    kind = "redis"
    LOCK_TTL_S = 5.0
    CAMPAIGN_EVERY_S = 1.0

    def __init__(
        self, url: str, namespace: str, receive: Receive, tls_verify: bool = True
    ) -> None:
        import redis  # only deployments that set REDIS_URL need the package loaded

        self._errors = (redis.RedisError, OSError)
        self.receive = receive
        self._seen: dict[str, int] = {}  # the newest seq handed on, per topic
        options: dict[str, object] = {}
        if url.startswith("rediss://") and not tls_verify:
            # Encrypted, but anyone on the path could pose as the server: say so.
            log.warning(
                logfmt.event(
                    "redis.tls_unverified",
                    detail="REDIS_TLS_VERIFY=0: the server's certificate is not checked",
                )
            )
            options["ssl_cert_reqs"] = "none"
        self.redis = redis.Redis.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=3,
            health_check_interval=5,
            **options,
        )
        self.lock_key = f"{namespace}:leader"
        self.latest_key = f"{namespace}:latest"
        self.channel = f"{namespace}:events"
        self.token = uuid.uuid4().hex
        self.leader = False
        self.connected = False
        self._publish_failing = False
        self._renew = self.redis.register_script(_RENEW)
        self._publish = self.redis.register_script(_PUBLISH)
        self._greenlets: list[gevent.Greenlet] = []

    # --- leadership ---------------------------------------------------------------------

    def start(
        self, on_elected: Callable[[], None], on_deposed: Callable[[], None]
    ) -> None:
        if not self._greenlets:
            self._greenlets = [
                gevent.spawn(self._listen),
                gevent.spawn(self._campaign, on_elected, on_deposed),
            ]

    def stop(self) -> None:
        gevent.killall(self._greenlets)
        self._greenlets = []
        if self.leader:
            self.leader = False
            try:  # hand over at once instead of after the lock's expiry
                self.redis.eval(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
                    1,
                    self.lock_key,
                    self.token,
                )
            except self._errors:
                pass

    def _campaign(
        self, on_elected: Callable[[], None], on_deposed: Callable[[], None]
    ) -> None:
        ttl_ms = int(self.LOCK_TTL_S * 1000)
        while True:
            try:
                if self.leader:
                    if not self._renew(keys=[self.lock_key], args=[self.token, ttl_ms]):
                        self._depose(on_deposed, "another process holds the lock")
                elif self.redis.set(self.lock_key, self.token, nx=True, px=ttl_ms):
                    self.leader = True
                    log.info(
                        "elected: this process runs the feed (pid lock %s)",
                        self.token[:8],
                    )
                    on_elected()
            except self._errors as exc:
                if self.leader:
                    self._depose(on_deposed, f"redis unavailable: {exc}")
            gevent.sleep(self.CAMPAIGN_EVERY_S)

    def _depose(self, on_deposed: Callable[[], None], why: str) -> None:
        self.leader = False
        log.warning("no longer the feed leader: %s", why)
        on_deposed()

    # --- publishing (leader) ------------------------------------------------------------

    def publish(
        self, topic: str, seq: int, payload: bytes, quote: Quote | None = None
    ) -> None:
        message = json.dumps(
            {
                "topic": topic,
                "seq": seq,
                "payload": payload.decode("utf-8"),
                "quote": asdict(quote) if quote is not None else None,
            }
        )
        try:
            if topic == BROADCAST:  # any process may broadcast, leader or not
                pipe = self.redis.pipeline()
                pipe.hset(self.latest_key, topic, message)
                pipe.publish(self.channel, message)
                pipe.execute()
            else:
                self._publish(
                    keys=[self.lock_key, self.latest_key, self.channel],
                    args=[self.token, topic, message],
                )
        except self._errors as exc:
            # Once per outage: the feed goes on ticking until the campaign notices that
            # Redis is gone (within a second), and a line per tick would bury the rest.
            if not self._publish_failing:
                log.warning("could not publish %s to redis: %s", topic, exc)
            self._publish_failing = True
        else:
            self._publish_failing = False

    # --- receiving (every process) ------------------------------------------------------

    def _listen(self) -> None:
        """Hand on what the channel carries; on any failure, reconnect with backoff."""
        backoff = 0.5
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                # Subscribed first, then read the latest: nothing can fall in between (a
                # message in both places arrives twice and the second copy is ignored).
                for raw in self.redis.hvals(self.latest_key):
                    self._deliver(raw)
                if not self.connected:
                    log.info(
                        "redis connected: receiving the market from %s", self.channel
                    )
                self.connected, backoff = True, 0.5
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._deliver(message["data"])
            except (ValueError, KeyError, TypeError):
                # A message we cannot read must not stop the market for this process.
                log.exception(
                    "redis: unreadable message on %s; resubscribing", self.channel
                )
                gevent.sleep(backoff)
            except self._errors as exc:
                if self.connected:
                    log.warning(
                        "redis connection lost: %s; streams stay open, data is stale",
                        exc,
                    )
                    log.info("redis: reconnecting in %.1fs", backoff)
                else:
                    # Never connected (or still not): say why, at most every 8 s, or a
                    # wrong URL or a refused certificate would look like nothing at all.
                    log.warning(
                        logfmt.event(
                            "redis.unavailable", error=str(exc), retry_s=backoff
                        )
                    )
                self.connected = False
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 8.0)
            finally:
                pubsub.close()

    def _deliver(self, raw: bytes | str) -> None:
        message = json.loads(raw)
        topic, seq = message["topic"], message["seq"]
        if topic != BROADCAST:
            if seq <= self._seen.get(topic, 0):
                return  # already handed on (or something newer)
            self._seen[topic] = seq
        quote = (
            Quote.from_dict(message["quote"]) if message["quote"] is not None else None
        )
        self.receive(topic, seq, message["payload"].encode("utf-8"), quote)

    def status(self) -> dict[str, object]:
        return {"kind": self.kind, "leader": self.leader, "connected": self.connected}
