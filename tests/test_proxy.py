"""The app behind a real nginx (Debian's ``/usr/sbin/nginx``), configured by ``docs/nginx.conf``.

Each test's nginx is a throwaway foreground process (``nginx -p <tmp> -c <conf> -g 'daemon
off;'``) on free loopback ports, with its pid file, logs and temp dirs under pytest's tmp; it
never reads ``/etc/nginx`` or needs port 80. It serves two things:

- the shipped sample, ``docs/nginx.conf``, with only its listen address, the app's address
  and its ``proxy_read_timeout`` swapped (3 s stands in for the 60 s an idle stream must
  survive, so the tests take seconds, not minutes);
- a bare ``proxy_pass`` with nginx's defaults (HTTP/1.0 to the app, buffering on), once as
  is and once with ``proxy_ignore_headers X-Accel-Buffering``: the second shows what the
  app's header saves viewers from, so "events arrive promptly" is a claim that could fail.

Buffering stays on everywhere (nginx's default): the app's ``X-Accel-Buffering: no`` must be
what gets events through. The app runs from the Procfile (gunicorn, gevent worker).

Needs nginx (``apt-get install nginx``; ``TICKER_NGINX=/path`` selects another binary).
Without it these tests skip, except on CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import http.client
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
import support
from support import ROOT, Event, Server, SSEClient, free_port, is_quote

NGINX = os.environ.get("TICKER_NGINX", "/usr/sbin/nginx")
HOW_TO_ENABLE = (
    "enable the proxy tests with `apt-get install nginx` "
    "(TICKER_NGINX=/path selects another nginx binary)"
)
SAMPLE = ROOT / "docs" / "nginx.conf"

# Stands in for nginx's 60 s proxy_read_timeout (and a PaaS router's idle timeout).
READ_TIMEOUT_S = 3
# Ticks arrive promptly if their median delay (the app's tick to the viewer) is under
# PROMPT_S and nine in ten are under HELD_S. On an idle machine the median is 60-80 ms
# (frames go out every 100 ms); these bounds leave a loaded machine room and still fail a
# proxy that holds ticks until its buffer fills (the contrast's 64 KB: seconds, or all of
# the watch).
PROMPT_S = 0.5
HELD_S = 1.0
# The sharp test: the same stream read from the app directly at the same time, tick by
# tick, so a loaded machine delays both alike. nginx passing events straight through adds
# about a millisecond; with the app's header gone, the bare proxy_pass added a median of
# about 260 ms (its default 4 KB buffers fill on every few ticks of a symbol stream).
PROXY_ADDS_S = 0.1
# How many ticks a promptness check reads (TICKER_INTERVAL=0.2: about 2 s of them), and
# how long it may take to read them on a loaded machine.
PROMPT_TICKS = 10
PROMPT_DEADLINE_S = 10.0
# How long the contrast (nginx told to ignore the header) watches: less than its 64 KB
# buffer takes to fill (its first event came after 5.8 s: bench/results/reliability-*.json),
# so a holding proxy delivers nothing at all.
WATCH_S = 2.0
# The snapshot is the first write: it gets through this soon, or it was held.
SNAPSHOT_S = 2.0
# A market that never ticks in practice: each symbol's first tick falls at a random point
# of its first interval, so the chance of one during a test is about 1 in 10**8.
NO_TICKS = {"TICKER_SYMBOLS": "1", "TICKER_INTERVAL": "1e9", "TICKER_NEWS_S": "0"}


# --- nginx ---------------------------------------------------------------------------


def sample_site(app_port: int, listen_port: int) -> str:
    """``docs/nginx.conf`` pointed at the test's app and port, with the short read timeout."""
    text = SAMPLE.read_text()
    swaps = {
        "listen 80;": f"listen 127.0.0.1:{listen_port};",
        "listen [::]:80;": "",
        "server 127.0.0.1:5000;": f"server 127.0.0.1:{app_port};",
        "proxy_read_timeout 60s;": f"proxy_read_timeout {READ_TIMEOUT_S}s;",
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, (
            f"docs/nginx.conf should contain {old!r} exactly once: this test swaps it"
        )
        text = text.replace(old, new)
    return text


class Nginx(support.Nginx):
    """The sample config on ``port``, and on ``bare_port`` a bare ``proxy_pass`` at
    ``/honoured/`` and ``/ignored/`` (which ignores the app's ``X-Accel-Buffering``)."""

    def __init__(self, binary: str, prefix: Path, app_port: int) -> None:
        self.port, self.bare_port = free_port(), free_port()
        app = f"http://127.0.0.1:{app_port}/"
        http = f"""
    # As in Debian's stock /etc/nginx/nginx.conf.
    sendfile on;
    tcp_nopush on;
    gzip on;

    include {prefix}/ticker.conf;

    server {{
        listen 127.0.0.1:{self.bare_port};
        location /honoured/ {{ proxy_pass {app}; }}
        location /ignored/ {{
            proxy_pass {app};
            proxy_ignore_headers X-Accel-Buffering;
            # Bigger than a symbol stream's chart event (about 5 KB), which would fill
            # the default 4 KB buffer and flush it on every tick by itself.
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 64k;
        }}
    }}"""
        site = {"ticker.conf": sample_site(app_port, self.port)}
        super().__init__(binary, prefix, http, [self.port, self.bare_port], site)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bare_base(self) -> str:
        return f"http://127.0.0.1:{self.bare_port}"


# --- reading a stream against the clock ------------------------------------------------


@dataclass
class Watched:
    """What one stream delivered: events with their arrival times, and how it ended."""

    opened_at: float  # time.time() when the request was sent
    events: list[tuple[float, Event]]  # (time.time() on arrival, event)
    # Seconds from opened_at to the end of the stream; None if it was still open.
    ended_after: float | None

    @property
    def quotes(self) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.events if is_quote(e)]

    @property
    def heartbeats(self) -> list[float]:
        return [t for t, e in self.events if "heartbeat" in e.comments]

    def snapshot_after(self) -> float | None:
        """Seconds from the request to the first quote (the snapshot)."""
        return self.quotes[0][0] - self.opened_at if self.quotes else None

    def tick_delays(self) -> list[float]:
        """For every quote after the snapshot: seconds from the app's tick to its arrival."""
        return [t - tick_time(e) for t, e in self.quotes[1:]]


