"""What an operator sees of a real server: /metrics moving as viewers come and go, and one
``key=value`` log line for every stream opened, closed or refused and every feed restart.

The server is the Procfile's gunicorn on a loopback port; /metrics is read with
prometheus_client's own parser, and the log file is parsed by the rules ``ticker/logfmt.py``
writes it by. That updates conflated for a stalled viewer are counted is proven where stalled
viewers are made already (``tests/test_reliability.py``); that every figure is on /metrics
with its type and help, in ``tests/test_server.py``.
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


def test_a_stream_logs_one_open_and_one_close_line_with_how_long_it_lasted(quiet):
    since = log_size(quiet)
    symbol = a_symbol(quiet)
    opened = time.monotonic()
    with SSEClient(quiet.base, f"/stream/{symbol}") as client:
        read = client.events_until(lambda ev: time.monotonic() - opened > 0.5)
    held = time.monotonic() - opened
    (close,) = wait_for_events(quiet, since, "stream.close")
    (open_,) = events(quiet, since, "stream.open")
    assert {k: v for k, v in open_.items() if k != "time"} == {
        "event": "stream.open",
        "client": "127.0.0.1",
        "route": "symbol",
        "symbols": "1",
        "open": "1",
        "level": "INFO",
        "logger": "ticker.views",
    }
    assert (close["client"], close["route"], close["open"]) == (
        "127.0.0.1",
        "symbol",
        "0",
    )
    assert 0.4 <= float(close["duration_s"]) <= held + 1
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
