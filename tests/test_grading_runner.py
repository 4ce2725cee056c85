"""The generic grader (no lab): integrity, confined execution, scoring, gradebook, feedback.

One Dask batch grades a submitted/ tree of ordinary and hostile submissions (each a student);
every hostile one must get the right grade and a clear message while the batch goes on.
Real nbgrader, real papermill, real kernels: nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import shutil
import os
import sqlite3
import subprocess
import sys
import time
import threading
from pathlib import Path

import nbformat
import psutil
import pytest

from grading import samples
from grading.batch import BatchConfig, grade_many, path_id
from grading.limits import Limits

LIMITS = Limits(cell_timeout=3, total_timeout=12, memory_mb=400, max_processes=40, output_bytes=200_000)
#: marks this test run's fork servers and kernel cgroups (workers inherit it)
TAG = f"t{os.getpid()}"
os.environ["LIVELAB_GRADING_TAG"] = TAG
VENV_BIN = Path(sys.executable).parent


def _nb_exec(nb, *cells):
    return samples.submission(nb, samples.CORRECT, extra=list(cells))


def _read_hidden_probe(rel, root: Path):
    """A submission that walks every place a hidden test could be and prints what it found."""
    # the course, the grader's private reference (".state"), results, the repository's course
    # content, shared temp space and the kernel's own directory (a walk of $HOME would read the
    # whole Python installation that stays visible there)
    paths = [
        str(root),
        str(root / "source"),
        str(root / ".state"),
        str(root / "livelab-grading"),
        "/tmp",
        str(Path(__file__).resolve().parents[1] / "courses"),
        ".",
    ]
    return samples.submission(
        rel,
        samples.CORRECT,
        extra=[
            f"import os\nfound = []\nmarker = {samples.HIDDEN_MARKER[:7]!r} + {samples.HIDDEN_MARKER[7:]!r}\n"
            f"for top in {paths!r}:\n"
            "    for d, _, files in os.walk(top):\n"
            "        for f in files:\n"
            "            p = os.path.join(d, f)\n"
            "            try:\n"
            "                if os.path.getsize(p) < 5_000_000 and marker.encode() in open(p, 'rb').read():\n"
            "                    found.append(p)\n"
            "            except OSError:\n"
            "                pass\n"
            "print('FOUND', found if found else 'nothing')\n"
            "import importlib.util\n"
            f"content = {str(Path(__file__).resolve().parents[1] / 'courses' / 'edge-ml-foundations')!r}\n"
            "print('COURSES-PACKAGE', importlib.util.find_spec('courses.incidents') is not None)\n"
            "print('COURSE-CONTENT', sorted(os.listdir(content)) if os.path.isdir(content) else 'absent')"
        ],
    )


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    release = samples.make_course(root)
    rel = nbformat.read(release, as_version=4)
    c = root
    gb = root / "gradebook.db"
    w = samples.write_submission
    w(c, "good", samples.submission(rel, samples.CORRECT))
    w(c, "half", samples.submission(rel, samples.HALF))
    w(c, "notjson", b'{"cells": [ {"cell_type": "code"')
    w(c, "notnotebook", b'{"hello": "world"}')
    w(c, "binary", bytes(range(256)) * 4)

    def wrong_kernel(nb):
        nb.metadata.kernelspec = {"name": "python2", "display_name": "evil", "language": "python"}

    w(c, "wrongkernel", samples.submission(rel, samples.CORRECT, edit=wrong_kernel))
    w(c, "dies", samples.submission(rel, samples.CORRECT, extra=["import os\nos._exit(3)"]))
    w(c, "loop", samples.submission(rel, samples.CORRECT, extra=["while True:\n    pass"]))
    w(
        c,
        "stubborn",
        samples.submission(
            rel,
            samples.CORRECT,
            extra=["import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"],
        ),
    )
    w(c, "slow", samples.submission(rel, samples.CORRECT, extra=["import time\ntime.sleep(2.5)"] * 8))
    w(c, "flood", samples.submission(rel, samples.CORRECT, extra=["for i in range(10**7):\n    print('x' * 1000)"]))
    w(
        c,
        "forkbomb",
        samples.submission(
            rel,
            samples.CORRECT,
            extra=[
                "import os, time\nkids = 0\nfor i in range(300):\n    try:\n        pid = os.fork()\n"
                "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
                "    kids += 1\nprint('forked', kids)"
            ],
        ),
    )

    def edit_tests(nb):
        for cell in nb.cells:
            if cell.metadata.get("nbgrader", {}).get("grade"):
                cell.source = "pass  # tests? what tests"

    w(c, "edittests", samples.submission(rel, samples.WRONG, edit=edit_tests))

    def delete_tests(nb):
        nb.cells = [x for x in nb.cells if not x.metadata.get("nbgrader", {}).get("grade")]

    w(c, "deletetests", samples.submission(rel, samples.WRONG, edit=delete_tests))

    def fake(nb):
        for cell in nb.cells:
            g = cell.metadata.get("nbgrader", {})
            if g.get("grade"):
                g["points"] = 100
                cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "100"}, execution_count=1)]
        nb.cells.append(
            nbformat.v4.new_code_cell(
                "print('PASS')\n100",
                metadata={
                    "nbgrader": {
                        "grade": True,
                        "grade_id": "bonus",
                        "points": 100,
                        "locked": True,
                        "solution": False,
                        "schema_version": 3,
                    }
                },
            )
        )

    w(c, "fakescore", samples.submission(rel, samples.WRONG, extra=["print('PASS: all tests passed')"], edit=fake))
    w(
        c,
        "hideerrors",
        samples.submission(
            rel, samples.WRONG, extra=["get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)"]
        ),
    )
    w(
        c,
        "writegradebook",
        samples.submission(
            rel,
            samples.WRONG,
            extra=[
                "import sqlite3, os\n"
                f"p = {str(gb)!r}\n"
                "print('exists', os.path.exists(p))\n"
                "try:\n"
                "    db = sqlite3.connect(p)\n"
                "    db.execute('update grade set auto_score = 100')\n"
                "    db.commit()\n"
                "    print('wrote gradebook')\n"
                "except Exception as e:\n"
                "    print('no gradebook:', e)\n"
                "print('env', sorted(k for k in os.environ if 'GRADE' in k or 'NBGRADER' in k))"
            ],
        ),
    )
    return {"root": root, "release": rel, "gradebook": gb}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The hidden-tests probe and the memory hog, graded in a batch of their own with roomy limits.

    Its walk reads every file it can see; in the main batch it shared the CPU with the
    busy-looping and fork-bombing submissions under a 3 s cell and 12 s total limit and,
    on a loaded machine, was stopped before it printed (its output was missing).  What it checks is confinement, not
    speed, so it gets time (still bounded) and the main batch keeps its tight limits.
    """
    root = tmp_path_factory.mktemp("probe-course")
    rel = nbformat.read(samples.make_course(root), as_version=4)
    samples.write_submission(root, "readhidden", _read_hidden_probe(rel, root))
    # Touching fresh memory is slow on some VMs (first touches fault through to the host): CI's
    # memory hog was cut by the main batch's 3 s cell timeout before it reached the memory limit.
    # The pause between blocks stands for such a machine; here the limit must still be what stops it.
    samples.write_submission(
        root,
        "memhog",
        samples.submission(
            rel,
            samples.CORRECT,
            extra=[
                "import time\nblocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))\n    time.sleep(0.3)"
            ],
        ),
    )
    limits = Limits(cell_timeout=120, total_timeout=300, memory_mb=400, max_processes=40, output_bytes=200_000)
    summary = grade_many(
        BatchConfig(
            course=str(root),
            module=samples.ASSIGNMENT,
            path=str(root / "submitted"),
            limits=limits,
            progress=False,
            events=str(root / "no-store"),
            state=str(root / ".state"),
        )
    )
    full = {
        s: json.loads(
            (root / "livelab-grading" / samples.ASSIGNMENT / "results" / s / f"{samples.NOTEBOOK}.json").read_text()
        )
        for s in ("readhidden", "memhog")
    }
    return {"summary": summary, "by": {r["student"]: r for r in summary["results"]}, "full": full}


