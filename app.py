"""Entry point: ``app`` for gunicorn (see Procfile), or ``python app.py`` for a local run.

Run directly, it serves with gevent's WSGI server on ``$PORT`` (default 5000). gevent must
patch the standard library before anything else is imported, or one blocking call would
freeze every stream; under gunicorn the gevent worker does that patching itself.
"""

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import logging.config

from ticker import create_app, get_service, logfmt
from ticker.delivery.connection import STREAM_LOGGED

app = create_app()


def main() -> None:
    import signal

    import gevent
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class Handler(WSGIHandler):
        def get_environ(self):
            environ = super().get_environ()
            environ["ticker.socket"] = (
                self.socket
            )  # lets streams notice a client leaving
            return environ

        def log_request(self) -> None:
            if not self.environ.get(STREAM_LOGGED):  # see gunicorn.conf.py's access
                super().log_request()

        def format_request(self) -> str:
            # The same access line as gunicorn's (see gunicorn.conf.py), without the
            # timestamp gevent puts in its own: the log line starts with one.
            took = self.time_finish - self.time_start if self.time_finish else 0.0
            client = self.client_address
            return logfmt.event(
                "http.request",
                client=client[0] if isinstance(client, tuple) else client or "-",
                request=self.requestline or "",
                status=abs(self.code) if self.code else "-",  # < 0: the client left
                bytes=self.response_length,
                duration_s=f"{took:.6f}",
                agent=self.headers.get("User-Agent", "-") if self.headers else "-",
            )

    logging.config.dictConfig(logfmt.LOGGING)
    service = get_service(app)
    server = WSGIServer(
        ("0.0.0.0", service.settings.port),
        app,
        handler_class=Handler,
        log=logging.getLogger("pywsgi.access"),
        error_log=logging.getLogger("pywsgi.error"),
    )

    def shutdown() -> None:
        server.close()  # accept no more
        service.leave(5)  # ends every stream at once, and the process

    gevent.signal_handler(signal.SIGTERM, shutdown)
    gevent.signal_handler(signal.SIGINT, shutdown)
    service.start()
    logging.getLogger("ticker").info(
        "serving on http://0.0.0.0:%d", service.settings.port
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
