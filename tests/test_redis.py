"""Scale-out on a real Redis: several workers and instances show one market.

Starts Debian's ``redis-server`` on a free loopback port (``apt-get install redis-server``;
without it these tests skip, except under ``CI=true``, where they fail), then gunicorn from
the Procfile with ``REDIS_URL`` set: instance A with two workers, instance B with one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from support import TEST_ENV, Server, SSEClient, free_port, quote_events

from ticker import Settings
from ticker.market.clock import SEQ_PER_MS
from ticker.market.model import Market, make_universe

REDIS_SERVER = os.environ.get("TICKER_REDIS_SERVER", shutil.which("redis-server") or "")
HOW_TO_ENABLE = (
    "install Redis (`apt-get install redis-server`) to run the scale-out tests"
)


class RedisServer:
    """A throwaway redis-server: no persistence, so a restart really loses the data."""

    def __init__(self, workdir) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if not (REDIS_SERVER and os.access(REDIS_SERVER, os.X_OK)):
        message = f"redis-server not found; {HOW_TO_ENABLE}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    """Instance A (two gunicorn workers) and instance B (one), sharing one Redis."""
    logs = tmp_path_factory.mktemp("cluster")
    env = {"REDIS_URL": redis_server.url, "MAX_STREAMS_PER_CLIENT": "0"}
    a = Server.procfile(logs / "a.log", env={**env, "WEB_CONCURRENCY": "2"}).start()
    b = Server.procfile(logs / "b.log", env={**env, "WEB_CONCURRENCY": "1"}).start()
    yield a, b
    a.stop()
    b.stop()


def process_of(client: SSEClient) -> str:
    """The serving process's id, from the comment every stream starts with."""
    while True:
        event = client.next()
        for comment in event.comments:
            if comment.startswith("process "):
                return comment.removeprefix("process ")


def streams_on_every_process(server: Server, path: str, processes: int) -> list:
    """Open streams until ``processes`` different processes serve at least one."""
    seen: dict[str, SSEClient] = {}
    for _ in range(60):
        client = SSEClient(server.base, path)
        process = process_of(client)
        if process in seen:
            client.close()
        else:
            seen[process] = client
        if len(seen) == processes:
            return list(seen.values())
    raise AssertionError(f"only reached processes {sorted(seen)} of {server.base}")


def field(html: str, name: str) -> float:
    return float(re.search(rf'class="num {name}">[^0-9]*([0-9.]+)', html).group(1))


def quotes(events) -> list:
    return [e for e in events if e.id is not None]


def test_every_worker_and_instance_streams_identical_ids_and_prices(cluster):
    a, b = cluster
    symbol = a.get_json("/api/quotes")["quotes"][0]["symbol"]
    path = f"/stream/{symbol}"
    clients = [*streams_on_every_process(a, path, 2), SSEClient(b.base, path)]
    try:
        seen = [{} for _ in clients]
        for record, client in zip(seen, clients, strict=True):
            for event in quotes(client.events_until(lambda ev: len(quotes(ev)) >= 8)):
                record[event.id] = event.data
        common = set.intersection(*(set(r) for r in seen))
        assert len(common) >= 5, [sorted(r) for r in seen]
        for event_id in common:
            assert len({r[event_id] for r in seen}) == 1, f"id {event_id} differs"
    finally:
        for client in clients:
            client.close()
    health = [a.get_json("/healthz"), b.get_json("/healthz")]
    assert all(
        h["bus"] == {**h["bus"], "kind": "redis", "connected": True} for h in health
    )


def test_broadcast_reaches_viewers_on_every_process(cluster):
    a, b = cluster
    clients = [*streams_on_every_process(a, "/stream", 2), SSEClient(b.base, "/stream")]
    try:
        status, _, _ = b.request(
            "/broadcast",
            "POST",
            b'{"message": "Hello from instance B"}',
            {
                "Content-Type": "application/json",
                "Authorization": "Bearer test-admin-token",
            },
        )
        assert status == 202
        for client in clients:
            events = client.events_until(
                lambda ev: any(e.event == "broadcast" for e in ev)
            )
            assert "Hello from instance B" in events[-1].data
    finally:
        for client in clients:
            client.close()


def find_leader(servers: list[Server]) -> dict:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for server in servers:
            health = server.get_json("/healthz")
            if health["bus"]["leader"]:
                return health
    raise AssertionError("no process says it leads the feed")


