"""Promises about the repository itself: layout, the README's commands, what CI runs, the
deploy manifest, and a docstring atop every module."""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import fields
from pathlib import Path

from support import ROOT

from ticker.config import Settings


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [
        block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    ]


def test_readme_has_exactly_two_setup_commands_run_and_test():
    run, test = setup_commands()
    assert "requirements.txt" in run and "app.py" in run
    assert "requirements-dev.txt" in test and "pytest" in test


def test_ci_runs_the_readme_test_command_and_fails_on_no_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup_commands()[1] in ci
    assert '"$status" -eq 5' in ci


def test_ci_sets_ci_true_itself_before_running_anything():
    """A run of .ci/run by hand is the same strict run CI makes: missing parts fail."""
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "export CI=true" in lines
    first_command = next(i for i, line in enumerate(lines) if "pytest" in line)
    assert lines.index("export CI=true") < first_command


def test_top_level_layout_is_the_agreed_one():
    required = {
        "app.py",
        "requirements.txt",
        "ticker",
        "templates",
        "static",
        "tests",
        "Procfile",
    }
    allowed = required | {
        "README.md",
        ".ci",
        "requirements-dev.txt",
        "gunicorn.conf.py",
        ".python-version",
        "docs",
        "bench",
        ".gitignore",
        ".git",
        "app.json",
    }
    present = {p.name for p in ROOT.iterdir()} - {
        ".hypothesis",
        ".venv",
        ".pytest_cache",
        ".ruff_cache",
        "artifacts",
    }
    assert required <= present
    assert present <= allowed, present - allowed


def test_procfile_runs_gunicorn_with_the_committed_config():
    assert (ROOT / "Procfile").read_text().strip() == "web: gunicorn app:app"


def test_app_json_is_valid_and_sets_only_real_settings_with_valid_values():
    manifest = json.loads((ROOT / "app.json").read_text())
    env = manifest["env"]
    settings = {field.name.upper() for field in fields(Settings)}
    assert set(env) <= settings, set(env) - settings
    assert {
        "WEB_CONCURRENCY",
        "REDIS_URL",
        "ADMIN_TOKEN",
        "FORWARDED_ALLOW_IPS",
    } <= set(env)
    assert all(entry["description"] for entry in env.values())
    assert env["ADMIN_TOKEN"]["generator"] == "secret"
    # The values a deploy gets are ones the app starts with.
    Settings.from_env({name: entry.get("value", "") for name, entry in env.items()})
    assert len(manifest["name"]) <= 30 and len(manifest["description"]) <= 140
    assert manifest["formation"]["web"]["quantity"] == 1
    assert manifest["buildpacks"] == [{"url": "heroku/python"}]


def test_readme_deploy_commands_set_only_real_settings():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy it: from zero to a URL", 1)[1].split("\n## ", 1)[
        0
    ]
    settings = {field.name.upper() for field in fields(Settings)}
    named = {
        name
        for line in section.splitlines()
        if "heroku config:set" in line
        for name in re.findall(r" ([A-Z][A-Z0-9_]*)=", line)
    }
    assert named <= settings, named - settings
    assert {"ADMIN_TOKEN", "FORWARDED_ALLOW_IPS", "WEB_CONCURRENCY"} <= named


def python_files() -> list[Path]:
    """Every Python file of the project; virtualenvs, caches and other tools' trees (any
    directory whose name starts with a dot, and node_modules) are not walked into."""
    found = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "node_modules"]
        found += [Path(folder, name) for name in names if name.endswith(".py")]
    return sorted(found)


def test_every_module_starts_with_a_docstring_saying_what_it_holds():
    files = python_files()
    assert ROOT / "app.py" in files and ROOT / "gunicorn.conf.py" in files
    missing = [
        str(path.relative_to(ROOT))
        for path in files
        if not ast.get_docstring(ast.parse(path.read_text(), str(path)))
    ]
    assert not missing, missing
