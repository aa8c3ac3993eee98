"""The figures of docs/reliability.md and the README, measured in one repeatable run.

    .venv/bin/python bench/reliability.py

Run it from the repository root with the dev requirements installed (the tests' venv), on an
otherwise quiet machine; it needs nginx (``/usr/sbin/nginx``) and Chromium
(``/usr/bin/chromium``) like the tests, and takes about two minutes. It starts the app
itself, with the tests' helpers (``tests/support.py``, the nginx of ``tests/test_proxy.py``,
the latency reader of ``tests/test_reliability.py``), on free loopback ports, and writes
``bench/results/reliability-<date>-at-<commit>.json`` (``--out`` for another path).

What it measures, each as the matching test sets it up (``TEST_ENV``, the Procfile's
gunicorn), but many times or at a larger scale than a test can afford:

- ``stalled``: 300 viewers that never read beside one healthy viewer of 40 symbols ticking
  800 times a second: pending events, the worker's RSS over 30 s, the healthy viewer's
  latency before and while they are backed up;
- ``departures``: 200 viewers close while nothing is written: how soon all are freed;
- ``churn``: 4,000 connect/read/disconnect cycles: time taken, worker descriptors before and
  after;
- ``shutdown``: SIGTERM with 50 streams open, 3 times: seconds until gunicorn has exited;
- ``reconnect``: a browser table under a server restart, 5 times: seconds from the new
  server being ready to the first row update;
- ``nginx``: ticks through the sample config (and a bare proxy_pass, and one told to ignore
  ``X-Accel-Buffering``): their delays, and what nginx added over the app read directly;
  a tickless stream on 0.5 s heartbeats for 3x nginx's read timeout, and one without;
- ``idle`` (issue 14, ``tests/test_idle_sockets.py``): 2,000 sockets that send nothing, half
  a request line, one header byte a second, or idle after one answered keep-alive request,
  beside 1,000 healthy viewers: when the server closed each kind (seconds from its open),
  the viewers' latency before, while all are open and while they are being closed, and how
  soon 20 new viewers got their snapshot meanwhile. ``--only idle`` runs just this (about
  20 s, no nginx or Chromium) and writes ``reliability-idle-<date>-at-<commit>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import (
    Server,
    SSEClient,
    quote_events,
    stalled_socket,
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    """p50, p90, p95 and max (nearest rank), rounded."""
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(
            ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], digits
        )

    return {
        "n": len(ordered),
        "p50": at(0.5),
        "p90": at(0.9),
        "p95": at(0.95),
        "max": round(ordered[-1], digits),
    }


def stalled(tmp: Path) -> dict:
    from test_reliability import LatencyReader

    env = {
        "TICKER_INTERVAL": "0.05",
        "TICKER_SYMBOLS": "40",
        "HEARTBEAT_S": "5",
        "MAX_STREAMS_PER_CLIENT": "0",
    }
    with Server.procfile(tmp / "stalled.log", env=env).start() as server:
        pid = server.get_json("/healthz")["pid"]
        with SSEClient(server.base, "/stream") as healthy:
            healthy.events_until(lambda ev: len(quote_events(ev)) > 40)
            reader = LatencyReader(healthy)
            reader.start()
            reader.wait_for_count(2400)  # ~3 s of ticks before anyone stalls
            before = list(reader.latencies)
            rss_before = rss_mb(pid)
            sockets = [stalled_socket(server) for _ in range(300)]
            try:
                server.wait_for(
                    lambda h: (
                        h["streams"]["total"] == 301
                        and h["streams"]["pending_events"] >= 300 * 30
                    ),
                    "stalled viewers to back up",
                    timeout=60,
                )
                mark = len(reader.latencies)
                rss_series, pending_series = [], []
                held_from = time.monotonic()
                while time.monotonic() - held_from < 30:
                    rss_series.append(rss_mb(pid))
                    pending_series.append(
                        server.get_json("/healthz")["streams"]["pending_events"]
                    )
                    time.sleep(5)  # a sampling interval, not a wait for anything
                during = reader.latencies[mark:]
                conflated = server.metrics()["ticker_updates_conflated_total"]
            finally:
                reader.stop()
                for sock in sockets:
                    sock.close()
    return {
        "setup": "300 stalled sockets (4 KB receive buffers) + 1 healthy viewer; "
        "40 symbols every 0.05 s",
        "pending_events_bound": 301 * 43,
        "pending_events_every_5s": pending_series,
        "updates_conflated": conflated,
        "worker_rss_mb_before": rss_before,
        "worker_rss_mb_every_5s_while_backed_up": rss_series,
        "healthy_latency_ms_before": spread(before, 0),
        "healthy_latency_ms_while_backed_up": spread(during, 0),
    }


def departures(tmp: Path, count: int = 200) -> dict:
    env = {
        "TICKER_INTERVAL": "3600",
        "HEARTBEAT_S": "600",
        "TICKER_NEWS_S": "0",
        "MAX_STREAMS_PER_CLIENT": "0",
    }
    with Server.procfile(tmp / "departures.log", env=env).start() as server:
        clients = [SSEClient(server.base, "/stream") for _ in range(count)]
        for client in clients:
            client.next()
        server.wait_for(lambda h: h["streams"]["total"] == count, "streams open")
        left = time.monotonic()
        for client in clients:
            client.close()
        server.wait_for(lambda h: h["streams"]["total"] == 0, "departures", 60)
        freed_s = time.monotonic() - left
    return {
        "viewers": count,
        "heartbeat_s": 600,
        "seconds_until_all_freed": round(freed_s, 3),
    }


def churn(tmp: Path, cycles: int = 4000) -> dict:
    from test_reliability import open_fds, reset

    with Server.procfile(
        tmp / "churn.log", env={"TICKER_INTERVAL": "0.05"}
    ).start() as server:
        pid = server.get_json("/healthz")["pid"]
        baseline = open_fds(pid)
        started = time.monotonic()
        for i in range(cycles):
            client = SSEClient(server.base, "/stream")
            client.next()
            if i % 3 == 0:
                reset(client.conn.sock)  # the RST goes out once the response lets go
            client.close()
        server.wait_for(lambda h: h["streams"]["total"] == 0, "every stream released")
        took = time.monotonic() - started
        deadline = time.monotonic() + 10
        while open_fds(pid) > baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        after = open_fds(pid)
    return {
        "cycles": cycles,
        "reset_mid_stream": len(range(0, cycles, 3)),
        "seconds": round(took, 2),
        "worker_fds_before": baseline,
        "worker_fds_after": after,
    }


def shutdown(tmp: Path, streams: int = 50, runs: int = 3) -> dict:
    seconds = []
    for run in range(runs):
        server = Server.procfile(tmp / f"shutdown{run}.log").start()
        clients = [SSEClient(server.base, "/stream") for _ in range(streams)]
        for client in clients:
            client.next()
        server.wait_for(lambda h: h["streams"]["total"] == streams, "streams open")
        seconds.append(round(server.stop(), 2))
        for client in clients:
            client.close()
        assert server.process.returncode == 0, server.log()
    return {"streams_open": streams, "seconds_from_sigterm_to_exit": seconds}


def reconnect(tmp: Path, runs: int = 5) -> dict:
    from browser_support import CHROMIUM, CHROMIUM_ARGS, row, symbols_of
    from playwright.sync_api import expect, sync_playwright

    seconds = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        for run in range(runs):
            log_path = tmp / f"restart{run}.log"
            old = Server.procfile(log_path).start()
            context = browser.new_context(base_url=old.base)
            page = context.new_page()
            page.goto("/")
            symbols = symbols_of(page)
            seq = row(page, symbols[0]).get_attribute("data-seq")
            expect(row(page, symbols[0])).not_to_have_attribute("data-seq", seq)
            old.stop()
            frozen = {s: row(page, s).get_attribute("data-ts") for s in symbols}
            new = Server.procfile(log_path, port=old.port).start()
            ready = time.monotonic()
            changed = page.locator(
                ", ".join(
                    f'#quote-{s}:not([data-ts="{ts}"])' for s, ts in frozen.items()
                )
            )
            expect(changed.first).to_be_attached(timeout=10_000)
            seconds.append(round(time.monotonic() - ready, 2))
            context.close()
            new.stop()
        browser.close()
    return {"runs": runs, "seconds_from_new_server_ready_to_first_row_update": seconds}


def behind_nginx(tmp: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from test_proxy import (
        NGINX,
        NO_TICKS,
        READ_TIMEOUT_S,
        Nginx,
        added_by_proxy,
        watch,
    )

    result: dict = {"read_timeout_s": READ_TIMEOUT_S}
    with Server.procfile(tmp / "app.log").start() as app:
        (tmp / "nginx").mkdir()
        proxy = Nginx(NGINX, tmp / "nginx", app.port).start()
        try:
            symbol = app.get_json("/api/quotes")["quotes"][0]["symbol"]
            routes = {
                "sample_config": (proxy.base, f"/stream/{symbol}"),
                "bare_proxy_pass": (proxy.bare_base, f"/honoured/stream/{symbol}"),
            }
            for name, (base, path) in routes.items():
                with ThreadPoolExecutor(2) as pool:
                    runs = [
                        pool.submit(watch, b, p, 30, ticks=50)
                        for b, p in ((base, path), (app.base, f"/stream/{symbol}"))
                    ]
                    proxied, direct = (r.result() for r in runs)
                result[name] = {
                    "tick_delay_ms": spread(
                        [d * 1000 for d in proxied.tick_delays()], 0
                    ),
                    "added_by_nginx_ms": spread(
                        [d * 1000 for d in added_by_proxy(proxied, direct)], 1
                    ),
                }
            ignored = watch(proxy.bare_base, f"/ignored/stream/{symbol}", 10)
            delays = ignored.tick_delays()
            result["header_ignored_10s"] = {
                "ticks_arrived": len(delays),
                "tick_delay_ms": spread([d * 1000 for d in delays], 0)
                if delays
                else None,
                "first_event_after_s": None
                if ignored.snapshot_after() is None
                else round(ignored.snapshot_after(), 2),
            }
        finally:
            proxy.stop()

    quiet: dict = {}
    for name, heartbeat in (("with_heartbeats", "0.5"), ("without_heartbeats", "3600")):
        env = {**NO_TICKS, "HEARTBEAT_S": heartbeat}
        with Server.procfile(tmp / f"quiet-{name}.log", env=env).start() as srv:
            (tmp / name).mkdir()
            nginx = Nginx(NGINX, tmp / name, srv.port).start()
            try:
                w = watch(nginx.base, "/stream", 3 * READ_TIMEOUT_S)
            finally:
                nginx.stop()
        quiet[name] = {
            "heartbeats": len(w.heartbeats),
            "cut_after_s": None if w.ended_after is None else round(w.ended_after, 2),
        }
    result["tickless_stream_for_3x_read_timeout"] = quiet
    return result


def idle(tmp: Path) -> dict:
    from test_idle_sockets import (
        KEEPALIVE_S,
        SERVER_ENV,
        closed_after,
        p99,
        raise_nofile_limit,
        run_idle_scenario,
    )

    raise_nofile_limit()
    with Server.procfile(tmp / "idle.log", env=SERVER_ENV).start() as server:
        facts = run_idle_scenario(server)
    log = (tmp / "idle.log").read_text(errors="replace")
    viewers = facts["healthy"]

    def latency(values: list[float]) -> dict:
        return {**spread(values, 0), "p99": round(p99(values))}

    return {
        "setup": f"{len(viewers)} viewers of /stream (12 symbols, 1 tick/s each) + "
        f"{len(facts['hostile'])} hostile sockets, 500 of each kind, opened in "
        f"{facts['opening_s']:.2f} s; gunicorn keepalive = {KEEPALIVE_S:g}",
        "env": SERVER_ENV,
        "closed_after_s": {
            kind: {**spread(seconds), "min": round(min(seconds), 3)}
            for kind, seconds in closed_after(facts["hostile"]).items()
        },
        "hostile_open_through_window": facts["still_open"],
        "healthy_latency_ms_before": latency(facts["before"]),
        "healthy_latency_ms_while_all_open": latency(facts["during"]),
        "healthy_latency_ms_while_being_closed": latency(facts["closing"]),
        "window_while_all_open_s": round(facts["during_s"], 2),
        "healthy_viewers_without_an_update_in_window": len(facts["starved"]),
        "new_viewers_admitted": sum(v.status == 200 for v in facts["new"]),
        "new_viewer_snapshot_s": spread(
            [v.snapshot_at - v.opened for v in facts["new"]]
        ),
        "tracebacks_in_log": log.count("Traceback"),
    }


def commit() -> str:
    out = subprocess.run(  # noqa: PLW1510 - a failure shows as an empty commit
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    dirty = subprocess.run(  # noqa: PLW1510
        [
            "git",
            "status",
            "--porcelain",
            "--",
            "ticker",
            "templates",
            "static",
            "app.py",
        ]
        + ["gunicorn.conf.py", "Procfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


PARTS = {
    "stalled": stalled,
    "departures": departures,
    "churn": churn,
    "shutdown": shutdown,
    "reconnect": reconnect,
    "nginx": behind_nginx,
    "idle": idle,
}
# Run by default: everything but ``idle``, which has its own results file.
DEFAULT_PARTS = "stalled,departures,churn,shutdown,reconnect,nginx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=DEFAULT_PARTS,
        help=f"comma-separated parts of {','.join(PARTS)}",
    )
    parser.add_argument("--out", type=Path, help="results file (JSON)")
    args = parser.parse_args()
    at = commit()
    today = datetime.date.today().isoformat()
    parts = "" if args.only == DEFAULT_PARTS else args.only.replace(",", "-") + "-"
    name = f"reliability-{parts}{today}-at-{at}.json"
    out = args.out or ROOT / "bench" / "results" / name
    results = {
        "command": "python bench/reliability.py"
        + ("" if args.only == DEFAULT_PARTS else f" --only {args.only}"),
        "date": today,
        "commit": at,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        for name in args.only.split(","):
            started = time.monotonic()
            part_dir = Path(tmp, name)
            part_dir.mkdir()
            results[name] = PARTS[name](part_dir)
            results[name]["took_s"] = round(time.monotonic() - started, 1)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
