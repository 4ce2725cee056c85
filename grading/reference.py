"""The grader's private reference for one released notebook: what nbgrader restores from.

nbgrader's integrity preprocessors (``OverwriteCells``, ``OverwriteKernelspec``, ...) restore
locked and test cells from a *gradebook* that ``generate_assignment`` filled from the source
notebook (hidden tests included).  So the reference is exactly that: the source notebook run
through nbgrader's own ``generate_assignment`` into a private nbgrader course directory that
only the grader reads.  Submissions never see it: kernels run in a sandbox where it is hidden,
and the hidden tests reach the kernel only as the cells the grader executes.

A reference is identified by its ``digest`` (sha256 over the source notebook bytes, the
release manifest when there is one, and the nbgrader and format versions), which is also half
of every submission's cache key: change the release and everything is graded again.
"""

from __future__ import annotations

from . import _fast_imports  # noqa: F401  (first: see its docstring)

import base64
import fcntl
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

FORMAT = "livelab.grading-reference/v1"


class ReferenceError(ValueError):
    """The release cannot serve as a grading reference; one line saying why."""


@dataclass
class Reference:
    assignment: str
    notebook: str  # notebook name without .ipynb
    root: str  # private nbgrader course dir
    digest: str
    kernel_name: str
    grade_cells: dict[str, float]  # grade_id -> max points (autograded tests and manual answers)
    test_cells: list[str]  # grade cells that are autograded code tests
    released: dict[str, str] = field(default_factory=dict)  # locked cell id -> source the learner got
    gradebook_b64: str = ""  # the gradebook's bytes, for workers on other machines
    source_path: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return Path(self.root) / "gradebook.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def max_score(self) -> float:
        return float(sum(self.grade_cells.values()))

    def ensure_local(self) -> "Reference":
        """Make sure the gradebook exists here (a worker on another machine writes it once)."""
        if not self.db_path.exists() and self.gradebook_b64:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.db_path.with_suffix(".tmp")
            tmp.write_bytes(base64.b64decode(self.gradebook_b64))
            os.replace(tmp, self.db_path)
        return self


def _ensure_alembic_on_path() -> None:
    """nbgrader runs ``alembic`` from PATH when it creates a gradebook."""
    venv_bin = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if venv_bin not in parts:
        os.environ["PATH"] = os.pathsep.join([venv_bin, *parts])


def digest_of(source: bytes, manifest: bytes | None = None) -> str:
    from importlib.metadata import version  # not 'import nbgrader': that costs ~1 s

    h = hashlib.sha256()
    for part in (FORMAT.encode(), version("nbgrader").encode(), source, manifest or b""):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def build(source: Path, assignment: str, state_dir: Path, *, manifest: bytes | None = None) -> Reference:
    """The reference for ``source`` (an nbgrader source notebook), built once and cached in
    ``state_dir/references/<digest>``."""
    source = Path(source)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ReferenceError(f"cannot read the release's source notebook {source}: {exc.strerror}") from None
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same one-line refusal
        raise ReferenceError(f"{source} is not a notebook: {str(exc).splitlines()[0]}") from None
    name = source.stem
    digest = digest_of(data, manifest)
    root = Path(state_dir) / "references" / digest[:24]
    meta = root / "reference.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = open(root.parent / f".{digest[:24]}.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if meta.exists():
            ref = Reference(**json.loads(meta.read_text()))
            if Path(ref.root) == root and ref.db_path.exists():
                return ref
        shutil.rmtree(root, ignore_errors=True)
        src_dir = root / "source" / assignment
        src_dir.mkdir(parents=True)
        os.chmod(root, 0o700)
        (src_dir / f"{name}.ipynb").write_bytes(data)
        _ensure_alembic_on_path()
        from nbgrader.apps.api import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory
        from traitlets.config import Config

        cfg = Config()
        cfg.CourseDirectory.root = str(root)
        cfg.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
        api = NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)
        res = api.generate_assignment(assignment, force=True, create=True)
        if not res.get("success"):
            err = (res.get("error") or res.get("log") or "").strip().splitlines()
            raise ReferenceError(
                f"nbgrader generate_assignment refused {source}: {err[-1] if err else 'unknown error'}"
            )
        from nbgrader import utils

        grade_cells: dict[str, float] = {}
        tests: list[str] = []
        for cell in nb.cells:
            if utils.is_grade(cell):
                gid = cell.metadata.nbgrader["grade_id"]
                grade_cells[gid] = float(cell.metadata.nbgrader.get("points", 0))
                if cell.cell_type == "code" and not utils.is_solution(cell):
                    tests.append(gid)
        ks = nb.metadata.get("kernelspec", {}) or {}
        rel = nbformat.read(root / "release" / assignment / f"{name}.ipynb", as_version=4)
        released = {
            c.metadata.nbgrader["grade_id"]: c.source
            for c in rel.cells
            if utils.is_locked(c) and c.metadata.get("nbgrader", {}).get("grade_id")
        }
        ref = Reference(
            released=released,
            assignment=assignment,
            notebook=name,
            root=str(root),
            digest=digest,
            kernel_name=ks.get("name") or "livelab",
            grade_cells=grade_cells,
            test_cells=tests,
            gradebook_b64=base64.b64encode((root / "gradebook.db").read_bytes()).decode(),
            source_path=str(source),
        )
        meta.write_text(json.dumps(ref.__dict__))
        return ref
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def release_notebook(ref: Reference) -> Path:
    """The learner version nbgrader generated (solutions and hidden tests stripped)."""
    return Path(ref.root) / "release" / ref.assignment / f"{ref.notebook}.ipynb"
