"""Workshop exercise 5: see the six-connection limit for yourself, then lift it with HTTP/2.

Run it with ``pytest tests -m exercise_5``. Headless Chromium opens the per-symbol view
(``/?streams=per-symbol``: every row has its own EventSource to ``/stream/<SYMBOL>``):

- straight from gunicorn, over HTTP/1.1, only six rows update: the browser's six
  connections per site are all held by streams (this part passes before you start: it is
  the thing to see). The view ends each stream every 10 s so that other requests get
  through now and then; the check looks well inside that;
- through nginx serving the learner's ``docs/workshop/nginx-h2.conf`` over TLS and HTTP/2,
  every row updates, because all the streams share one connection.

The check runs that file as it is (comments left out), with three swaps: ``127.0.0.1:5000``
(the app) becomes the test app's address, ``8443`` in its ``listen`` line a free port, and
a ``listen [::]`` line is dropped. It puts a self-signed ``ticker.crt`` and ``ticker.key``
(made with openssl) next to the file, and wraps it in an ``http {}`` block, as Debian's
nginx.conf does.

Needs Chromium and playwright (the session's ``browser``, as for the browser tests), nginx
and openssl; without them this skips, except on CI (``CI=true``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import ROOT, Server, free_port, nginx_conf
from workshop_support import require

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.exercise_5

SITE = ROOT / "docs" / "workshop" / "nginx-h2.conf"
PER_SYMBOL = "/?streams=per-symbol"
NGINX = os.environ.get("TICKER_NGINX", "/usr/sbin/nginx")
ROWS = 12
UPDATES = 3  # each live row must show this many new ticks (one every ~0.2 s)
WAIT_S = 15.0
SEQS_JS = """() => Object.fromEntries([...document.querySelectorAll('tr.quote')]
    .map(row => [row.dataset.symbol, row.dataset.seq]))"""


@pytest.fixture(scope="module")
def proxy_parts() -> None:
    """nginx and openssl, besides the session's Chromium (``browser`` in conftest)."""
    missing = [] if os.access(NGINX, os.X_OK) else [f"no nginx at {NGINX}"]
    if not shutil.which("openssl"):
        missing.append("no openssl")
    require(missing, "this check needs `apt-get install nginx openssl`")


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[Server]:
    with Server.procfile(
        tmp_path_factory.mktemp("app") / "procfile.log"
    ).start() as server:
        yield server


def watch_rows(page: Page, enough: int) -> dict[str, int]:
    """How many new ticks each row showed, once ``enough`` rows showed ``UPDATES`` each
    (or after ``WAIT_S``). Rows are read from the page, as a viewer sees them."""
    first = page.evaluate(SEQS_JS)
    assert len(first) == ROWS, f"expected {ROWS} rows on {PER_SYMBOL}, found {first}"
    seen, changes = dict(first), dict.fromkeys(first, 0)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for symbol, seq in page.evaluate(SEQS_JS).items():
            if seq != seen[symbol]:
                seen[symbol], changes[symbol] = seq, changes[symbol] + 1
        if sum(n >= UPDATES for n in changes.values()) >= enough:
            break
        page.wait_for_timeout(50)  # the page's own clock: a poll, not a fixed delay
    return changes


def test_over_http1_only_six_rows_update(browser: Browser, app: Server):
    """The limit itself: six streams get a connection; the other rows stay frozen."""
    context = browser.new_context(base_url=app.base)
    try:
        page = context.new_page()
        assert page.goto(PER_SYMBOL).ok
        changes = watch_rows(page, enough=6)
        live = sorted(s for s, n in changes.items() if n)
        frozen = sorted(s for s, n in changes.items() if not n)
        assert len(live) == 6, f"rows that updated: {changes}"
        assert frozen, "every row updated over HTTP/1.1?"
        # ... because the server holds exactly six streams: the others never left.
        app.wait_for(lambda h: h["streams"]["total"] == 6, "six open streams")
    finally:
        context.close()


def make_certificate(directory: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(directory / "ticker.key")]
        + ["-out", str(directory / "ticker.crt")],
        check=True,
        capture_output=True,
    )


def site_for_test(text: str, app_port: int, port: int) -> str:
    """The learner's site file pointed at the test app and a free port."""
    text = re.sub(r"(?m)(^|\s)#.*$", r"\1", text)  # comments may name ports too
    assert text.count("127.0.0.1:5000") == 1, (
        "docs/workshop/nginx-h2.conf must name the app as 127.0.0.1:5000 exactly once "
        "(in its upstream block); the check swaps it for the test app"
    )
    text = re.sub(r"(?m)^\s*listen\s+\[::\]:8443\b[^;]*;", "", text)
    text, listens = re.subn(
        r"\blisten\s+(?:(?:\*|0\.0\.0\.0|127\.0\.0\.1):)?8443\b",
        f"listen 127.0.0.1:{port}",
        text,
    )
    assert listens == 1, (
        "docs/workshop/nginx-h2.conf needs one `listen 8443 ...;` line (the check swaps "
        f"8443 for a free port); found {listens}"
    )
    return text.replace("127.0.0.1:5000", f"127.0.0.1:{app_port}")


@contextmanager
def nginx(app: Server, tmp_path: Path) -> Iterator[str]:
    """nginx serving the learner's site file; yields its https:// address."""
    port = free_port()
    make_certificate(tmp_path)
    (tmp_path / "temp").mkdir()
    (tmp_path / "ticker.conf").write_text(
        site_for_test(SITE.read_text(), app.port, port)
    )
    (tmp_path / "nginx.conf").write_text(
        nginx_conf(tmp_path, f"    include {tmp_path}/ticker.conf;")
    )
    command = [NGINX, "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")]
    tested = subprocess.run(
        [*command, "-t", "-e", str(tmp_path / "error.log")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, f"nginx refuses the config:\n{tested.stderr}"
    process = subprocess.Popen(
        [*command, "-e", str(tmp_path / "error.log"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not accepts(port):
            assert process.poll() is None, (tmp_path / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.02)
        yield f"https://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_over_http2_through_nginx_every_row_updates(
    browser: Browser, app: Server, tmp_path: Path, proxy_parts: None
):
    assert SITE.exists(), (
        "docs/workshop/nginx-h2.conf does not exist yet: write it (start from "
        "docs/nginx.conf; docs/workshop.md, exercise 5, says what it needs)"
    )
    with nginx(app, tmp_path) as base:
        context = browser.new_context(base_url=base, ignore_https_errors=True)
        try:
            see_every_row_update_over_http2(context.new_page(), app, base)
        finally:
            context.close()


def see_every_row_update_over_http2(page: Page, app: Server, base: str) -> None:
    response = page.goto(PER_SYMBOL)
    assert response.ok, f"{base}{PER_SYMBOL} answered {response.status}"
    protocol = page.evaluate(
        "performance.getEntriesByType('navigation')[0].nextHopProtocol"
    )
    assert protocol == "h2", (
        f"the page came over {protocol!r}, not HTTP/2 ('h2'): turn HTTP/2 on where "
        "nginx listens for TLS"
    )
    changes = watch_rows(page, enough=ROWS)
    stuck = sorted(s for s, n in changes.items() if n < UPDATES)
    assert not stuck, f"rows that did not keep updating: {stuck} ({changes})"
    app.wait_for(lambda h: h["streams"]["total"] == ROWS, f"{ROWS} open streams")
