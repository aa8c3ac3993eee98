"""What an operator sees of a real server: /metrics moving as viewers come and go, and one
``key=value`` log line for every stream closed or refused and every feed restart.

The server is the Procfile's gunicorn on a loopback port; /metrics is read with
prometheus_client's own parser, and the log file is parsed by the rules ``ticker/logfmt.py``
writes it by. That updates conflated for a stalled viewer are counted is proven where stalled
viewers are made already (``tests/test_reliability.py``); that every figure is on /metrics
with its type and help, in ``tests/test_server.py``. Every other figure and event of the
README's tables has its own test here: the bus and leader gauges also with a Redis that
cannot be reached, the tick age on a slow feed, published events on a feed that never ticks.
"""

from __future__ import annotations

import json
import time

import pytest
from support import (
    Event,
    Server,
    SSEClient,
    events,
    free_port,
    log_size,
    logged,
    wait_for_events,
    wait_for_metrics,
)

OPEN = 'ticker_open_streams{route="%s"}'


def counted(read: list[Event]) -> list[Event]:
    """The events of ``read`` that /metrics counts: those with data, but no heartbeats."""
    return [e for e in read if e.data and e.event != "heartbeat"]


def no_streams(samples: dict[str, float]) -> bool:
    return samples[OPEN % "symbol"] == samples[OPEN % "multi"] == 0


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory):
    """The Procfile's server, with caps small enough for a test to reach."""
    log_path = tmp_path_factory.mktemp("ops") / "gunicorn.log"
    server = Server.procfile(
        log_path, env={"MAX_STREAMS": "4", "MAX_STREAMS_PER_CLIENT": "2"}
    ).start()
    yield server
    server.stop()


@pytest.fixture
def quiet(ops_server) -> Server:
    """The module's server once the previous test's streams are all gone."""
    wait_for_metrics(ops_server, no_streams, "no open streams")
    return ops_server


def a_symbol(server: Server) -> str:
    return server.get_json("/api/quotes")["quotes"][0]["symbol"]


def test_open_streams_rise_while_a_stream_is_open_and_fall_when_it_closes(quiet):
    one = SSEClient(quiet.base, f"/stream/{a_symbol(quiet)}")
    samples = quiet.metrics()
    assert (samples[OPEN % "symbol"], samples[OPEN % "multi"]) == (1, 0)
    many = SSEClient(quiet.base, "/stream")
    samples = quiet.metrics()
    assert (samples[OPEN % "symbol"], samples[OPEN % "multi"]) == (1, 1)
    one.close()
    wait_for_metrics(
        quiet,
        lambda s: (s[OPEN % "symbol"], s[OPEN % "multi"]) == (0, 1),
        "the closed stream to be counted out",
    )
    many.close()
    wait_for_metrics(quiet, no_streams, "both streams to be counted out")


def test_events_and_bytes_sent_grow_by_what_a_viewer_reads_and_stay_after_it_leaves(
    quiet,
):
    before = quiet.metrics()
    with SSEClient(quiet.base, "/stream") as client:
        read = counted(client.events_until(lambda ev: len(counted(ev)) >= 40))
        during = quiet.metrics()
    events = during["ticker_events_sent_total"] - before["ticker_events_sent_total"]
    sent = during["ticker_bytes_sent_total"] - before["ticker_bytes_sent_total"]
    assert events >= len(read)
    # The data alone, without the field names and line ends around it, is a lower bound.
    assert sent >= sum(len(e.data.encode()) for e in read) > 0
    after = wait_for_metrics(quiet, no_streams, "the stream to be counted out")
    # A closed stream's share stays counted: a counter never goes down.
    assert after["ticker_events_sent_total"] >= during["ticker_events_sent_total"]
    assert after["ticker_bytes_sent_total"] >= during["ticker_bytes_sent_total"]


def test_ticks_grow_while_the_feed_runs(quiet):
    start = quiet.metrics()["ticker_ticks_total"]
    wait_for_metrics(quiet, lambda s: s["ticker_ticks_total"] >= start + 20, "20 ticks")


