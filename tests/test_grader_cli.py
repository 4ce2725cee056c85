"""``livelab grader serve | status | stop`` and ``livelab grade`` through them, as a user runs
them: the service supervised with the lab, found by ``livelab grade``, brought back by the
supervisor when it dies, and ``livelab grade`` grading on its own once it is stopped.

Real parts only: a running lab (Mosquitto, devices, supervisor), the service's Dask workers and
forked kernels, nbgrader's gradebook; the tests-only sample course of ``grading.samples``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, start_lab


def livelab(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "livelab", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def status(home: Path) -> tuple[int, dict]:
    p = livelab(home, "grader", "status", "--json", timeout=60)
    return p.returncode, json.loads(p.stdout)


def grade(home: Path, course: Path, *extra: str) -> subprocess.CompletedProcess:
    from grading import samples

    return livelab(home, "grade", str(course), samples.ASSIGNMENT, str(course / "submitted"), "--no-cache", *extra)


@pytest.fixture
def served(tmp_path, mosquitto_available):
    from grading import samples
    from lab_hardware.runtime import lab

    home = tmp_path / "lab"
    start_lab(home)
    course = tmp_path / "course"
    release = samples.make_course(course)
    expected = samples.make_submissions(course, release, 6)
    try:
        yield home, course, expected
    finally:
        livelab(home, "grader", "stop", timeout=120)
        lab.down(home)


def test_the_grader_cli_serves_is_found_by_grade_comes_back_and_stops(served):
    home, course, expected = served

    rc, st = status(home)
    assert (rc, st) == (1, {"running": False})

    p = livelab(home, "grader", "serve", "--course", str(course), "--workers", "1")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "supervised with the lab" in p.stdout
    rc, st = status(home)
    assert rc == 0 and st["running"] is True, st
    first_pid = st["pid"]
    again = livelab(home, "grader", "serve", "--course", str(course), "--workers", "1")
    assert again.returncode == 0 and "already runs" in again.stdout, again.stdout

    # livelab grade finds the service and grades on its workers
    p = grade(home, course, "--json")
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    summary = json.loads(p.stdout)
    assert summary.get("via_service") is True
    assert {r["student"]: r["score"] for r in summary["results"]} == expected
    # ... and says so to a reader without a terminal, with progress lines on stderr
    p = grade(home, course)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    assert "(grading service)" in p.stdout, p.stdout[-2000:]
    assert p.stderr.strip(), "no progress lines without a terminal"

    # the lab's supervisor brings a killed service back (a new process, ready again)
    os.kill(first_pid, signal.SIGKILL)
    deadline = time.monotonic() + 300
    st = {}
    while time.monotonic() < deadline:
        rc, st = status(home)
        if rc == 0 and st.get("pid") not in (None, first_pid):
            break
        time.sleep(0.5)
    assert st.get("running") is True and st.get("pid") != first_pid, st
    p = grade(home, course, "--json")
    assert p.returncode == 0 and json.loads(p.stdout).get("via_service") is True, p.stderr[-2000:]

    # stopped: livelab grade grades on its own, with the same scores
    p = livelab(home, "grader", "stop", timeout=120)
    assert p.returncode == 0 and "stopped" in p.stdout, (p.stdout, p.stderr)
    assert status(home) == (1, {"running": False})
    p = grade(home, course, "--json")
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    summary = json.loads(p.stdout)
    assert not summary.get("via_service")
    assert {r["student"]: r["score"] for r in summary["results"]} == expected
