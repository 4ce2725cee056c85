"""nbgrader's exchange as the grading service sees it: publishing a release, what a real
``nbgrader submit`` leaves in inbound, and submissions refused with a reason (nothing graded).

The end-to-end path (submit -> graded by the warm service -> ``nbgrader fetch_feedback``) is
in tests/test_grading_service.py, which has a running service.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grading import exchange
from tests.conftest import ROOT

REL = ROOT / "courses" / "edge-ml-foundations" / "releases" / "1.2.0" / "learner"
COURSE_ID = "edge-ml-foundations"
M1 = "m1-telemetry"


def nbgrader(*args: str, cwd: Path, root: Path, cache: Path) -> subprocess.CompletedProcess:
    """The real nbgrader CLI, as a learner runs it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "nbgrader",
            *args,
            f"--course={COURSE_ID}",
            f"--Exchange.root={root}",
            f"--Exchange.cache={cache}",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_publish_makes_a_release_nbgrader_can_fetch_and_submit(tmp_path):
    root, cache, work = tmp_path / "exchange", tmp_path / "cache", tmp_path / "learner"
    work.mkdir()
    assert exchange.publish(root, COURSE_ID, {M1: REL / M1}) == [M1]
    assert exchange.publish(root, COURSE_ID, {M1: REL / M1}) == []  # unchanged: left alone
    c = root / COURSE_ID
    assert oct(c.joinpath("inbound").stat().st_mode & 0o777) == oct(exchange.INBOUND_MODE)
    assert oct(c.joinpath("feedback").stat().st_mode & 0o777) == oct(exchange.FEEDBACK_MODE)

    r = nbgrader("fetch_assignment", M1, cwd=work, root=root, cache=cache)
    assert r.returncode == 0, r.stderr
    assert (work / M1 / f"{M1}.ipynb").read_bytes() == (REL / M1 / f"{M1}.ipynb").read_bytes()
    r = nbgrader("submit", M1, "--CourseDirectory.student_id=ada", cwd=work, root=root, cache=cache)
    assert r.returncode == 0, r.stderr
    [path] = exchange.pending(root, COURSE_ID, {})
    sub = exchange.parse_inbound(path)
    assert (sub.student, sub.assignment) == ("ada", M1)
    assert exchange.pending(root, COURSE_ID, {path.name: {}}) == []


@pytest.mark.parametrize("name", ["junk", "a+b", "a+b+c+d+e", "a++c", "a+b+*"])
def test_a_folder_that_is_not_a_submission_is_refused_with_its_reason(tmp_path, name):
    with pytest.raises(exchange.ExchangeError) as info:
        exchange.parse_inbound(tmp_path / name)
    assert "\n" not in str(info.value) and "not an nbgrader submission" in str(info.value)


def test_publish_refuses_an_exchange_that_is_a_file(tmp_path):
    f = tmp_path / "exchange"
    f.write_text("x")
    with pytest.raises(exchange.ExchangeError, match="is a file"):
        exchange.publish(f, COURSE_ID, {M1: REL / M1})


def _inbound(root: Path, name: str, files: dict[str, bytes]) -> Path:
    d = root / COURSE_ID / "inbound" / name
    d.mkdir(parents=True)
    for k, v in files.items():
        (d / k).write_bytes(v)
    (d / "timestamp.txt").write_text("2026-12-02 12:00:00.000000 UTC")
    (d / "submission_secret.txt").write_text("s3cret")  # nbgrader writes it last: complete
    return d


def test_the_watcher_refuses_what_it_must_not_grade_and_keeps_watching(tmp_path):
    """Not a learner, not a module, no notebook of the module, not a submission: each is
    refused with a one-line reason, nothing is submitted for grading, and the watcher goes on
    to the next (a real submission then reaches the grader)."""
    root = tmp_path / "exchange"
    exchange.publish(root, COURSE_ID, {M1: REL / M1})
    nb = (REL / M1 / f"{M1}.ipynb").read_bytes()
    _inbound(root, f"mallory+{M1}+2026-12-02 12:00:00.000000 UTC", {f"{M1}.ipynb": nb})
    _inbound(root, "ada+m9-nothing+2026-12-02 12:00:01.000000 UTC", {"m9-nothing.ipynb": nb})
    _inbound(root, f"ada+{M1}+2026-12-02 12:00:02.000000 UTC", {"other.ipynb": nb})
    _inbound(root, "stray-folder", {})
    graded: list[tuple] = []

    def submit(learner, module, b64, name):  # the service's submit: only the last one gets here
        graded.append((learner, module, name))
        return {"status": "infrastructure-error", "messages": ["a worker was lost"], "attempt": 1}

    w = exchange.ExchangeWatcher(
        root,
        COURSE_ID,
        state=tmp_path / "state",
        submit=submit,
        learner_of=lambda login: login if login == "ada" else None,
        modules=lambda: {M1: [M1]},
    )
    recs = {r.get("student", "?") + "/" + r.get("module", "?"): r for r in w.scan()}
    assert graded == []
    assert recs["mallory/" + M1]["reason"] == "student 'mallory' is not a learner of this lab: nothing was graded"
    assert "is not a module this service grades" in recs["ada/m9-nothing"]["reason"]
    assert "none of the module's notebooks" in recs[f"ada/{M1}"]["reason"]
    assert "not an nbgrader submission" in recs["?/?"]["reason"]
    assert all(r["status"] == "refused" and "\n" not in r["reason"] for r in recs.values())
    assert not any((root / COURSE_ID / "feedback").iterdir())

    # the grading machine fails on the next one: the learner is told it is not their work
    d = _inbound(root, f"ada+{M1}+2026-12-02 12:00:03.000000 UTC", {f"{M1}.ipynb": nb})
    [rec] = w.scan()
    assert graded == [("ada", M1, M1)] and rec["status"] == "infrastructure-error"
    page = exchange.feedback_path(root, COURSE_ID, "s3cret", M1).read_text()
    assert "not about" in page and "your work" in page and "a worker was lost" in page
    # what was handled is remembered across a restart of the service: nothing graded twice
    w2 = exchange.ExchangeWatcher(
        root, COURSE_ID, state=tmp_path / "state", submit=submit, learner_of=lambda s: s, modules=lambda: {M1: [M1]}
    )
    assert w2.scan() == [] and d.name in w2.seen and w2.status()["submissions"]["refused"] == 4