def test_broadcasts_count_only_the_authorized_ones(quiet):
    body = json.dumps({"message": "Counting"}).encode()
    headers = {"Content-Type": "application/json"}
    start = quiet.metrics()["ticker_broadcasts_total"]
    assert quiet.request("/broadcast", "POST", body, headers)[0] == 401
    assert quiet.metrics()["ticker_broadcasts_total"] == start
    headers["Authorization"] = "Bearer test-admin-token"
    assert quiet.request("/broadcast", "POST", body, headers)[0] == 202
    assert quiet.metrics()["ticker_broadcasts_total"] == start + 1


def test_a_stream_logs_one_line_when_it_ends_with_how_long_it_lasted(quiet):
    since = log_size(quiet)
    symbol = a_symbol(quiet)
    opened = time.monotonic()
    with SSEClient(quiet.base, f"/stream/{symbol}") as client:
        read = client.events_until(lambda ev: time.monotonic() - opened > 0.5)
    held = time.monotonic() - opened
    (close,) = wait_for_events(quiet, since, "stream.close")
    assert events(quiet, since, "stream.open") == [], "nothing is logged at connect"
    fields = {k: close[k] for k in ("client", "route", "symbols", "open", "level")}
    assert fields == {
        "client": "127.0.0.1",
        "route": "symbol",
        "symbols": "1",
        "open": "0",
        "level": "INFO",
    }
    assert close["logger"] == "ticker.delivery.connection"
    # The stream's real length in seconds: at least what was read, and not minutes (a
    # unit slip) or the noticing of the close much later; a busy machine adds seconds.
    assert 0.4 <= float(close["duration_s"]) <= held + 5
    assert int(close["events"]) >= len(counted(read))
    assert int(close["bytes"]) > 0


def test_refused_streams_log_which_cap_was_hit(quiet):
    since = log_size(quiet)
    first, second, third = (
        {"X-Forwarded-For": address}
        for address in ("203.0.113.7", "198.51.100.9", "192.0.2.44")
    )
    held = [SSEClient(quiet.base, "/stream", first) for _ in range(2)]
    try:
        with SSEClient(quiet.base, "/stream", first) as over_client_cap:
            assert over_client_cap.status == 429
        held += [SSEClient(quiet.base, "/stream", second) for _ in range(2)]
        with SSEClient(quiet.base, "/stream", third) as over_server_cap:
            assert over_server_cap.status == 503
    finally:
        for client in held:
            client.close()
    refused = wait_for_events(quiet, since, "stream.refused", count=2)
    assert [(r["reason"], r["status"], r["client"], r["limit"]) for r in refused] == [
        ("client_cap", "429", "203.0.113.7", "2"),
        ("server_cap", "503", "192.0.2.44", "4"),
    ]
    assert {(r["level"], r["route"]) for r in refused} == {("WARNING", "multi")}


def test_a_feed_fault_counts_a_restart_and_logs_it_with_its_traceback(tmp_path):
    server = Server(
        ["gunicorn", "--pythonpath", "tests", "faulty_app:app"],
        tmp_path / "faulty.log",
        env={"FAULT_AT_TICK": "150"},  # about 2.5 s in: after the first look
    ).start()
    try:
        assert server.metrics()["ticker_feed_restarts_total"] == 0
        wait_for_metrics(
            server, lambda s: s["ticker_feed_restarts_total"] == 1, "a restart"
        )
        (restart,) = wait_for_events(server, 0, "feed.restart")
    finally:
        server.stop()
    assert restart["level"] == "ERROR" and restart["restarts"] == "1"
    assert restart["error"] == "RuntimeError: injected fault"
    # The traceback is in the same record, on the same line, and reads back whole.
    trace = restart["traceback"].splitlines()
    assert trace[0] == "Traceback (most recent call last):"
    assert any("faulty_app.py" in line for line in trace)
    assert trace[-1] == "RuntimeError: injected fault"


