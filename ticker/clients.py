"""The other end of a stream: who the client is, and noticing when it has gone.

A browser that closes its tab sends a FIN that nobody reads, because an SSE client never
sends anything after its request. Left alone, the server would only notice on the second
write after it left (twice the heartbeat interval when nothing ticks). So every stream's
socket is watched for readability: a readable SSE socket means the client hung up.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping

import gevent

log = logging.getLogger(__name__)

# Where the servers we run under put the connection's socket in the WSGI environ.
_SOCKET_KEYS = ("gunicorn.socket", "ticker.socket")


def client_socket(environ: Mapping[str, object]) -> socket.socket | None:
    """The request's socket, if the server exposes it (gunicorn and ``app.py`` do)."""
    for key in _SOCKET_KEYS:
        sock = environ.get(key)
        if sock is not None:
            return sock  # type: ignore[return-value]
    return None


def parse_trusted(spec: str) -> tuple[bool, tuple[ipaddress._BaseNetwork, ...]]:
    """Parse ``FORWARDED_ALLOW_IPS``: ``*`` or a comma-separated list of addresses/networks."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if "*" in items:
        return True, ()
    return False, tuple(ipaddress.ip_network(s, strict=False) for s in items)


def client_address(environ: Mapping[str, object], trusted: tuple[bool, tuple]) -> str:
    """The viewer's address: the peer's, or, when the peer is a trusted proxy, the last
    ``X-Forwarded-For`` hop (the one that proxy appended; earlier hops are client-made)."""
    peer = str(environ.get("REMOTE_ADDR") or "")
    forwarded = str(environ.get("HTTP_X_FORWARDED_FOR") or "")
    if not forwarded or not _is_trusted(peer, trusted):
        return peer
    last = forwarded.split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return peer


def _is_trusted(peer: str, trusted: tuple[bool, tuple]) -> bool:
    everyone, networks = trusted
    if everyone:
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in networks)


class HangupWatch:
    """Calls ``on_hangup`` once when the peer of ``sock`` closes or resets the connection.

    It costs one event-loop watcher per stream and no greenlet until something happens.
    """

    def __init__(self, sock: socket.socket, on_hangup: Callable[[], None]) -> None:
        self._sock = sock
        self._on_hangup = on_hangup
        self._stopped = False
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        # Runs in the event loop, where nothing may block: look in a greenlet of its own.
        self._watcher.stop()
        gevent.spawn(self._check)

    def _check(self) -> None:
        try:
            data = self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""  # reset by peer
        if data or self._stopped:
            return  # the client sent more bytes (pipelining): not a hangup; stop watching
        self._on_hangup()

    def stop(self) -> None:
        """Stop watching. Must run before the socket is closed and its descriptor reused."""
        self._stopped = True
        self._watcher.stop()
        self._watcher.close()
