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
