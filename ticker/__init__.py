"""The live stock ticker: a Flask app streaming a simulated market over Server-Sent Events.

How the parts fit (data flows one way; nothing downstream reaches back up)::

    market/ (companies, quotes, the feed's clock)
      -> rendering/ (each tick rendered once into an SSE event)
      -> delivery/ (bus between processes, broker's frames, one Connection per viewer)
      -> web/ (routes) -> browser (htmx's SSE extension swaps the fragments in)

``service.py`` wires the first three together for one process.

``create_app`` builds everything and starts nothing; the server that runs the app calls
``get_service(app).start()`` once the process is ready (see ``gunicorn.conf.py``, ``app.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from flask import Flask

from ticker.config import Settings
from ticker.service import Service, get_service

__all__ = ["Settings", "create_app", "get_service"]

ROOT = Path(__file__).resolve().parent.parent


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def _iso_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


# Delays the stylesheet offers for marking a row stale (see .stale-after-* in ticker.css).
STALE_AFTER_CHOICES_S = (2, 5, 10, 30, 60, 120, 300)


def stale_after_s(ticker_interval: float) -> int:
    """How long a row may go without an update before the page marks it stale.

    The page has no JavaScript, so a CSS animation does it: it restarts whenever the row is
    swapped, and shows the stale marker once it has run this long uninterrupted.
    """
    wanted = 5 * ticker_interval
    return next(
        (s for s in STALE_AFTER_CHOICES_S if s >= wanted), STALE_AFTER_CHOICES_S[-1]
    )


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. ``settings`` defaults to the environment (see ``ticker.config``)."""
    from ticker import web
    from ticker.rendering import charts

    settings = settings or Settings.from_env()
    app = Flask("ticker", root_path=str(ROOT))
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024  # only /broadcast takes a body
    app.json.sort_keys = False
    app.add_template_filter(_clock, "clock")
    app.add_template_filter(_iso_time, "iso_time")
    app.jinja_env.globals.update(
        stale_after_s=stale_after_s(settings.ticker_interval),
        ticker_interval=settings.ticker_interval,
        # The per-symbol view's streams end this often (see ?max_s= in views.py).
        per_symbol_max_s=10,
        sparkline=charts.sparkline,
        chart=charts.chart,
        position=charts.position,
    )
    service = Service(app, settings)
    app.extensions["ticker"] = service
    web.register(app, service)
    return app
