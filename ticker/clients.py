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
    """Parse ``FORWARDED_ALLOW_IPS``: a comma-separated list of addresses and networks
    (``10.0.0.0/8``), and/or ``*``: any peer may tell the client's address (a PaaS router,
    whose address is not fixed). Raises ``ValueError`` on an entry that is neither."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    networks = tuple(ipaddress.ip_network(s, strict=False) for s in items if s != "*")
    return "*" in items, networks


def client_address(environ: Mapping[str, object], trusted: tuple[bool, tuple]) -> str:
    """The viewer's address: the peer's, or, when the peer is a trusted proxy, the last
    untrusted ``X-Forwarded-For`` hop.

    Each proxy appends the address it got the request from, so the list is read from the
    right: hops that are themselves listed proxies are skipped, and the first one that is
    not is the client (every hop left of it is whatever the client chose to send). If
    every hop is a listed proxy, the leftmost is taken. A hop that is not an address where
    one is needed means the header cannot be believed: the peer's address is used.

    ``*`` trusts any peer, not any hop: behind a router it means "the router's last hop",
    so a client cannot pick its own address by sending the header itself.
    """
    peer = str(environ.get("REMOTE_ADDR") or "")
    forwarded = str(environ.get("HTTP_X_FORWARDED_FOR") or "")
    everyone, networks = trusted
    if not forwarded or not (everyone or _listed(peer, networks)):
        return peer
    # Empty list elements (``a,,b``, a trailing comma) are no hops (RFC 9110, 5.6.1).
    hops = [hop.strip() for hop in forwarded.split(",")]
    hops = [hop for hop in hops if hop]
    found = None
    for hop in reversed(hops):
        try:
            found = ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not _listed(found, networks):
            break
    return str(found) if found is not None else peer


def _listed(address: object, networks: tuple) -> bool:
    """Whether ``address`` (an address object or its text) is in one of ``networks``."""
    if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        try:
            address = ipaddress.ip_address(str(address))
        except ValueError:
            return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return any(address in net or (mapped and mapped in net) for net in networks)


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
