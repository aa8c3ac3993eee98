"""The app on a server that does not expose the connection's socket: every stream takes the
plain WSGI path (``Connection._yield_batches`` in ``ticker/delivery/connection.py``), as it does for ``HEAD`` or TLS.

Run as ``python tests/plain_app.py`` with ``PORT`` set: gevent's own WSGI server, without
the ``ticker.socket`` environ key that ``app.py``'s handler adds. Used by
tests/test_heartbeat.py to time heartbeats on that path.
"""

from gevent import monkey

monkey.patch_all()

import logging.config  # after patching, like app.py
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent
from gevent.pywsgi import WSGIServer

from ticker import create_app, get_service, logfmt
from ticker.delivery.connection import SOCKET_KEYS

app = create_app()


def socketless(environ, start_response):
    """The app, once it is sure it has no socket to write to directly."""
    if any(environ.get(key) is not None for key in SOCKET_KEYS):
        raise RuntimeError("plain_app must not expose the socket")
    return app(environ, start_response)


def main() -> None:
    logging.config.dictConfig(logfmt.LOGGING)
    service = get_service(app)
    server = WSGIServer(
        ("127.0.0.1", service.settings.port),
        socketless,
        log=logging.getLogger("pywsgi.access"),
        error_log=logging.getLogger("pywsgi.error"),
    )

    def shutdown() -> None:
        service.stop()
        server.stop(timeout=5)

    gevent.signal_handler(signal.SIGTERM, shutdown)
    service.start()
    server.serve_forever()


if __name__ == "__main__":
    main()
