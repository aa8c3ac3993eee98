"""Shared fixtures: an in-process ``app`` and its test ``client`` (fast; for validation and
routing, never as proof of streaming), real servers on free loopback ports, started once per
module, and one headless Chromium for every browser test of the session (helpers in
``browser_support``).

Also keeps the workshop's checks (``tests/workshop``, docs/workshop.md) out of the normal
run: each one fails until a learner has done its exercise, so it runs only when asked for by
name, as in ``pytest tests -m exercise_3``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    UPDATE_MS,
    Watch,
    require_browser,
    sync_playwright,
)
from support import TEST_ENV, Server

from ticker import Settings, create_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

WORKSHOP_EXERCISES = range(1, 8)


def pytest_configure(config: pytest.Config) -> None:
    for n in WORKSHOP_EXERCISES:
        config.addinivalue_line(
            "markers",
            f"exercise_{n}: the check of workshop exercise {n} (docs/workshop.md); "
            f"runs only with `-m exercise_{n}`",
        )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Deselect every workshop check whose exercise the ``-m`` expression does not name."""
    named = set(re.findall(r"\bexercise_\d+\b", config.getoption("markexpr") or ""))
    keep, drop = [], []
    for item in items:
        marks = {m.name for m in item.iter_markers() if m.name.startswith("exercise_")}
        (drop if marks and not marks & named else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def app():
    """The app with the tests' settings, built in this process and never started: its
    market stands at the opening quotes, and no stream would ever tick."""
    settings = Settings.from_env({k: v for k, v in TEST_ENV.items()})
    return create_app(settings)


@pytest.fixture
def client(app):
    """Flask's test client: requests without a server (as in Flask's tutorial, flaskr)."""
    return app.test_client()


@pytest.fixture(scope="module", params=["procfile", "app_py"])
def server(request, tmp_path_factory):
    """The app as a PaaS runs it (Procfile: gunicorn, gevent worker) and as ``python app.py``."""
    log_path = tmp_path_factory.mktemp("server") / f"{request.param}.log"
    srv = getattr(Server, request.param)(log_path).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the whole session (Debian's; never a downloaded one)."""
    require_browser()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory) -> Iterator[Server]:
    """The app as a PaaS runs it: the Procfile's web: line, gunicorn with the gevent worker."""
    log_path = tmp_path_factory.mktemp("browser") / "procfile.log"
    with Server.procfile(log_path).start() as server:
        yield server


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., tuple[Page, Watch]]]:
    """Open a page in a fresh context on ``server``; every context is closed afterwards.

    Each context is its own cookie jar and its own connection pool, like a separate viewer.
    """
    contexts: list[BrowserContext] = []

    def open_(server: Server, viewport: dict[str, int] = DESKTOP, **options):
        context = browser.new_context(
            base_url=server.base, viewport=viewport, **options
        )
        context.set_default_timeout(UPDATE_MS)
        contexts.append(context)
        watch = Watch(context)
        return context.new_page(), watch

    yield open_
    for context in contexts:
        context.close()
