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
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

import pytest
from support import ROOT, nginx_conf

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


class Proxy:
    """A foreground nginx in ``prefix`` serving ``site`` (a site file, included inside
    ``http {}`` as Debian's nginx.conf does), listening on ``ports``."""

    def __init__(self, prefix: Path, site: str, ports: list[int]) -> None:
        self.prefix = prefix
        self.site = site
        self.ports = ports
        self.error_log = prefix / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Self:
        p = self.prefix
        (p / "temp").mkdir(exist_ok=True)  # nginx makes only the last level
        (p / "ticker.conf").write_text(self.site)
        conf = p / "nginx.conf"
        # As in Debian's stock /etc/nginx/nginx.conf: sendfile, tcp_nopush, gzip on.
        conf.write_text(
            nginx_conf(
                p,
                f"    sendfile on;\n    tcp_nopush on;\n    gzip on;\n"
                f"    include {p}/ticker.conf;",
            )
        )
        command = [NGINX, "-p", f"{p}/", "-c", str(conf), "-e", str(self.error_log)]
        tested = subprocess.run(
            [*command, "-t"], check=False, capture_output=True, text=True
        )
        assert tested.returncode == 0, f"nginx refuses the config:\n{tested.stderr}"
        with (p / "output.log").open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not all(_accepts(port) for port in self.ports):
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"nginx did not listen in {timeout}s:\n{self.log()}"
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: nginx's fast shutdown, open streams and all
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        parts = [self.prefix / "output.log", self.error_log]
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in parts if p.exists()
        )


@dataclass
class Site:
    """An address the browser opens (``base``, as ``open_page`` wants a server to have),
    and the plain-HTTP port beside it, if any."""

    base: str
    plain_port: int | None = None


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


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
