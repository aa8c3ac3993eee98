"""Real parts for the tests: a server process on a free loopback port and an SSE client.

The server is started the way people start it (``python app.py``, or the Procfile's ``web:``
line through a shell with ``PORT`` set, as a PaaS does), and the client reads the raw HTTP
stream and parses it by the rules of the SSE spec, so tests see exactly what a browser gets.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent

# Fast ticks and heartbeats, so tests wait for events, not for the clock.
TEST_ENV = {
    "TICKER_SEED": "7",
    "TICKER_SYMBOLS": "12",
    "TICKER_INTERVAL": "0.2",
    "HEARTBEAT_S": "0.5",
    "TICKER_NEWS_S": "1",
    "ADMIN_TOKEN": "test-admin-token",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procfile_command() -> str:
    """The ``web:`` command of the Procfile, exactly as committed."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("Procfile has no web: line")


def stalled_socket(server: Server, path: str = "/stream") -> socket.socket:
    """A viewer that connects, asks for a stream and then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


class Server:
    """A server process on ``127.0.0.1:port``, logging to ``log_path``."""

    def __init__(
        self,
        command: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.command = command
        self.port = port or free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            **TEST_ENV,
            **(env or {}),
            "PORT": str(self.port),
            # The venv's gunicorn first, whatever the caller's PATH says.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def app_py(cls, log_path: Path, **kwargs: object) -> Server:
        return cls([sys.executable, "app.py"], log_path, **kwargs)

    @classmethod
    def procfile(cls, log_path: Path, **kwargs: object) -> Server:
        # Like a PaaS: bash -c runs the line (and execs it, so signals reach gunicorn itself).
        return cls(["bash", "-c", procfile_command()], log_path, **kwargs)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0, ready=None) -> Server:
        """Start, and return once ``ready(/healthz)`` holds (by default: the bus is
        connected, so the market is flowing)."""
        ready = ready or (lambda health: health["bus"]["connected"])
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited at start:\n{self.log()}")
            try:
                if ready(self.get_json("/healthz")):
                    return self
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(
            f"server did not become ready in {timeout}s:\n{self.log()}"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM the whole process group, wait for it, return how long exiting took."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return time.monotonic() - started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            self.base + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def get_json(self, path: str) -> dict:
        status, _, body = self.request(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` read with prometheus_client's own parser: every sample's value, by
        name and labels as the text writes them (``ticker_open_streams{route="multi"}``)."""
        status, _, body = self.request("/metrics")
        assert status == 200, (status, body)
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(
                    f'{k}="{v}"' for k, v in sorted(sample.labels.items())
                )
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = (
                    sample.value
                )
        return samples

    def wait_for(self, predicate, what: str, timeout: float = 10.0) -> dict:
        """Poll ``/healthz`` until ``predicate(health)`` holds; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.get_json("/healthz")
            if predicate(health):
                return health
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; last /healthz: {health}"
                )
            time.sleep(0.05)


# The start of every line: UTC time, level and pid, logger. Then the message.
LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) \[(?P<pid>\d+)\] (?P<logger>\S+) "
    r"(?P<message>.*)"
)
# A key=value pair; a quoted value is a JSON string.
QUOTED = r'"(?:[^"\\]|\\.)*"'
FIELD = re.compile(rf"(\w+)=({QUOTED}|[^\s\"]*)(?=\s|$)")
# A time the server wrote after the head (ISO, or gunicorn's and gevent's own formats).
SECOND_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d|\d\d/\w{3}/\d{4}:\d\d")


def records(text: str) -> list[dict[str, str]]:
    """Every line of ``text`` as a record: the line's head and its message's fields.

    Fails on a line that is not a whole record: one without the time-and-level head (a
    traceback's line, say, or one forged by a client), or one with a second time of the
    server's own (as gunicorn's and gevent's access lines have by default).
    """
    out = []
    for line in text.splitlines():
        head = LINE.fullmatch(line)
        assert head, f"not a log record: {line!r}"
        unquoted = re.sub(QUOTED, '""', head["message"])  # quoted text is the client's
        assert not SECOND_TIME.search(unquoted), f"two times: {line!r}"
        fields = {
            key: json.loads(value) if value.startswith('"') else value
            for key, value in FIELD.findall(head["message"])
        }
        out.append(
            {
                **fields,
                "level": head["level"],
                "logger": head["logger"],
                "time": head["time"],
            }
        )
    return out


def logged(server: Server, since: int = 0) -> list[dict[str, str]]:
    """The records the server logged after byte ``since`` of its log (whole lines only:
    the server may be writing the last one as we read)."""
    text = server.log_path.read_bytes()[since:].decode(errors="replace")
    return records(text[: text.rfind("\n") + 1])


def events(server: Server, since: int, name: str) -> list[dict[str, str]]:
    """The ``event=<name>`` records logged after byte ``since`` of the server's log."""
    return [r for r in logged(server, since) if r.get("event") == name]


def wait_for_events(
    server: Server, since: int, name: str, count: int = 1, timeout: float = 10.0
) -> list[dict[str, str]]:
    """Poll the log until ``count`` ``event=<name>`` records follow byte ``since``."""
    deadline = time.monotonic() + timeout
    while len(found := events(server, since, name)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} event={name} lines:\n{server.log()}")
        time.sleep(0.05)
    return found


def log_size(server: Server) -> int:
    return server.log_path.stat().st_size


def wait_for_metrics(
    server: Server,
    predicate: Callable[[dict[str, float]], bool],
    what: str,
    timeout: float = 10.0,
) -> dict[str, float]:
    """Poll ``/metrics`` until ``predicate(samples)`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate(samples := server.metrics()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {samples}")
        time.sleep(0.05)
    return samples


def logged_at_ms(record: dict[str, str]) -> int:
    """When the server logged ``record``: epoch milliseconds, like a quote's ``data-ts``."""
    when = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return round(when.replace(tzinfo=UTC).timestamp() * 1000)


QUOTE_EVENT = re.compile(r"[A-Z]{2,5}")  # a quote's event is named after its symbol


def is_quote(event: Event) -> bool:
    """A quote (row) event, as opposed to the market summary, news, a chart, a heartbeat,
    a broadcast, or a block with no event at all."""
    return QUOTE_EVENT.fullmatch(event.event) is not None


def quote_events(events: list[Event]) -> list[Event]:
    return [e for e in events if is_quote(e)]


@dataclass
class Event:
    """One dispatched SSE event, plus the comments and retry hint read since the last one."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


class SSEClient:
    """A minimal, spec-following EventSource over a raw HTTP/1.1 connection.

    It decodes a ``Content-Encoding: gzip`` stream as it arrives, as a browser does (ask
    for one with ``headers={"Accept-Encoding": "gzip"}``), and counts what came over the
    wire (``wire_bytes``, after chunked framing) and what it decoded (``decoded_bytes``).
    """

    def __init__(
        self,
        base: str,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
        source: str | None = None,
    ) -> None:
        """``source``: the local address to connect from (another viewer, on loopback)."""
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(
            host,
            int(port),
            timeout=timeout,
            source_address=(source, 0) if source else None,
        )
        self.conn.request(
            "GET", path, headers={"Accept": "text/event-stream", **(headers or {})}
        )
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.last_id: str | None = None
        gzipped = self.headers.get("Content-Encoding") == "gzip"
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        self._buffer = b""
        self.wire_bytes = 0
        self.decoded_bytes = 0

    @property
    def ended_cleanly(self) -> bool:
        """The chunked body ended with its last chunk, not with the connection cut (both
        read as the end of the stream; only a last chunk leaves no chunk pending)."""
        return self.response.chunk_left is None and self.response.isclosed()

    @property
    def gzip_ended_cleanly(self) -> bool:
        """The gzip stream ended with its trailer, CRC and length checked by zlib."""
        inflate = self._inflate
        return inflate is not None and inflate.eof and not inflate.unused_data

    def _readline(self) -> bytes:
        if self._inflate is None:
            line = self.response.readline()
            self.wire_bytes += len(line)
            self.decoded_bytes += len(line)
            return line
        while b"\n" not in self._buffer:
            raw = self.response.read1(65536)
            if not raw:
                line, self._buffer = self._buffer, b""
                return line
            self.wire_bytes += len(raw)
            decoded = self._inflate.decompress(raw)
            self.decoded_bytes += len(decoded)
            self._buffer += decoded
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def next(self) -> Event:
        """Read lines until an event is dispatched (or a comment-only block ends)."""
        current = Event()
        data_lines: list[str] = []
        seen_field = False
        while True:
            raw = self._readline()
            if not raw:
                raise EOFError("stream ended")
            line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            if line == "":
                if data_lines or current.comments or current.retry is not None:
                    current.data = "\n".join(data_lines)
                    if current.id is not None:
                        self.last_id = current.id
                    return current
                if seen_field:
                    current, seen_field = Event(), False
                continue
            if line.startswith(":"):
                current.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            seen_field = True
            if name == "data":
                data_lines.append(value)
            elif name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "retry" and value.isdigit():
                current.retry = int(value)

    def next_data(self) -> Event:
        """The next event that carries data, skipping retry hints and comments."""
        while True:
            event = self.next()
            if event.data or event.event != "message":
                return event

    def next_quote(self) -> Event:
        """The next quote event, skipping every other kind."""
        while True:
            event = self.next()
            if is_quote(event):
                return event

    def events_until(self, predicate, timeout: float = 10.0) -> list[Event]:
        """Read events until ``predicate(events_so_far)`` is true; fail after ``timeout``."""
        events: list[Event] = []
        deadline = time.monotonic() + timeout
        while not predicate(events):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met in {timeout}s; got {len(events)} events"
                )
            events.append(self.next())
        return events

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def nginx_conf(prefix: Path, http: str) -> str:
    """The main config of a throwaway nginx that keeps everything (pid, logs, temp files)
    under ``prefix``, with ``http`` inside its ``http {}`` block."""
    # A root master switches its workers to `nobody`, who cannot enter pytest's private
    # tmp dirs; a throwaway instance keeps root (production: www-data).
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/temp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    access_log {prefix}/access.log;
{temp}
{http}
}}
"""


class Nginx:
    """A throwaway foreground nginx whose whole state (pid, logs, temp files) lives under
    ``prefix``: ``http`` is its ``http {}`` block (see :func:`nginx_conf`), ``files`` are
    written into ``prefix`` first (a site the block includes, say), and it counts as
    started once every port in ``ports`` accepts."""

    def __init__(
        self,
        binary: str,
        prefix: Path,
        http: str,
        ports: list[int],
        files: dict[str, str] | None = None,
    ) -> None:
        self.binary, self.prefix, self.http = binary, prefix, http
        self.ports, self.files = ports, files or {}
        self.error_log = prefix / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Self:
        p = self.prefix
        (p / "temp").mkdir(
            parents=True, exist_ok=True
        )  # nginx makes only the last level
        for name, text in self.files.items():
            (p / name).write_text(text)
        conf = p / "nginx.conf"
        conf.write_text(nginx_conf(p, self.http))
        command = [
            self.binary,
            "-p",
            f"{p}/",
            "-c",
            str(conf),
            "-e",
            str(self.error_log),
        ]
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
        while not all(accepts(port) for port in self.ports):
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
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        parts = [self.prefix / "output.log", self.error_log]
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in parts if p.exists()
        )


def accepts(port: int) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