@pytest.fixture(scope="module")
def batch(course):
    t0 = time.perf_counter()
    summary = grade_many(
        BatchConfig(
            course=str(course["root"]),
            module=samples.ASSIGNMENT,
            path=str(course["root"] / "submitted"),
            limits=LIMITS,
            progress=False,
            events=str(course["root"] / "no-store"),
            state=str(course["root"] / ".state"),
        )
    )
    summary["_seconds"] = time.perf_counter() - t0
    by = {r["student"]: r for r in summary["results"]}
    full = {}
    for s in by:
        p = (
            course["root"]
            / "livelab-grading"
            / samples.ASSIGNMENT
            / "results"
            / path_id(s)
            / f"{samples.NOTEBOOK}.json"
        )
        full[s] = json.loads(p.read_text())
    return {"summary": summary, "by": by, "full": full}


def _msgs(r) -> str:
    return " | ".join(r["messages"])


def test_batch_grades_everything_and_goes_on(batch):
    s = batch["summary"]
    assert s["graded"] == len(batch["by"]) == 17, s["skipped"]
    assert batch["by"]["good"]["score"] == 5 and batch["by"]["good"]["max_score"] == 5
    assert batch["by"]["half"]["score"] == 2
    for r in batch["by"].values():  # nobody can raise their own maximum
        assert r["max_score"] == 5, r


@pytest.mark.parametrize(
    "student,fragment",
    [
        ("notjson", "not a notebook: invalid JSON"),
        ("notnotebook", "not a notebook: JSON without 'cells'"),
        ("binary", "not a notebook: the file is not UTF-8"),
    ],
)
def test_not_a_notebook(batch, student, fragment):
    r = batch["by"][student]
    assert r["status"] == "invalid" and r["score"] == 0
    assert fragment in _msgs(r)


def test_wrong_kernel_name_runs_on_the_release_kernel(batch):
    r = batch["by"]["wrongkernel"]
    assert r["score"] == 5
    assert "asked for kernel 'python2'" in _msgs(r)


def test_kernel_that_dies_scores_tests_that_did_not_run_as_zero(batch):
    r = batch["by"]["dies"]
    assert r["score"] == 0
    assert "kernel died" in _msgs(r)
    assert "kernel-died" in r["limits_hit"]


def test_infinite_loop_is_interrupted_and_the_tests_still_run(batch):
    r = batch["by"]["loop"]
    assert r["score"] == 5
    assert "cell-timeout" in r["limits_hit"] and "interrupted" in _msgs(r)


def test_loop_that_ignores_interrupts_is_stopped(batch):
    r = batch["by"]["stubborn"]
    assert r["score"] == 0
    assert "cell-timeout" in r["limits_hit"]
    assert batch["full"]["stubborn"]["timings"]["total"] < LIMITS.total_timeout + 10


def test_total_timeout_kills_the_kernel(batch):
    r = batch["by"]["slow"]
    assert r["score"] == 0
    assert "total-timeout" in r["limits_hit"]
    assert "total limit" in _msgs(r)
    assert batch["full"]["slow"]["timings"]["execute"] < LIMITS.total_timeout + 5


def test_output_flood_is_cut_off(batch):
    r = batch["by"]["flood"]
    assert r["score"] == 5 and "output" in r["limits_hit"]
    nb = nbformat.read(batch["summary"]["out"] + f"/autograded/flood/{samples.ASSIGNMENT}/{samples.NOTEBOOK}.ipynb", 4)
    size = sum(len(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert size < LIMITS.output_bytes * 1.5
    assert "output stopped here" in json.dumps(nb)


def test_memory_hog_is_contained(probe):
    r = probe["by"]["memhog"]
    assert r["score"] == 5, _msgs(r)
    assert "memory" in r["limits_hit"]


def test_process_burst_is_contained(batch):
    r = batch["by"]["forkbomb"]
    assert r["score"] == 0, _msgs(r)
    assert "processes" in r["limits_hit"] and "run was stopped" in _msgs(r)
    iso = batch["full"]["forkbomb"]["isolation"]
    assert iso["cgroup"] and iso["peak_processes"] <= LIMITS.max_processes + 2


def test_edited_and_deleted_tests_are_restored(batch):
    for student in ("edittests", "deletetests"):
        r = batch["by"][student]
        assert r["score"] == 0, (student, _msgs(r))
    assert "test cell 'test_visible' was edited: restored from the release" in _msgs(batch["by"]["edittests"])
    assert "cell 'test_hidden' was missing: restored" in _msgs(batch["by"]["deletetests"])


def test_printing_pass_and_faking_points_gets_nothing(batch):
    r = batch["by"]["fakescore"]
    assert r["score"] == 0 and r["max_score"] == 5
    m = _msgs(r)
    assert "'bonus'" in m and "ignored" in m
    assert "points of 'test_visible' were changed to 100: restored to 2" in m


def test_hiding_errors_does_not_pass_tests(batch):
    """A custom exception handler installed by an answer cell never reaches a test: the test
    fails with its own message (see test_grading_hostile for the other kernel-level tricks)."""
    r = batch["by"]["hideerrors"]
    assert r["score"] == 0
    assert "square(3) should be 9" in _msgs(r) and "suppressed" not in _msgs(r)


def test_hidden_tests_are_not_readable_from_the_kernel(probe):
    batch = probe
    r = batch["by"]["readhidden"]
    assert r["score"] == 5
    nb = nbformat.read(
        batch["summary"]["out"] + f"/autograded/readhidden/{samples.ASSIGNMENT}/{samples.NOTEBOOK}.ipynb", 4
    )
    printed = [o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if "FOUND" in o.get("text", "")]
    assert len(printed) == 1 and printed[0].startswith("FOUND nothing\n"), printed
    # the course tooling stays importable (modules use courses.incidents), its content does not
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "COURSES-PACKAGE True" in text and ("COURSE-CONTENT []" in text or "COURSE-CONTENT absent" in text), text
    iso = batch["full"]["readhidden"]["isolation"]
    assert {"mount", "pid"} <= set(iso["namespaces"]) and iso["caps_dropped"]


def test_gradebook_is_out_of_reach_and_holds_the_grades(batch, course):
    nb = nbformat.read(
        batch["summary"]["out"] + f"/autograded/writegradebook/{samples.ASSIGNMENT}/{samples.NOTEBOOK}.ipynb", 4
    )
    text = json.dumps([o for c in nb.cells for o in c.get("outputs", [])])
    assert "exists False" in text and "wrote gradebook" not in text or "no gradebook" in text
    db = sqlite3.connect(course["gradebook"])
    rows = dict(
        db.execute(
            "select s.student_id, sum(g.auto_score) from grade g join submitted_notebook n on g.notebook_id = n.id "
            "join submitted_assignment s on n.assignment_id = s.id group by s.student_id"
        )
    )
    assert rows["writegradebook"] == 0 and rows["good"] == 5 and rows["half"] == 2
    assert all(v <= 5 for v in rows.values())


def test_nbgrader_export_shows_the_grades(batch, course):
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        [str(VENV_BIN / "nbgrader"), "export", "--log-level=ERROR"],
        cwd=course["root"],
        check=True,
        env=env,
        capture_output=True,
    )
    with open(course["root"] / "grades.csv") as fh:
        rows = {r["student_id"]: r for r in csv.DictReader(fh)}
    assert float(rows["good"]["score"]) == 5 and float(rows["half"]["score"]) == 2
    assert float(rows["fakescore"]["score"]) == 0


def test_feedback_html_next_to_nbgraders(batch, course):
    fb = course["root"] / "feedback" / "half" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.html"
    html = fb.read_text()
    assert "Score: 2.0 / 5.0" in html and "square(-2) should be 4" in html
    assert "Notes from the grader" in html or "did not pass" in html


def test_feedback_page_is_what_nbconvert_makes(batch, course):
    """The feedback exporter skips nbconvert's BeautifulSoup accessibility pass only when that
    pass has nothing to edit: the page is the same document as with the pass, and a page with
    an image still gets it (its ``alt`` text)."""
    from bs4 import BeautifulSoup

    from grading import feedback

    nb = nbformat.read(course["root"] / "autograded" / "half" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb", 4)
    res = batch["full"]["half"]
    ours = feedback.render(nb, res)
    cls = type(feedback._exporter())
    saved = cls.ACCESSIBILITY_TARGETS
    cls.ACCESSIBILITY_TARGETS = ("<",)  # every page takes nbconvert's whole path, pass included
    try:
        theirs = feedback.render(nb, res)
    finally:
        cls.ACCESSIBILITY_TARGETS = saved
    assert ours != theirs  # the pass re-serialises the page: this is a different path...
    assert BeautifulSoup(ours, "html.parser").decode() == BeautifulSoup(theirs, "html.parser").decode()  # ...same page
    assert "square(-2) should be 4" in ours and "Score: 2.0 / 5.0" in ours
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "img"})]
    assert "No description has been provided for this image" in feedback.render(nb, res)


