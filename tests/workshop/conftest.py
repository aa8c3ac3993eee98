"""Fixtures for the workshop checks (docs/workshop.md): the app as the Procfile runs it.

The checks run only when asked for by name (``pytest tests -m exercise_N``; see
``tests/conftest.py``), so nothing here starts unless a learner runs a check.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import Server


@pytest.fixture(scope="module")
def app_server(tmp_path_factory) -> Iterator[Server]:
    """The app from the Procfile (gunicorn, gevent worker) with the tests' fast market."""
    log_path = tmp_path_factory.mktemp("workshop") / "procfile.log"
    with Server.procfile(log_path).start() as server:
        yield server
