"""Workshop exercise 1: a Range column (the day's high minus its low) in the quote table.

Run it with ``pytest tests -m exercise_1``. The same row partial feeds the page and every
stream, so the check reads the new cell in both places, and in a symbol's page: it must sit
under its header and equal High minus Low of the same row.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from support import Server, SSEClient
from workshop_support import Element, parse_html, quote_rows

pytestmark = pytest.mark.exercise_1

HOW = (
    "add a Range column to the header's `columns` in templates/_quote_table.html and a "
    '<td class="num range"> cell to the row in templates/_quote_row.html'
)


def header(page: Element) -> list[str]:
    return [
        th.text()
        for th in page.find_all(
            lambda e: (
                e.tag == "th"
                and e.parent.tag == "tr"
                and e.parent.parent.tag == "thead"
            )
        )
    ]


def cells(row: Element) -> list[Element]:
    return [c for c in row.children if isinstance(c, Element) and c.tag in ("th", "td")]


def cell(row: Element, name: str) -> Element:
    found = [c for c in cells(row) if name in c.classes]
    assert len(found) == 1, (
        f"row {row.attrs.get('data-symbol')} has {len(found)} cells of class "
        f"{name!r}; {HOW}"
    )
    return found[0]


def amount(element: Element) -> Decimal:
    return Decimal(element.text().replace(",", ""))


def assert_range_is_high_minus_low(row: Element) -> None:
    symbol = row.attrs.get("data-symbol")
    high, low = amount(cell(row, "high")), amount(cell(row, "low"))
    shown = cell(row, "range").text()
    assert shown == f"{high - low:.2f}", (
        f"{symbol}: Range shows {shown!r}, but High - Low is {high} - {low} = "
        f"{high - low:.2f} (two decimals, like the other prices)"
    )


def test_the_table_header_has_a_range_column_over_the_range_cells(
    app_server: Server,
):
    _, _, body = app_server.request("/")
    page = parse_html(body.decode())
    titles = header(page)
    assert "Range" in titles, f"the table's header is {titles}; {HOW}"
    row = quote_rows(page)[0]
    row_cells = cells(row)
    assert len(row_cells) == len(titles), (
        f"the header has {len(titles)} columns but a row has {len(row_cells)} cells"
    )
    position = [i for i, c in enumerate(row_cells) if "range" in c.classes]
    assert position == [titles.index("Range")], (
        "the Range cell must sit under the Range header: "
        f"header {titles}, cells {[sorted(c.classes) for c in row_cells]}"
    )


def test_every_row_of_the_page_shows_high_minus_low(app_server: Server):
    _, _, body = app_server.request("/")
    rows = quote_rows(parse_html(body.decode()))
    assert len(rows) == 12
    for row in rows:
        assert_range_is_high_minus_low(row)


def test_every_streamed_row_carries_its_range_too(app_server: Server):
    """Ticks arrive as the same partial: 40 of them, every one with a right Range."""
    with SSEClient(app_server.base, "/stream") as client:
        rows = []
        while len(rows) < 40:
            event = client.next_data()
            rows += quote_rows(parse_html(event.data))
    for row in rows:
        assert_range_is_high_minus_low(row)


def test_a_symbols_page_shows_the_column_as_well(app_server: Server):
    symbol = app_server.get_json("/api/quotes")["quotes"][0]["symbol"]
    _, _, body = app_server.request(f"/symbols/{symbol}")
    page = parse_html(body.decode())
    assert "Range" in header(page), HOW
    (row,) = quote_rows(page)
    assert_range_is_high_minus_low(row)
