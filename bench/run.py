"""The benchmark of issue 6: our app and its peers under N concurrent SSE viewers.

    python bench/run.py --n 1000,5000,10000 --window 20

It sets up what it needs (idempotently: the loadgen binary, one venv per Python peer, the
Express peer's npm install), then for every server and every N starts a fresh server pinned
to CPU 0, idles it 5 s (the feed's own cost), runs ``loadgen`` pinned to CPU 1 (ramp, warmup,
window), samples the serving processes' CPU time (/proc/<pid>/stat utime+stime) at the
window's start and end and their RSS (VmRSS) at its end, and stops the server. Results go to
``bench/results/<date>.json`` after every run (so a cut-short run keeps what it measured),
then ``bench/plot.py`` draws ``docs/img/performance.png``.

``--profile N`` instead runs our app once under N viewers and records it with py-spy
(``bench/results/profile.svg``, plus the raw stacks and a top-functions table).

``--storm reload|restart`` instead holds ``--storm-n`` viewers of ours with
``loadgen --reconnect`` through a deploy (``kill -HUP``, or a restart on the same port) and
writes ``bench/results/storm-<scenario>-<date>.json`` (bench/README.md lists its fields).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"  # server and loadgen logs (git-ignored)
SERVER_CPU, LOADGEN_CPU = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ZLIB_H = Path("/usr/include/zlib.h")  # loadgen builds with -lz (Debian's zlib1g-dev)

# Each venv: where it lives and the requirements it is made from.
VENVS = {
    "app": ROOT / "requirements.txt",
    "tools": BENCH / "requirements.txt",
    "flask_sse": PEERS / "flask_sse" / "requirements.txt",
    "starlette": PEERS / "starlette" / "requirements.txt",
}

OURS_ENV = {
    "TICKER_SYMBOLS": "10",
    "TICKER_INTERVAL": "1.0",
    "MAX_STREAMS": "19000",
    "MAX_STREAMS_PER_CLIENT": "0",
    "HEARTBEAT_S": "15",
    "WEB_CONCURRENCY": "1",
}

# name -> what the run needs to know: how to label it, the stream path, events/s per viewer.
SERVERS = {
    "ours": {
        "label": "ours (gunicorn gevent, /stream)",
        "path": "/stream",
        "rate": 10.0,
    },
    "ours-per-symbol": {
        "label": "ours, per-symbol (/stream/SYMBOL)",
        "path": None,  # one path per symbol, from /api/quotes
        "rate": 1.0,
    },
    "express": {"label": "Express (article)", "path": "/events", "rate": 10.0},
    "flask-sse": {
        "label": "flask-sse + Redis (gunicorn gevent)",
        "path": "/stream",
        "rate": 10.0,
    },
    "starlette": {"label": "sse-starlette + uvicorn", "path": "/stream", "rate": 10.0},
    "bare": {"label": "bare gevent loop (floor)", "path": "/stream", "rate": 10.0},
    # gzip on the wire (issue 14), measured with `loadgen --gzip`. A variant runs its "base"
    # server, with "env" added to the base's environment.
    "ours-gzip": {
        "label": "ours, loadgen --gzip (/stream)",
        "path": "/stream",
        "rate": 10.0,
        "base": "ours",
        "gzip": True,
    },
    "express-gzip": {
        "label": "Express (article) + compression, res.flush() per event",
        "path": "/events",
        "rate": 10.0,
        "base": "express",
        "gzip": True,
        "env": {"SSE_COMPRESSION": "1"},
    },
}


def log(*parts: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


# --- setup -------------------------------------------------------------------------------


def venv(name: str) -> Path:
    return BENCH / f".venv-{name}"


def ensure_venv(name: str) -> Path:
    """Make ``bench/.venv-<name>`` from its requirements; redo it only when they change."""
    path, reqs = venv(name), VENVS[name]
    stamp = path / "requirements.sha256"
    digest = hashlib.sha256(reqs.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return path
    log(f"setting up {path.name} from {reqs.relative_to(ROOT)}")
    if not (path / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [
            str(path / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(reqs),
        ],
        check=True,
    )
    stamp.write_text(digest)
    return path


def ensure_npm() -> None:
    express = PEERS / "express"
    lock = express / "package-lock.json"
    stamp = express / "node_modules" / ".lock.sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    log("npm ci in bench/peers/express")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=express, check=True)
    stamp.write_text(digest)


def ensure_loadgen() -> Path:
    src, binary = BENCH / "loadgen.c", BENCH / "loadgen"
    if not binary.exists() or binary.stat().st_mtime < src.stat().st_mtime:
        log("building loadgen")
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-o", str(binary), str(src), "-lz"], check=True
        )
    return binary


def ensure_system_tools() -> None:
    missing = [t for t in ("gcc", "node", "npm", "taskset") if shutil.which(t) is None]
    if not ZLIB_H.exists():  # loadgen inflates gzip streams with zlib
        missing.append(f"{ZLIB_H} (Debian: apt-get install zlib1g-dev)")
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)} (see bench/README.md)")
    if shutil.which("redis-server") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("installing redis-server (Debian package)")
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(
                [
                    "apt-get",
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "redis-server",
                ],
                check=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        else:
            sys.exit("bench: redis-server is missing (apt-get install redis-server)")


def setup(need_tools_only: bool = False) -> Path:
    ensure_system_tools()
    for name in VENVS:
        if not need_tools_only or name == "tools":
            ensure_venv(name)
    if not need_tools_only:
        ensure_npm()
    return ensure_loadgen()


# --- processes -----------------------------------------------------------------------------


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` (utime, stime: fields 14 and 15 of stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def core_jiffies() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of each core, to see whether anything else ran on them."""
    found = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values]
            idle = ticks[3] + ticks[4]  # idle + iowait
            found[name] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
    return found


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def start(
    cmd: list[str], cwd: Path, env: dict[str, str], logfile: Path
) -> subprocess.Popen:
    """Start ``cmd`` pinned to the server core, in its own session so it can be stopped whole."""
    out = open(logfile, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, *cmd],
        cwd=cwd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def http_get(port: int, path: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read()


def wait_stream_ready(
    port: int, path: str, proc: subprocess.Popen, timeout: float = 60
) -> None:
    """Wait until ``path`` answers 200 (for gunicorn: the worker, not just the master, is up)."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode} before it was ready"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(request)
                head = b""
                while b"\r\n" not in head:
                    chunk = s.recv(1024)
                    if not chunk:
                        break
                    head += chunk
                if head.startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server on port {port} not ready after {timeout} s")


class Server:
    """One server under test: its processes, and which of them serve (are measured)."""

    def __init__(self, name: str, port: int, logfile: Path) -> None:
        # A variant (ours-gzip, express-gzip) runs its base's server, plus its own env.
        self.name = SERVERS[name].get("base", name)
        self.port, self.logfile = port, logfile
        self.extra_env: dict[str, str] = SERVERS[name].get("env", {})
        self.procs: list[subprocess.Popen] = []
        self.measured: dict[str, int] = {}  # role -> pid
        self.paths: list[str] = []

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PORT")}
        env["PORT"] = str(self.port)
        port, logfile = str(self.port), self.logfile
        if self.name in ("ours", "ours-per-symbol"):
            env.update(OURS_ENV)
            cmd = [
                str(venv("app") / "bin" / "gunicorn"),
                "app:app",
                "--bind",
                f"127.0.0.1:{port}",
            ]
            self.procs.append(start(cmd, ROOT, env, logfile))
        elif self.name == "express":
            env.update(self.extra_env)
            self.procs.append(
                start(["node", "server.js"], PEERS / "express", env, logfile)
            )
        elif self.name == "flask-sse":
            redis_port = free_port()
            redis = start(
                [
                    "redis-server",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--maxclients",
                    "19000",
                ],
                PEERS / "flask_sse",
                env,
                logfile,
            )
            self.procs.append(redis)
            self.measured["redis"] = redis.pid
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
            time.sleep(0.5)
            cmd = [
                str(venv("flask_sse") / "bin" / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "server:app",
            ]
            self.procs.append(start(cmd, PEERS / "flask_sse", env, logfile))
        elif self.name == "starlette":
            cmd = [
                str(venv("starlette") / "bin" / "uvicorn"),
                "server:app",
                "--host",
                "127.0.0.1",
                "--port",
                port,
            ]
            self.procs.append(start(cmd, PEERS / "starlette", env, logfile))
        elif self.name == "bare":
            cmd = [
                str(venv("tools") / "bin" / "python"),
                str(PEERS / "bare" / "server.py"),
                port,
            ]
            self.procs.append(start(cmd, ROOT, env, logfile))
        main = self.procs[-1]
        probe = SERVERS[self.name]["path"] or "/stream"
        wait_stream_ready(self.port, probe, main)
        if self.name in ("ours", "ours-per-symbol", "flask-sse"):
            workers = children(main.pid)
            if len(workers) != 1:
                raise RuntimeError(f"expected one gunicorn worker, found {workers}")
            self.measured["worker"] = workers[0]
        else:
            self.measured["server"] = main.pid
        if self.name == "ours-per-symbol":
            quotes = json.loads(http_get(self.port, "/api/quotes"))["quotes"]
            self.paths = [f"/stream/{q['symbol']}" for q in quotes]
        else:
            self.paths = [probe]

    def cpu(self) -> dict[str, tuple[float, float]]:
        return {role: cpu_times(pid) for role, pid in self.measured.items()}

    def rss(self) -> dict[str, float]:
        return {role: rss_mb(pid) for role, pid in self.measured.items()}

    def ours_health(self) -> dict | None:
        if not self.name.startswith("ours"):
            return None
        try:
            return json.loads(http_get(self.port, "/healthz", timeout=10))
        except (
            OSError,
            ValueError,
        ) as exc:  # under load it may time out: say so, go on
            return {"error": repr(exc)}

    def ours_metrics(self) -> dict[str, float] | None:
        if not self.name.startswith("ours"):
            return None
        try:
            text = http_get(self.port, "/metrics", timeout=10).decode()
        except OSError as exc:
            return {"error": repr(exc)}
        wanted = (
            "ticker_ticks_total",
            "ticker_events_published_total",
            "ticker_events_sent_total",
            "ticker_updates_conflated_total",
            "ticker_bytes_sent_total",
        )
        found = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                found[name] = float(value)
        return found

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


# --- one run --------------------------------------------------------------------------------


def run_one(
    loadgen: Path, name: str, n: int, args: argparse.Namespace, tag: str = ""
) -> dict:
    spec = SERVERS[name]
    RAW.mkdir(parents=True, exist_ok=True)
    base = RAW / f"{args.date}-{name}-{n}{tag}"
    base.with_suffix(".server.log").unlink(missing_ok=True)
    server = Server(name, free_port(), base.with_suffix(".server.log"))
    log(f"{name} N={n}: starting on port {server.port}")
    result: dict = {
        "server": name,
        "label": spec["label"],
        "n": n,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if name.startswith("ours"):
        result["app_code"] = app_fingerprint()
    try:
        server.start()
        result["pids"] = dict(server.measured)
        # The feed's own cost, with nobody watching.
        idle_cpu0, t0 = server.cpu(), time.monotonic()
        time.sleep(args.idle)
        idle_cpu1, idle_s = server.cpu(), time.monotonic() - t0
        result["idle"] = {
            "seconds": round(idle_s, 2),
            "cpu_pct": round(
                100
                * (
                    sum(map(sum, idle_cpu1.values()))
                    - sum(map(sum, idle_cpu0.values()))
                )
                / idle_s,
                2,
            ),
            "rss_mb": server.rss(),
        }
        cmd = [
            "taskset",
            "-c",
            LOADGEN_CPU,
            str(loadgen),
            "--port",
            str(server.port),
            "--path",
            ",".join(server.paths),
            "--n",
            str(n),
            "--rate",
            str(args.rate),
            "--warmup",
            str(args.warmup),
            "--window",
            str(args.window),
            *(["--gzip"] if spec.get("gzip") else []),
            # Inflating every viewer's gzip stream is more than loadgen's one core can do at
            # 10,000 and more: decode a sample, read the rest (see loadgen.c).
            *(
                ["--decode-every", str(args.gzip_decode_every)]
                if spec.get("gzip") and args.gzip_decode_every > 1
                else []
            ),
            "--events-per-s",
            str(spec["rate"]),
            "--ticks-per-s",
            "10",
        ]
        samples: dict[str, object] = {}
        lg = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        stderr_lines: list[str] = []

        def watch() -> None:
            for line in lg.stderr:
                stderr_lines.append(line)
                if line.startswith("WINDOW_START"):
                    samples["cpu0"], samples["t0"] = server.cpu(), time.monotonic()
                    samples["cores0"] = core_jiffies()
                    if hasattr(args, "on_window_start"):
                        args.on_window_start(server)
                elif line.startswith("WINDOW_END"):
                    samples["cpu1"], samples["t1"] = server.cpu(), time.monotonic()
                    samples["cores1"] = core_jiffies()
                    samples["rss"] = server.rss()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # loadgen bounds itself; this only guards against it hanging.
        budget = n / args.rate + args.warmup + args.window + 5 + 120
        guard = threading.Timer(budget, lg.kill)
        guard.start()
        out = lg.stdout.read()
        lg.wait()
        guard.cancel()
        watcher.join(5)
        base.with_suffix(".loadgen.log").write_text("".join(stderr_lines))
        if lg.returncode != 0:
            raise RuntimeError(
                f"loadgen exited {lg.returncode}: {''.join(stderr_lines[-5:])}"
            )
        report = json.loads(out)
        result["loadgen"] = report
        result["ours_health_end"] = server.ours_health()
        result["ours_metrics_end"] = server.ours_metrics()
        cpu_user_sys = {
            r: [round(samples["cpu1"][r][k] - samples["cpu0"][r][k], 2) for k in (0, 1)]
            for r in server.measured
        }
        cpu_by_role = {r: sum(v) for r, v in cpu_user_sys.items()}
        window_s = samples["t1"] - samples["t0"]
        result["server"] = name
        result["server_cpu_s"] = cpu_by_role
        result["server_cpu_user_sys_s"] = cpu_user_sys
        result["server_window_s"] = round(window_s, 3)
        result["server_rss_mb"] = samples["rss"]
        # Whole-core load in the window: server + kernel work on CPU 0, loadgen on CPU 1.
        # Far above the measured processes' own share means something else ran there.
        result["core_busy_pct"] = {
            core: round(
                100
                * (b1 - samples["cores0"][core][0])
                / max(1, t1 - samples["cores0"][core][1]),
                1,
            )
            for core, (b1, t1) in samples["cores1"].items()
        }
        result.update(summarize(result))
        log(
            f"{name} N={n}: held {result['held']}/{n}, {result['pct_expected']:.2f}% of updates "
            f"({result['pct_by_tick']:.2f}% by tick), "
            f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
            f"{result['cpu_pct']:.0f}% CPU, {result['cpu_s_per_100k']} CPU-s/100k, "
            f"{result['mb_per_1k']} MB/1k, loadgen {result['loadgen_cpu_pct']:.0f}% CPU"
        )
    except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
        result["error"] = repr(exc)
        log(f"{name} N={n}: FAILED {exc!r}")
    finally:
        server.stop()
    return result


def summarize(r: dict) -> dict:
    """The headline figures of one run."""
    lg = r["loadgen"]
    held = lg["connections"]["held"]
    # Updates are counted on the connections loadgen decodes (all, or one in
    # --gzip-decode-every): the server delivered as many to the others.
    decoded = lg.get("decoded_held") or held
    updates = lg["events"]["updates"] * (held / decoded if decoded else 1)
    cpu = sum(r["server_cpu_s"].values())
    rss_end = sum(r["server_rss_mb"].values())
    rss_idle = sum(r["idle"]["rss_mb"].values())
    return {
        "held": held,
        "pct_expected": lg["events"]["pct_of_expected"],
        "pct_by_tick": lg["by_tick"]["pct_delivered"],
        "p50_ms": lg["latency_ms"]["p50"],
        "p95_ms": lg["latency_ms"]["p95"],
        "p99_ms": lg["latency_ms"]["p99"],
        "max_ms": lg["latency_ms"]["max"],
        "cpu_pct": round(100 * cpu / r["server_window_s"], 1),
        "cpu_s_per_100k": round(100_000 * cpu / updates, 3) if updates else None,
        "rss_mb": round(rss_end, 1),
        # What the viewers cost: RSS above the idle server's, per 1,000 viewers held.
        "mb_per_1k": round(1000 * (rss_end - rss_idle) / held, 1) if held else None,
        "mb_per_1k_total": round(1000 * rss_end / held, 1) if held else None,
        "loadgen_cpu_pct": lg["loadgen"]["cpu_pct_of_core_window"],
        "decode_every": lg.get("decode_every", 1),
        # Bytes per viewer held per second in the window: on the socket, and after
        # de-chunking and inflating (the two differ by framing, and by gzip if any).
        "wire_bytes_per_viewer_s": lg["bytes"]["wire_bytes_per_viewer_s"],
        "decoded_bytes_per_viewer_s": lg["bytes"]["decoded_bytes_per_viewer_s"],
    }


# --- storms: what a deploy does to N viewers (issue 13) --------------------------------------


def listen_counters() -> dict[str, int]:
    """TcpExt ListenOverflows / ListenDrops from /proc/net/netstat (machine-wide)."""
    lines = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names[0] == "TcpExt:":
            found = dict(zip(names[1:], map(int, values[1:]), strict=True))
            return {k: found.get(k, 0) for k in ("ListenOverflows", "ListenDrops")}
    return {}


def now_ms() -> int:
    return int(time.time() * 1000)


class TreeCPU(threading.Thread):
    """Every 0.2 s, the CPU seconds of every process in the servers' trees (masters and their
    children), old and new: processes there at the storm's start count from then, later ones
    from their birth, and the ones that exit keep their last sample (up to 0.2 s short)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.roots: list[int] = []
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.born: dict[
            int, int
        ] = {}  # epoch ms first seen, for those born in the storm
        self.gone: dict[int, int] = {}  # epoch ms first seen gone
        self.done = threading.Event()

    def sample(self, baseline: bool = False) -> None:
        for root in list(self.roots):
            try:
                tree = [(root, "master"), *((c, "worker") for c in children(root))]
            except OSError:
                tree = [(root, "master")]
            for pid, role in tree:
                try:
                    t = sum(cpu_times(pid))
                except OSError:
                    continue
                if pid not in self.first:
                    self.first[pid] = t if baseline else 0.0
                    self.role[pid] = role
                    if not baseline:
                        self.born[pid] = now_ms()
                self.last[pid] = t
        for pid in self.last:
            if pid not in self.gone and not Path(f"/proc/{pid}/stat").exists():
                self.gone[pid] = now_ms()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.sample()

    def report(self, seconds: float) -> dict:
        per = {
            f"{self.role[p]} {p}": round(self.last[p] - self.first[p], 2)
            for p in self.first
        }
        total = sum(self.last[p] - self.first[p] for p in self.first)
        return {
            "seconds": round(seconds, 2),
            "cpu_s": per,
            "cpu_s_total": round(total, 2),
            "cpu_pct_of_core": round(100 * total / seconds, 1) if seconds else None,
            "born_epoch_ms": {str(p): t for p, t in self.born.items()},
            "gone_epoch_ms": {str(p): t for p, t in self.gone.items()},
        }


