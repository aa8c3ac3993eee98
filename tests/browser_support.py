"""What the browser tests share: launching Debian's Chromium, watching a browser context for
errors, and small helpers to read the market table.

The fixtures built on these (``browser``, ``open_page``, ``gunicorn``) are in ``conftest.py``,
so ``test_browser.py`` and ``test_viewer.py`` share one Chromium per session.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; ``TICKER_CHROMIUM`` points at
another one) and the ``playwright`` package (``pip install -r requirements-dev.txt``). Without
them the browser tests skip, except on CI (``CI=true``), where they fail. Playwright never
downloads a browser here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from support import ROOT

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # missing_browser_parts() reports it: a skip, or a failure on CI
    expect = sync_playwright = None
    PlaywrightTimeoutError = TimeoutError

if TYPE_CHECKING:
    from playwright.sync_api import (
        BrowserContext,
        ConsoleMessage,
        Locator,
        Page,
        Request,
        Response,
        WebError,
    )

CHROMIUM = os.environ.get("TICKER_CHROMIUM", "/usr/bin/chromium")
# Quiet and offline: no updates, no sync, no first-run pages, no GPU, no QUIC probing.
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
    "--disable-quic",
]
HOW_TO_ENABLE = (
    "enable the browser tests with `apt-get install chromium` and "
    "`pip install -r requirements-dev.txt` (TICKER_CHROMIUM=/path selects another Chromium)"
)

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

UPDATE_MS = 5_000  # ticks come every ~0.2 s per symbol (TEST_ENV), so this is generous


def missing_browser_parts() -> list[str]:
    """What keeps the browser tests from running here (empty: nothing)."""
    missing = []
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"no Chromium at {CHROMIUM}")
    if sync_playwright is None:
        missing.append("the playwright package is not installed")
    return missing


def require_browser() -> None:
    """Skip (or, on CI, fail) with a clear reason when the browser tests cannot run."""
    missing = missing_browser_parts()
    if missing:
        message = f"browser tests: {'; '.join(missing)}; {HOW_TO_ENABLE}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


class Watch:
    """Everything one browser context did: its requests and its errors.

    Content Security Policy violations reach Chromium's console as errors, so ``errors``
    holds them too, next to console errors and uncaught exceptions.
    """

    def __init__(self, context: BrowserContext) -> None:
        self.requests: list[Request] = []
        self.errors: list[str] = []
        # Playwright wants Python callables here, not built-ins like list.append.
        context.on("request", lambda request: self.requests.append(request))
        context.on("console", self._console)
        context.on("weberror", self._web_error)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url") or "?"
            self.errors.append(f"console: {message.text} ({where})")

    def _web_error(self, error: WebError) -> None:
        self.errors.append(f"uncaught: {error.error}")

    def paths(self) -> list[str]:
        return [urlsplit(r.url).path for r in self.requests]

    def streams(self) -> list[Request]:
        return [r for r in self.requests if urlsplit(r.url).path.startswith("/stream")]


def rows(page: Page) -> Locator:
    return page.locator("tr.quote")


def symbols_of(page: Page) -> list[str]:
    return [row.get_attribute("data-symbol") for row in rows(page).all()]


def row(page: Page, symbol: str) -> Locator:
    return page.locator(f"#quote-{symbol}")


def wait_for_new_tick(page: Page, symbol: str, seen: str) -> str:
    """Wait until the row of ``symbol`` shows a tick other than ``seen``; return its seq."""
    expect(row(page, symbol)).not_to_have_attribute("data-seq", seen, timeout=UPDATE_MS)
    return row(page, symbol).get_attribute("data-seq")


# The symbols among ``seen`` ({symbol: data-seq}) whose row shows another tick now.
CHANGED_ROWS_JS = """seen => Object.entries(seen)
    .filter(([symbol, seq]) => document.getElementById('quote-' + symbol).dataset.seq !== seq)
    .map(([symbol]) => symbol)"""


def seqs(page: Page) -> dict[str, str]:
    """Every row's ``data-seq`` now, by symbol: what ``CHANGED_ROWS_JS`` compares against."""
    return {
        r.get_attribute("data-symbol"): r.get_attribute("data-seq")
        for r in rows(page).all()
    }


def changed_rows(page: Page, seen: dict[str, str]) -> list[str]:
    return page.evaluate(f"seen => ({CHANGED_ROWS_JS})(seen)", seen)


def wait_for_changed_rows(
    page: Page, seen: dict[str, str], count: int, timeout: float = UPDATE_MS
) -> list[str]:
    """Wait until at least ``count`` rows show a tick other than ``seen``'s; return them.
    Fails saying which rows did update, and how many were wanted."""
    try:
        page.wait_for_function(
            f"seen => ({CHANGED_ROWS_JS})(seen).length >= {count}",
            arg=seen,
            timeout=timeout,
        )
    except PlaywrightTimeoutError:
        changed = changed_rows(page, seen)
        raise AssertionError(
            f"{len(changed)} of {len(seen)} rows updated in {timeout} ms, wanted "
            f"{count}: {sorted(changed)}"
        ) from None
    return changed_rows(page, seen)


def assert_strict_csp(response: Response) -> None:
    policy = response.headers.get("content-security-policy", "")
    directives = {d.strip() for d in policy.split(";")}
    assert "default-src 'self'" in directives, policy
    assert "script-src 'self'" in directives, policy
    assert "style-src 'self'" in directives, policy


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot once no swap is in the middle of settling."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    expect(page.locator(".htmx-settling")).to_have_count(0)
    path = SCREENSHOTS / name
    page.screenshot(path=path, full_page=True)
    return path


def is_page_or_static(path: str) -> bool:
    return path == "/" or path.startswith(("/static/", "/symbols/"))
