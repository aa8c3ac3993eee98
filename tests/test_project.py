"""Promises about the repository itself: layout, the README's commands, what CI runs."""

from __future__ import annotations

import re

from support import ROOT


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
