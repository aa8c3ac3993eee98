"""Workshop exercise 2: a named event, ``connected``, that says where a stream is connected.

Run it with ``pytest tests -m exercise_2``. Every stream starts with one ``connected``
event naming the server process that serves it, before the snapshot; the pages have a place
inside their ``sse-connect`` element that swaps it in. The check reads raw streams and the
pages' HTML, as a browser would get them.
"""

from __future__ import annotations

import pytest
from support import Event, Server, SSEClient
from workshop_support import Element, by_attr, parse_html

pytestmark = pytest.mark.exercise_2

EVENT = "connected"
LOOK_AT = 15  # events read from the start of a stream: the hello, the snapshot, ticks


def first_events(server: Server, path: str, gzip: bool = False) -> list[Event]:
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    with SSEClient(server.base, path, headers=headers) as client:
        assert client.status == 200, client.status
        if gzip:
            assert client.headers.get("Content-Encoding") == "gzip", client.headers
        return client.events_until(lambda events: len(events) >= LOOK_AT)


def assert_connected_first(server: Server, path: str, gzip: bool = False) -> None:
    events = [e for e in first_events(server, path, gzip) if e.data]
    names = [e.event for e in events]
    assert EVENT in names, (
        f"{path} sent no {EVENT!r} event; its first events were {names[:8]}. Send "
        "it as the viewer's own bytes with the stream's hello, in "
        "ticker/delivery/connection.py (Connection._start)"
    )
    assert names.count(EVENT) == 1, f"{path}: one {EVENT!r} per connection: {names}"
    quotes = [i for i, e in enumerate(events) if f'data-symbol="{e.event}"' in e.data]
    assert names.index(EVENT) < quotes[0], (
        f"{path}: {EVENT!r} should come before the snapshot, so the page shows it "
        f"first; events: {names[:8]}"
    )
    connected = events[names.index(EVENT)]
    process = server.get_json("/healthz")["process"]
    assert process in connected.data, (
        f"the {EVENT!r} event should name the serving process ({process!r}, as in "
        f"/healthz and the stream's first comment); it says {connected.data!r}"
    )


def test_the_table_stream_starts_with_a_connected_event(app_server: Server):
    assert_connected_first(app_server, "/stream")


def test_a_symbol_stream_starts_with_one_too(app_server: Server):
    symbol = app_server.get_json("/api/quotes")["quotes"][2]["symbol"]
    assert_connected_first(app_server, f"/stream/{symbol}")


def test_a_gzip_stream_starts_with_one_too(app_server: Server):
    """A viewer that takes gzip gets it too: its own bytes, compressed on their own
    (Connection._own), never spliced into the audience's shared compressed stream."""
    assert_connected_first(app_server, "/stream", gzip=True)


def swap_target(server: Server, path: str) -> Element:
    status, _, body = server.request(path)
    assert status == 200, status
    page = parse_html(body.decode())
    targets = page.find_all(by_attr("sse-swap", EVENT))
    assert len(targets) == 1, (
        f'{path} should have one element with sse-swap="{EVENT}" (found '
        f"{len(targets)}): htmx swaps the event's data into it"
    )
    (target,) = targets
    assert any("sse-connect" in a.attrs for a in target.ancestors()), (
        f'on {path} the sse-swap="{EVENT}" element must sit inside the element with '
        "sse-connect: htmx only swaps events of the stream an element is inside"
    )
    return target


def test_the_market_page_has_a_place_for_it(app_server: Server):
    swap_target(app_server, "/")


def test_a_symbols_page_has_a_place_for_it(app_server: Server):
    symbol = app_server.get_json("/api/quotes")["quotes"][0]["symbol"]
    swap_target(app_server, f"/symbols/{symbol}")
