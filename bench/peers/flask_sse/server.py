"""flask-sse + Redis, the way its documentation sets it up: the ``sse`` blueprint serves the
stream, and the app publishes with ``sse.publish(data, type=...)``. Every viewer's stream is its
own Redis subscription (flask-sse's design); Redis fans each event out to all of them.

The feed is a greenlet in the gunicorn worker (see gunicorn.conf.py) that publishes each tick
of the ticker-10 workload as an event named after its symbol, with the row as its data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import gevent
from flask import Flask
from flask_sse import sse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workload import Market, schedule

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
app.register_blueprint(sse, url_prefix="/stream")


def feed() -> None:
    market = Market()
    with app.app_context():
        for wait, symbol in schedule():
            gevent.sleep(wait)
            seq, row = market.tick(symbol)
            sse.publish(row, type=symbol, id=seq)
