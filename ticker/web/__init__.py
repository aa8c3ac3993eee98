"""HTTP: the routes, in blueprints by what they serve; last in the flow (market ->
rendering -> delivery -> web).

- ``pages``: the market table, a company's page, the watchlist (``pages.py``);
- ``streams``: the SSE routes (``streams.py``), each handing off to one
  :class:`~ticker.delivery.connection.Connection` per viewer;
- ``ops``: ``/healthz``, ``/metrics``, ``/api/quotes``, ``POST /broadcast`` (``ops.py``).

Input is validated, and errors rendered, in one place (``validation.py``).
"""

from __future__ import annotations

from flask import Flask, Response

from ticker.service import Service
from ticker.web import ops, pages, streams, validation
from ticker.web.clients import parse_trusted
from ticker.web.metrics import make_registry

# 'self' only: htmx is served from our origin and told not to inject its indicator <style>.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def register(app: Flask, service: Service) -> None:
    """Add every route, the error pages, the metrics and the security headers to ``app``."""
    parse_trusted(service.settings.forwarded_allow_ips)  # a bad value fails at start-up
    app.extensions["ticker.metrics"] = make_registry(service)
    for blueprint in (pages.bp, streams.bp, ops.bp):
        app.register_blueprint(blueprint)
    validation.register(app)
    app.after_request(_security_headers)


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response
