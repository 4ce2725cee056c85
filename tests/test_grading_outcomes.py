"""Grading outcomes: the grading machine's failures are never a learner's score, and messages
name the test that failed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from grading import samples


def _course(root: Path, nb: nbformat.NotebookNode, students: dict[str, nbformat.NotebookNode]) -> Path:
    src = root / "source" / samples.ASSIGNMENT
    src.mkdir(parents=True)
    nbformat.write(nb, src / f"{samples.NOTEBOOK}.ipynb")
    for name, sub in students.items():
        d = root / "submitted" / name / samples.ASSIGNMENT
        d.mkdir(parents=True)
        nbformat.write(sub, d / f"{samples.NOTEBOOK}.ipynb")
    return root


def _driver(root: Path, tmp_path: Path, state: str = "state"):
    """A one-worker grading driver over the course ``root`` (no events store)."""
    from grading.batch import BatchConfig, Driver

    return Driver(
        BatchConfig(
            course=str(root),
            module=samples.ASSIGNMENT,
            path=str(root),
            workers=1,
            state=str(tmp_path / state),
            events=str(tmp_path / "no-store"),
            progress=False,
        )
    )


def test_a_set_up_that_never_comes_up_is_an_infrastructure_error(tmp_path):
    """A locked set-up cell raising the lab's InfrastructureError (a planted fixture that did not
    come up) is retried, then recorded as infrastructure-error: no score, no gradebook row,
    nothing cached, no check-failed event, and the learner is told it is not their work."""
    nb = samples.source_notebook()
    nb.cells.insert(
        2,
        new_code_cell(
            "from labs.sdk import InfrastructureError\n"
            "raise InfrastructureError('the planted incident did not come up')",
            metadata=samples._meta("setup", locked=True),
        ),
    )
    root = _course(tmp_path / "course", nb, {"ann": nb})
    d = _driver(root, tmp_path)
    summary = d.run()
    (r,) = summary["results"]
    assert r["status"] == "infrastructure-error" and r["score"] is None
    assert "not about your work" in r["messages"][0] and "planted incident did not come up" in r["messages"][0]
    kept = json.loads(next((d.work / "results" / "ann").glob("*.json")).read_text())
    assert len(kept["infra_tries"]) == 3  # bounded retries, each in a fresh kernel
    assert "ann" not in (d.work / "cache.json").read_text()
    db = sqlite3.connect(root / "gradebook.db")
    assert db.execute("select count(*) from submitted_assignment").fetchone()[0] == 0
    ev = d.work / "events.jsonl"
    assert not ev.exists() or "check-failed" not in ev.read_text()
    assert not (root / "feedback" / "ann").exists()


def test_a_device_that_does_not_answer_is_the_labs_failure_not_the_learners(tmp_path):
    """A lab device that does not answer a command in time (a machine too busy to schedule it)
    raises DeviceTimeoutError, even in the learner's own cell: retried, then
    infrastructure-error, never a 0 for code that was right."""
    sub = samples.submission(
        samples.source_notebook(),
        samples.CORRECT,
        extra=[
            # the learner's cell stops at a lab call the device did not answer: what came after
            # it (here: the answer kept) never ran, and the tests fail for it
            "from labs.sdk import DeviceTimeoutError\n"
            "_answer, square = square, None\n"
            "raise DeviceTimeoutError(\"device dev-1 did not answer 'install' within 10 s: is it online?\")\n"
            "square = _answer"
        ],
    )
    root = _course(tmp_path / "course", samples.source_notebook(), {"bo": sub})
    d = _driver(root, tmp_path)
    (r,) = d.run()["results"]
    assert r["status"] == "infrastructure-error" and r["score"] is None, r
    assert "not about your work" in r["messages"][0] and "did not answer" in r["messages"][0]
    # a timeout that cost nothing (the learner's code went on and earned every point) is a grade
    ok = samples.submission(
        samples.source_notebook(),
        samples.CORRECT,
        extra=[
            "from labs.sdk import DeviceTimeoutError\n"
            "try:\n    raise DeviceTimeoutError('late')\nexcept TimeoutError:\n    pass\n"
            "raise DeviceTimeoutError(\"device dev-1 did not answer 'status' within 5 s: is it online?\")"
        ],
    )
    root2 = _course(tmp_path / "course2", samples.source_notebook(), {"al": ok})
    d2 = _driver(root2, tmp_path, "state2")
    (r2,) = d2.run()["results"]
    assert r2["status"] == "graded" and r2["score"] == r2["max_score"], r2


def test_a_hidden_test_without_a_message_is_named_with_its_points(tmp_path):
    from grading import runner
    from grading.reference import build

    nb = samples.source_notebook()
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "test_hidden":
            c.source = (
                "assert square(-2) == 4, 'square(-2) should be 4'\n### BEGIN HIDDEN TESTS\n"
                "assert square(12) == 144\n### END HIDDEN TESTS"
            )
    src = tmp_path / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb"
    src.parent.mkdir(parents=True)
    nbformat.write(nb, src)
    ref = build(src, samples.ASSIGNMENT, tmp_path / "state")
    wrong = samples.submission(nb, "return x * x if x < 10 else 0")  # passes -2 and 3, not 12
    sub = runner.Submission("ann", samples.ASSIGNMENT, samples.NOTEBOOK, nbformat.writes(wrong).encode())
    res = runner.grade(sub, ref)
    row = next(c for c in res["cells"] if c["grade_id"] == "test_hidden")
    assert row["score"] == 0
    assert row["message"] == "test 'test_hidden' did not pass: AssertionError: test 'test_hidden' (3 points) failed"
    assert "test 'test_hidden' (3 points) failed" in (res["feedback_html"] or "")
    assert not any(m.rstrip().endswith("AssertionError") for m in res["messages"])


def test_livelab_grade_without_a_terminal_prints_progress_lines(tmp_path, capsys):
    from livelab.cli import main

    root = tmp_path / "course"
    release = samples.make_course(root)
    samples.write_submission(root, "ann", samples.submission(release, samples.CORRECT))
    samples.write_submission(root, "ben", samples.submission(release, samples.WRONG))
    rc = main(
        [
            "--home",
            str(tmp_path / "no-lab"),
            "grade",
            str(root),
            samples.ASSIGNMENT,
            str(root),
            "--state",
            str(tmp_path / "state"),
            "--events",
            str(tmp_path / "no-store"),
            "--workers",
            "1",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("[")]
    assert len(lines) == 2 and lines[-1].startswith("[2/2") and ("ann: 5/5" in err and "ben: 0/5" in err)
    assert "already in use" not in err
    assert "2 graded, 0 unchanged (cached), " in " ".join(out.split())


def test_the_commands_wall_time_is_measured_from_its_process_start_to_the_clock_tick():
    """``livelab grade`` prints the whole command's wall time, from its process's start.
    psutil's start time is the boot time (whole seconds, from /proc/stat) plus the start
    tick, so the figure could be up to a second too long (0.9 s on one machine for a 1.0 s
    command).  It is measured on the clock the start tick counts on: never longer than the
    command really took as its parent saw it."""
    import subprocess
    import sys
    import time

    probe = "from livelab.cli_grade import _command_seconds\nprint(_command_seconds())"
    for _ in range(3):
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        outer = time.monotonic() - t0
        inner = float(p.stdout)
        assert 0.0 < inner <= outer + 0.011, (inner, outer)  # one clock tick of the start time


def _stall_cell() -> str:
    return (
        "import sys\n"
        "from labs.sdk import STALL_MARK\n"
        "print(f'livelab: {STALL_MARK}: dev-1 sent nothing for 3.4 s (it reports every second), so telemetry "
        "stopped at its 3 s timeout.', file=sys.stderr)\n"
    )


def test_a_telemetry_read_cut_short_by_a_stalled_device_is_the_labs_failure():
    """The SDK says on stderr when a telemetry read ended because a lab device stalled
    (``labs.sdk.STALL_MARK``; m4's trace then comes up short).  In a submission that lost
    points, with the grader's own observer having seen a device silent that long, that is the
    machine's failure.  Without that evidence, or without points lost, it is a grade."""
    from nbformat.v4 import new_notebook, new_output

    from grading import outcomes

    cell = new_code_cell(_stall_cell(), metadata=samples._meta("trace", locked=False))
    cell.outputs = [
        new_output("stream", name="stderr", text="livelab: lab device stalled: dev-1 sent nothing for 3.4 s")
    ]
    executed = nbformat.writes(new_notebook(cells=[cell]))

    def result(score, silence):
        return {
            "status": "graded",
            "score": score,
            "max_score": 5.0,
            "executed": executed,
            "timings": {"execute": 1.0, "kernel_wait": 0.1},
            "lab": {"device_silence_s": silence},
        }

    why = outcomes.classify(result(3.0, {"dev-0": 0.6, "dev-1": 3.6}))
    assert why and "stalled" in why and "'trace'" in why, why
    assert outcomes.classify(result(5.0, {"dev-1": 3.6})) is None  # it cost nothing
    assert outcomes.classify(result(3.0, {"dev-0": 0.6, "dev-1": 1.1})) is None  # no device was that silent
    assert outcomes.classify({**result(3.0, {}), "lab": None}) is None


def test_a_stall_line_the_learners_code_prints_buys_nothing(tmp_path):
    """The line is the SDK's, but the learner's code can print it too: graded end to end, a
    submission that prints it and loses points, with no lab device silent, keeps its score
    (never turned into an ungraded infrastructure error)."""
    lost = samples.submission(
        samples.source_notebook(), samples.CORRECT, extra=[_stall_cell() + "square = None  # the answer is lost"]
    )
    root = _course(tmp_path / "course", samples.source_notebook(), {"cy": lost})
    (r,) = _driver(root, tmp_path).run()["results"]
    assert r["status"] == "graded" and r["score"] < r["max_score"], r


def test_the_grader_observer_measures_how_long_each_device_was_silent(lab_home):
    """``device_silences`` over a real observer's record: a device the host stops (SIGSTOP)
    for 3 s is silent at least that long (the others' figures depend on the machine's load,
    so they are only required to be there)."""
    import os
    import signal
    import time

    from grading.isolation import Observer, device_silences
    from labs import Lab

    obs = Observer(lab_home, "default", store_captures=False)
    try:
        with Lab.connect(home=lab_home) as sdk:
            pid = sdk.states["dev-0"]["pid"]
        time.sleep(1.5)
        os.kill(pid, signal.SIGSTOP)  # the lab's own device, resumed below
        try:
            time.sleep(3.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and device_silences(obs.snapshot()).get("dev-0", 0) < 2.5:
            time.sleep(0.1)
        silences = device_silences(obs.snapshot())
    finally:
        obs.close(drain=0)
    assert set(silences) == {"dev-0", "dev-1", "dev-2"} and silences["dev-0"] >= 2.5, silences
