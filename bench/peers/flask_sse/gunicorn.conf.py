"""gunicorn for the flask-sse peer: one gevent worker, as for the app, with room for the viewers
(gunicorn's default of 1000 connections would cap it, which is not how anyone would run it)."""

import os
import resource

bind = f"127.0.0.1:{os.environ.get('PORT', '5000')}"
worker_class = "gevent"
workers = 1
worker_connections = 19000
backlog = 4096
control_socket_disable = True

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


def post_worker_init(worker):
    import gevent
    from server import feed

    gevent.spawn(feed)