def wait_serving(port: int, timeout: float = 60) -> int | None:
    """Poll GET /healthz until it answers 200; return that moment (epoch ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http_get(port, "/healthz", timeout=2)
            return now_ms()
        except OSError:
            time.sleep(0.05)
    return None


def storm(loadgen: Path, scenario: str, n: int, args: argparse.Namespace) -> dict:
    """N viewers of ours' /stream with ``loadgen --reconnect``, then a deploy.

    reload: SIGHUP to the gunicorn master (a new worker starts, the old one stops
    gracefully). restart: SIGTERM the whole server, wait until it has exited, and start a
    new one on the same port ``--restart-delay`` s later, as a PaaS does. loadgen measures
    until every viewer is back with a full snapshot or ``--storm-timeout`` s pass.
    """
    RAW.mkdir(parents=True, exist_ok=True)
    base = RAW / f"{args.date}-storm-{scenario}-{n}"
    logfile = base.with_suffix(".server.log")
    logfile.unlink(missing_ok=True)
    port = free_port()
    server = Server("ours", port, logfile)
    result: dict = {
        "scenario": scenario,
        "server": "ours",
        "n": n,
        "path": "/stream",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "app_code": app_fingerprint(),
    }
    log(f"storm {scenario} N={n}: starting ours on port {port}")
    servers = [server]
    tree = TreeCPU()
    lg = None
    try:
        server.start()
        master = server.procs[-1]
        result["old"] = {"master": master.pid, "worker": server.measured["worker"]}
        window = args.storm_wait + args.storm_timeout + args.restart_delay + 60
        cmd = [
            "taskset",
            "-c",
            LOADGEN_CPU,
            str(loadgen),
            "--port",
            str(port),
            "--path",
            "/stream",
            "--n",
            str(n),
            "--rate",
            str(args.rate),
            "--warmup",
            str(args.warmup),
            "--window",
            str(window),
            "--grace",
            "0",
            "--events-per-s",
            "10",
            "--reconnect",
            "--until-back",
            str(args.storm_timeout),
            "--stdin-control",
        ]
        lg = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stderr_lines: list[str] = []
        window_started = threading.Event()

        def watch() -> None:
            for line in lg.stderr:
                stderr_lines.append(line)
                if line.startswith("WINDOW_START"):
                    window_started.set()

        threading.Thread(target=watch, daemon=True).start()
        if not window_started.wait(n / args.rate + args.warmup + 60):
            raise RuntimeError("loadgen never started its window")
        held = next(
            (ln for ln in reversed(stderr_lines) if ln.startswith("WINDOW_START")), ""
        )
        log(f"storm {scenario}: {held.strip()}; the deploy in {args.storm_wait} s")
        time.sleep(args.storm_wait)

        result["listen_before"] = listen_counters()
        tree.roots.append(master.pid)
        tree.sample(baseline=True)
        tree.start()
        t0 = time.monotonic()
        result["trigger_epoch_ms"] = now_ms()
        if scenario == "reload":
            old_workers = set(children(master.pid))
            os.kill(master.pid, signal.SIGHUP)
            new_worker = None
            deadline = time.monotonic() + 30
            while new_worker is None and time.monotonic() < deadline:
                fresh = set(children(master.pid)) - old_workers
                new_worker = min(fresh) if fresh else None
                time.sleep(0.02)
            result["new"] = {"worker": new_worker, "seen_epoch_ms": now_ms()}
            # gunicorn TERMs the old worker as soon as it has forked the new one, so from
            # here a 200 comes from the new worker: it is accepting.
            up = wait_serving(port, args.storm_timeout)
        else:
            os.killpg(master.pid, signal.SIGTERM)
            try:
                master.wait(args.storm_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(master.pid, signal.SIGKILL)
                master.wait(5)
            result["old_exited_epoch_ms"] = now_ms()
            time.sleep(args.restart_delay)
            new = Server("ours", port, logfile)
            servers.append(new)
            result["new_started_epoch_ms"] = now_ms()
            new.start()  # returns once /stream answers 200 (the worker is up)
            up = now_ms()
            tree.roots.append(new.procs[-1].pid)
            result["new"] = {
                "master": new.procs[-1].pid,
                "worker": new.measured["worker"],
            }
        result["server_up_epoch_ms"] = up
        if up is not None:
            try:
                lg.stdin.write(f"SERVER_UP {up}\n")
                lg.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass
        log(
            f"storm {scenario}: new server accepting {up and (up - result['trigger_epoch_ms'])} ms after the trigger"
        )

        guard = threading.Timer(args.storm_timeout + window + 60, lg.kill)
        guard.start()
        out = lg.stdout.read()
        lg.wait()
        guard.cancel()
        tree.done.set()
        tree.join(2)
        tree.sample()
        result["server_cpu"] = tree.report(time.monotonic() - t0)
        result["listen_after"] = listen_counters()
        result["listen_delta"] = {
            k: result["listen_after"][k] - result["listen_before"].get(k, 0)
            for k in result["listen_after"]
        }
        base.with_suffix(".loadgen.log").write_text("".join(stderr_lines))
        if lg.returncode != 0:
            raise RuntimeError(f"loadgen exited {lg.returncode}: {stderr_lines[-5:]}")
        report = json.loads(out)
        result["loadgen"] = report
        rc = report["reconnect"]
        statuses = {**report["connections"]["status"]}
        result["error_statuses"] = {s: k for s, k in statuses.items() if int(s) >= 400}
        result["summary"] = {
            "viewers_lost": rc["viewers_lost"],
            "viewers_back": rc["viewers_back"],
            "gap_first_event_ms": rc["gap_first_event_ms"],
            "gap_snapshot_ms": rc["gap_snapshot_ms"],
            "pct_back_within_5s_of_server_up": rc["pct_back_within_5s_of_server_up"],
            "pct_back_within_5s_of_first_accept": rc[
                "pct_back_within_5s_of_first_accept"
            ],
            "refused": rc["refused"],
            "timed_out": rc["connect_timed_out"] + rc["headers_timed_out"],
            "error_statuses": result["error_statuses"],
            "server_cpu_s": result["server_cpu"]["cpu_s_total"],
            "listen_delta": result["listen_delta"],
        }
        log(f"storm {scenario} N={n}: {json.dumps(result['summary'])}")
    except Exception as exc:  # noqa: BLE001 - keep what was measured
        result["error"] = repr(exc)
        log(f"storm {scenario} N={n}: FAILED {exc!r}")
    finally:
        tree.done.set()
        if lg is not None and lg.poll() is None:
            lg.kill()
        for srv in servers:
            srv.stop()
    return result


def cpu() -> str:
    """The processor's model and how many cores: figures move with both."""
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    return f"{model}, {os.cpu_count()} cores"