def test_feedback_page_is_the_same_with_its_style_sheet_and_formatters_made_once(batch, course, monkeypatch):
    """The feedback exporter builds pygments' style sheet and each language's formatter once
    per process and copies only the cells it scores: each page is byte for byte the page
    nbconvert's own filter and CSS pass make, and the notebook it was given is unchanged."""
    from grading import feedback

    nb = nbformat.read(course["root"] / "autograded" / "half" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb", 4)
    nb.cells.append(nbformat.v4.new_markdown_cell("Some `code`:\n\n```python\nx = [1, 2]\n```"))
    before = nbformat.writes(nb)
    res = batch["full"]["half"]
    pages = [feedback.render(nb, res) for _ in range(2)]
    assert nbformat.writes(nb) == before
    from nbconvert.filters.highlight import Highlight2HTML

    monkeypatch.setattr(feedback, "_EXPORTER", None)
    monkeypatch.setattr(feedback, "_highlighter_class", lambda: Highlight2HTML)
    monkeypatch.setattr(feedback, "_css_header_class", lambda base: base)
    theirs = feedback.render(nb, res)
    assert pages[0] == pages[1] == theirs
    assert "Score: 2.0 / 5.0" in theirs and 'class=" highlight hl-' in theirs


def test_a_feedback_page_highlights_and_converts_only_the_cells_an_earlier_page_did_not_have(
    batch, course, monkeypatch
):
    """Cells' HTML is remembered by what it is made from: the next learner's page of the same
    release runs pygments only on code cells whose source is new, and markdown only for
    cells whose text is new (the grading summary, with its scores); its page is the one
    nbconvert makes (see the test above)."""
    import pygments
    from nbconvert.filters.markdown_mistune import MarkdownWithMath

    from grading import feedback

    monkeypatch.setattr(feedback, "_EXPORTER", None)  # a fresh exporter: nothing remembered yet
    auto = course["root"] / "autograded"
    half, good = (
        nbformat.read(auto / s / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb", 4) for s in ("half", "good")
    )
    feedback.render(half, batch["full"]["half"])
    highlighted, converted = [], []
    highlight, render = pygments.highlight, MarkdownWithMath.render
    monkeypatch.setattr(
        pygments, "highlight", lambda code, *a, **kw: highlighted.append(code) or highlight(code, *a, **kw)
    )
    monkeypatch.setattr(MarkdownWithMath, "render", lambda self, src: converted.append(src) or render(self, src))
    page = feedback.render(good, batch["full"]["good"])
    seen = {c.source for c in half.cells if c.cell_type == "code"}
    new_code = [c.source for c in good.cells if c.cell_type == "code" and c.source not in seen]
    assert new_code and highlighted == new_code, (highlighted, new_code)
    assert len(converted) == 1 and "Grading: 5 / 5 points" in converted[0], converted
    assert "Score: 5.0 / 5.0" in page
    again = feedback.render(good, batch["full"]["good"])
    assert again == page and len(highlighted) == len(new_code) and len(converted) == 1


def test_the_gradebook_writer_keeps_the_assignments_rows_loaded_across_results(batch, course, tmp_path):
    """One Writer writes a whole run's results through nbgrader's API; the assignment's rows
    (its notebook and cells) are loaded once, not again after each result's commit, and
    every result's scores are what nbgrader computes."""
    import gc

    from sqlalchemy import event

    from grading import gradebook, reference

    src = course["root"] / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb"
    ref = reference.build(src, samples.ASSIGNMENT, tmp_path / "state")
    url = gradebook.url_for(tmp_path / "gradebook.db")
    gradebook.ensure_assignment(url, ref)
    auto = course["root"] / "autograded"
    good, half = (
        {**batch["full"][s], "executed": (auto / s / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb").read_text()}
        for s in ("good", "half")
    )
    seen: list[str] = []
    with gradebook.Writer(url) as w:
        threshold = gc.get_threshold()
        gc.set_threshold(1)  # collections while the first result is written (when one runs
        try:  # depends on what the process allocated before: the tests run before this one)
            w.save(good)
        finally:
            gc.set_threshold(*threshold)
        gc.collect()  # ... and one between results
        event.listen(w.gb.engine, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(" ".join(stmt.split())))
        w.save(half)
    reloaded = [q for q in seen if q.startswith("SELECT notebook.") or "WHERE ? = base_cell.notebook_id" in q]
    assert seen and not reloaded, reloaded
    assert gradebook.scores(url, samples.ASSIGNMENT) == {"good": 5.0, "half": 2.0}


def test_no_process_or_cgroup_left_behind(batch):
    # this process's own fork server and the kernel its pool keeps started ahead (an earlier
    # test module's in-process grading leaves them, as a grading process keeps them)
    own = {p.pid for p in psutil.Process().children(recursive=True)}

    def ours(p) -> bool:  # not another grader's on this machine (they may run at the same time)
        try:
            return p.environ().get("LIVELAB_GRADING_TAG") == TAG
        except psutil.Error:
            return False

    def mine():
        return [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.pid not in own
            and ours(p)
            and any("grading/zygote.py" in a or "grading/launcher.py" in a for a in (p.info["cmdline"] or []))
        ]

    deadline = time.monotonic() + 10  # fork servers exit on their own once their worker is gone
    while mine() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = mine()
    assert not left, [p.info["cmdline"] for p in left]
    from grading.limits import detect

    def busy():
        return [
            str(d)
            for base in detect()["bases"].values()
            for d in Path(base).glob(f"livelab-{TAG}-*")
            if d.exists() and set(map(int, (d / "cgroup.procs").read_text().split())) - own
        ]

    # the kernels of a stopping fork server; a bound for a loaded machine, not a timing
    while busy() and time.monotonic() < deadline + 60:
        time.sleep(0.2)

    def who(d: str) -> list[str]:
        out = []
        for pid in (Path(d) / "cgroup.procs").read_text().split():
            try:
                p = psutil.Process(int(pid))
                out.append(f"{pid} {p.status()} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                out.append(f"{pid} gone")
        return out

    assert not busy(), {d: who(d) for d in busy()}


def test_rerun_skips_unchanged_and_regrades_changed_on_an_existing_cluster(batch, course):
    from dask.distributed import LocalCluster

    samples.write_submission(course["root"], "half", samples.submission(course["release"], samples.CORRECT))
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        s = grade_many(
            BatchConfig(
                course=str(course["root"]),
                module=samples.ASSIGNMENT,
                path=str(course["root"] / "submitted"),
                limits=LIMITS,
                progress=False,
                scheduler=cluster.scheduler_address,
                events=str(course["root"] / "no-store"),
                state=str(course["root"] / ".state"),
            )
        )
    assert s["graded"] == 1 and s["cached"] == 16, (s["graded"], s["cached"], s["submissions"], s["skipped"])
    assert {r["student"]: r["score"] for r in s["results"]}["half"] == 5


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc (Linux)")
def test_a_worker_keeps_no_open_files_of_graded_submissions(course, tmp_path):
    """A warm grading worker grades submission after submission for as long as the service
    runs: each one's kernel client, event loop and sockets are closed with it.  (Each kept
    about a dozen file descriptors: a worker died at its ~80th submission, out of select()'s
    range.)"""
    import gc

    from grading import reference, runner, sandbox

    ref = reference.build(
        course["root"] / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb",
        samples.ASSIGNMENT,
        tmp_path / "state",
    )
    opts = runner.RunOptions(limits=LIMITS, hide=[str(course["root"]), str(tmp_path)])
    sub = runner.Submission(
        "s", samples.ASSIGNMENT, samples.NOTEBOOK, nbformat.writes(samples.submission(course["release"])).encode()
    )

    def settled() -> int:
        for th in list(sandbox._CLOSERS):
            th.join(30)
        gc.collect()
        return _open_fds()

    assert runner.grade(sub, ref, opts)["score"] == 5  # the first one opens what a worker keeps
    before = settled()
    n = 8
    for _ in range(n):
        assert runner.grade(sub, ref, opts)["score"] == 5
    grown = settled() - before
    assert grown < n, f"{grown} more open files after {n} submissions"


def test_leaks_between_submissions_are_impossible(course, tmp_path):
    """Sequential submissions on one worker: fresh kernel, private /tmp, nothing carried over."""
    from grading import reference, runner

    ref = reference.build(
        course["root"] / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb",
        samples.ASSIGNMENT,
        tmp_path / "state",
    )
    opts = runner.RunOptions(limits=LIMITS, hide=[str(course["root"]), str(tmp_path)])
    leaker = samples.submission(
        course["release"],
        samples.CORRECT,
        extra=[
            "import os, builtins\nopen('/tmp/leak-7731', 'w').write('secret')\nopen('leak-7731', 'w').write('x')\n"
            "builtins.LEAK = 'secret'\nos.environ['LEAK'] = 'secret'"
        ],
    )
    snoop = samples.submission(
        course["release"],
        samples.CORRECT,
        extra=[
            "import os, builtins\nprint('SNOOP', os.path.exists('/tmp/leak-7731'), os.listdir('.'), "
            "hasattr(builtins, 'LEAK'), os.environ.get('LEAK'))"
        ],
    )
    r1 = runner.grade(
        runner.Submission("leaker", samples.ASSIGNMENT, samples.NOTEBOOK, nbformat.writes(leaker).encode()), ref, opts
    )
    r2 = runner.grade(
        runner.Submission("snoop", samples.ASSIGNMENT, samples.NOTEBOOK, nbformat.writes(snoop).encode()), ref, opts
    )
    assert r1["score"] == r2["score"] == 5
    assert f"SNOOP False ['{samples.NOTEBOOK}.ipynb'] False None" in r2["executed"]


def test_watchdog_bounds_processes_without_cgroups(course, tmp_path, monkeypatch):
    from grading import reference, runner, sandbox

    monkeypatch.setattr(sandbox, "cgroup_support", lambda: {"mode": None, "bases": {}})
    ref = reference.build(
        course["root"] / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb",
        samples.ASSIGNMENT,
        tmp_path / "state",
    )
    lim = LIMITS.with_(max_processes=20)
    opts = runner.RunOptions(limits=lim, hide=[str(course["root"]), str(tmp_path)])
    bomb = samples.submission(
        course["release"],
        samples.CORRECT,
        extra=[
            "import os, time\nfor i in range(200):\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n"
            "    time.sleep(0.01)"
        ],
    )
    pool = sandbox.KernelPool()
    try:
        r = runner.grade(
            runner.Submission("bomb", samples.ASSIGNMENT, samples.NOTEBOOK, nbformat.writes(bomb).encode()),
            ref,
            opts,
            pool=pool,
        )
    finally:
        pool.close()
    assert "processes" in r["limits_hit"] and r["score"] == 0
    assert r["isolation"]["cgroup"] is None


def test_a_prestart_for_another_configuration_replaces_the_kernel_started_ahead(tmp_path):
    """A warm grading service prestarts each worker's next kernel when a ``livelab grade`` run
    begins (its hide list names that run's folders, so it differs from the last run's): the kernel
    started ahead for the previous configuration must give way, or the run's first submission on
    every worker waits for a kernel started on the spot."""
    from grading import runner, sandbox

    old = runner.tests_config(runner.RunOptions(limits=LIMITS, hide=[str(tmp_path / "run-1")]))
    new = runner.tests_config(runner.RunOptions(limits=LIMITS, hide=[str(tmp_path / "run-2")]))
    assert old.key() != new.key()
    pool = sandbox.KernelPool()
    try:
        pool.prestart(old)
        (stale,) = pool._ready
        pool.prestart(new)
        (ready,) = pool._ready
        assert ready is not stale and ready.config.key() == new.key()
        for th in list(sandbox._CLOSERS):  # closed in the background, not left running
            th.join(30)
        assert not stale.alive()
        pool.prestart(new)  # the same configuration: kept
        assert pool._ready == [ready]
        ready.kill()  # a kernel started ahead that died meanwhile gives way too
        deadline = time.monotonic() + 30  # a bound, not a timing
        while ready.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ready.alive()
        pool.prestart(new)
        (again,) = pool._ready
        assert again is not ready and again.alive()
        k = pool.take(new, prestart=False)
        assert k is again and pool._ready == []
        k.close()
    finally:
        pool.close()


def test_grading_workers_run_without_dasks_statistical_profiler():
    """Dask's workers sample their own stacks every 10 ms for a dashboard the grader never
    serves: about 1.5 % of a core per idle worker of a warm service, more while grading."""
    import logging

    from distributed import Client, LocalCluster

    from grading import forkserver

    with forkserver.configured():
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )
    try:
        with Client(cluster) as client:
            running = client.run(lambda dask_worker: sorted(dask_worker.periodic_callbacks))
    finally:
        cluster.close()
        forkserver.stop()
    (callbacks,) = running.values()
    assert "heartbeat" in callbacks and not any("profile" in c for c in callbacks), callbacks


def test_a_grading_clusters_housekeeping_runs_at_most_once_a_second():
    """An idle Dask server checks its event loop every 20 ms, samples psutil every 0.5 s and, in
    a worker and its nanny, memory every 0.1 s: 0.11 of a core for a warm service's scheduler,
    two nannies and two workers doing nothing, while the lab's own devices took 0.1.  Every
    such callback of the scheduler, the nannies and the workers of a grading cluster runs at
    most once a second (heartbeats stay Dask's: the scheduler sets their pace)."""
    import gc
    import logging

    from distributed import Client, LocalCluster

    from grading import forkserver

    housekeeping = ("tick", "monitor", "memory_monitor")

    def times(server):
        return {k: pc.callback_time for k, pc in server.periodic_callbacks.items() if k in housekeeping}

    with forkserver.configured():
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )
    try:
        with Client(cluster) as client:
            workers = client.run(lambda dask_worker: times(dask_worker))
            scheduler = client.run_on_scheduler(lambda dask_scheduler: times(dask_scheduler))
            nannies = client.run(lambda dask_worker: times(dask_worker), nanny=True)
            frozen = client.run(gc.get_freeze_count)
    finally:
        cluster.close()
        forkserver.stop()
    (worker,) = workers.values()
    (nanny,) = nannies.values()
    assert set(worker) == set(housekeeping) and {"tick", "memory_monitor"} <= set(nanny), (worker, nanny)
    assert {"tick", "monitor"} <= set(scheduler), scheduler
    for who, t in (("worker", worker), ("nanny", nanny), ("scheduler", scheduler)):
        assert all(ms >= 1000 for ms in t.values()), (who, t)
    # and what the workers' fork server preloaded is out of the collector's reach (batch.freeze_heap)
    assert all(n > 0 for n in frozen.values()), frozen


def test_cli_bad_usage_is_one_line_and_exit_2(tmp_path, capsys, course):
    from livelab.cli import main

    assert main(["grade", str(tmp_path / "nope"), "squares", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err
    assert main(["grade", str(course["root"]), "nomodule", str(tmp_path)]) == 2
    assert "module 'nomodule' not found" in capsys.readouterr().err
    assert main(["grade", str(course["root"]), "squares", str(tmp_path), "--scheduler", "nonsense"]) == 2


def test_cli_teams_land_on_the_grading_events(tmp_path, course):
    """``--teams FILE`` (and ``--team``) name each learner's team on the grader's events, so the
    time-to-signal report can filter by team."""
    from labs.learning_events import EventStore
    from livelab.cli import main

    sub = course["root"] / "submitted"
    students = sorted(p.name for p in sub.iterdir())[:2]
    one = tmp_path / "submitted"
    for s in students:
        shutil.copytree(sub / s, one / s)
    teams = tmp_path / "teams.csv"
    teams.write_text(f"student,team\n{students[0]},red\n")
    store = f"sqlite:///{tmp_path / 'events.db'}"
    lab_home = tmp_path / "lab"  # a lab's home (not running): grading for it writes its trail
    lab_home.mkdir()
    (lab_home / "config.json").write_text("{}")
    rc = main(
        [
            "--home",
            str(lab_home),
            "grade",
            str(course["root"]),
            samples.ASSIGNMENT,
            str(one),
            "--teams",
            str(teams),
            "--team",
            "blue",
            "--events",
            store,
            "--state",
            str(course["root"] / ".state"),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert rc in (0, 1)
    with EventStore(url=store) as st:
        got = {(e.learner, e.team) for e in st.query(source="grader")}
    assert got == {(students[0], "red"), (students[1], "blue")}, got
    from lab_hardware.modelops import lineage

    grades = [e for e in lineage.read_events(lab_home) if e["job"]["name"] == "grade"]
    assert sorted(lineage.summary(e)["artifact"].split("/")[2] for e in grades) == students
    assert all(e["eventType"] == "COMPLETE" for e in grades)
    assert all(e["run"]["facets"]["livelab_privacyAudit"]["verdict"] == "pass" for e in grades)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("student,team\nana\n", "line 2: expected 'student,team'"),
        ("{not json", "not valid JSON"),
        ('{"ana": 3}', "must be a team name"),
        ("", "names no student"),
    ],
)
def test_cli_bad_teams_file_is_one_line_and_exit_2(tmp_path, capsys, course, content, fragment):
    from livelab.cli import main

    f = tmp_path / "teams"
    f.write_text(content)
    assert (
        main(["grade", str(course["root"]), samples.ASSIGNMENT, str(course["root"] / "submitted"), "--teams", str(f)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err, err


def test_a_slow_submission_is_logged_with_its_phases():
    """A stall (one run of 60 took 79 s instead of 12) must name the phase it waited in."""
    from grading.batch import slow_submission

    fast = {"student": "a", "timings": {"total": 0.4, "cells": 0.2, "kernel_wait": 0.05}}
    slow = {"student": "b", "timings": {"total": 61.0, "cells": 0.2, "kernel_wait": 60.5}}
    assert slow_submission([fast]) is None
    assert slow_submission([{"student": "c"}]) is None
    line = slow_submission([fast, slow])
    assert line == "slow submission: b took 61.0 s (kernel_wait 60.50 s, cells 0.20 s)"
    assert slow_submission([fast], threshold=0.1).startswith("slow submission: a took 0.4 s (cells")


def _kernel_says(kernel, code: str) -> str:
    from jupyter_core.utils import run_sync

    kc = kernel.km.client()
    kc.start_channels()
    try:
        run_sync(kc.wait_for_ready)(timeout=60)
        out: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        run_sync(kc.execute_interactive)(code, output_hook=hook, timeout=60)
        return "".join(out).strip()
    finally:
        kc.stop_channels()


def _in_grading_kernel(code: str) -> str:
    """What ``code`` prints in a grading kernel of its own (started from the fork server)."""
    from grading import runner, sandbox

    k = sandbox.Kernel(runner.tests_config(runner.RunOptions(limits=LIMITS))).start()
    try:
        return _kernel_says(k, code)
    finally:
        k.close()


def test_the_fork_server_compiles_the_regular_expressions_a_kernels_start_would():
    """tokenize's token pattern (IPython tokenizes every cell) and the completer's patterns were
    compiled by every kernel (3 % of its CPU): the fork server compiles them once, so what a
    kernel's shell and first cell compile is already in ``re``'s and tokenize's caches."""
    probe = """
import io, re, sys, tokenize
sys.path.insert(0, sys.argv[1])
import zygote
zygote._warm_regex_caches()
warmed, misses = {id(p) for p in re._cache.values()}, tokenize._compile.cache_info().misses
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.completer import IPCompleter
c = IPCompleter(shell=InteractiveShell.instance(), namespace={}, global_namespace={})
list(tokenize.generate_tokens(io.StringIO("y = [i for i in range(3)]  # a cell\\n").readline))
ahead = [id(p) in warmed for p in (c.docstring_sig_re, c.docstring_kwd_re, c.splitter._delim_re)]
print(tokenize._compile.cache_info().misses - misses, ahead)
"""
    got = subprocess.run(
        [sys.executable, "-c", probe, str(Path(__file__).parents[1] / "grading")], capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr[-800:]
    assert got.stdout.strip() == "0 [True, True, True]", got.stdout


def test_a_forked_kernels_first_traceback_finds_its_colour_theme_built():
    """IPython builds a colour theme's pygments style and formatter the first time the theme
    colours anything: in a fresh grading kernel, its first traceback (a failing test), about
    4 ms of its CPU.  The fork server builds the built-in themes once, so a kernel's theme is
    ready before any notebook code ran, and the traceback itself is unchanged."""
    probe = (
        "from IPython.utils import PyColorize\n"
        "name = get_ipython().InteractiveTB._theme_name\n"
        "print(name in PyColorize._BUILTIN_THEMES, PyColorize.theme_table[name]._formatter is not None)"
    )
    assert _in_grading_kernel(probe) == "True True"
    failing = "def square(x):\n    return x + x\nassert square(3) == 9, 'square(3) should be 9'"
    got = _in_grading_kernel(
        "import sys\n"
        "try:\n" + "".join(f"    {line}\n" for line in failing.splitlines()) + "except AssertionError:\n"
        "    tb = get_ipython().InteractiveTB.structured_traceback(*sys.exc_info())\n"
        "print('square(3) should be 9' in tb[-1], any('\\x1b[' in line for line in tb))"
    )
    assert got == "True True"  # the message, in colour, as before


def test_a_forked_kernel_takes_its_command_line_parsed_ahead_by_the_fork_server():
    """traitlets builds an argparse parser of every configurable class's options to read a
    kernel's command line (about 2 ms of a forked kernel's 19-20 ms of start-up CPU).  The fork server parses
    each shape of command line once (the connection file's path aside) and a kernel takes that
    configuration with its own path: the same options hold (its connection file, no input
    history), and a command line of another shape is parsed as before."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_zygote_under_test", Path(samples.__file__).with_name("zygote.py"))
    zygote = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zygote)
    probe = (
        "import json\n"
        "app = get_ipython().kernel.parent\n"
        "cfg = json.loads(open(app.connection_file).read())\n"
        "print(getattr(app, '_livelab_argv_ahead', False), app.connection_file == app.argv[1],"
        " get_ipython().history_manager.enabled, cfg['transport'])"
    )
    assert _in_grading_kernel(probe) == "True True False ipc"
    # the server's parse, with the path put back, is exactly what traitlets reads from the line
    from ipykernel.kernelapp import IPKernelApp

    args = ["-f", "/tmp/x/kernel-1.json", "--HistoryManager.enabled=False", "--IPKernelApp.log_level=40"]
    ahead = zygote._argv_ahead(args)
    assert ahead is not None
    plain = IPKernelApp()
    plain.parse_command_line(list(args))
    app = IPKernelApp()
    zygote._apply_argv_ahead(app, args, ahead)
    assert app.cli_config == plain.cli_config and app.extra_args == plain.extra_args
    assert app.connection_file == "/tmp/x/kernel-1.json" and app.log_level == 40
    again = zygote._argv_ahead(["-f", "/tmp/y/kernel-2.json", *args[2:]])
    assert again is ahead  # one parse per shape
    for other in (["--help"], ["install"], ["-f", "/tmp/k.json", "-h"], ["--HistoryManager.enabled=False"]):
        assert zygote._argv_ahead(other) is None  # parsed (or refused) by traitlets itself


def test_a_forked_grading_kernel_reads_its_shell_requests_on_its_main_thread():
    """ipykernel 7 gives each kernel a shell-channel thread for kernel subshells (requests run
    concurrently for a client that opens them): every shell request and reply crossed it.
    nbclient, a grading kernel's only client, runs one cell at a time and opens no subshell:
    a kernel forked by the fork server has no such thread, says so in its kernel_info, and
    runs cells, prints, errors and a long cell's interrupt as before."""
    probe = (
        "import threading\n"
        "k = get_ipython().kernel\n"
        "print(k.shell_channel_thread is None, any(t.name == 'Shell channel' for t in threading.enumerate()),"
        " 'kernel subshells' in k.kernel_info.get('supported_features', []))"
    )
    assert _in_grading_kernel(probe) == "True False False"


def test_forked_kernels_run_the_guard_compiled_once_and_the_handover_is_gone(monkeypatch):
    """The fork server compiles the kernel guard once and each forked kernel's startup file
    takes that code object (compiling it was 5% of a kernel's CPU): the guard is installed,
    nothing of the handover is left for notebook code to see, and a guard file that changed
    since the server compiled it is compiled from the startup file instead."""
    from grading import runner, sandbox

    probe = (
        "import sys\n"
        "g = sys.modules['_livelab_guard']\n"
        "print(g.COMPILED_AHEAD, hasattr(sys, '_livelab_guard_code'), callable(g.enter))"
    )
    k = sandbox.Kernel(runner.tests_config(runner.RunOptions(limits=LIMITS))).start()
    try:
        assert _kernel_says(k, probe) == "True False True"
    finally:
        k.close()
    # a startup file written for another guard source: the kernel compiles its own copy
    edited = sandbox.guard_startup().replace(sandbox.guard_digest(sandbox.GUARD.read_text()).encode(), b"0" * 64)
    monkeypatch.setattr(sandbox, "guard_startup", lambda: edited)
    k = sandbox.Kernel(runner.tests_config(runner.RunOptions(limits=LIMITS))).start()
    try:
        assert _kernel_says(k, probe) == "False False True"
    finally:
        k.close()


def test_the_guards_dict_tags_change_with_every_way_a_module_namespace_changes():
    """The guard skips a module at a test cell when its namespace's version tag is the one it
    recorded: every way code can change a module's names must give that namespace a new tag,
    and only that one."""
    import runpy
    import types

    from grading import sandbox

    tags = runpy.run_path(str(sandbox.GUARD))["_TAGS"]
    assert tags is not None, "the guard cannot read dict tags on this interpreter: it compares every module"
    mod, other = types.ModuleType("m_tagged"), types.ModuleType("m_other")
    exec("x = 1\ndef set_global(v):\n    global x\n    x = v\n", vars(mod))
    ways = [
        lambda: setattr(mod, "x", 2),
        lambda: mod.set_global(3),
        lambda: vars(mod).update(y=1),
        lambda: delattr(mod, "y"),
        lambda: exec("x = 4", vars(mod)),
        lambda: vars(mod).setdefault("z", 0),
        lambda: vars(mod).pop("z"),
        lambda: setattr(mod, "x", mod.set_global),  # any other value
    ]
    for way in ways:
        before = tags([vars(mod), vars(other)])
        way()
        after = tags([vars(mod), vars(other)])
        assert after[0] != before[0] and after[1] == before[1]
    unchanged = tags([vars(mod)])
    mod.x = mod.x  # the same object again, and a read: nothing changed
    assert tags([vars(mod)]) == unchanged


def test_the_guard_starts_from_the_fork_servers_module_record_and_compares_only_changed_namespaces():
    """A forked kernel's guard takes the fork server's copies of the loaded modules' namespaces
    (copying them in every kernel touched every value: copy-on-write faults) and, at a test
    cell, compares only the namespaces whose dict version tag changed.  What it guards stays
    the same: a module changed before the first checkpoint (release code) is recorded as it is
    then, a module put under a loaded module's name is recorded too, and a learner's patch of
    either is set aside during a test and given back after it."""

    probe = (
        "import sys, types, math, textwrap\n"
        "g = sys.modules['_livelab_guard']\n"
        "names, mods, nss, copies, tags = g.MODULES_AHEAD\n"
        "orig_isclose = math.isclose\n"
        "def release_isclose(a, b, **k):\n"
        "    return True\n"
        "math.isclose = release_isclose\n"  # release code, before the first checkpoint
        "fresh = types.ModuleType('textwrap')\n"
        "fresh.dedent = textwrap.dedent\n"
        "sys.modules['textwrap'] = fresh\n"
        "g.checkpoint('n')\n"
        "i = names.index('json')\n"
        "in_server = 'textwrap' in names\n"
        "ahead = g._state['modules']['json'][1] is copies[i]\n"
        "recorded = g._state['modules']['math'][1]['isclose'] is release_isclose\n"
        "def learner_isclose(a, b, **k):\n"
        "    return 'learner'\n"
        "def learner_dedent(*a):\n"
        "    return 'learner'\n"
        "math.isclose = learner_isclose\n"
        "fresh.dedent = learner_dedent\n"
        "g.enter('n')\n"
        "during = (math.isclose(1, 2), fresh.dedent('  x'))\n"
        "g.leave('n')\n"
        "after = (math.isclose(1, 2), fresh.dedent('  x'))\n"
        "print(g._TAGS is not None, in_server, ahead, recorded, during, after)"
    )
    said = _in_grading_kernel(probe)
    assert said == "True True True True (True, 'x') ('learner', 'learner')", said


def test_a_failing_cells_traceback_is_formatted_once_and_its_history_is_what_ipython_keeps():
    """IPython formats a failing cell's traceback to show it and again for its history; a
    grading kernel formats it once and keeps the lines shown, which are what IPython's own
    second formatting gives."""

    probe = (
        "ip = get_ipython()\n"
        "tb = ip.InteractiveTB\n"
        "calls = []\n"
        "orig = tb.structured_traceback\n"
        "def counted(*a, **k):\n"
        "    calls.append(1)\n"
        "    return orig(*a, **k)\n"
        "tb.structured_traceback = counted\n"
        "r = ip.run_cell('def f(x):\\n    return 1 / x\\nf(0)', store_history=True)\n"
        "del tb.structured_traceback\n"
        "kept = ip.history_manager.exceptions[r.execution_count]\n"
        "again = type(ip)._format_exception_for_storage(ip, r.error_in_exec)\n"
        "print(len(calls), kept == again, kept['ename'], len(kept['traceback']) > 1)"
    )
    said = _in_grading_kernel(probe)
    assert said == "1 True ZeroDivisionError True", said


def test_cell_metadata_is_validated_as_nbgrader_does_with_each_schema_checked_once():
    """nbgrader's cell metadata validator calls ``jsonschema.validate``, which checks the
    schema itself on every call; the grader checks each schema once and reuses its validator.
    What is accepted and what is refused, and the error raised, stay jsonschema's."""
    import jsonschema
    from nbgrader.nbgraderformat import common
    from nbgrader.nbgraderformat.v3 import MetadataValidatorV3

    from grading import runner

    runner._sanitizers()
    assert isinstance(common.jsonschema, runner._SchemaCheckedOnce)
    v = MetadataValidatorV3()
    good = {"grade": True, "grade_id": "t1", "points": 2, "locked": True, "solution": False, "schema_version": 3}
    bad = {**good, "points": "lots"}
    cell = nbformat.v4.new_code_cell("assert True", metadata={"nbgrader": good})
    for _ in range(3):
        v.validate_cell(cell)
    cell.metadata["nbgrader"] = bad
    with pytest.raises(jsonschema.ValidationError) as theirs:
        jsonschema.validate(bad, v.schema)
    for _ in range(2):  # the first time (schema checked) and later (validator reused)
        with pytest.raises(jsonschema.ValidationError) as ours:
            v.validate_cell(cell)
        assert ours.value.message == theirs.value.message and "lots" in ours.value.message
    broken = {"type": "nonsense-type"}  # a broken schema is still refused as jsonschema does
    with pytest.raises(jsonschema.SchemaError):
        common.jsonschema.validate({}, broken)


def test_each_notebooks_own_metadata_validator_reuses_the_schema_checked_before(monkeypatch):
    """nbgrader's ``CheckCellMetadata`` builds a new metadata validator for every notebook, and
    each loads its schema from the file anew: the schema is checked once per content, not once
    per notebook, and what is kept stays bounded however many notebooks a worker sanitizes
    (kept by object, it checked every notebook's schema and kept each one)."""
    import jsonschema
    from nbgrader.nbgraderformat import common
    from nbgrader.nbgraderformat.v3 import MetadataValidatorV3

    from grading import runner

    runner._sanitizers()
    checked = []
    vcls = jsonschema.validators.validator_for(MetadataValidatorV3().schema)
    orig = vcls.check_schema.__func__
    monkeypatch.setattr(
        vcls, "check_schema", classmethod(lambda cls, s, *a, **k: (checked.append(1), orig(cls, s, *a, **k))[1])
    )
    monkeypatch.setattr(common.jsonschema, "_validators", {})
    good = {"grade": True, "grade_id": "t1", "points": 2, "locked": True, "solution": False, "schema_version": 3}
    for _ in range(50):  # one validator per notebook, as CheckCellMetadata makes them
        MetadataValidatorV3().validate_cell(nbformat.v4.new_code_cell("assert True", metadata={"nbgrader": good}))
    assert len(checked) == 1, len(checked)
    assert len(common.jsonschema._validators) <= runner._SchemaCheckedOnce.KEEP
    bad = {**good, "points": "lots"}
    with pytest.raises(jsonschema.ValidationError, match="lots"):
        MetadataValidatorV3().validate_cell(nbformat.v4.new_code_cell("assert True", metadata={"nbgrader": bad}))


def test_sanitizing_asks_the_reference_gradebook_once_per_thread_and_still_restores(course, tmp_path):
    """nbgrader's sanitize preprocessors ask the private reference gradebook the same questions
    for every submission; a grading process asks them once per thread (a session and its rows
    belong to one thread) and every notebook is still restored from the release: edited test
    cells and points, on the first notebook and on later ones, in either thread."""
    from sqlalchemy import event

    from grading import reference, runner

    ref = reference.build(
        course["root"] / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb",
        samples.ASSIGNMENT,
        tmp_path / "state",
    )
    release = course["release"]

    def tampered():
        nb = samples.submission(release, samples.CORRECT)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade"):
                cell.source = "pass  # no tests here"
                meta["points"] = 100
        return nb

    def restored(nb) -> bool:
        tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        return bool(tests) and all(
            "assert" in c.source  # the release's tests (with the hidden ones), not the edit
            and float(c.metadata.nbgrader.points) == ref.grade_cells[c.metadata.nbgrader.grade_id]
            for c in tests
        )

    queries: list[str] = []

    def on_query(conn, cursor, statement, *rest):
        queries.append(statement)

    nb, notes = runner.sanitize(tampered(), ref, "first")  # opens the kept gradebook
    assert restored(nb) and any("was edited" in n for n in notes)
    gb = runner._kept_gradebooks()(ref.ensure_local().db_url)
    event.listen(gb.engine, "before_cursor_execute", on_query)
    try:
        for i in range(3):
            nb, notes = runner.sanitize(tampered(), ref, f"again{i}")
            assert restored(nb) and any("was edited" in n for n in notes), notes
        assert queries == [], queries[:3]  # answered from what the thread already asked
        out: dict = {}

        def other_thread():
            out["nb"], out["notes"] = runner.sanitize(tampered(), ref, "other")

        th = threading.Thread(target=other_thread)
        th.start()
        th.join(60)
        assert restored(out["nb"]) and any("was edited" in n for n in out["notes"])
        assert queries, "a new thread asks its own session"
    finally:
        event.remove(gb.engine, "before_cursor_execute", on_query)


def test_the_guards_calls_ride_on_the_cells_own_requests_and_are_sent_alone_when_a_cell_fails(course, tmp_path):
    """A test cell's ``leave`` and the next cell's ``enter`` or ``checkpoint`` are evaluated as
    ``user_expressions`` of the cell's own execute request (a separate silent request cost a
    grading kernel as much CPU as a cell).  ipykernel evaluates none when the cell fails: each
    call is then sent on its own, so a test after a failing cell is still run on the grader's
    IPython (here an AST transformer installed by a cell that then raises is set aside)."""
    from grading import reference, runner, sandbox

    ref = reference.build(
        course["root"] / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb",
        samples.ASSIGNMENT,
        tmp_path / "state",
    )
    opts = runner.RunOptions(limits=LIMITS, hide=[str(course["root"]), str(tmp_path)])
    no_asserts = (
        "import ast\nclass NoAsserts(ast.NodeTransformer):\n"
        "    def visit_Assert(self, node):\n        return ast.copy_location(ast.Pass(), node)\n"
        "get_ipython().ast_transformers.append(NoAsserts())\n"
    )
    cases = {  # name -> (notebook, expected score, separate guard requests)
        # the first checkpoint only: it comes before any cell
        "right": (samples.submission(course["release"], samples.CORRECT), 5, 1),
        # the failing second test's leave
        "half": (samples.submission(course["release"], samples.HALF), 2, 2),
        # both tests fail: their leaves, and the second test's enter
        "wrong": (samples.submission(course["release"], samples.WRONG), 0, 4),
        # the raising cell's tail (the first test's enter) and both failing tests' calls
        "raises": (
            samples.submission(course["release"], samples.WRONG, extra=[no_asserts + "raise ValueError('x')"]),
            0,
            5,
        ),
        # the transformer's cell succeeds: enter rides on it and sets the transformer aside
        "transformer": (samples.submission(course["release"], samples.WRONG, extra=[no_asserts]), 0, 4),
    }
    pool = sandbox.KernelPool()
    try:
        for name, (nb, score, alone) in cases.items():
            nb, _ = runner.sanitize(nb, ref, name)
            facts = runner.execute(nb, pool.take(runner.tests_config(opts)), LIMITS, {}, ref=ref)
            rows = runner.score(facts["nb"], ref, facts["ctx"], None)
            assert (sum(r["score"] or 0 for r in rows), facts["ctx"].guard_requests) == (score, alone), name
            assert not facts["ctx"].interfered, (name, facts["ctx"].interfered)
    finally:
        pool.close()


def test_a_grading_kernels_client_opens_two_channels_and_asks_kernel_info_once(course, tmp_path, monkeypatch):
    """The grader's kernel client opens the shell and IOPub channels only (no heartbeat
    thread, no stdin or control socket: nothing reads them), asks ``kernel_info`` once, when
    the kernel becomes ready, and papermill's language_info is that answer; the grades are
    nbgrader's."""
    from jupyter_client import channels
    from jupyter_client.session import Session

    from grading import reference, runner, sandbox

    ref = reference.build(
        course["root"] / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb",
        samples.ASSIGNMENT,
        tmp_path / "state",
    )
    opts = runner.RunOptions(limits=LIMITS, hide=[str(course["root"]), str(tmp_path)])
    sent: list[str] = []
    hb: list[object] = []
    send, hb_start = Session.send, channels.HBChannel.start

    def counting_send(self, stream, msg_or_type, *a, **kw):
        kind = msg_or_type if isinstance(msg_or_type, str) else msg_or_type["header"]["msg_type"]
        sent.append(kind)
        return send(self, stream, msg_or_type, *a, **kw)

    monkeypatch.setattr(Session, "send", counting_send)
    monkeypatch.setattr(channels.HBChannel, "start", lambda self: hb.append(self) or hb_start(self))
    pool = sandbox.KernelPool()
    try:
        for nb, score in ((samples.CORRECT, 5), (samples.HALF, 2)):
            sent.clear()
            nb, _ = runner.sanitize(samples.submission(course["release"], nb), ref, "learner")
            kernel = pool.take(runner.tests_config(opts))
            facts = runner.execute(nb, kernel, LIMITS, {}, ref=ref)
            rows = runner.score(facts["nb"], ref, facts["ctx"], None)
            assert sum(r["score"] or 0 for r in rows) == score
            assert sent.count("kernel_info_request") == 1, sent
            assert facts["nb"].metadata["language_info"]["name"] == "python"
            assert facts["nb"].metadata["language_info"]["version"].startswith("3.")
        assert not hb
    finally:
        pool.close()


def test_a_grading_kernels_flush_with_nothing_written_skips_the_io_thread_and_outputs_keep_their_order():
    """ipykernel flushes stdout and stderr four times per request, and each flush hands two
    callbacks to its IO thread and waits for them, written or not (1.6 ms of a kernel's
    CPU per cell).  In a grading kernel a flush with nothing written returns at once; what
    was written is sent, in order, before the reply, as before."""
    from jupyter_core.utils import run_sync
    from grading import runner, sandbox

    probe = (
        "import sys\n"
        "calls = []\n"
        "pt = sys.stdout.pub_thread\n"
        "orig = pt.schedule\n"
        "pt.schedule = lambda f: (calls.append(f), orig(f))[1]\n"
        "sys.stdout.flush(); sys.stderr.flush()\n"
        "empty = len(calls)\n"
        "sys.stdout.write('x\\n'); sys.stdout.flush()\n"
        "written = len(calls) - empty\n"
        "pt.schedule = orig\n"
        "print(empty, written > 0)"
    )
    cells = [
        probe,
        "import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')\nsys.stderr.write('d')\nraise ValueError('e')",
        "print('f', end='')",
    ]
    k = sandbox.Kernel(runner.tests_config(runner.RunOptions(limits=LIMITS))).start()
    kc = k.km.client()
    kc.start_channels()
    try:
        run_sync(kc.wait_for_ready)(timeout=60)
        per_cell: list[list[tuple[str, str]]] = []
        for code in cells:
            seen: list[tuple[str, str]] = []

            def hook(msg, seen=seen):
                c = msg["content"]
                if msg["msg_type"] == "stream":
                    seen.append((c["name"], c["text"]))
                elif msg["msg_type"] == "error":
                    seen.append(("error", c["evalue"]))

            run_sync(kc.execute_interactive)(code, output_hook=hook, timeout=60)
            per_cell.append(seen)
    finally:
        kc.stop_channels()
        k.close()

    def text(seen, name):
        return "".join(t for n, t in seen if n == name)

    probe_out, printing, last = per_cell
    assert text(probe_out, "stdout") == "x\n0 True\n", probe_out
    # every output of a cell came before its reply (none is left for the next cell), each
    # stream's text in order, the error last
    assert (text(printing, "stdout"), text(printing, "stderr"), printing[-1]) == ("a\nc\n", "b\nd", ("error", "e"))
    assert last == [("stdout", "f")], last


def test_a_kernel_closed_in_the_background_is_accounted_at_once_and_the_run_start_is_counted_in_the_warm_up(course):
    """The CPU accounting of a run (``cpu_seconds_run``, for the benchmark) waits for
    nothing: a kernel handed to ``close_later`` is counted before it returns (the workers'
    totals no longer join the closer threads, which held a run's start and end by 0.1 s
    each), and the warm-up call that starts a run also brings each worker's totals back."""
    from grading import batch, runner, sandbox
    from grading.reference import build

    k = sandbox.Kernel(runner.tests_config(runner.RunOptions(limits=LIMITS))).start()
    assert _kernel_says(k, "print(sum(range(10**6)))") == str(sum(range(10**6)))
    before = sandbox.KERNEL_CPU_SECONDS
    sandbox.close_later(k)
    assert sandbox.KERNEL_CPU_SECONDS > before
    ref = build(
        course["root"] / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb",
        samples.ASSIGNMENT,
        course["root"] / ".state-warm",
    )
    warm = batch._warm(runner.RunOptions(limits=LIMITS), [ref], None, cpu=True)
    assert warm["cpu"]["kernels"] == sandbox.KERNEL_CPU_SECONDS and warm["cpu"]["worker"] > 0, warm
    runner.kernel_pool().close()


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None  # gone: reaped


def test_a_closed_kernels_processes_are_reaped_by_the_fork_server_never_left_to_pid_1():
    """Closing a kernel kills its process group: the PID-namespace shim and the kernel die
    together, and the kernel, orphaned, went to PID 1 to be reaped.  On the grading VMs PID 1
    is an agent that reaps late: the kernels stayed zombies under it (the rows a test of the
    hub once counted as live processes), and their CPU was accounted to it.  The fork server
    is the subreaper of what it forks: every process of a closed kernel is reaped by it, none
    is ever a child of PID 1."""
    import psutil

    from grading import runner, sandbox

    k = sandbox.Kernel(runner.tests_config(runner.RunOptions(limits=LIMITS))).start()
    assert _kernel_says(k, "print('up')") == "up"
    pids = [k.pid] + [p.pid for p in psutil.Process(k.pid).children(recursive=True)]
    assert len(pids) >= 2, pids  # the shim and the kernel at least (a PID namespace)
    k.close()
    parents: dict[int, set] = {pid: set() for pid in pids}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_parent_of(pid) is not None for pid in pids):
        for pid in pids:
            parent = _parent_of(pid)
            if parent is not None:
                parents[pid].add(parent)
        time.sleep(0.005)
    assert all(_parent_of(pid) is None for pid in pids), {pid: _parent_of(pid) for pid in pids}
    assert not any(1 in seen for seen in parents.values()), parents


def test_kernel_directories_live_in_memory_when_a_memory_cgroup_bounds_what_a_kernel_writes():
    """A kernel's directory (its home, IPython profile, connection files, the submission and
    what the notebook writes) is made and removed for every submission: on ext4 that cost the
    machine about 9 ms of CPU per kernel more than on tmpfs (alternating A/B, 10 kernels x 12).
    Kernel directories go to /dev/shm when it is a tmpfs and each kernel has a memory cgroup
    (what a notebook writes there is charged to it, so RAM is bounded as disk was not);
    elsewhere to /tmp as before.  A kernel there runs and sees its own directory only."""
    from grading import limits, runner, sandbox

    shm_tmpfs = any(
        line.split()[4] == "/dev/shm" and line.split(" - ")[1].split()[0] == "tmpfs"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    sup = limits.detect()
    controllers = Path(sup["bases"].get("", "/nonexistent")) / "cgroup.controllers"
    memory = (
        "memory" in sup["bases"]
        if sup["mode"] == "v1"
        else sup["mode"] == "v2" and "memory" in controllers.read_text().split()
    )
    root = subprocess.run(
        [sys.executable, "-c", "from grading import sandbox; print(sandbox.grading_root())"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        check=True,
    ).stdout.strip()
    shutil.rmtree(root, ignore_errors=True)
    expected = "/dev/shm/llg-" if shm_tmpfs and memory and os.access("/dev/shm", os.W_OK) else "/tmp/llg-"
    assert root.startswith(expected), (root, shm_tmpfs, sup)
    k = sandbox.Kernel(runner.tests_config(runner.RunOptions(limits=LIMITS))).start()
    try:
        said = _kernel_says(k, "import os\nprint(os.getcwd() == os.path.realpath('.'), sorted(os.listdir('/dev/shm')))")
        assert said.startswith("True"), said
        assert str(k.dir).startswith(str(sandbox.grading_root()))
    finally:
        k.close()


def test_kernel_directories_of_a_grader_that_is_gone_are_swept_and_a_live_ones_kept(tmp_path):
    """A grading worker killed mid-run leaves its kernel directories behind (in /dev/shm they
    hold memory until a reboot): the next grader process sweeps those of processes that are
    gone, and keeps a live process's."""
    from grading import sandbox

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"llg-{gone.stdout.strip()}-abc" / "k1" / "work"
    live = tmp_path / f"llg-{os.getppid()}-abc" / "k2"
    other = tmp_path / "llg-probe-xyz"
    for d in (dead, live, other):
        d.mkdir(parents=True)
    sandbox._sweep_stale_roots(str(tmp_path))
    assert not dead.parents[1].exists() and live.exists() and other.exists()
