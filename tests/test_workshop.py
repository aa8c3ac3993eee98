"""The workshop keeps its promises: each exercise's check fails on the starter and passes
with the exercise's reference solution (docs/workshop.md).

For every exercise, two copies of the repository as it is in the work tree (tracked files
and new ones that git does not ignore; never ``.venv``) go to a temporary directory. In one,
the learner's command runs as written, ``python -m pytest tests -m exercise_N``, and must
fail (exit 1, not "no tests" or a crash) with the check's hint for the learner. In the
other, ``docs/workshop/solutions/exercise_N.patch`` is applied with ``git apply`` and the
same command must pass. The fourteen runs go one at a time: each is a pytest of its own with
servers and a browser, and CI has two cores, so running them side by side only made them
race each other (and the rest of the machine) for the same cores.

The checks use the system parts the rest of the suite uses (Chromium, nginx, Redis, gcc,
zlib1g-dev); where one is missing, the exercises that need it skip here, except on CI
(``CI=true``). So do the exercises a learner has done in this work tree: it is no longer
their starter.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT

SOLUTIONS = ROOT / "docs" / "workshop" / "solutions"
WORKSHOP = ROOT / "docs" / "workshop.md"
CHECK_TIMEOUT_S = 240
PARALLEL = 1  # nested pytest runs at once; see the module's docstring


@dataclass(frozen=True)
class Exercise:
    number: int
    hint: str  # what the check tells a learner on the starter (part of it)
    parts: tuple[str, ...] = ()  # executables it needs beyond Python

    @property
    def patch(self) -> Path:
        return SOLUTIONS / f"exercise_{self.number}.patch"


EXERCISES = [
    Exercise(1, "cells of class 'range'"),
    Exercise(2, "sent no 'connected' event"),
    Exercise(3, "GET /movers answered 404"),
    Exercise(4, "add the /alerts route"),
    Exercise(
        5,
        "docs/workshop/nginx-h2.conf does not exist yet",
        ("/usr/bin/chromium", "/usr/sbin/nginx", "openssl"),
    ),
    Exercise(6, "no 'viewers' event came with the snapshot", ("redis-server",)),
    Exercise(7, "bench/run.py has no 'ours-watchlist'", ("gcc", "taskset")),
]


def missing_parts(exercise: Exercise) -> list[str]:
    missing = [p for p in ("git", *exercise.parts) if not shutil.which(p)]
    if exercise.number == 5:
        try:
            import playwright  # noqa: F401
        except ImportError:
            missing.append("the playwright package")
    if exercise.number == 7 and not {0, 1} <= os.sched_getaffinity(0):
        missing.append("CPUs 0 and 1")
    if exercise.number == 7 and not Path("/usr/include/zlib.h").exists():
        missing.append("zlib1g-dev (loadgen links -lz)")
    return missing


def cannot_prove(exercise: Exercise) -> str | None:
    """Why this exercise cannot be proved on this work tree, if it cannot.

    Besides missing parts: a learner's tree where the exercise is done (or another one
    changed the same lines) is no longer the starter, and the solution no longer applies.
    """
    missing = missing_parts(exercise)
    if missing:
        return f"exercise {exercise.number} needs {', '.join(missing)}"
    applies = subprocess.run(
        ["git", "apply", "--check", str(exercise.patch)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if applies.returncode != 0:
        return (
            f"{exercise.patch.name} does not apply to this work tree, which is not the "
            f"starter any more:\n{applies.stderr.strip()}"
        )
    return None


def not_here(reason: str) -> None:
    """Skip, or on CI (which runs on the starter, with every part) fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def copy_of_repo(dest: Path) -> Path:
    """The work tree's files (tracked, and untracked but not ignored) copied to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        name = raw.decode()
        source = ROOT / name
        if Path(name).parts[0] == ".venv" or not source.exists():
            continue  # a venv (even a symlinked one), or a file deleted in the work tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest


def run_check(
    exercise: Exercise, workdir: Path, solved: bool
) -> subprocess.CompletedProcess:
    """The learner's command in a fresh copy, after applying the solution if ``solved``."""
    copy = copy_of_repo(workdir)
    if solved:
        subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
        subprocess.run(
            ["git", "apply", str(exercise.patch)],
            cwd=copy,
            check=True,
            capture_output=True,
        )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-m", f"exercise_{exercise.number}"]
        + ["-p", "no:cacheprovider", "-q", "-rfEs"],
        check=False,
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[dict[tuple[int, bool], Future]]:
    """Every check on the starter and with its solution, queued and run PARALLEL at a time."""
    if not (ROOT / ".git").exists():
        not_here("not a git checkout: the proof copies the files git lists")
    pool = ThreadPoolExecutor(PARALLEL)
    futures = {}
    for exercise in reversed(EXERCISES):  # the later ones take longer: start them first
        if cannot_prove(exercise):
            continue
        for solved in (False, True):
            workdir = tmp_path_factory.mktemp(f"exercise_{exercise.number}_{solved}")
            futures[exercise.number, solved] = pool.submit(
                run_check, exercise, workdir, solved
            )
    yield futures
    pool.shutdown(cancel_futures=True)


def outcome(
    runs: dict[tuple[int, bool], Future], exercise: Exercise, solved: bool
) -> subprocess.CompletedProcess:
    reason = cannot_prove(exercise)
    if reason:
        not_here(reason)
    return runs[exercise.number, solved].result()


def summary(result: subprocess.CompletedProcess) -> str:
    """pytest's last line ("3 failed, 188 deselected in 2.71s"), for the assertions."""
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def report(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"exercise_{e.number}")
def test_the_check_fails_on_the_starter_and_says_why(runs, exercise):
    result = outcome(runs, exercise, solved=False)
    if result.returncode == 0:
        not_here(f"exercise {exercise.number}'s check passes here: done it already?")
    assert result.returncode == 1, report(result)
    last = summary(result)
    assert re.search(r"\d+ failed", last) and "error" not in last, report(result)
    assert exercise.hint in result.stdout, report(result)


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"exercise_{e.number}")
def test_the_reference_solution_passes_the_check(runs, exercise):
    result = outcome(runs, exercise, solved=True)
    assert result.returncode == 0, report(result)
    last = summary(result)
    assert re.search(r"\d+ passed", last), report(result)
    assert not re.search(r"failed|error|skipped", last), report(result)


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"exercise_{e.number}")
def test_a_solution_leaves_the_tests_alone(exercise):
    """A solution that edited its own check would prove nothing."""
    changed = re.findall(
        r"(?m)^diff --git a/(\S+) b/(\S+)$", exercise.patch.read_text()
    )
    assert changed, f"{exercise.patch.name} changes nothing"
    touched = {name for pair in changed for name in pair}
    assert not [name for name in touched if name.startswith("tests/")], touched


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"exercise_{e.number}")
def test_the_workshop_names_each_check_and_solution(exercise):
    text = WORKSHOP.read_text()
    assert f"-m exercise_{exercise.number}" in text
    assert f"docs/workshop/solutions/exercise_{exercise.number}.patch" in text
