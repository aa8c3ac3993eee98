"""What operators and programs ask for: health, metrics, the JSON snapshot, and broadcast."""

from __future__ import annotations

import hmac
import os
import time

from flask import Blueprint, Response, abort, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ticker.web import validation

bp = Blueprint("ops", __name__)


@bp.get("/api/quotes")
def api_quotes() -> Response:
    """The current quote of every symbol, as JSON."""
    service = validation.service()
    return jsonify(
        seq=service.broker.last_seq,
        quotes=[service.quotes[s].as_dict() for s in service.symbols],
    )


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness plus what an operator wants at a glance: is the market moving (here, or
    through Redis), is the bus connected, who is watching."""
    service = validation.service()
    feed, broker, bus = service.feed, service.broker, service.bus.status()
    # Quiet since the last quote arrived, or since start if none has yet.
    quiet = time.time() - (service.last_quote_at or service.started_at)
    fresh = quiet < max(5.0, 5 * service.settings.ticker_interval)
    return jsonify(
        status="ok" if fresh and bus["connected"] else "degraded",
        pid=os.getpid(),
        process=service.process_id,
        bus=bus,
        feed={
            "running": feed.running,
            "ticks": feed.ticks,
            "restarts": feed.restarts,
            "last_quote_age_s": round(quiet, 3),
            "symbols": len(service.symbols),
        },
        streams={
            "total": broker.open_streams,
            "by_route": dict(broker.open_by_route),
            "clients": len(broker.open_by_client),
            "pending_events": broker.pending_events(),
        },
    )


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format, read from the live counters at each scrape."""
    registry = current_app.extensions["ticker.metrics"]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.post("/broadcast")
def broadcast() -> tuple[Response, int]:
    """Admin message to every viewer. Body: JSON ``{"message": ...}`` or a form field."""
    service = validation.service()
    token = service.settings.admin_token
    if not token:
        abort(403, "Broadcast is disabled: the server has no ADMIN_TOKEN set.")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        abort(401, "A valid 'Authorization: Bearer <ADMIN_TOKEN>' header is required.")
    streams = service.broadcast(validation.broadcast_message())
    return jsonify(sent=True, streams=streams), 202
