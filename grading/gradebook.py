"""Grades into nbgrader's gradebook, through nbgrader's API, from one writer.

The gradebook is SQLite by default (one writer at a time), so workers never write it: the
batch driver calls :func:`save` for each result as it arrives.  The scores themselves are
written by nbgrader's own ``SaveAutoGrades`` preprocessor run on the executed notebook (the
grader marked tests that did not really pass with error outputs, and added its lab checks
as grade cells with partial-credit results), so what ``nbgrader export`` and the formgrader
show is exactly what nbgrader computes from that notebook.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nbformat

from .reference import Reference, _ensure_alembic_on_path

log = logging.getLogger("livelab.grading.gradebook")


def url_for(path: str | Path) -> str:
    s = str(path)
    return s if "://" in s else f"sqlite:///{Path(s).resolve()}"


def ensure_assignment(
    db_url: str, ref: Reference, checks: list[dict] | None = None, course_id: str = "default_course"
) -> None:
    """Mirror the release's assignment, notebook and cells (and the lab checks as grade
    cells) into the target gradebook, as ``generate_assignment`` would have."""
    _ensure_alembic_on_path()
    from nbgrader.api import Gradebook

    with Gradebook(ref.ensure_local().db_url) as src:
        snb = src.find_notebook(ref.notebook, ref.assignment)
        grade = [(c.name, c.max_score, c.cell_type) for c in snb.grade_cells]
        solution = [c.name for c in snb.solution_cells]
        task = [(c.name, c.max_score, c.cell_type) for c in snb.task_cells]
        source = [(c.name, c.cell_type, c.locked, c.source, c.checksum) for c in snb.source_cells]
        kernelspec = snb.kernelspec
    with Gradebook(db_url, course_id=course_id) as gb:
        gb.update_or_create_assignment(ref.assignment)
        gb.update_or_create_notebook(ref.notebook, ref.assignment, kernelspec=kernelspec)
        for name, max_score, ctype in grade:
            gb.update_or_create_grade_cell(name, ref.notebook, ref.assignment, max_score=max_score, cell_type=ctype)
        for name in solution:
            gb.update_or_create_solution_cell(name, ref.notebook, ref.assignment)
        for name, max_score, ctype in task:
            gb.update_or_create_task_cell(name, ref.notebook, ref.assignment, max_score=max_score, cell_type=ctype)
        for name, ctype, locked, text, checksum in source:
            gb.update_or_create_source_cell(
                name, ref.notebook, ref.assignment, cell_type=ctype, locked=locked, source=text, checksum=checksum
            )
        for chk in checks or []:
            gb.update_or_create_grade_cell(
                chk["grade_id"], ref.notebook, ref.assignment, max_score=float(chk["points"]), cell_type="code"
            )
            gb.update_or_create_source_cell(
                chk["grade_id"],
                ref.notebook,
                ref.assignment,
                cell_type="code",
                locked=True,
                source=chk.get("source", f"# livelab check {chk['grade_id']}"),
                checksum=None,
            )


def _ensure_grade_rows(gb, assignment: str, notebook: str, student: str) -> None:
    """A submission created before a grade cell existed lacks its Grade row: add it."""
    from nbgrader.api import Grade

    snb = gb.find_submission_notebook(notebook, assignment, student)
    have = {g.cell_id for g in snb.grades}
    for cell in snb.notebook.grade_cells:
        if cell.id not in have:
            gb.db.add(Grade(cell_id=cell.id, notebook=snb))
    gb.db.commit()


def _reset_absent(gb, nb, assignment: str, notebook: str, student: str) -> None:
    """A regrade replaces every grade of the previous attempt: a grade cell that is not in
    this attempt's executed notebook (it did not run) keeps no old score."""
    from nbgrader import utils

    present = {c.metadata["nbgrader"]["grade_id"] for c in nb.cells if utils.is_grade(c)}
    snb = gb.find_submission_notebook(notebook, assignment, student)
    for g in snb.grades:
        if g.cell.name not in present:
            g.auto_score = 0
            g.manual_score = None
            g.extra_credit = None
            g.needs_manual_grade = False
    gb.db.commit()


