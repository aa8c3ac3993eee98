"""gunicorn settings for the Procfile's ``web: gunicorn app:app`` (read from the current dir).

Every value comes from the same environment settings as the app (``ticker.config``), and
gunicorn logs through the app's own formatter (``ticker.logfmt``): one line per record.
"""

import resource

from gunicorn.glogging import Logger

from ticker import logfmt
from ticker.config import Settings
from ticker.delivery.connection import STREAM_LOGGED

settings = Settings.from_env()

bind = f"0.0.0.0:{settings.port}"
worker_class = "gevent"
# One gevent worker holds thousands of streams. Several workers need Redis to share one
# market; without it each would run its own feed and show different prices, so then we
# run one worker and say so (see on_starting) rather than start silently wrong.
workers = settings.web_concurrency if settings.redis_url else 1
# gunicorn's default of 1000 silently caps viewers: connection 1001 is accepted and hangs.
# Leave room above MAX_STREAMS for page loads, API calls and refused-with-503 streams.
worker_connections = settings.max_streams + 1000
# gevent patches the standard library in each worker after the fork: no preloading.
preload_app = False
# A PaaS sends SIGTERM and kills ~30 s later; streams end on shutdown, so this is a backstop.
graceful_timeout = 10
timeout = 30
keepalive = 5
# When a worker is replaced, every viewer reconnects within a second or two: the accept
# queue must hold that herd, or the rest wait in SYN retries (1 s, 3 s, ...). The kernel
# caps this at net.core.somaxconn (4096 on current Linux).
backlog = max(2048, settings.max_streams)
# gunicorn 27 opens an admin socket under $HOME by default; a PaaS dyno has no use for it.
control_socket_disable = True
# gunicorn's lines, its access log and the app's share one handler and format (stderr).
logconfig_dict = logfmt.LOGGING
loglevel = "info"


class AccessLogger(Logger):
    """gunicorn's logger, with access lines in the app's ``key=value`` form.

    Built with ``logfmt.event`` rather than ``access_log_format``: a format string would
    repeat the time the line already starts with, and gunicorn escapes quotes in what a
    client sends but not backslashes, so a User-Agent ending in one would break the field.
    """

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled or environ.get(STREAM_LOGGED):
            return  # a stream's own stream.close line says it all
        atoms = self.atoms(resp, req, environ, request_time)
        self.access_log.info(
            logfmt.event(
                "http.request",
                client=atoms["h"],
                request=atoms["r"],
                status=atoms["s"],
                # Only what went through gunicorn: a stream's frames are written to its
                # socket directly, so its event=stream.close line has the true count.
                bytes=atoms["b"],
                duration_s=atoms["L"],
                agent=atoms["a"],
            )
        )


logger_class = AccessLogger

# Each stream is one file descriptor: lift the soft limit to the hard one.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


def on_starting(server):
    if settings.web_concurrency > 1 and not settings.redis_url:
        server.log.warning(
            "WEB_CONCURRENCY=%d but no REDIS_URL: running ONE worker. Separate workers "
            "would each run their own feed and show different prices; set REDIS_URL to "
            "share one market between workers.",
            settings.web_concurrency,
        )


def post_worker_init(worker):
    """Start this worker's feed, and end its streams as soon as it is told to stop."""
    import gevent
    from gevent.server import StreamServer

    from ticker import get_service

    # When a worker is replaced, every viewer is back within a second or two: faster than
    # one worker takes them, so they wait. gevent accepts at most 100 connections per
    # wake-up (max_accept), and then serves the ones it has; a herd of 10,000 overflowed
    # the kernel's accept queue (somaxconn, 4096) and the dropped had to resend their SYN
    # a second later. Accepting more at a time, the herd waits in the worker instead,
    # where nothing is dropped. (With several workers gunicorn sets 1, to share them out.)
    StreamServer.max_accept = 1000
    service = get_service(worker.wsgi)
    service.start()

    def stop_streams_on_shutdown():
        # SIGTERM only clears worker.alive; without this, open streams would keep the
        # worker busy until graceful_timeout and then be cut mid-write. The worker exits
        # from here, before graceful_timeout, once every stream has ended.
        while worker.alive:
            gevent.sleep(0.1)
        service.leave(graceful_timeout / 2)

    gevent.spawn(stop_streams_on_shutdown)
