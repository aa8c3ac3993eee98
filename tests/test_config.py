"""Settings come from the environment, with defaults, and bad values are refused clearly."""

from __future__ import annotations

import runpy

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
