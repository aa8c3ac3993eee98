"""Settings come from the environment, with defaults, and bad values are refused clearly;
the README's settings table lists exactly the code's settings and defaults."""

from __future__ import annotations

import runpy
from dataclasses import fields

import pytest
from support import ROOT

from ticker.config import ConfigError, Settings


def test_defaults_run_out_of_the_box():
    s = Settings.from_env({})
    assert (s.port, s.ticker_symbols, s.ticker_interval, s.heartbeat_s) == (
        5000,
        12,
        1.0,
        15.0,
    )
    assert s.web_concurrency == 1 and s.admin_token == "" and s.redis_url == ""


def test_environment_values_are_parsed_by_type():
    s = Settings.from_env(
        {
            "PORT": "8080",
            "TICKER_INTERVAL": "0.25",
            "ADMIN_TOKEN": "s3cret",
            "TICKER_SYMBOLS": " 30 ",
        }
    )
    assert (s.port, s.ticker_interval, s.admin_token, s.ticker_symbols) == (
        8080,
        0.25,
        "s3cret",
        30,
    )


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"HEARTBEAT_S": "0"}, "HEARTBEAT_S"),
        ({"TICKER_SYMBOLS": "0"}, "TICKER_SYMBOLS"),
        ({"MAX_STREAMS": "-1"}, "MAX_STREAMS"),
    ],
)
def test_bad_values_name_the_setting(env, name):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_gunicorn_config_follows_the_settings(monkeypatch):
    monkeypatch.setenv("PORT", "6123")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("MAX_STREAMS", "4000")
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["bind"] == "0.0.0.0:6123"
    assert conf["worker_class"] == "gevent"
    assert conf["workers"] == 3
    assert conf["worker_connections"] > 4000  # above MAX_STREAMS, not the default 1000
    assert conf["preload_app"] is False
    assert conf["graceful_timeout"] < 30
    assert conf["control_socket_disable"] is True


def test_several_workers_without_redis_run_one_worker_instead_of_two_markets(
    monkeypatch,
):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["workers"] == 1


def readme_settings() -> dict[str, str]:
    """The README's ``## Settings`` table: each variable's default, as written."""
    section = (ROOT / "README.md").read_text().split("\n## Settings\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        name, default = (cell.strip() for cell in row.strip("|").split("|")[:2])
        table[name.strip("`")] = default.strip("`")
    return table


def normalised(default: object) -> object:
    """``15``, ``15.0`` and 15 are one default; ``unset`` is the empty string."""
    if default in ("", "unset"):
        return ""
    try:
        return float(str(default).replace("_", "").replace(",", ""))
    except ValueError:
        return str(default)


def test_readme_settings_table_lists_every_setting_and_nothing_else():
    documented = set(readme_settings())
    in_code = {field.name.upper() for field in fields(Settings)}
    assert documented - in_code == set(), "documented but not a setting"
    assert in_code - documented == set(), "a setting the README does not list"


def test_readme_settings_table_gives_each_default_the_code_has():
    table = readme_settings()
    wrong = {
        field.name.upper(): (table[field.name.upper()], field.default)
        for field in fields(Settings)
        if field.name.upper() in table
        and normalised(table[field.name.upper()]) != normalised(field.default)
    }
    assert wrong == {}, "README default vs code default"


def test_news_far_more_frequent_than_ticks_is_refused_with_a_clear_error():
    """Starting replays the trading day, headlines included: news at a hundred times the
    tick rate would make that take minutes or never end, so it is refused up front."""
    with pytest.raises(ConfigError, match="TICKER_NEWS_S=20 is too frequent"):
        Settings(ticker_interval=1e9, ticker_news_s=20)
    Settings(ticker_interval=1e9, ticker_news_s=0)  # a frozen market: no news at all
    Settings(ticker_interval=2.0, ticker_news_s=1)  # two headlines a tick is fine
