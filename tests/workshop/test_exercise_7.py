"""Workshop exercise 7: measure a watchlist with the benchmark (``ours-watchlist``).

Run it with ``pytest tests -m exercise_7``. It does one tiny run of the new scenario with
the benchmark's own ``run_one`` and ``loadgen`` (``bench.ensure_loadgen`` builds it with gcc
and links zlib): 40 viewers, a 4-second window, against a real gunicorn. It does not set the
whole benchmark up (a venv per peer and npm: minutes, and the network): the app's server comes
from this interpreter's venv, which has everything the app needs. Every viewer must get every
tick of its three symbols, and the results file's report must know the scenario.

Needs gcc, zlib's header (Debian's zlib1g-dev), taskset and at least two CPUs (the runner
pins the server to CPU 0 and the load generator to CPU 1); without them this skips, except on
CI (``CI=true``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import pytest
from support import ROOT
from workshop_support import require

pytestmark = pytest.mark.exercise_7

NAME = "ours-watchlist"
VIEWERS = 40
WATCHED = 3


def load(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "bench" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    missing = [f"no {tool}" for tool in ("gcc", "taskset") if not shutil.which(tool)]
    if not Path("/usr/include/zlib.h").exists():  # loadgen is built with -lz
        missing.append("no /usr/include/zlib.h (zlib1g-dev)")
    if not {0, 1} <= os.sched_getaffinity(0):
        missing.append("CPUs 0 and 1 are not both available")
    require(missing, "the benchmark needs gcc, zlib1g-dev, taskset and two CPUs")
    return load("run")


_runs: dict[str, dict] = {}


def tiny_run(bench: ModuleType) -> dict:
    """One tiny run of the scenario, as ``bench/run.py --servers ours-watchlist`` does
    it; made once, by the first test that asks."""
    assert NAME in bench.SERVERS, (
        f"bench/run.py has no {NAME!r} in SERVERS (it knows {sorted(bench.SERVERS)}): "
        "add the scenario there, then teach Server.start to run it"
    )
    if NAME not in _runs:
        app_venv = Path(sys.executable).parent.parent
        assert (app_venv / "bin" / "gunicorn").exists(), f"no gunicorn in {app_venv}"
        bench.venv = lambda name: app_venv  # all the tiny run needs is in this venv
        args = argparse.Namespace(
            window=4.0, warmup=1.0, rate=1000, idle=0.5, date="workshop"
        )
        _runs[NAME] = bench.run_one(bench.ensure_loadgen(), NAME, VIEWERS, args)
    result = _runs[NAME]
    assert "error" not in result, (
        f"the run failed: {result['error']} "
        f"(server log: bench/results/raw/workshop-{NAME}-{VIEWERS}.server.log)"
    )
    return result


def test_the_run_held_every_viewer_on_one_watchlist_stream(bench: ModuleType):
    result = tiny_run(bench)
    report = result["loadgen"]
    assert report["paths"] == 1, (
        f"loadgen was given {report['paths']} paths, the first {report['first_path']!r}. "
        "Its --path takes a comma-separated LIST of paths, so the commas between symbols "
        "must be percent-encoded (%2C)"
    )
    url = urlsplit(report["first_path"])
    symbols = parse_qs(url.query).get("symbols", [""])[0].split(",")
    assert url.path == "/stream" and len(symbols) == WATCHED, (
        f"viewers should watch /stream?symbols= with {WATCHED} symbols, "
        f"not {report['first_path']!r}"
    )
    assert result["held"] == VIEWERS, report["connections"]


def test_every_viewer_got_every_tick_of_its_symbols(bench: ModuleType):
    result = tiny_run(bench)
    by_tick = result["loadgen"]["by_tick"]
    assert by_tick["ticks_in_window"] > 0, by_tick
    # Exact whatever the feed's jitter: all ticks seen were owed to every viewer.
    assert 99 <= result["pct_by_tick"] <= 101, (
        f"by tick: {result['pct_by_tick']:.1f} % delivered ({by_tick}). Far above 100 "
        "means loadgen's --ticks-per-s (the rate of all the ticks that viewers "
        "collectively watch) is still the whole feed's 10"
    )
    # What the runner told loadgen each viewer is owed: 3 symbols, a tick a second each.
    # (Not judged by "% of expected": over a 4-second window of 3 jittered symbols it
    # swings by tens of percent either way.)
    owed = result["loadgen"]["events_per_s_per_conn"]
    assert owed == WATCHED, (
        f"each viewer is owed {owed} updates a second, by the scenario's 'rate'; "
        f"a viewer of {WATCHED} symbols that tick about once a second is owed {WATCHED}"
    )
    assert result["p99_ms"] < 2000, result["loadgen"]["latency_ms"]


def test_the_report_tabulates_the_scenario(bench: ModuleType):
    result = tiny_run(bench)
    try:
        lines = load("report").table([result])
    except ValueError as exc:
        raise AssertionError(
            f"bench/report.py cannot place {NAME!r} in its table ({exc}): add it to ORDER"
        ) from None
    assert any(result["label"] in line for line in lines), lines
