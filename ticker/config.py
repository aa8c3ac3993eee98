"""Settings read from the environment, in one place.

Every knob the app has is an environment variable with a default that runs out of the box
(twelve-factor style, which is what a PaaS expects). Nothing else in the package reads
``os.environ``; tests pass their own values to :func:`ticker.create_app` instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

# Headlines per tick interval at most (see Settings.__post_init__).
NEWS_PER_TICK = 2


class ConfigError(ValueError):
    """A setting has a value the app cannot run with."""


@dataclass(frozen=True)
class Settings:
    """The app's settings; field names match the environment variables, lower-cased."""

    port: int = 5000
    ticker_seed: int = 2026
    ticker_symbols: int = 12
    ticker_interval: float = 1.0
    # Average seconds between two made-up headlines in the news strip (0: no news).
    ticker_news_s: float = 20.0
    heartbeat_s: float = 15.0
    max_streams: int = 10_000
    redis_url: str = ""
    # 0: accept a rediss:// (TLS) server's certificate without verifying it. Heroku's Redis
    # add-on serves a self-signed one; only turn this off for a Redis you reach that way.
    redis_tls_verify: int = 1
    admin_token: str = ""
    web_concurrency: int = 1
    # Flood protection: open streams one client address may hold (0: no cap). Behind a
    # proxy every viewer shares the proxy's address, so the address is taken from
    # X-Forwarded-For, but only when the peer is listed in FORWARDED_ALLOW_IPS (the same
    # variable, and default, gunicorn uses for X-Forwarded-Proto; "*" behind a PaaS router).
    max_streams_per_client: int = 100
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # A viewer whose socket accepts nothing for this long is dropped (its write is stuck).
    write_timeout_s: float = 30.0
    # Ticks are gathered for this long and fanned out together, one write per viewer per
    # frame. Longer frames cost less CPU per viewer and add up to that much latency.
    frame_ms: int = 100
    # 1: a stream is sent gzip-compressed to a client whose Accept-Encoding allows it
    # (compressed once per audience, not once per viewer); 0: always plain.
    compress_streams: int = 1
    # How long a browser waits before reconnecting (SSE ``retry:``), in milliseconds. One
    # second keeps a redeploy short for viewers.
    retry_ms: int = 1000

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "ticker_symbols": 1 <= self.ticker_symbols <= 500,
            # Ticks of one symbol must be at least a millisecond apart: a tick's sequence
            # number is its time (ticker/market/clock.py).
            "ticker_interval": self.ticker_interval >= 0.002,
            "ticker_news_s": self.ticker_news_s >= 0,
            "heartbeat_s": self.heartbeat_s > 0,
            "max_streams": self.max_streams >= 1,
            "web_concurrency": self.web_concurrency >= 1,
            "redis_tls_verify": self.redis_tls_verify in (0, 1),
            "max_streams_per_client": self.max_streams_per_client >= 0,
            "write_timeout_s": self.write_timeout_s > 0,
            "frame_ms": 0 <= self.frame_ms <= 5000,
            "compress_streams": self.compress_streams in (0, 1),
            "retry_ms": self.retry_ms >= 0,
        }
        bad = [name.upper() for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"out of range: {', '.join(bad)}")
        # A process that starts replays the trading day so far (86,400 ticks of each
        # symbol), headlines included: news far more frequent than ticks would make that
        # replay take minutes or never end, so it is refused up front.
        if (
            self.ticker_news_s
            and self.ticker_interval / self.ticker_news_s > NEWS_PER_TICK
        ):
            raise ConfigError(
                f"TICKER_NEWS_S={self.ticker_news_s:g} is too frequent for "
                f"TICKER_INTERVAL={self.ticker_interval:g}: at most {NEWS_PER_TICK} "
                "headlines per tick interval; raise it, or set TICKER_NEWS_S=0 for no news"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> Settings:
        """Build settings from ``environ`` (default: ``os.environ``), then apply ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = environ.get(field.name.upper())
            if raw is None or raw.strip() == "":
                continue
            kind = type(field.default)
            try:
                values[field.name] = kind(raw.strip()) if kind is not str else raw
            except ValueError:
                raise ConfigError(
                    f"{field.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