def tick_time(event: Event) -> float:
    """When the app made this quote (the fragment's ``data-ts``, epoch milliseconds)."""
    return int(re.search(r'data-ts="(\d+)"', event.data).group(1)) / 1000


def watch(
    base: str, path: str, seconds: float, ticks: int | None = None, **headers: str
) -> Watched:
    """Read ``base + path`` for ``seconds`` at most, stamping each event as it arrives;
    with ``ticks``, stop as soon as that many quotes followed the snapshot.

    Every read has a socket timeout of the time left, so this never waits longer; a stream
    that ends earlier (the server or a proxy closed it) stops the watch at once.
    """
    opened_at = time.time()
    deadline = time.monotonic() + seconds
    events: list[tuple[float, Event]] = []
    try:
        client = SSEClient(base, path, headers=headers, timeout=seconds)
    except TimeoutError:  # not even the response headers came through in time
        return Watched(opened_at, events, None)
    with client:
        assert client.status == 200, client.status
        while (left := deadline - time.monotonic()) > 0:
            client.conn.sock.settimeout(left)
            try:
                event = client.next()
            except TimeoutError:
                break
            except (EOFError, http.client.IncompleteRead, ConnectionError):
                return Watched(opened_at, events, time.time() - opened_at)
            events.append((time.time(), event))
            if ticks is not None and sum(is_quote(e) for _, e in events) > ticks:
                break
    return Watched(opened_at, events, None)


def added_by_proxy(proxied: Watched, direct: Watched) -> list[float]:
    """For every tick both streams delivered: how much later it came through the proxy."""
    arrived = {e.id: t for t, e in direct.quotes[1:]}
    return [t - arrived[e.id] for t, e in proxied.quotes[1:] if e.id in arrived]


def watch_beside_the_app(
    app: Server, base: str, path: str, app_path: str, **headers: str
) -> tuple[Watched, Watched]:
    """Read ``base + path`` (through nginx) and ``app_path`` from the app itself at once."""
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(watch, b, p, PROMPT_DEADLINE_S, ticks=PROMPT_TICKS, **headers)
            for b, p in ((base, path), (app.base, app_path))
        ]
        proxied, direct = (r.result() for r in runs)
    return proxied, direct


