"""Routing and validation, in process (the ``client`` fixture): which request gets which
answer. Fast, so every rule gets its own case; what streams is proven against real servers
elsewhere (test_server.py, test_bad_input.py)."""

from __future__ import annotations

import pytest

from ticker import get_service

TOKEN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def symbols(app):
    return get_service(app).symbols


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/stream/A", 400, "Malformed symbol"),
        ("/stream/TOOLONG", 400, "Malformed symbol"),
        ("/stream/A1", 400, "Malformed symbol"),
        ("/stream/ZZZZ", 404, "Unknown symbol: ZZZZ."),
        ("/symbols/ZZZZ", 404, "Unknown symbol: ZZZZ."),
        ("/stream?symbols=ZZZZ", 404, "Unknown symbol: ZZZZ."),
        ("/stream?symbols=" + ",".join(["ABC"] * 101), 400, "Too many symbols"),
        ("/stream?max_s=-1", 400, "max_s must be"),
        ("/stream?max_s=86401", 400, "max_s must be"),
        ("/stream?max_s=1.5", 400, "max_s must be"),
        ("/?sort=price", 400, "Unknown sort"),
        ("/?sort=last&dir=up", 400, "Unknown sort direction"),
        ("/?streams=many", 400, "Unknown view"),
    ],
)
def test_bad_input_gets_a_readable_4xx(client, path, status, says):
    response = client.get(path, headers={"Accept": "text/plain"})
    assert response.status_code == status
    assert says in response.get_data(as_text=True)


def test_a_malformed_symbol_is_never_reflected(client):
    response = client.get("/symbols/<script>", headers={"Accept": "text/html"})
    assert response.status_code == 400
    assert "<script>" not in response.get_data(as_text=True)


def test_every_page_answers_200(client, symbols):
    for path in (
        "/",
        "/?streams=per-symbol",
        "/?sort=last&dir=asc",
        f"/symbols/{symbols[0]}",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == "text/html"


def test_a_symbol_is_case_insensitive(client, symbols):
    assert client.get(f"/symbols/{symbols[0].lower()}").status_code == 200


def test_the_table_links_its_stream_with_the_viewers_watchlist(client, symbols):
    client.set_cookie("watchlist", f"{symbols[1]}-{symbols[0]}-NOPE")
    page = client.get("/").get_data(as_text=True)
    assert f'sse-connect="/stream?symbols={symbols[1]},{symbols[0]}"' in page


def test_a_watchlist_edit_sets_the_cookie_and_redirects_a_plain_form(client, symbols):
    response = client.post("/watchlist/" + symbols[0] + "/delete")
    assert response.status_code == 303
    assert symbols[0] not in response.headers["Set-Cookie"].split(";")[0]
    reset = client.post("/watchlist/reset")
    assert "watchlist=;" in reset.headers["Set-Cookie"]


def test_a_watchlist_edit_from_htmx_gets_the_market_section(client, symbols):
    response = client.delete(f"/watchlist/{symbols[0]}", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert response.get_data(as_text=True).lstrip().startswith('<div id="market"')


def test_the_last_symbol_cannot_leave_the_watchlist(client, symbols):
    client.set_cookie("watchlist", symbols[0])
    response = client.delete(f"/watchlist/{symbols[0]}")
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"message": "hi"}, 401),
        ({"Authorization": "Bearer wrong"}, {"message": "hi"}, 401),
        (TOKEN, {"message": ""}, 400),
        (TOKEN, {"message": "x" * 281}, 400),
        (TOKEN, {"message": "bell\x07"}, 400),
        (TOKEN, ["not", "an", "object"], 400),
        (TOKEN, {"message": "Markets close early"}, 202),
    ],
)
def test_broadcast_needs_the_token_and_one_short_printable_message(
    client, headers, body, status
):
    response = client.post("/broadcast", json=body, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_broadcast_is_forbidden_without_an_admin_token():
    from ticker import Settings, create_app

    client = create_app(Settings(admin_token="")).test_client()
    assert client.post("/broadcast", json={"message": "hi"}).status_code == 403


def test_a_method_a_route_does_not_allow_is_405_with_allow(client):
    response = client.post("/stream")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]


def test_api_quotes_lists_every_symbol_in_order(client, symbols):
    data = client.get("/api/quotes").get_json()
    assert [q["symbol"] for q in data["quotes"]] == list(symbols)
    assert data["seq"] >= len(symbols)


def test_every_response_carries_the_security_headers(client):
    response = client.get("/healthz")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
