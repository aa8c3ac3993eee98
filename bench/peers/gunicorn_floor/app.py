"""The least an SSE stream can cost under gunicorn's gevent worker: a WSGI app that answers
every request with the headers and a retry hint, then holds the connection and does nothing.

``bench/connect_cost.py`` measures what a connect costs here (gunicorn's accepting, parsing
and responding, and gevent's greenlet) against what it costs in our app.
"""

from gevent.event import Event

_never = Event()


def app(environ, start_response):
    start_response(
        "200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
    )
    return _held()


def _held():
    yield b"retry: 1000\n\n"
    _never.wait()
