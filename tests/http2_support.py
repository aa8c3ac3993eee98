"""nginx in front of the app, over TLS and HTTP/2 (``docs/nginx-http2.conf``) or plain
HTTP/1.1 (``docs/nginx.conf``), for the browser tests of ``test_http2.py``.

Each nginx is a throwaway foreground process (``nginx -p <tmp> -c <conf> -g 'daemon off;'``)
on free loopback ports, with its pid file, logs, temp dirs and a self-signed certificate
(made with openssl) under pytest's tmp, as in ``test_proxy.py``. The shipped sample file is
used as it is, with only its listen addresses, the app's address and the certificate paths
swapped.

Needs nginx (``TICKER_NGINX=/path`` selects another binary) and openssl; without them the
tests skip, except on CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from support import ROOT, Nginx

if TYPE_CHECKING:
    from playwright.sync_api import Page

NGINX = os.environ.get("TICKER_NGINX", "/usr/sbin/nginx")
HTTP2_SAMPLE = ROOT / "docs" / "nginx-http2.conf"
HOW_TO_ENABLE = (
    "enable the HTTP/2 tests with `apt-get install nginx openssl` "
    "(TICKER_NGINX=/path selects another nginx binary)"
)


def require_nginx_and_openssl() -> None:
    """Skip (or, on CI, fail) with a clear reason when nginx or openssl is missing."""
    missing = [] if os.access(NGINX, os.X_OK) else [f"no nginx at {NGINX}"]
    if not shutil.which("openssl"):
        missing.append("no openssl on PATH")
    if missing:
        message = f"HTTP/2 tests: {'; '.join(missing)}; {HOW_TO_ENABLE}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, valid for a day: (cert, key)."""
    cert, key = directory / "ticker.crt", directory / "ticker.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def swap(text: str, pattern: str, new: str, what: str) -> str:
    """Replace the one match of ``pattern``; fail clearly if the sample has none or more."""
    text, n = re.subn(pattern, new, text, flags=re.MULTILINE)
    assert n == 1, (
        f"{what}: expected one match of {pattern!r}, found {n} (this test swaps it)"
    )
    return text


def http2_site(
    app_port: int, tls_port: int, plain_port: int, cert: Path, key: Path
) -> str:
    """``docs/nginx-http2.conf`` pointed at the test's app, ports and certificate.

    The TLS listen line keeps its own parameters (``ssl http2``), so whatever the sample
    says about HTTP/2 is what the browser gets."""
    text = HTTP2_SAMPLE.read_text()
    name = HTTP2_SAMPLE.name
    text = swap(text, r"^(\s*)listen 443 ", rf"\g<1>listen 127.0.0.1:{tls_port} ", name)
    text = swap(text, r"^\s*listen \[::\]:443 [^;]*;", "", name)
    text = swap(
        text, r"^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{plain_port};", name
    )
    text = swap(text, r"^\s*listen \[::\]:80;", "", name)
    text = swap(
        text, r"server 127\.0\.0\.1:5000;", f"server 127.0.0.1:{app_port};", name
    )
    text = swap(text, r"ssl_certificate \S+;", f"ssl_certificate {cert};", name)
    return swap(text, r"ssl_certificate_key \S+;", f"ssl_certificate_key {key};", name)


def proxy(prefix: Path, site: str, ports: list[int]) -> Nginx:
    """nginx serving ``site`` on ``ports``, with Debian's stock http settings (sendfile,
    tcp_nopush, gzip on) around it."""
    http = (
        "    sendfile on;\n    tcp_nopush on;\n    gzip on;\n"
        f"    include {prefix}/ticker.conf;"
    )
    return Nginx(NGINX, prefix, http, ports, {"ticker.conf": site})


@dataclass
class Site:
    """An address the browser opens (``base``, as ``open_page`` wants a server to have),
    and the plain-HTTP port beside it, if any."""

    base: str
    plain_port: int | None = None


class StreamResponses:
    """Every ``/stream`` response a page received, as Chromium's DevTools protocol reports
    it: the protocol it came over (``h2``, ``http/1.1``) and its headers (lower-cased names).

    Playwright does not say which protocol a response used; CDP's
    ``Network.responseReceived`` does, for EventSource requests too, as soon as the
    response's headers arrive (a stream's resource timing entry only appears once it ends).
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.seen: list[dict] = []
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.on("Network.responseReceived", self._received)
        self.cdp.send("Network.enable")

    def _received(self, params: dict) -> None:
        response = params["response"]
        if urlsplit(response["url"]).path.startswith("/stream"):
            self.seen.append(
                {
                    "url": response["url"],
                    "type": params.get("type"),
                    "protocol": response.get("protocol"),
                    "headers": {k.lower(): v for k, v in response["headers"].items()},
                }
            )

    def wait_for(self, count: int, timeout_ms: float = 5_000) -> list[dict]:
        """Wait until ``count`` stream responses came in (polling on the page's own
        clock, so Playwright keeps dispatching the CDP events meanwhile)."""
        waited = 0
        while len(self.seen) < count:
            assert waited < timeout_ms, (
                f"{len(self.seen)} stream responses in {timeout_ms} ms: {self.seen}"
            )
            self.page.wait_for_timeout(50)
            waited += 50
        return self.seen