class Writer:
    """One gradebook session for a whole batch (opening a Gradebook costs tens of ms)."""

    def __init__(self, db_url: str, course_id: str = "default_course"):
        _ensure_alembic_on_path()
        from nbgrader.api import Gradebook

        self.db_url = db_url
        self.gb = Gradebook(db_url, course_id=course_id)
        # the assignment's rows (assignment, notebooks, grade/solution/task cells) are read by
        # every result and written by none: keep them loaded across the results' commits
        # (nbgrader's add_submission otherwise reloads them all for each submission)
        self.gb.db.remove()
        self.gb.db.configure(expire_on_commit=False)
        self._pp = None
        # ... and held from the moment each is loaded: the session's identity map keeps rows
        # only while something refers to them, and these refer to each other in cycles that a
        # garbage collection frees whenever one runs (which depends on what the process
        # allocated before; holding them after the first result left a window)
        from nbgrader.api import Assignment, BaseCell, Notebook, SourceCell
        from sqlalchemy import event

        kinds = (Assignment, Notebook, BaseCell, SourceCell)
        self._held: list = []

        def hold(session, obj) -> None:
            if isinstance(obj, kinds):
                self._held.append(obj)

        event.listen(self.gb.db, "loaded_as_persistent", hold)

    def _saver(self):
        if self._pp is None:
            from nbgrader.preprocessors import SaveAutoGrades
            from nbgrader.preprocessors.base import NbGraderPreprocessor

            gb = self.gb

            class SaveInto(SaveAutoGrades):
                """nbgrader's SaveAutoGrades, writing through an open gradebook session."""

                def preprocess(self, nb, resources):
                    self.notebook_id = resources["nbgrader"]["notebook"]
                    self.assignment_id = resources["nbgrader"]["assignment"]
                    self.student_id = resources["nbgrader"]["student"]
                    self.db_url = resources["nbgrader"]["db_url"]
                    self.gradebook = gb
                    return NbGraderPreprocessor.preprocess(self, nb, resources)

            self._pp = SaveInto()
            self._pp.log.setLevel(logging.ERROR)
        return self._pp

    def save(self, result: dict) -> None:
        import warnings

        with warnings.catch_warnings():
            # nbgrader's add_submission builds related rows before adding them to the session;
            # SQLAlchemy warns about it, harmlessly, once per new submission
            warnings.filterwarnings("ignore", message=".*not in session.*")
            self._save(result)

    def _save(self, result: dict) -> None:
        """One result in ONE transaction: nbgrader's API commits after each row it writes (six
        commits per submission, each an fsync of the SQLite journal); here its commits only
        flush, and the result commits once at the end, so a submission's grades land
        together or not at all (and the driver spends half the time per result, measured:
        16 ms -> 10 ms with SQLite here)."""
        db = self.gb.db
        db.commit = db.flush  # nbgrader's commits inside this result only flush...
        try:
            self._save_rows(result)
        finally:
            del db.commit
        try:
            db.commit()  # ... and this is the one real commit
        except Exception:
            db.rollback()
            raise

    def _save_rows(self, result: dict) -> None:
        gb = self.gb
        assignment, notebook, student = result["assignment"], result["notebook"], result["student"]
        try:
            gb.update_or_create_student(student)
            gb.update_or_create_submission(assignment, student)
            _ensure_grade_rows(gb, assignment, notebook, student)
            if result.get("executed") is None:
                snb = gb.find_submission_notebook(notebook, assignment, student)
                for g in snb.grades:
                    g.auto_score = 0
                    g.needs_manual_grade = False
                gb.db.commit()
                return
            nb = nbformat.reads(result["executed"], as_version=4)
            self._saver().preprocess(
                nb,
                {
                    "nbgrader": {
                        "notebook": notebook,
                        "assignment": assignment,
                        "student": student,
                        "db_url": self.db_url,
                    }
                },
            )
            _reset_absent(gb, nb, assignment, notebook, student)
        except Exception:
            gb.db.rollback()
            raise

    def close(self) -> None:
        self.gb.close()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save(db_url: str, result: dict, course_id: str = "default_course") -> None:
    """Write one result: student, submission, and every grade via SaveAutoGrades."""
    _ensure_alembic_on_path()
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import SaveAutoGrades

    assignment, notebook, student = result["assignment"], result["notebook"], result["student"]
    with Gradebook(db_url, course_id=course_id) as gb:
        gb.update_or_create_student(student)
        gb.update_or_create_submission(assignment, student)
        _ensure_grade_rows(gb, assignment, notebook, student)
        if result.get("executed") is None:  # not a notebook: every grade is 0, as nbgrader
            snb = gb.find_submission_notebook(notebook, assignment, student)  # does for a missing one
            for g in snb.grades:
                g.auto_score = 0
                g.needs_manual_grade = False
            gb.db.commit()
            return
    nb = nbformat.reads(result["executed"], as_version=4)
    pp = SaveAutoGrades()
    pp.log.setLevel(logging.ERROR)
    pp.preprocess(
        nb, {"nbgrader": {"notebook": notebook, "assignment": assignment, "student": student, "db_url": db_url}}
    )
    with Gradebook(db_url, course_id=course_id) as gb:
        _reset_absent(gb, nb, assignment, notebook, student)


def scores(db_url: str, assignment: str, course_id: str = "default_course") -> dict[str, float]:
    """student -> total score of ``assignment`` as the gradebook has it (what export shows)."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(db_url, course_id=course_id) as gb:
        for sub in gb.assignment_submissions(assignment):
            out[sub.student.id] = float(sub.score)
    return out
