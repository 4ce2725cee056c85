"""A small tests-only nbgrader assignment and its submissions (for the benchmark and tests).

``make_course(root)`` writes an nbgrader course directory with one source notebook (a solution
cell, a visible test and a test with hidden tests, 5 points) and runs nbgrader's own
``generate_assignment`` on it, so ``nbgrader autograde`` and ``livelab grade`` see exactly the
same course.  ``submission(release, body, extra=...)`` derives a learner's notebook from the
released (learner) version, the way a learner would: edit the solution, add cells.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ASSIGNMENT = "squares"
NOTEBOOK = "squares"
HIDDEN_MARKER = "HIDDEN-TEST-7f3a"
CORRECT = "return x * x"
HALF = "return abs(x) * 3 if x < 0 else x * x if x < 10 else 0"  # passes the visible test only
WRONG = "return x + x"


def _meta(gid: str, **kw) -> dict:
    d = {"grade_id": gid, "schema_version": 3, "grade": False, "solution": False, "locked": False}
    d.update(kw)
    return {"nbgrader": d}


def source_notebook() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata.kernelspec = {"name": "livelab", "display_name": "livelab (Python 3)", "language": "python"}
    nb.metadata.language_info = {"name": "python"}
    nb.cells = [
        new_markdown_cell("# Squares\nWrite `square(x)`.", metadata=_meta("intro", locked=True)),
        new_code_cell("learner_id = 'learner'\nseed = 0", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION",
            metadata=_meta("square", solution=True),
        ),
        new_code_cell(
            "assert square(3) == 9, 'square(3) should be 9'",
            metadata=_meta("test_visible", grade=True, locked=True, points=2),
        ),
        new_code_cell(
            "assert square(-2) == 4, 'square(-2) should be 4'\n### BEGIN HIDDEN TESTS\n"
            f"assert square(12) == 144, 'square(12) should be 144'  # {HIDDEN_MARKER}\n"
            "### END HIDDEN TESTS",
            metadata=_meta("test_hidden", grade=True, locked=True, points=3),
        ),
    ]
    return nb


def _nbgrader_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def make_course(root: Path, source: nbformat.NotebookNode | None = None) -> Path:
    """An nbgrader course directory with the assignment generated (from ``source``, default
    :func:`source_notebook`); returns the release notebook."""
    root = Path(root)
    src = root / "source" / ASSIGNMENT
    src.mkdir(parents=True, exist_ok=True)
    nbformat.write(source if source is not None else source_notebook(), src / f"{NOTEBOOK}.ipynb")
    (root / "nbgrader_config.py").write_text("c = get_config()  # the course root is the working directory\n")
    subprocess.run(
        [
            str(Path(sys.executable).parent / "nbgrader"),
            "generate_assignment",
            ASSIGNMENT,
            "--force",
            "--log-level=ERROR",
        ],
        cwd=root,
        check=True,
        env=_nbgrader_env(),
        capture_output=True,
    )
    return root / "release" / ASSIGNMENT / f"{NOTEBOOK}.ipynb"


def submission(
    release: Path | nbformat.NotebookNode, body: str = CORRECT, *, extra: list[str] = (), edit=None
) -> nbformat.NotebookNode:
    """The release with ``square`` answered by ``body`` and ``extra`` code cells after it;
    ``edit(nb)`` may change anything else."""
    nb = copy.deepcopy(release) if isinstance(release, nbformat.NotebookNode) else nbformat.read(release, as_version=4)
    at = 0
    for i, c in enumerate(nb.cells):
        if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "square":
            c.source = "def square(x):\n    " + body
            at = i
    for j, code in enumerate(extra):
        nb.cells.insert(at + 1 + j, new_code_cell(code))
    if edit is not None:
        edit(nb)
    return nb


def write_submission(course: Path, student: str, nb_or_bytes) -> Path:
    d = Path(course) / "submitted" / student / ASSIGNMENT
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{NOTEBOOK}.ipynb"
    if isinstance(nb_or_bytes, (bytes, bytearray)):
        p.write_bytes(nb_or_bytes)
    else:
        nbformat.write(nb_or_bytes, p)
    return p


def make_submissions(course: Path, release: Path, n: int) -> dict[str, float]:
    """``n`` students, a mix of right (5 points), half right (2) and wrong (0) answers;
    returns the expected score of each."""
    kinds = [(CORRECT, 5.0), (HALF, 2.0), (WRONG, 0.0), (CORRECT, 5.0)]
    expected = {}
    for i in range(n):
        body, pts = kinds[i % len(kinds)]
        sid = f"student{i:03d}"
        write_submission(course, sid, submission(release, body))
        expected[sid] = pts
    return expected