def test_every_log_line_is_one_record_that_reads_back_what_clients_sent(server):
    """Both servers (gunicorn and ``python app.py``): text a client controls is quoted
    where it belongs and cannot start a line of its own."""
    since = log_size(server)
    forged = "/stream/AB%0D%0A2026-01-01T00:00:00.000Z%20INFO%20[1]%20x%20event=forged"
    agent = 'curl/8 "quoted" and \\ back\\'
    assert server.request(forged, headers={"User-Agent": agent})[0] == 400
    message = 'Halt "now" event=stream.open \\ ok'
    body = json.dumps({"message": message}).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer test-admin-token",
    }
    assert server.request("/broadcast", "POST", body, headers)[0] == 202
    with SSEClient(server.base, "/stream") as client:
        client.next()
    wait_for_events(server, since, "stream.close")
    every = logged(server)  # fails on any line that is not a whole record
    assert not [r for r in every if r.get("event") == "forged"]
    (bad,) = [r for r in events(server, since, "http.request") if r["status"] == "400"]
    assert bad["request"] == f"GET {forged} HTTP/1.1" and bad["agent"] == agent
    (broadcast,) = events(server, since, "broadcast")
    assert broadcast["message"] == message


def test_a_stream_logs_one_line_and_a_page_one(server):
    """A stream's stream.close says all an access line would (client, route, duration,
    bytes), so the access log leaves streams out, and nothing is logged as one opens: a
    herd of 10,000 viewers reconnecting after a deploy writes no line as it arrives."""
    since = log_size(server)
    with SSEClient(server.base, "/stream") as client:
        client.next()
    assert server.request("/healthz")[0] == 200
    wait_for_events(server, since, "stream.close")
    wait_for_events(server, since, "http.request")
    requests = [r["request"] for r in events(server, since, "http.request")]
    assert requests == ["GET /healthz HTTP/1.1"], requests
    assert len(events(server, since, "stream.close")) == 1
    assert events(server, since, "stream.open") == []


# --- Each remaining figure of the README's metrics table, and the shutdown line ----------

QUIET = {"TICKER_INTERVAL": "1e9", "TICKER_NEWS_S": "0"}  # no ticks, no news


@pytest.fixture(scope="module")
def tickless(tmp_path_factory):
    """A server whose feed never ticks: only a broadcast publishes anything."""
    log_path = tmp_path_factory.mktemp("ops") / "tickless.log"
    with Server.procfile(log_path, env=QUIET).start() as server:
        yield server


@pytest.fixture(scope="module")
def slow_feed(tmp_path_factory):
    """One symbol ticking every 1.5 s on average (0.75-2.25 s): gaps long enough to see."""
    log_path = tmp_path_factory.mktemp("ops") / "slow.log"
    env = {"TICKER_SYMBOLS": "1", "TICKER_INTERVAL": "1.5", "TICKER_NEWS_S": "0"}
    with Server.procfile(log_path, env=env).start() as server:
        yield server


def broadcast(server: Server, message: str) -> None:
    body = json.dumps({"message": message}).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer test-admin-token",
    }
    assert server.request("/broadcast", "POST", body, headers)[0] == 202


def test_events_published_grow_with_every_tick(quiet):
    start = quiet.metrics()
    now = wait_for_metrics(
        quiet,
        lambda s: s["ticker_ticks_total"] >= start["ticker_ticks_total"] + 20,
        "ticks",
    )
    ticks = now["ticker_ticks_total"] - start["ticker_ticks_total"]
    published = (
        now["ticker_events_published_total"] - start["ticker_events_published_total"]
    )
    assert published >= ticks  # each tick is handed over (with its chart, the summary)


def test_events_published_grow_by_one_for_a_broadcast_and_only_then(tickless):
    start = tickless.metrics()["ticker_events_published_total"]
    broadcast(tickless, "One")
    assert tickless.metrics()["ticker_events_published_total"] == start + 1
    broadcast(tickless, "Two")
    samples = tickless.metrics()
    assert samples["ticker_events_published_total"] == start + 2
    assert samples["ticker_ticks_total"] == 0


def test_bus_connected_and_feed_leader_are_1_for_a_process_that_runs_its_own_market(
    quiet,
):
    samples = quiet.metrics()
    health = quiet.get_json("/healthz")
    assert (samples["ticker_bus_connected"], samples["ticker_feed_leader"]) == (1, 1)
    assert health["bus"]["connected"] is True and health["bus"]["leader"] is True


