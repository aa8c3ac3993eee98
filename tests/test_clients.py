"""Who the viewer is: ``X-Forwarded-For`` is believed only from the proxies listed in
``FORWARDED_ALLOW_IPS``, and then only its last untrusted hop, whatever a client sends.

Plain unit tests of ``ticker.clients`` (no server): one test per rule, hostile headers
included. The per-client cap that uses the address is tested against a real server in
``tests/test_reliability.py``.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from ticker.web.clients import client_address, parse_trusted

LOCAL = parse_trusted("127.0.0.1,::1")  # the default
PROXIES = parse_trusted("127.0.0.1, 10.0.0.0/8, fd00::/8")


def address(forwarded: str | None, peer: str = "127.0.0.1", trusted=PROXIES) -> str:
    environ = {"REMOTE_ADDR": peer}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_address(environ, trusted)


def test_without_the_header_the_client_is_the_peer():
    assert address(None) == "127.0.0.1"
    assert address(None, peer="203.0.113.7") == "203.0.113.7"
    assert address("", peer="203.0.113.7") == "203.0.113.7"


def test_an_untrusted_peer_sending_the_header_is_itself_the_client():
    assert address("198.51.100.9", peer="203.0.113.7") == "203.0.113.7"
    assert address("10.0.0.1", peer="203.0.113.7") == "203.0.113.7"
    assert address("198.51.100.9", peer="192.0.2.1", trusted=LOCAL) == "192.0.2.1"


def test_a_trusted_peer_is_believed_about_the_hop_it_appended():
    assert address("198.51.100.9") == "198.51.100.9"
    assert address("198.51.100.9", trusted=LOCAL) == "198.51.100.9"


def test_a_spoofed_first_hop_is_ignored_in_favour_of_the_last_untrusted_one():
    assert address("6.6.6.6, 198.51.100.9") == "198.51.100.9"
    assert address("1.1.1.1, 2.2.2.2, 3.3.3.3, 198.51.100.9") == "198.51.100.9"


def test_hops_that_are_trusted_proxies_are_skipped_from_the_right():
    # client -> 10.1.2.3 (an inner proxy, listed) -> 127.0.0.1 (the peer, listed)
    assert address("6.6.6.6, 198.51.100.9, 10.1.2.3") == "198.51.100.9"
    assert address("198.51.100.9, 10.1.2.3, 10.9.9.9, 127.0.0.1") == "198.51.100.9"


def test_when_every_hop_is_a_trusted_proxy_the_leftmost_is_the_client():
    assert address("10.0.0.5, 10.1.2.3") == "10.0.0.5"
    assert address("127.0.0.1") == "127.0.0.1"


def test_a_network_in_cidr_form_trusts_its_whole_range_and_nothing_else():
    trusted = parse_trusted("10.0.0.0/8")
    assert address("198.51.100.9", peer="10.200.3.4", trusted=trusted) == (
        "198.51.100.9"
    )
    assert address("198.51.100.9", peer="11.0.0.1", trusted=trusted) == "11.0.0.1"
    # strict=False: host bits set in the spec still mean the network.
    assert parse_trusted("10.1.2.3/8")[1] == (ipaddress.ip_network("10.0.0.0/8"),)


def test_ipv6_peers_and_hops_are_read_and_written_in_canonical_form():
    assert address("2001:db8::1", peer="::1", trusted=LOCAL) == "2001:db8::1"
    assert address("2001:DB8:0:0::0001") == "2001:db8::1"
    assert address("2001:db8::1, fd00::7") == "2001:db8::1"  # fd00::/8 is listed
    assert address("2001:db8::1", peer="2001:db8::2") == "2001:db8::2"
    # A v4 peer seen through a dual-stack socket is the same listed address.
    assert address("198.51.100.9", peer="::ffff:127.0.0.1", trusted=LOCAL) == (
        "198.51.100.9"
    )


def test_whitespace_around_hops_does_not_matter():
    assert address("  6.6.6.6 ,\t198.51.100.9  ") == "198.51.100.9"
    assert address("198.51.100.9 , 10.1.2.3 ") == "198.51.100.9"


def test_empty_list_elements_are_no_hops():
    assert address("198.51.100.9,,") == "198.51.100.9"
    assert address(",198.51.100.9, ,10.1.2.3,") == "198.51.100.9"
    assert address(" , ,") == "127.0.0.1"


@pytest.mark.parametrize(
    "garbage",
    [
        "unknown",
        "198.51.100.9:4711",  # a port is not an address
        "[2001:db8::1]",
        "198.51.100.999",
        "198.51.100.9 203.0.113.7",
        "<script>",
        "198.51.100.9\r\nX-Evil: 1",
    ],
)
def test_a_garbage_hop_where_one_is_needed_falls_back_to_the_peer(garbage):
    assert address(garbage) == "127.0.0.1"
    assert address(f"198.51.100.9, {garbage}") == "127.0.0.1"
    # ... even behind a listed proxy hop: the garbage is still the hop we would need.
    assert address(f"{garbage}, 10.1.2.3") == "127.0.0.1"


def test_garbage_left_of_the_client_hop_is_never_looked_at():
    assert address("unknown, <script>, 198.51.100.9") == "198.51.100.9"


def test_a_very_long_header_is_read_quickly_and_still_gives_the_last_untrusted_hop():
    spoofed = ", ".join(f"6.6.{i // 256 % 256}.{i % 256}" for i in range(20_000))
    started = time.monotonic()
    assert address(f"{spoofed}, 198.51.100.9, 10.1.2.3") == "198.51.100.9"
    assert address("x" * 100_000) == "127.0.0.1"
    assert address("10.0.0.1," * 20_000) == "10.0.0.1"  # all listed: the leftmost
    assert time.monotonic() - started < 5  # linear, not quadratic


def test_star_trusts_any_peer_but_not_the_hops_a_client_wrote_itself():
    star = parse_trusted("*")
    assert star == (True, ())
    assert address("198.51.100.9", peer="203.0.113.7", trusted=star) == ("198.51.100.9")
    # Behind a router with no fixed address: the router's hop, not the forged ones.
    assert address("6.6.6.6, 198.51.100.9", peer="203.0.113.7", trusted=star) == (
        "198.51.100.9"
    )
    assert address("garbage", peer="203.0.113.7", trusted=star) == "203.0.113.7"


def test_star_with_listed_networks_still_skips_their_hops():
    trusted = parse_trusted("*, 10.0.0.0/8")
    assert address("198.51.100.9, 10.1.2.3", peer="203.0.113.7", trusted=trusted) == (
        "198.51.100.9"
    )


def test_parse_trusted_reads_addresses_networks_spaces_and_empty_entries():
    everyone, networks = parse_trusted(" 127.0.0.1 , ,::1,10.0.0.0/8,")
    assert everyone is False
    assert networks == tuple(
        ipaddress.ip_network(n) for n in ("127.0.0.1/32", "::1/128", "10.0.0.0/8")
    )
    assert parse_trusted("") == (False, ())


def test_an_empty_spec_trusts_nobody():
    nobody = parse_trusted("")
    assert address("198.51.100.9", peer="127.0.0.1", trusted=nobody) == "127.0.0.1"


@pytest.mark.parametrize("spec", ["localhost", "10.0.0.0/33", "127.0.0.1;10.0.0.1"])
def test_parse_trusted_refuses_an_entry_that_is_no_address_or_network(spec):
    with pytest.raises(ValueError):
        parse_trusted(spec)
