"""Entry point: ``app`` for gunicorn (see Procfile), or ``python app.py`` for a local run.

Run directly, it serves with gevent's WSGI server on ``$PORT`` (default 5000). gevent must
patch the standard library before anything else is imported, or one blocking call would
freeze every stream; under gunicorn the gevent worker does that patching itself.
"""

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import logging

from ticker import create_app, get_service

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

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    service = get_service(app)
    server = WSGIServer(("0.0.0.0", service.settings.port), app, handler_class=Handler)

    def shutdown() -> None:
        service.stop()  # ends every stream at once, so stopping the server does not wait
        server.stop(timeout=5)

    gevent.signal_handler(signal.SIGTERM, shutdown)
    gevent.signal_handler(signal.SIGINT, shutdown)
    service.start()
    logging.getLogger("ticker").info(
        "serving on http://0.0.0.0:%d", service.settings.port
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
