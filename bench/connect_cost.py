"""What one viewer costs the server when it connects, and when the server goes away.

    python3 bench/connect_cost.py [--n 10000] [--rate 5000]

A reconnect storm is N of both at once, so these two numbers bound how fast a worker can
take a herd back (docs/reliability.md). Three runs, each on a fresh server pinned to CPU 0
with ``loadgen`` pinned to CPU 1:

- **ours, connect**: N viewers of ``/stream`` arrive at ``--rate``; the worker's CPU from
  the first to the moment it falls idle, divided by N. The market is made quiet (no ticks,
  no news) so that this is the connects' cost alone, not the fan-out's.
- **ours, going away**: SIGTERM to that worker with the N viewers open; its CPU until it
  has exited, divided by N, and how long exiting took.
- **gunicorn's floor, connect**: the same N connects to ``bench/peers/gunicorn_floor``, a
  WSGI app that answers with the headers and a retry hint and does nothing else, under the
  same gunicorn gevent worker: what no app on this server can go below.

Results: ``bench/results/connect-cost-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import run as bench

QUIET = {"TICKER_INTERVAL": "3600", "TICKER_NEWS_S": "0"}


def cpu_s(pid: int) -> float:
    user, system = bench.cpu_times(pid)
    return user + system


def loadgen(port: int, n: int, rate: int, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        ["taskset", "-c", bench.LOADGEN_CPU, str(bench.BENCH / "loadgen")]
        + ["--port", str(port), "--path", "/stream", "--n", str(n), "--rate", str(rate)]
        + ["--warmup", "1", "--window", str(hold_s), "--grace", "0"]
        + ["--events-per-s", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def until_idle(pid: int, started: float, idle_cpu_s: float = 0.01) -> float:
    """The CPU ``pid`` used from ``started`` (CPU seconds) until a 0.2 s stretch in which
    it used less than ``idle_cpu_s``: the herd has been taken."""
    last = cpu_s(pid)
    while True:
        time.sleep(0.2)
        now = cpu_s(pid)
        if now - last < idle_cpu_s:
            return last - started
        last = now


def connect_cost(
    pid: int, port: int, n: int, rate: int, hold_s: float
) -> tuple[float, subprocess.Popen]:
    """The CPU ``pid`` spends taking ``n`` viewers at ``rate``, and the viewers (held
    open for ``hold_s`` after the ramp)."""
    before = cpu_s(pid)
    viewers = loadgen(port, n, rate, hold_s)
    time.sleep(n / rate)  # the ramp
    return until_idle(pid, before), viewers


def statuses(viewers: subprocess.Popen) -> dict:
    """loadgen's count of responses by status, once its window is over."""
    try:
        out, _ = viewers.communicate(timeout=120)
        return json.loads(out)["connections"]["status"]
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        viewers.kill()
        return {}


def ours(n: int, rate: int) -> dict:
    port = bench.free_port()
    bench.OURS_ENV.update(QUIET)
    server = bench.Server("ours", port, bench.RAW / "connect-cost-ours.log")
    server.start()
    worker = server.measured["worker"]
    try:
        time.sleep(2)
        cpu, viewers = connect_cost(worker, port, n, rate, hold_s=600)
        health = json.loads(bench.http_get(port, "/healthz", timeout=30))
        open_streams = health["streams"]["total"]
        before, signalled = cpu_s(worker), time.monotonic()
        os.kill(worker, signal.SIGTERM)
        going = 0.0
        while Path(f"/proc/{worker}").exists():
            try:
                going = cpu_s(worker) - before
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.01)
        exited_s = time.monotonic() - signalled
        viewers.kill()
    finally:
        server.stop()
    return {
        "connect": {
            "viewers": open_streams,
            "cpu_s": round(cpu, 2),
            "us_per_viewer": round(1e6 * cpu / n),
        },
        "going_away": {
            "viewers": open_streams,
            "cpu_s": round(going, 2),
            "us_per_viewer": round(1e6 * going / open_streams),
            "exited_after_s": round(exited_s, 2),
        },
    }


def floor(n: int, rate: int) -> dict:
    port = bench.free_port()
    log = open(bench.RAW / "connect-cost-floor.log", "ab")  # noqa: SIM115
    master = subprocess.Popen(
        ["taskset", "-c", bench.SERVER_CPU, str(bench.venv("app") / "bin" / "gunicorn")]
        + ["--worker-class", "gevent", "--worker-connections", str(n + 1000)]
        + ["--backlog", "4096", "--bind", f"127.0.0.1:{port}", "app:app"],
        cwd=bench.PEERS / "gunicorn_floor",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        bench.wait_stream_ready(port, "/stream", master)
        (worker,) = bench.children(master.pid)
        time.sleep(1)
        cpu, viewers = connect_cost(worker, port, n, rate, hold_s=5)
        status = statuses(viewers)
    finally:
        bench.stop(master)
    return {
        "connect": {
            "viewers": status.get("200", 0),
            "cpu_s": round(cpu, 2),
            "us_per_viewer": round(1e6 * cpu / n),
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=5_000, help="connects per second")
    parser.add_argument(
        "--only", choices=("ours", "floor"), help="one run; print it, write nothing"
    )
    args = parser.parse_args()
    bench.ensure_venv("app")
    bench.ensure_loadgen()
    bench.RAW.mkdir(parents=True, exist_ok=True)
    if args.only:
        run = ours if args.only == "ours" else floor
        bench.log(f"{args.only}: {json.dumps(run(args.n, args.rate))}")
        return
    started = datetime.now(UTC)
    result = {
        "command": f"python3 bench/connect_cost.py --n {args.n} --rate {args.rate}",
        "environment": bench.storm_environment(),
        "app_code": bench.app_fingerprint(),
        "n": args.n,
        "rate": args.rate,
        "ours": ours(args.n, args.rate),
        "gunicorn_floor": floor(args.n, args.rate),
    }
    out = bench.RESULTS / f"connect-cost-{started.date()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    bench.log(
        f"connect cost: {json.dumps({k: result[k] for k in ('ours', 'gunicorn_floor')})}"
    )
    bench.log(f"done: {out}")


if __name__ == "__main__":
    main()