def percentile(values: list[float], fraction: float) -> float:
    """The value that ``fraction`` of ``values`` do not exceed (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def prompt(delays: list[float]) -> bool:
    """Ticks came, their median delay under PROMPT_S and their p90 under HELD_S."""
    return (
        bool(delays)
        and percentile(delays, 0.5) < PROMPT_S
        and percentile(delays, 0.9) < HELD_S
    )


def ms(seconds: list[float]) -> str:
    return "[" + ", ".join(f"{s * 1000:.0f}" for s in seconds) + "]"


def summary(w: Watched) -> str:
    delays = ", ".join(f"{d * 1000:.0f}" for d in w.tick_delays())
    first = w.snapshot_after()
    return (
        f"snapshot after {'-' if first is None else f'{first * 1000:.0f} ms'}; "
        f"{len(w.tick_delays())} ticks, delays (ms): [{delays}]; "
        f"{len(w.heartbeats)} heartbeats; ended after {w.ended_after}"
    )


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    if not os.access(NGINX, os.X_OK):
        message = f"no nginx at {NGINX}: {HOW_TO_ENABLE}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return NGINX


@pytest.fixture(scope="module")
def app(nginx_binary, tmp_path_factory):
    """The app as the Procfile runs it, ticking every 0.2 s per symbol."""
    srv = Server.procfile(tmp_path_factory.mktemp("app") / "app.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxy(nginx_binary, app, tmp_path_factory):
    nginx = Nginx(nginx_binary, tmp_path_factory.mktemp("nginx"), app.port).start()
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def symbol(app) -> str:
    return app.get_json("/api/quotes")["quotes"][0]["symbol"]


@dataclass
class QuietRun:
    with_heartbeats: Watched
    without_heartbeats: Watched
    with_heartbeats_log: str
    without_heartbeats_log: str


@pytest.fixture(scope="module")
def quiet_run(nginx_binary, tmp_path_factory) -> QuietRun:
    """Two tickless apps, each behind its own sample-config nginx, one with heartbeats every
    0.5 s and one with heartbeats effectively off; both streams watched at the same time for
    3x nginx's read timeout."""
    tmp = tmp_path_factory.mktemp("quiet")
    started: list[Server | Nginx] = []
    try:
        proxies = []
        for name, heartbeat in (("with", "0.5"), ("without", "3600")):
            srv = Server.procfile(
                tmp / f"app-{name}.log", env={**NO_TICKS, "HEARTBEAT_S": heartbeat}
            )
            started.append(srv.start())
            (tmp / name).mkdir()
            proxies.append(Nginx(nginx_binary, tmp / name, srv.port))
            started.append(proxies[-1].start())
        with ThreadPoolExecutor(2) as pool:
            runs = [
                pool.submit(watch, p.base, "/stream", 3 * READ_TIMEOUT_S)
                for p in proxies
            ]
            with_hb, without_hb = (r.result() for r in runs)
        return QuietRun(with_hb, without_hb, proxies[0].log(), proxies[1].log())
    finally:
        for part in reversed(started):
            part.stop()


# --- events arrive promptly --------------------------------------------------------------


@pytest.mark.parametrize("route", ["sample_config", "bare_proxy_pass"])
def test_events_arrive_promptly_through_nginx_with_default_buffering(
    app, proxy, symbol, route
):
    base, path = {
        "sample_config": (proxy.base, f"/stream/{symbol}"),
        "bare_proxy_pass": (proxy.bare_base, f"/honoured/stream/{symbol}"),
    }[route]
    w, direct = watch_beside_the_app(app, base, path, f"/stream/{symbol}")
    added = added_by_proxy(w, direct)
    print(f"\n{route}: {summary(w)}; added by nginx (ms): {ms(added)}")
    assert w.ended_after is None, summary(w)
    first = w.snapshot_after()
    assert first is not None and first < SNAPSHOT_S, summary(w)
    delays = w.tick_delays()
    assert len(delays) >= PROMPT_TICKS, f"too few ticks: {summary(w)}"
    assert prompt(delays), f"ticks were held up: {summary(w)}"
    assert len(added) >= PROMPT_TICKS // 2, (summary(w), summary(direct))
    assert percentile(added, 0.5) < PROXY_ADDS_S, f"nginx held ticks: {ms(added)}"


