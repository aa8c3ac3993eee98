"""Who the client is: its address, as the per-address cap and the logs see it.

Behind a proxy every viewer shares the proxy's address, so the address is taken from
``X-Forwarded-For``, but only when the peer is a proxy listed in ``FORWARDED_ALLOW_IPS``:
anyone else could write whatever they like in that header.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping


@functools.lru_cache(maxsize=16)  # read once per setting, not once per request
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
