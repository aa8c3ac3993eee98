"""The floor: a bare gevent StreamServer that writes each pre-encoded event to every socket.

No framework, no WSGI, no per-viewer queue: it answers the request line with SSE headers,
keeps the socket in a set, and a feed greenlet encodes each tick once and writes the same
bytes to every socket in turn. This is the least a gevent server can do per event per viewer.

Run: python server.py PORT
"""

from __future__ import annotations

import resource
import socket
import sys
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent
from gevent.server import StreamServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workload import Market, encode, schedule

HEADERS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: keep-alive\r\nX-Accel-Buffering: no\r\n\r\n"
)
viewers: set = set()


def handle(sock, address) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = sock.recv(4096)
        if not chunk:
            return
        request += chunk
    # As gunicorn, Node and uvicorn do: small writes go out at once, not after an ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(HEADERS)
    viewers.add(sock)
    try:
        while sock.recv(
            4096
        ):  # an SSE client sends nothing more: this returns on hang-up
            pass
    except OSError:
        pass
    finally:
        viewers.discard(sock)


def feed() -> None:
    market = Market()
    for wait, symbol in schedule():
        gevent.sleep(wait)
        payload = encode(symbol, *market.tick(symbol))
        for sock in list(viewers):
            try:
                sock.sendall(payload)
            except OSError:
                viewers.discard(sock)


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=4096)
    gevent.spawn(feed)
    server.serve_forever()