def test_stream_headers_survive_the_proxy_and_it_is_compressed_once_by_the_app(
    app, proxy, symbol
):
    """The app compresses a stream once per audience; nginx must pass those bytes through
    (its own gzip would keep a compressor per response, and buffer), and they decode."""
    status, headers, _ = _get(proxy.base, "/", **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip", headers
    with SSEClient(
        proxy.base, f"/stream/{symbol}", headers={"Accept-Encoding": "gzip"}
    ) as client:
        assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert client.headers["Cache-Control"] == "no-cache"
        assert client.headers["Content-Encoding"] == "gzip", dict(client.headers)
        assert "Accept-Encoding" in client.headers["Vary"]
        client.events_until(lambda ev: any(e.event == symbol for e in ev), timeout=10)
        assert client.wire_bytes < client.decoded_bytes
    # The same holds with gzip asked for: events still arrive at once.
    path = f"/stream/{symbol}"
    w, direct = watch_beside_the_app(
        app, proxy.base, path, path, **{"Accept-Encoding": "gzip"}
    )
    assert len(w.tick_delays()) >= PROMPT_TICKS, summary(w)
    assert prompt(w.tick_delays()), summary(w)
    added = added_by_proxy(w, direct)
    assert len(added) >= PROMPT_TICKS // 2, (summary(w), summary(direct))
    assert percentile(added, 0.5) < PROXY_ADDS_S, f"nginx held ticks: {ms(added)}"


def test_without_the_apps_header_nginx_would_hold_events_in_its_buffer(proxy, symbol):
    """The contrast that gives the test above its meaning: the same bare ``proxy_pass``,
    told to ignore ``X-Accel-Buffering``, holds events until its buffer fills."""
    w = watch(proxy.bare_base, f"/ignored/stream/{symbol}", WATCH_S)
    print(f"\nheader ignored: {summary(w)}")
    # The verdict the prompt test gives, turned the other way: here it must fail.
    assert not prompt(w.tick_delays()), (
        f"nginx did not buffer, so the prompt test proves nothing: {summary(w)}"
    )
    first = w.snapshot_after()
    assert first is None or first > PROMPT_S, (
        f"even the snapshot should wait for the buffer: {summary(w)}"
    )


def test_the_sample_config_gives_the_app_the_viewers_address_not_a_spoofed_one(
    proxy, app, symbol
):
    """nginx appends the peer to X-Forwarded-For; the app takes the last hop that is not a
    listed proxy: the viewer's. The viewer connects from 127.0.0.2, an address that is not
    in FORWARDED_ALLOW_IPS, as a real viewer's is not (nginx itself is 127.0.0.1)."""
    spoofed = "203.0.113.66"
    before = app.log_path.read_text(errors="replace")
    with SSEClient(
        proxy.base,
        f"/stream/{symbol}",
        headers={"X-Forwarded-For": spoofed},
        source="127.0.0.2",
    ) as client:
        client.events_until(lambda ev: any(e.event == symbol for e in ev), timeout=10)
    # Its stream.close names the viewer (other streams of the app may close meanwhile; had
    # the app taken the proxy's address, no line would name 127.0.0.2).
    deadline = time.monotonic() + 10
    closed: list[str] = []
    while time.monotonic() < deadline:  # logged once the close is seen
        text = app.log_path.read_text(errors="replace")[len(before) :]
        closed = [ln for ln in text.splitlines() if "event=stream.close " in ln]
        if any("client=127.0.0.2 " in line for line in closed):
            break
        time.sleep(0.05)
    assert any("client=127.0.0.2 " in line for line in closed), closed
    assert spoofed not in "\n".join(closed)


# --- heartbeats outlive the proxy's idle timeout -----------------------------------------


def test_a_tickless_stream_stays_open_through_nginx_for_3x_its_read_timeout_on_heartbeats(
    quiet_run,
):
    w = quiet_run.with_heartbeats
    print(f"\nwith heartbeats: {summary(w)}")
    assert w.ended_after is None, f"nginx cut the stream: {summary(w)}"
    assert len(w.quotes) == 1, "only the snapshot: this market must not tick"
    beats = w.heartbeats
    # Every 0.5 s, so about 18 in the watch; half of them is still "regularly".
    assert len(beats) >= 3 * READ_TIMEOUT_S / 0.5 * 0.5, summary(w)
    gaps = [b - a for a, b in pairwise([w.opened_at, *beats])]
    assert percentile(gaps, 0.5) < 1.0, f"heartbeats every 0.5 s, yet gaps {gaps}"
    # The gap that matters is the one nginx acts on: none came near its read timeout.
    assert max(gaps) < READ_TIMEOUT_S, f"a gap of {max(gaps):.2f}s: {gaps}"
    assert "upstream timed out" not in quiet_run.with_heartbeats_log


def test_without_heartbeats_nginx_cuts_a_tickless_stream_at_its_read_timeout(
    quiet_run,
):
    w = quiet_run.without_heartbeats
    print(f"\nwithout heartbeats: {summary(w)}")
    assert len(w.quotes) == 1 and not w.heartbeats, summary(w)
    assert w.ended_after is not None, f"the stream was not cut: {summary(w)}"
    # Cut by the read timeout: not before it, and well before twice it (nginx's timer
    # may fire late on a busy machine, never early).
    assert READ_TIMEOUT_S - 0.2 <= w.ended_after < 2 * READ_TIMEOUT_S, summary(w)
    assert "upstream timed out" in quiet_run.without_heartbeats_log


def _get(base: str, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.headers), resp.read()
    finally:
        conn.close()
