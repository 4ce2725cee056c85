"""The tests-only grader against hostile and accidental damage, graded in ONE batch call.

Every submission here was seen scoring wrong before the grader was fixed (kernel-level
subversion scoring full with failing code, accidents scored 0 as "invalid", a correct function
lost to the output limit, two students sharing one result file).  Each now gets exactly what
its code earns, and one broken notebook never stops the batch.  Real nbgrader, papermill and
kernels; nothing is mocked.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_output

from grading import samples
from grading.batch import BatchConfig, grade_many, path_id
from grading.limits import Limits

#: one batch of 24 notebooks (a kernel each) plus a cached rerun; pytest-timeout's 300 s
#: default is for one test, not for a fixture that grades a class's worth of notebooks
pytestmark = pytest.mark.timeout(1200)

LIMITS = Limits(cell_timeout=5, total_timeout=30, memory_mb=600, max_processes=40, output_bytes=200_000)
os.environ.setdefault("LIVELAB_GRADING_TAG", f"t{os.getpid()}")

CORRECT = samples.CORRECT
WRONG = samples.WRONG
FAILS_ABS = "return x * x if x >= 0 else 0"  # passes the visible test; fails the abs() check
FAILS_ISCLOSE = "return int(x) ** 2"  # passes the visible test; fails math.isclose

STRIP = (
    "def _strip(code):\n"
    "    return '\\n'.join((l[:len(l) - len(l.lstrip())] + 'pass') if l.lstrip().startswith('assert') else l\n"
    "                     for l in code.splitlines()) + '\\n'\n"
)


def hostile_source() -> nbformat.NotebookNode:
    """The sample assignment with a locked parameters cell and a locked setup cell (as the
    course's modules have), and a hidden test that uses a builtin and a library function and
    carries no message."""
    nb = samples.source_notebook()
    meta = samples._meta
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.metadata.update(meta("parameters", locked=True))
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "test_hidden":
            cell.source = (
                "assert abs(square(-2) - 4) < 1e-9, 'square(-2) should be 4'\n"
                "### BEGIN HIDDEN TESTS\n"
                f"assert math.isclose(square(1.5), 2.25)  # {samples.HIDDEN_MARKER}\n"
                "### END HIDDEN TESTS"
            )
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, new_code_cell("import math", metadata=meta("setup", locked=True)))
    return nb


def _cell(nb, gid):
    return next(c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == gid)


#: student -> (what it does, expected score); every maximum is 5
CASES: dict[str, tuple[str, float]] = {}


def _build(root: Path) -> None:
    rel = nbformat.read(samples.make_course(root, hostile_source()), as_version=4)
    w = samples.write_submission

    def sub(student, body, expected, why, *, extra=(), edit=None, raw=None):
        CASES[student] = (why, expected)
        w(root, student, raw if raw is not None else samples.submission(rel, body, extra=list(extra), edit=edit))

    sub("good", CORRECT, 5, "the reference answer")
    # ---- kernel-level subversion: failing code, every test must still fail
    sub(
        "ast",
        WRONG,
        0,
        "an AST transformer that turns asserts into pass",
        extra=[
            "import ast\nclass NoAsserts(ast.NodeTransformer):\n"
            "    def visit_Assert(self, node):\n        return ast.copy_location(ast.Pass(), node)\n"
            "get_ipython().ast_transformers.append(NoAsserts())"
        ],
    )
    sub(
        "inputpost",
        WRONG,
        0,
        "an input_transformers_post entry that drops assert lines",
        extra=[
            STRIP
            + "get_ipython().input_transformers_post.append(lambda lines: _strip(''.join(lines)).splitlines(True))"
        ],
    )
    sub(
        "cleanup",
        WRONG,
        0,
        "an input_transformers_cleanup entry that drops assert lines",
        extra=[
            STRIP
            + "get_ipython().input_transformers_cleanup.append(lambda lines: _strip(''.join(lines)).splitlines(True))"
        ],
    )
    sub(
        "posthook",
        WRONG,
        0,
        "no tracebacks and a post_run_cell hook that clears the error",
        extra=[
            "ip = get_ipython()\nip.showtraceback = lambda *a, **k: None\n"
            "def _clear(result):\n    result.error_in_exec = None\n    result.error_before_exec = None\n"
            "ip.events.register('post_run_cell', _clear)"
        ],
    )
    sub(
        "customexc",
        WRONG,
        0,
        "a custom exception handler that swallows every error",
        extra=["get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)"],
    )
    sub(
        "ipmethod",
        WRONG,
        0,
        "the shell's run_cell_async replaced on the instance",
        extra=[
            STRIP + "ip = get_ipython()\n_orig = ip.run_cell_async\n"
            "async def run_cell_async(raw_cell, *args, transformed_cell=None, **kw):\n"
            "    if transformed_cell is not None:\n        transformed_cell = _strip(transformed_cell)\n"
            "    return await _orig(_strip(raw_cell), *args, transformed_cell=transformed_cell, **kw)\n"
            "ip.run_cell_async = run_cell_async"
        ],
    )
    sub(
        "classpatch",
        WRONG,
        0,
        "InteractiveShell.transform_cell patched on the class",
        extra=[
            STRIP
            + "from IPython.core.interactiveshell import InteractiveShell\n_orig = InteractiveShell.transform_cell\n"
            "def transform_cell(self, raw_cell):\n    return _strip(_orig(self, raw_cell))\n"
            "InteractiveShell.transform_cell = transform_cell"
        ],
    )
    sub("builtins", FAILS_ABS, 2, "builtins.abs replaced", extra=["import builtins\nbuiltins.abs = lambda x: 0"])
    sub(
        "nsbuiltins",
        FAILS_ABS,
        2,
        "the namespace's __builtins__ replaced",
        extra=["import builtins\n__builtins__ = dict(vars(builtins), abs=lambda x: 0)"],
    )
    sub(
        "shadow",
        FAILS_ABS,
        2,
        "abs shadowed by a function in the notebook's namespace",
        extra=["def abs(x):\n    return 0"],
    )
    sub(
        "modpatch",
        FAILS_ISCLOSE,
        2,
        "math.isclose replaced",
        extra=["import math\nmath.isclose = lambda *a, **k: True"],
    )
    sub(
        "modpatchhidden",
        FAILS_ISCLOSE,
        2,
        "math.isclose replaced, with operator.is_not, any and map patched to make changes look like none",
        extra=[
            "import math, operator, builtins\nmath.isclose = lambda *a, **k: True\n"
            "operator.is_not = lambda a, b: False\nbuiltins.any = lambda it: False\n"
            "builtins.map = lambda f, *its: iter(())"
        ],
    )

    # ---- accidents: repaired, the code earns its points
    def dup(nb):
        i = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "test_visible")
        nb.cells.insert(i + 1, copy.deepcopy(nb.cells[i]))
        nb.cells.insert(1, copy.deepcopy(nb.cells[0]))

    sub("dupcell", CORRECT, 5, "a locked cell and a test cell duplicated (same ids)", edit=dup)

    def looks_like_test(nb):
        _cell(nb, "square").metadata.nbgrader.update(grade=True, solution=False, locked=True, points=2)

    sub("metaedit", CORRECT, 5, "the answer cell's metadata edited to look like a test", edit=looks_like_test)

    def stale(nb):
        _cell(nb, "square").outputs = [new_output("stream", name="stdout", text="y" * (24 * 2**20))]
        _cell(nb, "square").execution_count = 1

    sub("bigoutputs", CORRECT, 5, "24 MB of stale outputs", edit=stale)

    def junk(nb):
        nb.metadata.language_info = {"name": "klingon", "version": "0"}
        nb.metadata.kernelspec = {"name": "livelab", "display_name": "?", "language": "klingon"}

    sub("junklang", CORRECT, 5, "junk language_info and kernelspec language", edit=junk)

    def tag(gid, t):
        def edit(nb):
            _cell(nb, gid).metadata.setdefault("tags", []).append(t)

        return edit

    sub(
        "injected", CORRECT, 5, "a test cell tagged injected-parameters", edit=tag("test_hidden", "injected-parameters")
    )
    sub(
        "injectedwrong",
        WRONG,
        0,
        "a test cell tagged injected-parameters, failing code",
        edit=tag("test_hidden", "injected-parameters"),
    )
    sub(
        "soltagged", CORRECT, 5, "the answer cell tagged injected-parameters", edit=tag("square", "injected-parameters")
    )

    def junkmeta(nb):
        nb.cells.append(new_code_cell("print('my notes')", metadata={"nbgrader": {"grade": True}}))

    sub("junkmeta", CORRECT, 5, "a learner cell with malformed nbgrader metadata", edit=junkmeta)

    def flood_then_define(nb):
        _cell(nb, "square").source = (
            "import sys, time\nfor i in range(400):\n    print('x' * 1000)\n"
            "sys.stdout.flush()\n"
            "time.sleep(2)  # slow work after the print (the old grader interrupted it)\n"
            "def square(x):\n    return x * x"
        )

    sub("flooddef", CORRECT, 5, "a correct function defined after a large print", edit=flood_then_define)
    # ---- identity on disk: two students whose ids differ only in a character
    sub("ana@x", CORRECT, 5, "student id with '@'")
    sub("ana_x", WRONG, 0, "student id that the old sanitiser confused with ana@x")
    sub("notjson", None, 0, "not a notebook (the batch goes on)", raw=b'{"cells": [')


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    _build(root)
    return root


def _run(course: Path) -> dict:
    return grade_many(
        BatchConfig(
            course=str(course),
            module=samples.ASSIGNMENT,
            path=str(course / "submitted"),
            limits=LIMITS,
            progress=False,
            events=str(course / "no-store"),
            state=str(course / ".state"),
        )
    )


@pytest.fixture(scope="module")
def batch(course):
    summary = _run(course)
    return {"summary": summary, "by": {r["student"]: r for r in summary["results"]}}


def test_every_case_gets_what_its_code_earns(batch):
    by = batch["by"]
    assert set(by) == set(CASES), set(CASES) ^ set(by)
    wrong = {
        s: (why, exp, by[s]["score"], by[s]["max_score"], by[s]["messages"][:3])
        for s, (why, exp) in CASES.items()
        if by[s]["score"] != exp or by[s]["max_score"] != 5
    }
    right = len(CASES) - len(wrong)
    print(f"hostile batch: {right} of {len(CASES)} right")
    assert not wrong, json.dumps(wrong, indent=1, default=str)


def test_subversion_is_reported_as_the_test_failing_not_as_suppressed(batch):
    for s in ("customexc", "posthook", "ast"):
        text = " | ".join(batch["by"][s]["messages"])
        assert "did not pass" in text and "suppressed" not in text, (s, text)
    assert "square(3) should be 9" in " | ".join(batch["by"]["customexc"]["messages"])


def test_hidden_test_without_a_message_is_named_with_its_points(batch):
    text = " | ".join(batch["by"]["modpatch"]["messages"])
    assert "'test_hidden' (3 points)" in text and "AssertionError" in text, text


def test_repairs_are_told_to_the_learner(batch):
    def m(s):
        return " | ".join(batch["by"][s]["messages"])

    assert "duplicate" in m("dupcell").lower()
    assert "metadata" in m("metaedit")
    assert "injected-parameters" in m("injected") and "injected-parameters" in m("soltagged")
    assert batch["by"]["flooddef"]["limits_hit"] == ["output"] and "discarded" in m("flooddef")


def test_two_students_never_share_files_and_the_cache_keeps_them_apart(batch, course):
    out = Path(batch["summary"]["out"])
    a, b = path_id("ana@x"), path_id("ana_x")
    assert a != b
    for folder in ("autograded", "feedback"):
        assert (out / folder / a).is_dir() and (out / folder / b).is_dir()
    again = _run(course)  # everything comes from the cache now
    assert again["graded"] == 0 and again["cached"] == len(CASES)
    by = {r["student"]: r["score"] for r in again["results"]}
    assert by["ana@x"] == 5 and by["ana_x"] == 0


@pytest.mark.parametrize("sid", ["ana", "a.b", "ana@x", "ana_x", "..", ".", "a/b", "a%2Fb", "é", "", "x" * 300])
def test_path_ids_are_injective_and_safe(sid):
    p = path_id(sid)
    assert p and "/" not in p and p not in (".", "..") and len(p.encode()) <= 255
    others = ["ana", "a.b", "ana@x", "ana_x", "..", ".", "a/b", "a%2Fb", "é", "", "x" * 300, "a_b", "a%40x"]
    assert sum(path_id(o) == p for o in others) == 1


def test_regrade_replaces_every_grade_of_the_previous_attempt(course, tmp_path):
    """A grade cell absent from the new attempt's executed notebook keeps no old score."""
    from grading import reference, runner
    from grading.gradebook import Writer, ensure_assignment

    ref = reference.build(
        course / "source" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb", samples.ASSIGNMENT, tmp_path / "state"
    )
    rel = nbformat.read(course / "release" / samples.ASSIGNMENT / f"{samples.NOTEBOOK}.ipynb", as_version=4)
    res = runner.grade(
        runner.Submission(
            "regrader", samples.ASSIGNMENT, samples.NOTEBOOK, nbformat.writes(samples.submission(rel, CORRECT)).encode()
        ),
        ref,
        runner.RunOptions(limits=LIMITS, hide=[str(course), str(tmp_path)]),
    )
    assert res["score"] == 5
    db = f"sqlite:///{tmp_path / 'gradebook.db'}"
    ensure_assignment(db, ref)
    with Writer(db) as wr:
        wr.save(res)
    second = dict(res)
    nb = nbformat.reads(res["executed"], as_version=4)
    nb.cells = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != "test_hidden"]
    second["executed"] = nbformat.writes(nb)
    with Writer(db) as wr:
        wr.save(second)
    rows = dict(
        sqlite3.connect(tmp_path / "gradebook.db").execute(
            "select c.name, g.auto_score from grade g join base_cell c on g.cell_id = c.id"
        )
    )
    assert rows == {"test_visible": 2.0, "test_hidden": 0.0}, rows
