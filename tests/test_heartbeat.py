"""A stream with nothing to say still sends a heartbeat every ``HEARTBEAT_S`` seconds, on
both delivery paths, measured on a direct server (no proxy in between):

- direct: gunicorn (the Procfile) on a ``GET``, where frames go straight to the socket;
- plain: a server that does not expose the socket (``tests/plain_app.py``), where every
  batch is yielded through WSGI (as for ``HEAD`` and TLS).

No ticks (a huge ``TICKER_INTERVAL``) and no news, so after the snapshot only heartbeats
come. Two values of ``HEARTBEAT_S`` prove the setting is honoured, not a constant. What
survives a proxy's idle timeout is in ``tests/test_proxy.py``.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time

import pytest
from support import Server, SSEClient

QUIET = {"TICKER_INTERVAL": "1e9", "TICKER_NEWS_S": "0"}
BEATS = 6


def start(path: str, log_path, heartbeat_s: float) -> Server:
    env = {**QUIET, "HEARTBEAT_S": str(heartbeat_s)}
    if path == "direct":
        return Server.procfile(log_path, env=env).start()
    return Server([sys.executable, "tests/plain_app.py"], log_path, env=env).start()


def heartbeats(
    server: Server, count: int, heartbeat_s: float, headers: dict | None = None
) -> list[float]:
    """Seconds from just before the stream was asked for to each of its first ``count``
    heartbeats."""
    opened = time.monotonic()
    seen: list[float] = []
    with SSEClient(
        server.base, "/stream", headers=headers, timeout=heartbeat_s * 4 + 5
    ) as client:
        assert client.status == 200
        deadline = opened + count * heartbeat_s * 2 + 10
        while len(seen) < count:
            assert time.monotonic() < deadline, f"only {len(seen)} heartbeats"
            if client.next().event == "heartbeat":
                seen.append(time.monotonic() - opened)
    return seen


@pytest.mark.parametrize("heartbeat_s", [0.5, 1.0])
@pytest.mark.parametrize("path", ["direct", "plain"])
def test_a_quiet_stream_gets_a_heartbeat_every_heartbeat_s(tmp_path, path, heartbeat_s):
    with start(path, tmp_path / f"{path}.log", heartbeat_s) as server:
        seen = heartbeats(server, BEATS, heartbeat_s)
        assert "Traceback" not in server.log()
    # The heartbeat is the process's, sent to every stream at once (a gzip viewer's bytes
    # must be exactly its audience's): the first comes within one interval of opening ...
    assert seen[0] < heartbeat_s + 2, seen
    # ... and none early after it: the k-th comes at least k - 1 intervals after the
    # first (50 ms for the clocks of two processes) ...
    early = [(k, t) for k, t in enumerate(seen) if t - seen[0] < k * heartbeat_s - 0.05]
    assert not early, (early, seen)
    # ... and regularly: the typical gap is the interval, whatever one sample did.
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert 0.8 * heartbeat_s <= statistics.median(gaps) <= 1.6 * heartbeat_s, gaps


@pytest.mark.parametrize("path", ["direct", "plain"])
def test_a_compressed_quiet_stream_gets_its_heartbeats_too(tmp_path, path):
    """gzip or not, the heartbeat goes out in the same frames: a compressed stream must
    flush each one, or it would sit in the compressor and a proxy would cut the stream."""
    with start(path, tmp_path / f"{path}.log", 0.5) as server:
        seen = heartbeats(server, BEATS, 0.5, {"Accept-Encoding": "gzip"})
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert 0.4 <= statistics.median(gaps) <= 0.8, gaps