def storm_environment() -> dict:
    """What a storm ran on: only the app's venv is needed, so only its versions."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu(),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "app": pip_versions(
            "app", ("flask", "gunicorn", "gevent", "greenlet", "jinja2")
        ),
    }


# --- versions, profile, main ----------------------------------------------------------------


def pip_versions(name: str, packages: tuple[str, ...]) -> dict[str, str]:
    out = subprocess.run(
        [
            str(venv(name) / "bin" / "python"),
            "-m",
            "pip",
            "list",
            "--format=json",
            "--disable-pip-version-check",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    have = {p["name"].lower(): p["version"] for p in json.loads(out)}
    return {p: have.get(p, "?") for p in packages}


APP_FILES = ("app.py", "gunicorn.conf.py", "requirements.txt", "ticker", "templates")


def app_fingerprint() -> dict:
    """Which app code a run measured: other people edit it while the bench runs."""
    digest = hashlib.sha256()
    for top in APP_FILES:
        path = ROOT / top
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                digest.update(
                    str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes()
                )
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", *APP_FILES],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {"commit": head, "modified": bool(dirty), "sha256": digest.hexdigest()[:16]}


def environment() -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, check=False
            ).stdout
            return out.splitlines()[0]
        except (OSError, IndexError):
            return "?"

    lock = json.loads((PEERS / "express" / "package-lock.json").read_text())["packages"]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu(),
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        ),
        "kernel": platform.release(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "python": platform.python_version(),
        "app": pip_versions(
            "app", ("flask", "gunicorn", "gevent", "greenlet", "jinja2")
        ),
        "flask_sse_peer": pip_versions(
            "flask_sse", ("flask-sse", "flask", "redis", "gunicorn", "gevent")
        ),
        "starlette_peer": pip_versions(
            "starlette",
            ("sse-starlette", "starlette", "uvicorn", "uvloop", "httptools"),
        ),
        "bare_peer": pip_versions("tools", ("gevent",)),
        "node": first_line(["node", "--version"]),
        "express": lock["node_modules/express"]["version"],
        "express_compression": lock["node_modules/compression"]["version"],
        "redis_server": first_line(["redis-server", "--version"]),
        "gcc": first_line(["gcc", "--version"]),
    }


def profile(loadgen: Path, n: int, args: argparse.Namespace) -> dict:
    """Run ours under ``n`` viewers and record the worker with py-spy during the window.

    Writes bench/results/profile.svg (flame graph), profile.txt (raw stacks) and
    profile-top.txt (the top functions and lines); a later profile replaces them.
    """
    pyspy = str(venv("tools") / "bin" / "py-spy")
    secs = args.profile_seconds
    args.window = max(args.window, 2 * secs + 5)
    outputs: dict[str, str] = {}

    def record(server: Server) -> None:
        pid = str(server.measured["worker"])

        def go() -> None:
            svg, raw = RESULTS / "profile.svg", RESULTS / "profile.txt"
            for fmt, path in (("flamegraph", svg), ("raw", raw)):
                subprocess.run(
                    [
                        pyspy,
                        "record",
                        "--pid",
                        pid,
                        "--duration",
                        str(secs),
                        "--format",
                        fmt,
                        "--output",
                        str(path),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
                outputs[fmt] = str(path.relative_to(ROOT))

        threading.Thread(target=go, daemon=True).start()

    args.on_window_start = record
    result = run_one(loadgen, args.profile_server, n, args, tag="-profile")
    time.sleep(1)
    raw = RESULTS / "profile.txt"
    if raw.exists():
        title = (
            f"py-spy, our worker ({args.profile_server}) under {n} viewers"
            f" ({secs} s, --nonblocking)"
        )
        result["profile"] = {"files": outputs, **top_functions(raw)}
        report = profile_report(result["profile"], title)
        (RESULTS / "profile-top.txt").write_text(report)
        print(report)
    return result


def profile_report(prof: dict, title: str) -> str:
    lines = [title, ""]
    for kind, what in (
        ("self", "self time by function"),
        ("self_lines", "self time by line"),
        ("inclusive", "inclusive time by function (it or what it calls)"),
    ):
        lines.append(f"{what}, share of {prof['samples']} non-idle samples:")
        lines += [f"  {pct:5.1f}%  {fn}" for pct, fn in prof[kind]]
        lines.append("")
    return "\n".join(lines)


def top_functions(raw: Path, top: int = 25) -> dict:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    selfc: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        total += k
        frames = [
            f.replace(str(ROOT) + "/", "").replace(str(BENCH) + "/", "")
            for f in stack.split(";")
        ]
        frames = [re.sub(r"\S*/site-packages/", "", f) for f in frames]
        frames = [re.sub(r"\S*/lib/python3\.\d+/", "", f) for f in frames]
        lines[frames[-1]] += k
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        selfc[frames[-1]] += k
        for f in set(frames):
            incl[f] += k

    def share(counter: collections.Counter[str]) -> list[tuple[float, str]]:
        return [(round(100 * c / total, 1), f) for f, c in counter.most_common(top)]

    return {
        "samples": total,
        "self": share(selfc),
        "self_lines": share(lines)[:12],
        "inclusive": share(incl),
    }


def save(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", default="1000,5000,10000", help="viewer counts, comma-separated"
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="which servers to run"
    )
    parser.add_argument(
        "--ours-extra",
        default="18000",
        help="extra viewer counts for ours only (the stretch target); '' for none",
    )
    parser.add_argument(
        "--window", type=float, default=20.0, help="measurement window, s"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="after the ramp, s")
    parser.add_argument(
        "--rate", type=int, default=1000, help="new connections per second"
    )
    parser.add_argument(
        "--gzip-decode-every",
        type=int,
        default=1,
        help="gzip servers: loadgen decodes one connection in K (the rest it only reads)",
    )
    parser.add_argument("--idle", type=float, default=5.0, help="idle measurement, s")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="instead: profile ours under this many viewers with py-spy",
    )
    parser.add_argument("--profile-seconds", type=int, default=15)
    parser.add_argument(
        "--profile-server",
        default="ours",
        choices=("ours", "ours-per-symbol"),
        help="which of our streams to profile",
    )
    parser.add_argument(
        "--out", help="results file (default bench/results/<date>.json)"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other servers' runs already in --out, replace these",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--storm",
        choices=("reload", "restart"),
        help="instead: a deploy under --storm-n viewers of ours (kill -HUP, or a restart)",
    )
    parser.add_argument(
        "--storm-n", type=int, default=10_000, help="viewers in a storm"
    )
    parser.add_argument(
        "--storm-wait", type=float, default=5.0, help="s after the warmup, then deploy"
    )
    parser.add_argument(
        "--storm-timeout",
        type=float,
        default=30.0,
        help="s after the first lost stream that loadgen waits for every viewer",
    )
    parser.add_argument(
        "--restart-delay",
        type=float,
        default=3.0,
        help="restart: s between the old server's exit and the new one's start",
    )
    args = parser.parse_args()

    # Keep this runner off the server's core.
    os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    raise_nofile()
    args.date = datetime.now().strftime("%Y-%m-%d")
    if args.storm:  # needs only our app's venv and loadgen
        ensure_venv("app")
        loadgen = ensure_loadgen()
        RESULTS.mkdir(exist_ok=True)
        out = (
            Path(args.out)
            if args.out
            else RESULTS / f"storm-{args.storm}-{args.date}.json"
        )
        result = storm(loadgen, args.storm, args.storm_n, args)
        save(
            out,
            {
                "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
                "environment": storm_environment(),
                "settings": {
                    "rate": args.rate,
                    "warmup_s": args.warmup,
                    "storm_wait_s": args.storm_wait,
                    "storm_timeout_s": args.storm_timeout,
                    "restart_delay_s": args.restart_delay,
                    "ours_env": OURS_ENV,
                },
                "run": result,
            },
        )
        log(f"done: {out}")
        return
    loadgen = setup()
    RESULTS.mkdir(exist_ok=True)

    if args.profile:
        result = profile(loadgen, args.profile, args)
        save(RESULTS / "profile.json", {"environment": environment(), "run": result})
        return

    out = Path(args.out) if args.out else RESULTS / f"{args.date}.json"
    doc = {
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "environment": environment(),
        "settings": {
            "window_s": args.window,
            "warmup_s": args.warmup,
            "rate": args.rate,
            "idle_s": args.idle,
            "ours_env": OURS_ENV,
        },
        "runs": [],
    }
    ns = [int(x) for x in args.n.split(",") if x]
    extra = [int(x) for x in args.ours_extra.split(",") if x]
    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        sys.exit(
            f"bench: unknown servers {sorted(unknown)}; known: {', '.join(SERVERS)}"
        )
    # Server by server, so each server's runs measure the same code (ours is being edited).
    plan = [
        (s, n) for s in servers for n in ns + (extra if s.startswith("ours") else [])
    ]
    if args.update and out.exists():
        # Re-measure some servers and keep the other runs of an earlier results file.
        old = json.loads(out.read_text())
        doc["runs"] = [r for r in old["runs"] if (r["server"], r["n"]) not in plan]
    log(f"{len(plan)} runs; results to {out}")
    for name, n in plan:
        doc["runs"].append(run_one(loadgen, name, n, args))
        save(out, doc)
        time.sleep(2)  # let the kernel release the last run's sockets
    if not args.no_plot:
        subprocess.run(
            [
                str(venv("tools") / "bin" / "python"),
                str(BENCH / "plot.py"),
                str(out),
                str(ROOT / "docs" / "img" / "performance.png"),
            ],
            check=True,
        )
    log(f"done: {out}")


if __name__ == "__main__":
    main()