def test_bus_connected_and_feed_leader_are_0_while_redis_cannot_be_reached(tmp_path):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with Server.procfile(tmp_path / "no-redis.log", env={"REDIS_URL": nowhere}).start(
        ready=lambda health: True
    ) as server:
        samples = server.metrics()
        health = server.get_json("/healthz")
    assert (samples["ticker_bus_connected"], samples["ticker_feed_leader"]) == (0, 0)
    assert health["bus"]["connected"] is False and health["bus"]["leader"] is False
    # Not the leader: this process's feed made nothing, so it has no tick to age.
    assert samples["ticker_ticks_total"] == 0
    assert "ticker_last_tick_age_seconds" not in samples


def test_last_tick_age_is_absent_until_the_feed_has_ticked(tickless):
    assert "ticker_last_tick_age_seconds" not in tickless.metrics()


def test_last_tick_age_grows_between_ticks_and_falls_back_at_each_one(slow_feed):
    grew = fell = False
    last = None  # (ticks, age, when scraped)
    deadline = time.monotonic() + 20
    while not (grew and fell):
        assert time.monotonic() < deadline, (grew, fell, last)
        samples = slow_feed.metrics()
        now = time.monotonic()
        if "ticker_last_tick_age_seconds" in samples:
            ticks, age = (
                samples["ticker_ticks_total"],
                samples["ticker_last_tick_age_seconds"],
            )
            assert 0 <= age < 10, age  # a symbol ticks at least every 2.25 s
            if last is not None and ticks == last[0]:
                # No tick in between: it aged by the time between the two scrapes
                # (give or take how long each scrape took to be answered).
                assert age > last[1]
                grew |= abs((age - last[1]) - (now - last[2])) < 0.5
            elif last is not None and ticks > last[0] and age < last[1]:
                fell = True
            last = (ticks, age, now)
        time.sleep(0.1)


def test_process_open_fds_rise_by_one_per_open_stream_and_fall_back(quiet):
    before = quiet.metrics()["process_open_fds"]
    addresses = ("203.0.113.7", "198.51.100.9", "192.0.2.44")  # under the client cap
    clients = [
        SSEClient(quiet.base, "/stream", {"X-Forwarded-For": a}) for a in addresses
    ]
    try:
        assert [c.status for c in clients] == [200, 200, 200]
        during = wait_for_metrics(
            quiet, lambda s: s["process_open_fds"] >= before + 3, "a descriptor each"
        )
        assert during["process_open_fds"] <= during["process_max_fds"]
    finally:
        for client in clients:
            client.close()
    wait_for_metrics(
        quiet, lambda s: s["process_open_fds"] <= before, "descriptors released"
    )


def test_process_memory_cpu_and_start_time_describe_the_serving_process(quiet):
    first = quiet.metrics()
    assert first["process_resident_memory_bytes"] > 10_000_000  # a Python with Flask
    assert (
        first["process_virtual_memory_bytes"] >= first["process_resident_memory_bytes"]
    )
    started = first["process_start_time_seconds"]
    assert time.time() - 3600 < started <= time.time()
    # The feed keeps the process busy: its CPU time moves on.
    wait_for_metrics(
        quiet,
        lambda s: s["process_cpu_seconds_total"] > first["process_cpu_seconds_total"],
        "CPU time to grow",
    )


@pytest.mark.parametrize("kind", ["procfile", "app_py"])
def test_sigterm_logs_shutdown_with_the_number_of_streams_it_ended(tmp_path, kind):
    server = getattr(Server, kind)(tmp_path / f"{kind}.log").start()
    clients = []
    try:
        clients = [SSEClient(server.base, "/stream") for _ in range(3)]
        for client in clients:
            client.next()
        server.wait_for(lambda h: h["streams"]["total"] == 3, "three open streams")
        since = log_size(server)
    finally:
        server.stop()
        for client in clients:
            client.close()
    (shutdown,) = events(server, since, "shutdown")
    assert (shutdown["streams"], shutdown["level"]) == ("3", "INFO")
    # Each caught-up stream was ended at once, in one write, and is counted there rather
    # than in a stream.close line of its own; none was left to be cut at exit.
    assert shutdown["ended_at_once"] == "3"
    assert events(server, since, "stream.close") == []
    (left,) = events(server, since, "exit")
    assert left["streams_cut"] == "0"
