"""Process lifecycle: importing does no work, the feed starts once, SIGTERM ends streams
at once (under gunicorn and ``python app.py``)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from support import ROOT, Server, SSEClient

from ticker import Settings, create_app, get_service
from ticker.delivery.connection import SPREAD_MS

RETRY_MS = Settings().retry_ms

# gunicorn.conf.py's graceful_timeout: how long gunicorn lets a stopping worker's requests
# run before it kills the worker.
GRACEFUL_TIMEOUT_S = 10


def test_importing_the_app_starts_nothing():
    code = (
        "import gevent, app, ticker;"
        "s = ticker.get_service(app.app);"
        "assert not s.feed.running and s.feed.ticks == 0;"
        "assert len([g for g in __import__('gc').get_objects()"
        " if isinstance(g, gevent.Greenlet)]) == 0"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize("kind", ["procfile", "app_py"])
def test_sigterm_ends_open_streams_at_once_and_the_server_exits_quickly(tmp_path, kind):
    server = getattr(Server, kind)(tmp_path / f"{kind}.log").start()
    try:
        client = SSEClient(server.base, "/stream")
        client.next()
        server.wait_for(
            lambda h: h["streams"]["total"] == 1, "the stream to be counted"
        )
        signalled = time.monotonic()
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            while True:
                client.next()  # heartbeats every 0.5 s until the stream ends
        except EOFError:
            pass
        ended = time.monotonic() - signalled
        assert client.ended_cleanly, "the chunked body must end with its last chunk"
        server.process.wait(15)
        exit_seconds = time.monotonic() - signalled
    finally:
        server.stop()
    # Streams end on shutdown, not when the server gives up waiting for them: a stream
    # that ignored shutdown would last until gunicorn's graceful_timeout (10 s) or
    # app.py's stop timeout (5 s). Ending takes about 0.1 s; 4 s leaves a loaded machine
    # room while a broken app cannot pass ...
    assert ended < 4, f"the stream ended {ended:.1f}s after SIGTERM:\n{server.log()}"
    # ... and their connections close, so the server sits out no keep-alive wait, and a
    # worker is never killed at the end of its graceful_timeout.
    assert exit_seconds < GRACEFUL_TIMEOUT_S, (
        f"took {exit_seconds:.1f}s to exit:\n{server.log()}"
    )
    assert server.process.returncode == 0, server.log()
    assert "Worker graceful timeout" not in server.log()


def test_the_graceful_timeout_the_exit_test_relies_on_is_gunicorns_setting():
    conf = (ROOT / "gunicorn.conf.py").read_text()
    assert f"graceful_timeout = {GRACEFUL_TIMEOUT_S}\n" in conf


def test_one_feed_per_worker_started_when_serving(tmp_path):
    server = Server.procfile(tmp_path / "gunicorn.log").start()
    try:
        assert server.get_json("/healthz")["feed"]["running"]
    finally:
        server.stop()
    assert server.log().count("event=feed.start ") == 1


def test_stream_requests_during_shutdown_get_a_retry_hint_not_a_refusal():
    # A refusal (503) makes the htmx SSE extension back off for seconds; an empty 200
    # stream with a retry hint of about a second brings the browser back, to the next
    # process (spread: see the test below).
    app = create_app(Settings(ticker_interval=0.05))
    get_service(app).stop()
    response = app.test_client().get("/stream")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    hint = re.fullmatch(rb"retry: (\d+)\n\n", response.get_data())
    assert hint and RETRY_MS <= int(hint[1]) < RETRY_MS + SPREAD_MS


def test_a_process_going_away_spreads_its_viewers_return_over_a_window(tmp_path):
    """Every stream ends with a retry hint of its own, between RETRY_MS and RETRY_MS +
    SPREAD_MS: a herd of browsers that would all come back after exactly one second
    comes back spread over the window instead."""
    with Server.procfile(tmp_path / "gunicorn.log").start() as server:
        clients = [SSEClient(server.base, "/stream") for _ in range(20)]
        for client in clients:
            assert client.next().retry == RETRY_MS  # the hint it starts with
        server.wait_for(lambda h: h["streams"]["total"] == 20, "the streams to open")
        os.killpg(server.process.pid, signal.SIGTERM)
        last_hints = []
        for client in clients:
            hints = []
            with contextlib.suppress(EOFError):
                while True:
                    event = client.next()
                    if event.retry is not None:
                        hints.append(event.retry)
            last_hints.append(hints[-1])
            client.close()
    assert all(RETRY_MS <= h < RETRY_MS + SPREAD_MS for h in last_hints), last_hints
    assert len(set(last_hints)) >= 10, f"not spread: {sorted(last_hints)}"
