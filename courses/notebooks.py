"""A module's notebook: nbgrader source rules, version stamping, and execution with papermill.

The rules here are the ones this project's modules live by, checked before nbgrader sees a
notebook so that an author gets one line per problem instead of a traceback from deep inside
a preprocessor: every cell carries nbgrader metadata (schema 3) so the grader can restore
every locked cell by ``grade_id``; grade ids are unique; solution regions and hidden tests are
well formed and where they belong; a ``parameters`` cell lets papermill inject the lab
connection and learner identity; the module connects with ``Lab.connect(module=...)``, which
records that the learner opened it.  nbgrader's own ``generate_assignment`` then has the last
word (:mod:`courses.release`).

Execution goes through papermill with the ``livelab`` kernel, the way the grader runs
submissions, so the release gate tests what learners and graders will run.
"""

from __future__ import annotations

import ast
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

KERNEL = "livelab"
#: Names the ``parameters`` cell must assign (papermill and the grader inject them).
PARAMETERS = ("LIVELAB_HOME", "NAMESPACE", "LEARNER", "SEED")
_META_KEYS = ("grade", "grade_id", "locked", "schema_version", "solution")
_GRADE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BEGIN_SOL, _END_SOL = "### BEGIN SOLUTION", "### END SOLUTION"
_BEGIN_HIDDEN, _END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def _src(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def read(path: Path) -> tuple[Any, list[str]]:
    """(notebook, problems): a notebook that nbformat cannot read or validate is one problem."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except FileNotFoundError:
        return None, [f"{path}: no such notebook"]
    except Exception as exc:  # nbformat raises NotJSONError, ValidationError, KeyError...
        return None, [f"{path}: not a valid notebook ({_first_line(exc)})"]
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        return None, [f"{path}: not a valid notebook ({_first_line(exc.message)})"]
    return nb, []


def _balanced(src: str, begin: str, end: str) -> bool:
    depth = 0
    for line in src.splitlines():
        s = line.strip()
        if s == begin:
            depth += 1
            if depth > 1:
                return False
        elif s == end:
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _assigned(src: str) -> set[str]:
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    names.add(t.id)
    return names


def validate_source(path: Path, module_id: str) -> list[str]:
    """Problems that keep ``path`` from being this module's nbgrader source (one line each)."""
    nb, problems = read(path)
    if nb is None:
        return [f"{module_id}: {p}" for p in problems]
    out: list[str] = []

    def bad(msg: str) -> None:
        out.append(f"{module_id}: {path.name}: {msg}")

    ks = (nb.metadata.get("kernelspec") or {}).get("name")
    if ks != KERNEL:
        bad(f"kernelspec is {ks!r}, not {KERNEL!r} (Kernel > Change Kernel > livelab, then save)")
    seen: dict[str, int] = {}
    params, tests, hidden, connect = [], 0, 0, False
    connect_re = re.compile(r"Lab\.connect\(\s*module\s*=\s*[\"']" + re.escape(module_id) + r"[\"']")
    for i, cell in enumerate(nb.cells, 1):
        where = f"cell {i} ({cell.cell_type})"
        src = _src(cell)
        meta = cell.metadata.get("nbgrader")
        if not isinstance(meta, dict):
            bad(
                f"{where} has no nbgrader metadata: mark it read-only, an answer or a test "
                "(nbgrader's Create Assignment toolbar) - the grader restores locked cells by grade id"
            )
            continue
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            bad(f"{where} nbgrader metadata lacks {', '.join(missing)}")
            continue
        if meta["schema_version"] != 3:
            bad(f"{where} nbgrader metadata has schema_version {meta['schema_version']!r}, not 3")
        gid = meta["grade_id"]
        if not isinstance(gid, str) or not _GRADE_ID.match(gid):
            bad(f"{where} grade_id {gid!r} must be 1-64 letters, digits, '-' or '_'")
        elif gid in seen:
            bad(f"{where} repeats grade_id {gid!r} of cell {seen[gid]}: grade ids must be unique")
        else:
            seen[gid] = i
        grade, solution, locked = bool(meta["grade"]), bool(meta["solution"]), bool(meta["locked"])
        if grade:
            pts = meta.get("points")
            if isinstance(pts, bool) or not isinstance(pts, (int, float)) or pts < 0:
                bad(f"{where} ({gid}) is graded but has no points >= 0")
        has_sol = _BEGIN_SOL in src or _END_SOL in src
        has_hidden = _BEGIN_HIDDEN in src or _END_HIDDEN in src
        if cell.cell_type == "code":
            try:
                ast.parse("\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))))
            except SyntaxError as exc:
                bad(f"{where} ({gid}) has a syntax error on its line {exc.lineno}: {exc.msg}")
        if has_sol and not solution:
            bad(f"{where} ({gid}) has a solution region but is not an answer cell")
        if solution and cell.cell_type == "code":
            if not has_sol:
                bad(f"{where} ({gid}) is an answer cell without '{_BEGIN_SOL}' ... '{_END_SOL}'")
            elif not _balanced(src, _BEGIN_SOL, _END_SOL):
                bad(f"{where} ({gid}) has unbalanced solution markers")
        if has_hidden:
            if not (grade and not solution):
                bad(f"{where} ({gid}) has hidden tests but is not an autograded test cell")
            elif not _balanced(src, _BEGIN_HIDDEN, _END_HIDDEN):
                bad(f"{where} ({gid}) has unbalanced hidden-test markers")
            else:
                hidden += 1
        if grade and not solution and cell.cell_type == "code":
            tests += 1
            if not locked:
                bad(f"{where} ({gid}) is a test cell that is not locked (learners could edit the test)")
        if "parameters" in (cell.metadata.get("tags") or []):
            params.append((i, cell, locked))
        if cell.cell_type == "code" and locked and not solution and connect_re.search(src):
            connect = True
    if len(params) != 1:
        bad(
            f"needs exactly one code cell tagged 'parameters' (has {len(params)}): papermill injects the "
            "lab connection and learner identity after it"
        )
    else:
        i, cell, locked = params[0]
        if cell.cell_type != "code":
            bad(f"cell {i}: the 'parameters' cell must be a code cell")
        else:
            missing = [p for p in PARAMETERS if p not in _assigned(_src(cell))]
            if missing:
                bad(f"cell {i}: the 'parameters' cell must assign {', '.join(missing)}")
        if not locked:
            bad(f"cell {i}: the 'parameters' cell must be read-only (locked)")
    if not connect:
        bad(
            f'no read-only cell calls Lab.connect(module="{module_id}"): the module must record that '
            "the learner opened it"
        )
    if tests == 0:
        bad("has no autograded test cell")
    if hidden == 0:
        bad(f"has no hidden tests ('{_BEGIN_HIDDEN}' in a test cell)")
    return out


def stamp(nb, *, course: str, version: str, module: str):
    """Write the released version into the parameters cell and the notebook metadata.

    ``COURSE_VERSION`` is what ``Lab.connect(course=..., version=...)`` reports with the
    module-opened event, so time-to-signal can be compared across curriculum versions.
    """
    for cell in nb.cells:
        if "parameters" in (cell.metadata.get("tags") or []):
            src = _src(cell)
            src = re.sub(r"(?m)^COURSE_VERSION = .*$", f"COURSE_VERSION = {json.dumps(version)}", src)
            src = re.sub(r"(?m)^COURSE = .*$", f"COURSE = {json.dumps(course)}", src)
            cell.source = src
    nb.metadata["livelab"] = {"course": course, "version": version, "module": module}
    return nb


def tests_of(nb) -> list[dict]:
    """The autograded test cells: grade id, points and whether it holds hidden tests."""
    return [
        {
            "grade_id": c.metadata["nbgrader"]["grade_id"],
            "points": c.metadata["nbgrader"].get("points", 0),
            "hidden": _BEGIN_HIDDEN in _src(c),
        }
        for c in nb.cells
        if c.cell_type == "code"
        and (c.metadata.get("nbgrader") or {}).get("grade")
        and not c.metadata["nbgrader"].get("solution")
    ]


def check_learner(path: Path, source_tests: list[dict], module_id: str) -> list[str]:
    """What nbgrader produced must hold no solution and no hidden test, and keep every test cell."""
    nb, problems = read(path)
    if nb is None:
        return [f"{module_id}: learner version: {p}" for p in problems]
    out = []
    for c in nb.cells:
        src = _src(c)
        if _BEGIN_SOL in src or _BEGIN_HIDDEN in src:
            out.append(
                f"{module_id}: learner version still contains a solution or hidden tests "
                f"(cell {(c.metadata.get('nbgrader') or {}).get('grade_id')})"
            )
    have = {t["grade_id"] for t in tests_of(nb)}
    lost = [t["grade_id"] for t in source_tests if t["grade_id"] not in have]
    if lost:
        out.append(f"{module_id}: learner version lost test cells {', '.join(lost)}")
    return out


@dataclass
class Execution:
    """The outcome of one papermill run."""

    ok: bool
    seconds: float
    error: str = ""  # one line: where and what, when not ok
    tests: list[str] = field(default_factory=list)  # grade ids of test cells
    failed_tests: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def passed_tests(self) -> list[str]:
        return [t for t in self.tests if t not in self.failed_tests]


def _cell_error(cell) -> str | None:
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            return f"{o.get('ename')}: {_first_line(o.get('evalue', ''))}"[:300]
    return None


def execute(
    path: Path,
    out: Path,
    *,
    parameters: dict,
    cwd: Path,
    kernel: str = KERNEL,
    allow_errors: bool = False,
    cell_timeout: float = 120.0,
    start_timeout: float = 60.0,
) -> Execution:
    """Run a notebook with papermill and the given kernel; report errors per test cell.

    ``allow_errors=False`` (a reference solution): the first error ends the run and is
    the result.  ``allow_errors=True`` (a learner version): every cell runs, so each test
    cell's own pass or fail is known.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    error = ""
    try:
        pm.execute_notebook(
            str(path),
            str(out),
            parameters=parameters,
            kernel_name=kernel,
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
            execution_timeout=cell_timeout,
            start_timeout=start_timeout,
            allow_errors=allow_errors,
            # ipykernel's start-up warnings on stderr are no failure signal
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as exc:
        error = f"{exc.ename}: {_first_line(exc.evalue)}"[:300]
    except Exception as exc:  # kernel died, timed out, could not start
        error = f"{type(exc).__name__}: {_first_line(exc)}"[:300]
    seconds = time.perf_counter() - t0
    res = Execution(ok=not error, seconds=seconds, error=error, output=str(out))
    try:
        nb = nbformat.read(str(out), as_version=4)
    except Exception:  # noqa: BLE001 - no output notebook: the run never started
        res.error = res.error or "no output notebook was written"
        res.ok = False
        return res
    first_bad = None
    for c in nb.cells:
        meta = c.metadata.get("nbgrader") or {}
        err = _cell_error(c) if c.cell_type == "code" else None
        if err and first_bad is None:
            first_bad = f"cell {meta.get('grade_id') or c.get('id')}: {err}"
        if c.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            res.tests.append(meta["grade_id"])
            ran = c.get("execution_count") is not None
            if err or not ran:
                res.failed_tests.append(meta["grade_id"])
    if error and first_bad:
        res.error = first_bad
    return res
