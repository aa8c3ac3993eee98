"""Shared fixtures: real servers on free loopback ports, started once per module."""

from __future__ import annotations

import pytest
from support import Server


@pytest.fixture(scope="module", params=["procfile", "app_py"])
def server(request, tmp_path_factory):
    """The app as a PaaS runs it (Procfile: gunicorn, gevent worker) and as ``python app.py``."""
    log_path = tmp_path_factory.mktemp("server") / f"{request.param}.log"
    srv = getattr(Server, request.param)(log_path).start()
    yield srv
    srv.stop()
