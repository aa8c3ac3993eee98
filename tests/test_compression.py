"""Compressed streams against a real gunicorn: gzip only when asked for, the same events,
far fewer bytes, a valid gzip end when a stream ends cleanly, and catching up still works.

The stream is decoded as it arrives (support.SSEClient inflates ``Content-Encoding: gzip``),
so every assertion here is about what a browser would decode. FRAME_MS=20 makes frames, and
so epochs (50 frames), short: a new viewer joins its audience's shared bytes within a second.
"""

from __future__ import annotations

import re
import socket
import time
import zlib

import pytest
from support import Server, SSEClient, is_quote

# What an SSE stream's lines look like: a field, a comment, or the blank line ending an event.
SSE_LINE = re.compile(r"(?:(?:data|event|id|retry): .*|: .*|:|)")
GZIP = {"Accept-Encoding": "gzip, deflate, br, zstd"}  # what Chromium sends
ENV = {"FRAME_MS": "20"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("compression") / "gunicorn.log"
    with Server.procfile(log_path, env=ENV).start() as srv:
        yield srv


def quotes_after(client: SSEClient, count: int, timeout: float = 15.0):
    """Read until ``count`` quote events have arrived; return every event read."""
    return client.events_until(
        lambda events: sum(map(is_quote, events)) >= count, timeout=timeout
    )


def test_a_client_that_asks_for_gzip_gets_the_same_events_in_far_fewer_bytes(server):
    symbols = len(server.get_json("/api/quotes")["quotes"])
    with (
        SSEClient(server.base, "/stream", headers=GZIP) as packed,
        SSEClient(server.base, "/stream") as plain,
    ):
        assert packed.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in packed.headers["Vary"]
        assert "Content-Encoding" not in plain.headers
        # The snapshot first: every symbol's row, then live quotes, decoded as they come.
        snapshot = quotes_after(packed, symbols)
        assert {e.event for e in snapshot if is_quote(e)} == {
            q["symbol"] for q in server.get_json("/api/quotes")["quotes"]
        }
        wire, decoded = packed.wire_bytes, packed.decoded_bytes
        live = quotes_after(
            packed, 400
        )  # several epochs: it has joined the shared bytes
        quotes_after(plain, 400)
        ids = [int(e.id) for e in live if is_quote(e)]
        assert ids == sorted(ids), "ids only ever increase"
        ratio = (packed.decoded_bytes - decoded) / (packed.wire_bytes - wire)
        # Frames compressed on their own give about 3x; the shared stream far more.
        assert ratio > 5, f"only {ratio:.1f}x once joined"


@pytest.mark.parametrize(
    "accept",
    [None, "identity", "identity;q=1, *;q=0", "gzip;q=0", "deflate", "br, zstd"],
)
def test_a_client_that_does_not_ask_for_gzip_never_gets_it(server, accept):
    headers = {} if accept is None else {"Accept-Encoding": accept}
    with SSEClient(server.base, "/stream", headers=headers) as client:
        assert "Content-Encoding" not in client.headers
        assert client.headers["Vary"] == "Accept-Encoding"
        assert client.next().retry == 1000, "a plain stream starts with its retry hint"


def test_q_values_are_honoured(server):
    with SSEClient(
        server.base, "/stream", headers={"Accept-Encoding": "identity;q=1, gzip;q=0.5"}
    ) as client:
        assert client.headers["Content-Encoding"] == "gzip"


def test_every_stream_compresses_including_a_symbols_row_and_chart(server):
    symbol = server.get_json("/api/quotes")["quotes"][0]["symbol"]
    with SSEClient(server.base, f"/stream/{symbol}", headers=GZIP) as client:
        assert client.headers["Content-Encoding"] == "gzip"
        events = client.events_until(
            lambda events: {"chart", symbol} <= {e.event for e in events}
        )
        assert all(e.event in {symbol, "chart", "broadcast", "message"} for e in events)


def test_a_stream_that_ends_cleanly_ends_as_valid_gzip(server):
    with SSEClient(server.base, "/stream?max_s=2", headers=GZIP) as client:
        quotes_after(client, 100)  # long enough to have joined the shared bytes
        with pytest.raises(EOFError):
            while True:
                client.next()
        assert client.gzip_ended_cleanly, "the trailer's CRC and length must check out"


def test_gzip_streams_end_cleanly_when_the_server_shuts_down(tmp_path):
    with Server.procfile(tmp_path / "gunicorn.log", env=ENV).start() as srv:
        clients = [SSEClient(srv.base, "/stream", headers=GZIP) for _ in range(3)]
        for client in clients:
            quotes_after(client, 60)
        srv.stop()
        for client in clients:
            with pytest.raises(EOFError):
                while True:
                    client.next()
            assert client.gzip_ended_cleanly
            client.close()


def test_compression_can_be_turned_off(tmp_path):
    env = {**ENV, "COMPRESS_STREAMS": "0"}
    with (
        Server.procfile(tmp_path / "gunicorn.log", env=env).start() as srv,
        SSEClient(srv.base, "/stream", headers=GZIP) as client,
    ):
        assert "Content-Encoding" not in client.headers
        assert client.next().retry == 1000


def test_a_gzip_viewer_who_fell_behind_catches_up_and_decodes_to_the_end(tmp_path):
    """A viewer that reads nothing for a while falls back to its mailbox; what it gets then
    must still be one valid gzip stream, and live quotes must follow the catch-up."""
    env = {**ENV, "TICKER_SYMBOLS": "60", "TICKER_INTERVAL": "0.05"}
    with Server.procfile(tmp_path / "gunicorn.log", env=env).start() as server:
        _fall_behind_and_catch_up(server)


def _fall_behind_and_catch_up(server: Server) -> None:
    # Compressed, the stream is small: before connecting, a tiny receive buffer and
    # segment size keep the server's send buffer small too, so it fills in seconds.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\nAccept-Encoding: gzip\r\n\r\n")
    try:
        # Stall: the server's writes fill our small buffer and the fan-out falls back.
        server.wait_for(
            lambda h: h["streams"]["pending_events"] > 0,
            "the viewer to fall behind",
            timeout=30,
        )
        stalled_at = time.time() * 1000
        sock.settimeout(10)
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"content-encoding: gzip" in head.lower()
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        partial, newest, lines, chunks = b"", 0, 0, ChunkReader(body)
        deadline = time.monotonic() + 30
        while newest <= stalled_at + 1000 and time.monotonic() < deadline:
            for piece in chunks.feed(sock.recv(1 << 20)):
                *complete, partial = (partial + inflate.decompress(piece)).split(b"\n")
                for line in complete:
                    # Bytes spliced at the wrong place decode to garbage, not an error.
                    assert SSE_LINE.fullmatch(line.decode("utf-8")), line[:80]
                    newest = max([newest, *map(int, _data_ts(line))])
                lines += len(complete)
        assert lines > 1000
        assert newest > stalled_at + 1000, "live quotes follow the catch-up"
    finally:
        sock.close()


def _data_ts(text: bytes) -> list[bytes]:
    return re.findall(rb'data-ts="(\d+)"', text)


class ChunkReader:
    """HTTP/1.1 chunked framing, undone incrementally."""

    def __init__(self, initial: bytes) -> None:
        self.buffer = initial

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        pieces = []
        while True:
            size_line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return pieces
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return pieces
            pieces.append(rest[:size])
            self.buffer = rest[size + 2 :]