def test_killing_the_leader_hands_the_feed_over_and_prices_continue(cluster):
    a, b = cluster
    leader = find_leader([a, b])
    survivor = b if any(leader["pid"] == p for p in worker_pids(a)) else a
    symbol = a.get_json("/api/quotes")["quotes"][1]["symbol"]
    with SSEClient(survivor.base, f"/stream/{symbol}") as client:
        before = quotes(client.events_until(lambda ev: len(quotes(ev)) >= 3))
        os.kill(leader["pid"], signal.SIGKILL)
        killed = time.monotonic()
        killed_ms = time.time() * 1000
        # Ticks already in flight may still arrive; wait for one a new leader made (one
        # that ticked after the old leader was gone: a tick is published when it is due).
        after = quotes(
            client.events_until(
                lambda ev: any(stamp(e) > killed_ms for e in quotes(ev)), timeout=20
            )
        )
        handover_s = time.monotonic() - killed
    ids = [int(e.id) for e in before + after]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    assert handover_s < 15, handover_s
    # Continued the market, as any process computes it from the seed and the time (a
    # restart from the opening price would reset high and low to the open) ...
    last, first_new = before[-1].data, after[-1].data
    for row in (last, first_new):
        expected = market_at(stamp_of(row)).quotes[symbol]
        for name in ("last", "high", "low"):
            assert field(row, name) == getattr(expected, name), (name, row)
        assert int(re.search(r'data-seq="(\d+)"', row).group(1)) == expected.seq
    # ... so the day's range only widens.
    assert field(first_new, "high") >= field(last, "high")
    assert field(first_new, "low") <= field(last, "low")
    assert find_leader([a, b])["pid"] != leader["pid"]


def stamp_of(html: str) -> int:
    return int(re.search(r'data-ts="(\d+)"', html).group(1))


def stamp(event) -> int:
    return stamp_of(event.data)


def market_at(at_ms: int) -> Market:
    """The cluster's market (TEST_ENV), made in this process as it stands at ``at_ms``."""
    env = Settings.from_env(TEST_ENV)
    return Market(
        make_universe(env.ticker_seed, env.ticker_symbols),
        env.ticker_seed,
        env.ticker_interval,
        env.ticker_news_s,
        clock=lambda: (at_ms + 0.5) / 1000,
    )


def worker_pids(server: Server) -> set[int]:
    """The gunicorn worker processes of ``server`` (children of its master)."""
    out = subprocess.run(
        ["pgrep", "-P", str(server.process.pid)],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    return {int(p) for p in out.split()}


def test_restarting_redis_mid_stream_keeps_streams_open_and_resumes(
    cluster, redis_server
):
    a, _ = cluster
    with SSEClient(a.base, "/stream") as client:
        before = quotes(client.events_until(lambda ev: len(quotes(ev)) >= 15))
        redis_server.stop()
        stopped_ms = time.time() * 1000
        # While Redis is away the stream stays open on heartbeats, and health says so; the
        # only ticks are those already on their way (ids are tick times, in ms * 1000).
        down = client.events_until(lambda ev: sum(bool(e.comments) for e in ev) >= 3)
        assert all(e.id is None or int(e.id) // SEQ_PER_MS <= stopped_ms for e in down)
        a.wait_for(
            lambda h: h["status"] == "degraded" and not h["bus"]["connected"],
            "health to report the lost bus",
        )
        redis_server.start()
        resumed = quotes(
            client.events_until(lambda ev: len(quotes(ev)) >= 20, timeout=30)
        )
    ids = [int(e.id) for e in before + quotes(down) + resumed]
    assert ids == sorted(ids), "ids never go back, even though Redis lost its counter"
    a.wait_for(lambda h: h["status"] == "ok", "health to recover")
    assert "redis connection lost" in a.log()


def test_several_workers_without_redis_run_one_worker_and_warn(tmp_path):
    server = Server.procfile(
        tmp_path / "solo.log", env={"WEB_CONCURRENCY": "2"}
    ).start()
    try:
        assert len(worker_pids(server)) == 1
    finally:
        server.stop()
    assert "running ONE worker" in server.log()


# --- TLS with a self-signed certificate, as Heroku's Redis add-on serves it ----------------


def test_a_self_signed_tls_redis_is_refused_unless_verification_is_turned_off(
    tmp_path, redis_server
):
    """Heroku's Redis speaks TLS with a self-signed certificate: the client refuses it by
    default (a good default), and ``REDIS_TLS_VERIFY=0`` is the documented way in."""
    openssl = shutil.which("openssl")
    if not openssl:
        message = "openssl is needed to make the test certificate"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    tls = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
        + ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
        + ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        + ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers: list[Server] = []
    try:
        url = f"rediss://127.0.0.1:{port}/0"
        strict = Server.procfile(tmp_path / "strict.log", env={"REDIS_URL": url})
        servers.append(strict)
        strict.start(ready=lambda health: True)  # it serves, but cannot reach Redis
        lax = Server.procfile(
            tmp_path / "lax.log", env={"REDIS_URL": url, "REDIS_TLS_VERIFY": "0"}
        )
        servers.append(lax)
        lax.start()
        health = lax.get_json("/healthz")
        assert health["bus"]["connected"] and health["bus"]["kind"] == "redis"
        with SSEClient(lax.base, "/stream") as client:
            client.events_until(lambda ev: len(quote_events(ev)) >= 20)
        assert "redis.tls_unverified" in lax.log()
        # Meanwhile the verifying one never got through, and says why.
        deadline = time.monotonic() + 10
        while "redis.unavailable" not in strict.log():
            assert time.monotonic() < deadline, strict.log()
            time.sleep(0.05)
        assert "CERTIFICATE_VERIFY_FAILED" in strict.log(), strict.log()
        health = strict.get_json("/healthz")
        assert health["status"] == "degraded" and not health["bus"]["connected"]
    finally:
        for server in servers:
            server.stop()
        tls.terminate()
        tls.wait(10)
