"""Grade one submission: integrity, confined execution, scoring, feedback.

This is the one public function of the grader, :func:`grade`; :mod:`grading.batch` fans it
out.  For one notebook:

1. **Read** it defensively: size bound, UTF-8, JSON, nbformat validation.  Anything else is
   graded 0 with a one-line reason; the batch goes on.
2. **Integrity**, with nbgrader's own sanitizing preprocessors in the order ``nbgrader
   autograde`` runs them (``ClearOutput``, ``DeduplicateIds``, ``OverwriteKernelspec``,
   ``OverwriteCells`` with ``add_missing_cells``, ``CheckCellMetadata``) against the release's
   private reference gradebook: edited or deleted test cells come back from the release,
   points and kernelspec too.  The grader only adds what nbgrader lacks: a cell claiming a
   grade id the release does not have loses that claim (nbgrader would abort the notebook).
3. **Execution** with papermill (engine :mod:`grading.engine`) on a fresh, pre-started,
   sandboxed ``livelab`` kernel (:mod:`grading.sandbox`) with injected parameters, a per-cell
   timeout, a total timeout, memory/process/output limits.
4. **Scoring** with nbgrader's ``determine_grade`` on every grade cell, after marking tests
   that did not really pass: not run (kernel died, killed, total timeout), timed out, or an
   error the notebook hid.  Lab modules add their checks (:mod:`grading.checks`) as grade
   cells, so nbgrader's gradebook and feedback carry them like any test.
5. **Feedback** HTML (nbgrader's feedback template + the grader's messages).

The result is a JSON-friendly dict (``SCHEMA``); the executed notebook travels with it so the
caller can write ``autograded/`` and the gradebook in one place (SQLite: one writer).
"""

from __future__ import annotations

from . import _fast_imports  # noqa: F401  (first: see its docstring)

import copy
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import nbformat
from nbformat import NotebookNode

from .limits import Limits
from .reference import Reference
from .sandbox import KernelPool, SandboxConfig

log = logging.getLogger("livelab.grading")

SCHEMA = "livelab.grade/v1"
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024  # the notebook itself, once its (stale) outputs are cleared
MAX_FILE_BYTES = 256 * 1024 * 1024  # the file as handed in, outputs included (bounds the grader's memory)
NOT_RUN = "LivelabGraderNotRun"
INTERFERED = "LivelabGraderInterference"

for _name in ("papermill", "papermill.translators", "papermill.execute", "traitlets", "nbclient"):
    logging.getLogger(_name).setLevel(logging.ERROR)


@dataclass
class Submission:
    """One notebook of one student."""

    student: str
    assignment: str
    notebook: str
    data: bytes
    path: str = ""
    timestamp: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class RunOptions:
    limits: Limits = field(default_factory=Limits)
    kernel_name: str = "livelab"
    hide: list[str] = field(default_factory=list)  # paths no kernel may see (course, grader state)
    isolate: bool = True
    network: bool = False  # tests-only: no network at all
    seed: int = 0
    feedback: bool = True
    parameters: dict = field(default_factory=dict)  # extra papermill parameters


# ---- reading -----------------------------------------------------------------------------
class InvalidSubmission(ValueError):
    """Not a gradable notebook; one line saying why."""


def _clear_outputs(raw: dict) -> None:
    """Outputs are cleared before the run anyway (nbgrader's ``ClearOutput``): clear them
    before the size limit applies, so stale outputs never make a notebook "too large"."""
    for cell in raw.get("cells") or []:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None


def read_notebook(data: bytes) -> NotebookNode:
    if len(data) > MAX_FILE_BYTES:
        raise InvalidSubmission(
            f"not graded: the file is {len(data):,} bytes, more than the {MAX_FILE_BYTES:,} a submission may have"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSubmission("not a notebook: the file is not UTF-8 text (submit the .ipynb file)") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSubmission(
            f"not a notebook: invalid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); re-download the .ipynb from JupyterLab"
        ) from None
    if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
        raise InvalidSubmission("not a notebook: JSON without 'cells' and 'nbformat' (submit the .ipynb file)")
    _clear_outputs(raw)
    text = json.dumps(raw)
    if len(text) > MAX_NOTEBOOK_BYTES:
        raise InvalidSubmission(
            f"not graded: the notebook is {len(text):,} bytes without its outputs, more "
            f"than the {MAX_NOTEBOOK_BYTES:,} a notebook may have"
        )
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate cell ids: repaired below
            nb = nbformat.reads(text, as_version=4)
        _repair_cell_ids(nb)
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 - nbformat raises several types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InvalidSubmission(f"not a valid notebook (nbformat): {first[:200]}") from None
    return nb


def _repair_cell_ids(nb: NotebookNode) -> None:
    """A duplicated cell (copied JSON, a merge) repeats its nbformat cell ``id``: give the
    copies new ids, as JupyterLab would, instead of refusing the notebook."""
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        return
    seen: set[str] = set()
    for cell in nb.get("cells", []):
        cid = cell.get("id")
        if not isinstance(cid, str) or cid in seen:
            import uuid

            cid = uuid.uuid4().hex[:8]
            cell["id"] = cid
        seen.add(cid)


# ---- integrity ---------------------------------------------------------------------------
_SANITIZERS = None


class _KeptGradebooks:
    """One open nbgrader ``Gradebook`` per private reference database, for nbgrader's own
    sanitize preprocessors.

    ``OverwriteCells`` and ``OverwriteKernelspec`` open (and close) a new ``Gradebook`` on
    every notebook: a new SQLAlchemy engine, a table inspection and ``create_all`` each
    time, about 20 ms per submission here (profiled: bench/grading.py).  A private
    reference's gradebook is content-addressed and never written after it is built, so a
    grading process keeps one open per reference and hands it to those preprocessors (their
    module-level ``Gradebook`` name points here); any other database gets a plain one.
    """

    def __init__(self, cls):
        self.cls, self.kept, self.lock = cls, {}, threading.Lock()
        self.reference_urls: set[str] = set()

    def __call__(self, db_url: str, *args, **kw):
        if db_url not in self.reference_urls or args or kw:
            return self.cls(db_url, *args, **kw)
        with self.lock:
            gb = self.kept.get(db_url)
            if gb is None:
                gb = self.kept[db_url] = _kept(self.cls)(db_url)
            return gb


def _kept(cls):
    class KeptGradebook(cls):
        """A reference gradebook kept open, whose answers are kept too.

        ``OverwriteCells`` and ``OverwriteKernelspec`` ask the same questions of it for every
        submission (the release's notebook, each cell's source and points): a third of
        sanitizing's CPU went into those queries and into reloading rows that a rollback had
        expired (py-spy).  The database is content-addressed and never written after it is
        built, so each thread's session keeps what it loaded across notebooks (no expiry on
        commit) and each ``find_*`` answer is reused by the thread that asked (a session and its
        rows belong to one thread).  A missing row is asked again each time (it raises)."""

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.db.remove()  # sessions made from here on keep their rows across commits
            self.db.configure(expire_on_commit=False)
            self._local = threading.local()  # a thread's answers go with its session

        def _answer(self, find, args: tuple, kw: dict):
            if kw:
                return find(*args, **kw)
            answers = self._local.__dict__.setdefault("answers", {})
            key = (find.__name__, args)
            got = answers.get(key)
            if got is None:
                got = answers[key] = find(*args)
            return got

        def find_notebook(self, *args, **kw):
            return self._answer(super().find_notebook, args, kw)

        def find_source_cell(self, *args, **kw):
            return self._answer(super().find_source_cell, args, kw)

        def find_graded_cell(self, *args, **kw):
            return self._answer(super().find_graded_cell, args, kw)

        def close(self):  # kept open for the next notebook: end the read transaction only
            self.db.commit()

    return KeptGradebook


_GRADEBOOKS: _KeptGradebooks | None = None


def _kept_gradebooks() -> _KeptGradebooks:
    global _GRADEBOOKS
    if _GRADEBOOKS is None:
        from nbgrader import api
        from nbgrader.preprocessors import overwritecells, overwritekernelspec

        _GRADEBOOKS = _KeptGradebooks(api.Gradebook)
        overwritecells.Gradebook = overwritekernelspec.Gradebook = _GRADEBOOKS
    return _GRADEBOOKS


class _SchemaCheckedOnce:
    """``jsonschema`` for nbgrader's cell metadata validator, checking each schema once.

    ``jsonschema.validate`` first checks the *schema* against its meta-schema, on every call;
    nbgrader's ``CheckCellMetadata`` calls it for every cell of every submission with the same
    schema, and that check was 95% of the validator's time (a sixth of a grading worker's CPU,
    profiled with py-spy).  Same result, same exceptions: a schema is checked the first time
    its content is seen, then its validator is reused.  Content, not the object: nbgrader
    builds a metadata validator per notebook, and each loads its schema from the file anew.
    At most ``KEEP`` schemas are kept (nbgrader has one per metadata version)."""

    KEEP = 8

    def __init__(self, jsonschema):
        self._js = jsonschema
        self._validators: dict[str, Any] = {}  # the schema's canonical JSON -> its validator
        self._last: tuple | None = None  # (schema object, validator): the notebook's cells
        self._lock = threading.Lock()

    def validate(self, instance, schema, cls=None, *args, **kwargs):
        if cls is not None or args or kwargs:
            return self._js.validate(instance, schema, cls, *args, **kwargs)
        last = self._last
        if last is not None and last[0] is schema:
            validator = last[1]
        else:
            try:
                key = json.dumps(schema, sort_keys=True)
            except (TypeError, ValueError):  # not JSON: as jsonschema itself does it
                return self._js.validate(instance, schema)
            with self._lock:
                validator = self._validators.get(key)
                if validator is None:
                    vcls = self._js.validators.validator_for(schema)
                    vcls.check_schema(schema)
                    if len(self._validators) >= self.KEEP:
                        self._validators.clear()
                    validator = self._validators[key] = vcls(schema)
            self._last = (schema, validator)
        error = self._js.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            raise error

    def __getattr__(self, name):
        return getattr(self._js, name)


def _sanitizers():
    """nbgrader autograde's sanitize preprocessors, in its order, built once per process."""
    global _SANITIZERS
    if _SANITIZERS is None:
        import jsonschema
        from nbgrader.nbgraderformat import common

        if common.jsonschema is jsonschema:
            common.jsonschema = _SchemaCheckedOnce(jsonschema)
        from nbgrader.converters.autograde import Autograde
        from nbgrader.preprocessors import OverwriteCells
        from traitlets.config import Config

        cfg = Config()
        cfg.OverwriteCells.add_missing_cells = True
        pps = []
        for cls in Autograde.class_traits()["sanitize_preprocessors"].default():
            pp = cls(config=cfg)
            pp.log.setLevel(logging.ERROR)
            pps.append(pp)
        assert any(isinstance(p, OverwriteCells) for p in pps)
        _SANITIZERS = pps
    return _SANITIZERS


def _grade_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


_RELEASES: dict[str, dict] = {}


def _release_info(ref: Reference) -> dict:
    """What the learner was given, per cell: nbgrader metadata and papermill tags by grade id,
    and the notebook's kernelspec and language."""
    info = _RELEASES.get(ref.digest)
    if info is None:
        from .reference import release_notebook

        rel = nbformat.read(release_notebook(ref.ensure_local()), as_version=4)
        meta, tags, untracked_params = {}, {}, False
        names = _defined_names(rel)
        for cell in rel.cells:
            gid = _grade_meta(cell).get("grade_id")
            ptags = [t for t in cell.get("metadata", {}).get("tags", []) if t in PAPERMILL_TAGS]
            if gid is not None:
                meta[gid] = copy.deepcopy(dict(cell.metadata["nbgrader"]))
                tags[gid] = ptags
            elif "parameters" in ptags:
                untracked_params = True
        info = {
            "meta": meta,
            "tags": tags,
            "untracked_params": untracked_params,
            "names": names,
            "kernelspec": copy.deepcopy(dict(rel.metadata.get("kernelspec") or {})),
            "language_info": copy.deepcopy(dict(rel.metadata.get("language_info") or {"name": "python"})),
        }
        _RELEASES[ref.digest] = info
    return info


PAPERMILL_TAGS = ("parameters", "injected-parameters")


def _defined_names(nb: NotebookNode) -> set[str]:
    """Top-level names the release's code cells define (functions, classes, assignments,
    imports): an exercise may ask for a function named like a builtin."""
    import ast

    out: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src = "\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                out.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def _repair(nb: NotebookNode, ref: Reference, known: set[str], notes: list[str]) -> None:
    """Repair accidents the way nbgrader's preprocessors would have wanted them repaired,
    before they run: the release's kernel and language, the release's nbgrader metadata on
    its cells (an answer cell edited to look like a test stays an answer), no nbgrader claim
    on a cell the release does not have, and no papermill tag the release's cell lacks
    (papermill deletes an ``injected-parameters`` cell before the run)."""
    rel = _release_info(ref)
    if rel["kernelspec"]:
        nb.metadata["kernelspec"] = copy.deepcopy(rel["kernelspec"])
    lang = (nb.metadata.get("language_info") or {}).get("name")
    if lang != rel["language_info"].get("name"):
        notes.append(
            f"the notebook's language {lang!r} was taken from the release instead "
            f"({rel['language_info'].get('name')!r})"
        )
    nb.metadata["language_info"] = copy.deepcopy(rel["language_info"])
    counts: dict[str, int] = {}
    kept_untracked_params = False
    for cell in nb.cells:
        md = cell.setdefault("metadata", nbformat.NotebookNode())
        raw = md.get("nbgrader")
        gid = raw.get("grade_id") if isinstance(raw, dict) else None
        if raw is not None and (not isinstance(raw, dict) or gid not in known):
            if gid is not None:
                notes.append(
                    f"a cell claims nbgrader id {gid!r}, which the release does not have: "
                    "ignored (only the release's cells are graded)"
                )
            elif raw:
                notes.append("a cell had nbgrader metadata without a release cell id: ignored")
            md.pop("nbgrader", None)
            gid = None
        elif gid in rel["meta"]:
            counts[gid] = counts.get(gid, 0) + 1
            want = rel["meta"][gid]
            flags = ("grade", "solution", "locked", "task")
            if any(bool(raw.get(k)) != bool(want.get(k)) for k in flags):
                kind = "test" if gid in ref.test_cells else "answer" if want.get("solution") else "locked"
                notes.append(f"the nbgrader metadata of {kind} cell {gid!r} was edited: restored from the release")
            pts = raw.get("points")
            md["nbgrader"] = copy.deepcopy(want)
            if pts is not None and "points" in want:
                md["nbgrader"]["points_claimed"] = pts  # read (and dropped) below, for the note
        tags = md.get("tags")
        if isinstance(tags, list) and any(t in PAPERMILL_TAGS for t in tags):
            allowed = set(rel["tags"].get(gid, [])) if gid is not None else set()
            if gid is None and "parameters" in tags and rel["untracked_params"] and not kept_untracked_params:
                allowed.add("parameters")
                kept_untracked_params = True
            drop = [t for t in tags if t in PAPERMILL_TAGS and t not in allowed]
            if drop:
                md["tags"] = [t for t in tags if t not in drop]
                where = f"cell {gid!r}" if gid else "a cell"
                notes.append(
                    f"{where} carried the papermill tag{'s' if len(drop) > 1 else ''} "
                    f"{', '.join(drop)} that the release's cell does not have: removed "
                    "(papermill would have deleted or moved it)"
                )
    for gid, n in counts.items():
        if n > 1:  # as nbgrader's DeduplicateIds: the last one keeps its id (the others none at
            # all: nbgrader leaves them an empty dict that its OverwriteCells then trips on)
            for cell in [c for c in nb.cells if _grade_meta(c).get("grade_id") == gid][:-1]:
                cell.metadata.pop("nbgrader", None)
            notes.append(f"cell {gid!r} appears {n} times (duplicated): only the last copy is graded")


def sanitize(nb: NotebookNode, ref: Reference, student: str) -> tuple[NotebookNode, list[str]]:
    """Repair accidents (:func:`_repair`), then restore the release's locked/test cells,
    points and kernelspec with nbgrader's preprocessors; returns the notebook and what was
    restored, for the learner."""
    from nbgrader import utils

    notes: list[str] = []
    known = set(ref.grade_cells) | _reference_cell_ids(ref)
    ks = (nb.metadata.get("kernelspec") or {}).get("name")
    if ks != ref.kernel_name:
        notes.append(f"the notebook asked for kernel {ks!r}; it was run with the release's kernel {ref.kernel_name!r}")
    _repair(nb, ref, known, notes)
    before: dict[str, NotebookNode] = {}
    for cell in nb.cells:
        meta = _grade_meta(cell)
        gid = meta.get("grade_id")
        claimed = meta.pop("points_claimed", None)
        if gid is not None and gid not in before:
            before[gid] = copy.deepcopy(cell)
            if claimed is not None:
                _grade_meta(before[gid])["points"] = claimed
    db_url = ref.ensure_local().db_url
    _kept_gradebooks().reference_urls.add(db_url)
    resources = {
        "nbgrader": {"notebook": ref.notebook, "assignment": ref.assignment, "student": student, "db_url": db_url}
    }
    for pp in _sanitizers():
        nb, resources = pp.preprocess(nb, resources)
    after = {(_grade_meta(c).get("grade_id")): c for c in nb.cells if _grade_meta(c).get("grade_id")}
    for gid, cell in after.items():
        old = before.get(gid)
        if old is None:
            if gid in ref.grade_cells or utils.is_locked(cell):
                notes.append(f"cell {gid!r} was missing: restored from the release")
            continue
        om = _grade_meta(old)
        if gid in ref.released and old.source != ref.released[gid] and om.get("locked"):
            kind = "test cell" if gid in ref.test_cells else "locked cell"
            notes.append(f"{kind} {gid!r} was edited: restored from the release")
        if (
            gid in ref.grade_cells
            and om.get("points") is not None
            and float(om.get("points", 0)) != ref.grade_cells[gid]
        ):
            notes.append(f"points of {gid!r} were changed to {om.get('points')}: restored to {ref.grade_cells[gid]:g}")
    return nb, notes


_REF_IDS: dict[str, set[str]] = {}
_HIDDEN: dict[str, set[str]] = {}


def _hidden_tests(ref: Reference) -> set[str]:
    """Test cells with hidden parts: the grader's source differs from what the learner got."""
    hidden = _HIDDEN.get(ref.digest)
    if hidden is None:
        from nbgrader.api import Gradebook

        with Gradebook(ref.ensure_local().db_url) as gb:
            nbk = gb.find_notebook(ref.notebook, ref.assignment)
            hidden = {
                c.name
                for c in nbk.source_cells
                if c.name in ref.test_cells and c.source != ref.released.get(c.name, c.source)
            }
        _HIDDEN[ref.digest] = hidden
    return hidden


def _reference_cell_ids(ref: Reference) -> set[str]:
    """Every nbgrader cell id of the release (solution, locked, task cells too)."""
    ids = _REF_IDS.get(ref.digest)
    if ids is None:
        from nbgrader.api import Gradebook

        with Gradebook(ref.ensure_local().db_url) as gb:
            nbk = gb.find_notebook(ref.notebook, ref.assignment)
            ids = {c.name for c in nbk.source_cells}
        _REF_IDS[ref.digest] = ids
    return ids


# ---- execution ---------------------------------------------------------------------------
_POOL: KernelPool | None = None
_POOL_LOCK = threading.Lock()


def kernel_pool() -> KernelPool:
    """This process's pool: one kernel always starting ahead of the next submission."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = KernelPool(size=1)
            import atexit

            atexit.register(_POOL.close)
        return _POOL


def tests_config(opts: RunOptions) -> SandboxConfig:
    """The kernel configuration of a submission without a lab (the same for every student,
    so the prestarted kernel always fits)."""
    return sandbox_config(opts, env={"PYTHONHASHSEED": str(opts.seed)})


def sandbox_config(opts: RunOptions, *, env: dict | None = None, binds=None, hide=None) -> SandboxConfig:
    return SandboxConfig(
        limits=opts.limits,
        kernel_name=opts.kernel_name,
        hide=[*opts.hide, *(hide or [])],
        binds=list(binds or []),
        network=opts.network,
        isolate=opts.isolate,
        env=dict(env or {}),
    )


def execute(
    nb: NotebookNode,
    kernel,
    limits: Limits,
    parameters: dict,
    *,
    submission_bytes: bytes | None = None,
    notebook_name: str = "submission",
    ref: Reference | None = None,
) -> dict:
    """Run ``nb`` on ``kernel`` (started); returns facts and the executed notebook (``nb``).
    With ``ref``, the release's test cells run on the grader's own IPython (see
    :mod:`grading.kernel_guard`)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from .engine import ENGINE, RunContext

    if submission_bytes is not None:  # the kernel's cwd holds the submission and nothing else
        (kernel.work / f"{notebook_name}.ipynb").write_bytes(submission_bytes)
    ctx = RunContext(
        output_bytes=limits.output_bytes, kill=kernel.kill, on_ready=lambda: kernel.arm(limits.total_timeout)
    )
    if ref is not None:
        ctx.test_ids = set(ref.test_cells)
        ctx.release_ids = set(ref.released) - ctx.test_ids
        ctx.release_names = set(_release_info(ref)["names"])
    facts: dict[str, Any] = {"error": None}
    t0 = time.perf_counter()
    kernel.arm(limits.total_timeout + limits.startup_timeout)  # until the kernel answers

    def run():
        try:
            pm.execute_notebook(
                nb,
                None,
                parameters=parameters or None,
                engine_name=ENGINE,
                kernel_name=kernel.config.kernel_name,
                km=kernel.km,
                progress_bar=False,
                request_save_on_cell_execute=False,
                start_timeout=int(limits.startup_timeout),
                execution_timeout=int(limits.cell_timeout),
                allow_errors=True,
                interrupt_on_timeout=True,
                run_context=ctx,
                error_on_timeout={
                    "ename": "CellTimeoutError",
                    "evalue": f"the cell ran longer than {limits.cell_timeout:g} s and was interrupted",
                    "traceback": [],
                },
            )
        except PapermillExecutionError:
            pass  # errors are in the notebook's outputs; scoring reads them
        except BaseException as exc:  # noqa: BLE001 - dead kernel, watchdog kill, anything
            facts["error"] = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"

    from .sandbox import in_thread

    th = threading.Thread(target=in_thread, args=(run,), daemon=True, name="papermill")
    th.start()
    th.join(limits.total_timeout + limits.startup_timeout + 10)
    if th.is_alive():  # the client hangs on a killed kernel: stop waiting for it
        kernel.kill()
        th.join(5)
        facts["error"] = facts["error"] or "the kernel stopped answering and was killed"
    facts["seconds"] = time.perf_counter() - t0
    t0m = time.monotonic() - facts["seconds"]
    if "ready" in ctx.marks:
        facts["kernel_wait"] = ctx.marks["ready"] - t0m
        facts["cells"] = ctx.marks.get("cells_done", time.monotonic()) - ctx.marks["ready"]
    facts["ctx"] = ctx
    out = ctx.nb if ctx.nb is not None else nb
    from papermill.execute import remove_error_markers

    facts["nb"] = remove_error_markers(out)  # papermill's red banner cells are not the learner's
    return facts


# ---- scoring -----------------------------------------------------------------------------
def _error_output(ename: str, evalue: str) -> NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


def _first_error(cell) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            ev = str(out.get("evalue", "")).strip().splitlines()
            return f"{out.get('ename', 'Error')}: {ev[0][:300] if ev else ''}".rstrip(": ")
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            return "wrote to stderr: " + str(out.get("text", "")).strip()[:200]
    return None


def _name_bare_errors(cell, gid: str, points: float) -> None:
    """A failing assert without a message (typical of hidden tests) says which test and how many
    points, in the feedback and the messages, instead of a bare ``AssertionError``."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error" and not str(out.get("evalue", "")).strip():
            out["evalue"] = f"test {gid!r} ({points:g} point{'s' if points != 1 else ''}) failed"
            tb = list(out.get("traceback") or [])
            out["traceback"] = tb + [f"{out.get('ename', 'Error')}: {out['evalue']}"]


def score(nb: NotebookNode, ref: Reference, ctx, stop_reason: str | None, *, void: bool = False) -> list[dict]:
    """Score every grade cell with nbgrader's ``determine_grade``, after marking the tests
    that did not really pass (see module doc).  ``void``: the run broke a limit that stops
    it (the process bound), so no test counts, whether or not it ran before the stop."""
    from nbgrader import utils

    rows = []
    replies = dict(ctx.replies) if ctx is not None else {}
    reply_errors = dict(ctx.reply_errors) if ctx is not None else {}
    interfered = dict(ctx.interfered) if ctx is not None else {}
    if void:
        replies = {}
    for cell in nb.cells:
        if not utils.is_grade(cell):
            continue
        gid = cell.metadata.nbgrader["grade_id"]
        if gid not in ref.grade_cells:
            continue
        kind = "test" if gid in ref.test_cells else "answer"
        status = "ok"
        if kind == "test":
            reply = replies.get(id(cell))
            has_err = _first_error(cell) is not None
            if void:
                status = "void"
                cell.outputs.append(_error_output(NOT_RUN, f"this test does not count: {stop_reason}"))
            elif reply is None:
                status = "not-run"
                why = stop_reason or "the notebook stopped before it"
                cell.outputs.append(_error_output(NOT_RUN, f"this test did not run: {why}"))
            elif reply == "timeout":
                status = "timeout"
                if not has_err:
                    cell.outputs.append(_error_output("CellTimeoutError", "the test timed out"))
            elif id(cell) in interfered:
                status = "interfered"
                cell.outputs.append(_error_output(INTERFERED, f"this test does not count: {interfered[id(cell)]}"))
            elif reply != "ok" and not has_err:
                # the kernel said the test raised, and its error output is not there (it was
                # discarded at the output limit, or never sent): the error is the kernel's
                status = "failed"
                ename, evalue = reply_errors.get(id(cell), ("Error", "the test raised an error"))
                cell.outputs.append(_error_output(ename, evalue))
            elif has_err:
                status = "failed"
        pts, max_pts = utils.determine_grade(cell)
        message = None
        if kind == "test" and (pts is None or pts < max_pts):
            _name_bare_errors(cell, gid, max_pts)
            err = _first_error(cell)
            what = f"test {gid!r} ({max_pts:g} point{'s' if max_pts != 1 else ''})"
            if err and ":" not in err:  # an assert without a message says nothing by itself
                err = f"{err} (an assert without a message"
                err += "; this test has hidden parts you cannot see)" if gid in _hidden_tests(ref) else ")"
            if err and f"test {gid!r} (" in err:  # the error names the test and its points already
                what = f"test {gid!r}"
            message = f"{what} did not pass: {err}" if err else f"{what} gave partial credit"
        if kind == "answer" and pts is None:
            message = "needs manual grading"
        rows.append(
            {
                "grade_id": gid,
                "kind": kind,
                "status": status,
                "score": None if pts is None else float(pts),
                "max_score": float(max_pts),
                "message": message,
            }
        )
    seen = {r["grade_id"] for r in rows}
    for gid, max_pts in ref.grade_cells.items():  # never full marks out of fewer points
        if gid not in seen:
            rows.append(
                {
                    "grade_id": gid,
                    "kind": "test" if gid in ref.test_cells else "answer",
                    "status": "not-run",
                    "score": 0.0,
                    "max_score": float(max_pts),
                    "message": f"cell {gid!r} ({max_pts:g} points) was not in the executed notebook: 0",
                }
            )
    return rows


def _first_error_elsewhere(nb: NotebookNode, ref: Reference) -> str | None:
    """The first error of a cell that is not a test (it usually explains the failing tests)."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        n += 1
        gid = _grade_meta(cell).get("grade_id")
        if gid in ref.test_cells or (cell.get("metadata", {}).get("livelab") or {}).get("check"):
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") not in (NOT_RUN, INTERFERED):
                ev = str(out.get("evalue", "")).strip().splitlines()
                where = f"cell {gid!r}" if gid else f"code cell {n}"
                return f"{where} raised {out.get('ename')}: {ev[0][:200] if ev else ''}".rstrip(": ")
    return None


def _stop_reason(facts: dict, kernel, ctx) -> str | None:
    hits = kernel.limit_hits() if kernel is not None else []
    wd = kernel.watchdog.reason if kernel is not None and kernel.watchdog else None
    if wd:
        return wd.split(": ", 1)[1] if ": " in wd else wd
    if "memory" in hits:
        return f"the kernel was killed at the memory limit ({kernel.config.limits.memory_mb} MB)"
    if facts.get("error"):
        if "CellTimeoutError" in facts["error"]:
            return "an earlier cell ignored its timeout interrupt, so the run was stopped"
        if "DeadKernel" in facts["error"] or "died" in facts["error"]:
            return "the kernel died (the notebook ended its own kernel or crashed it)"
        return facts["error"]
    return None


def limit_messages(facts: dict, kernel, ctx) -> tuple[list[str], list[str]]:
    msgs: list[str] = []
    hits: list[str] = []
    lim = kernel.config.limits
    khits = kernel.limit_hits()
    wd = kernel.watchdog.reason if kernel.watchdog else None
    if wd and wd.startswith("total-timeout"):
        hits.append("total-timeout")
        msgs.append(
            f"the notebook ran longer than the {lim.total_timeout:g} s total limit and was stopped; "
            "tests after that point score 0"
        )
    if "processes" in khits:
        hits.append("processes")
        msgs.append(
            f"the notebook tried to run more than {lim.max_processes} processes at once: the run "
            "was stopped there (start fewer processes, and wait for the ones you start)"
        )
    if "memory" in khits:
        hits.append("memory")
        msgs.append(f"the notebook went over the {lim.memory_mb} MB memory limit and was killed")
    if ctx is not None and ctx.flooded:
        hits.append("output")
        msgs.append(
            f"the notebook printed more than {lim.output_bytes:,} bytes: the output past that was "
            "discarded (the cells ran on); print less (summaries, not raw data)"
        )
    if ctx is not None and ctx.timeouts:
        hits.append("cell-timeout")
        msgs.append(f"{len(ctx.timeouts)} cell(s) ran longer than {lim.cell_timeout:g} s and were interrupted")
    nb = facts.get("nb")
    if nb is not None and any(
        o.get("ename") == "MemoryError"
        for c in nb.cells
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ):
        hits.append("memory")
        msgs.append(f"a cell ran out of memory (the limit is {lim.memory_mb} MB per notebook)")
    if facts.get("error") and not wd:
        if "CellTimeoutError" in facts["error"]:
            hits.append("cell-timeout")
            msgs.append(
                f"a cell kept running after it was interrupted at its {lim.cell_timeout:g} s timeout; "
                "the run was stopped there and later tests score 0"
            )
        elif "DeadKernel" in facts["error"] or "died" in facts["error"].lower():
            hits.append("kernel-died")
            msgs.append(
                "the kernel died during the run (os._exit, a crash or the memory limit); tests that had not run score 0"
            )
        else:
            hits.append("execution-error")
            msgs.append(f"execution stopped: {facts['error']}")
    return msgs, sorted(set(hits))


def _declared(nb: NotebookNode, params: dict) -> dict:
    """The parameters the notebook's ``parameters`` cell declares (all of them without one)."""
    try:
        from papermill.inspection import _infer_parameters

        for cell in nb.cells:  # as papermill's load_notebook_node does
            cell.metadata.setdefault("tags", [])
        names = {p.name for p in _infer_parameters(nb)}
    except Exception:  # noqa: BLE001 - no parameters cell, or a language papermill cannot parse
        names = set()
    return (
        {k: v for k, v in params.items() if k in names}
        if names
        else {k: params[k] for k in ("learner_id", "seed") if k in params}
    )


# ---- the one public function -------------------------------------------------------------
def _invalid_result(sub: Submission, ref: Reference, reason: str, t0: float) -> dict:
    cells = [
        {
            "grade_id": g,
            "kind": "test" if g in ref.test_cells else "answer",
            "status": "not-run",
            "score": 0.0,
            "max_score": m,
            "message": None,
        }
        for g, m in ref.grade_cells.items()
    ]
    return {
        "schema": SCHEMA,
        "status": "invalid",
        "student": sub.student,
        "assignment": sub.assignment,
        "notebook": sub.notebook,
        "score": 0.0,
        "max_score": ref.max_score,
        "cells": cells,
        "messages": [reason],
        "limits_hit": [],
        "isolation": {},
        "submission_sha256": sub.sha256,
        "reference": ref.digest,
        "executed": None,
        "feedback_html": None,
        "checks": [],
        "timings": {"total": time.perf_counter() - t0},
        "graded_at": time.time(),
    }


def grade(
    sub: Submission,
    ref: Reference,
    opts: RunOptions | None = None,
    *,
    pool: KernelPool | None = None,
    lab=None,
    checks: list | None = None,
) -> dict:
    """Grade one submission against ``ref``; never raises for anything the submission does.

    ``lab``: a :class:`grading.isolation.LabSlot` (fresh namespace + observer) for lab modules;
    ``checks``: check callables (see :mod:`grading.checks`) judged on that lab after the run.
    """
    opts = opts or RunOptions()
    pool = pool or kernel_pool()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        nb = read_notebook(sub.data)
    except InvalidSubmission as exc:
        return _invalid_result(sub, ref, str(exc), t0)
    t = time.perf_counter()
    try:
        nb, notes = sanitize(nb, ref, sub.student)
    except Exception as exc:  # noqa: BLE001 - nbgrader's validator refuses malformed metadata
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        return _invalid_result(
            sub, ref, f"not graded: nbgrader refused the notebook's cell metadata ({first[:200]})", t0
        )
    timings["sanitize"] = time.perf_counter() - t

    params = {
        "learner_id": sub.student,
        "LEARNER": sub.student,
        "seed": opts.seed,
        "SEED": opts.seed,
        **opts.parameters,
    }
    if lab is not None:
        params.update(lab.parameters())
    params = _declared(nb, params)
    t = time.perf_counter()
    if lab is not None:  # the slot started its kernel with the namespace's view of the lab
        kernel = lab.kernel
    else:  # per-student values go in parameters: every prestarted kernel is configured alike
        kernel = pool.take(tests_config(opts))
    timings["kernel_take"] = time.perf_counter() - t
    if lab is not None:
        lab.start_observing()
    try:
        facts = execute(nb, kernel, opts.limits, params, submission_bytes=sub.data, notebook_name=sub.notebook, ref=ref)
        timings["execute"] = facts["seconds"]
        for k in ("kernel_wait", "cells"):
            if k in facts:
                timings[k] = facts[k]
        ctx = facts["ctx"]
        executed = facts["nb"]
        t = time.perf_counter()
        stop = _stop_reason(facts, kernel, ctx)
        void = "processes" in kernel.limit_hits()
        rows = score(executed, ref, ctx, stop, void=void)
        msgs, hits = limit_messages(facts, kernel, ctx)
        isolation = kernel.facts()
        artifacts = {}
        if lab is not None:
            artifacts = lab.collect(kernel)
    finally:
        if lab is not None:
            kernel.close()  # nothing of the submission may run while its lab is judged
        else:
            from .sandbox import close_later

            close_later(kernel)
    check_rows: list[dict] = []
    if lab is not None and checks:
        from .checks.base import run_checks, add_check_cells

        lab.stop_observing()
        tc = time.perf_counter()
        check_rows = run_checks(checks, lab, artifacts)
        timings["checks"] = time.perf_counter() - tc
        add_check_cells(executed, check_rows)
        for row in check_rows:
            rows.append(
                {
                    "grade_id": row["grade_id"],
                    "check": row["name"],
                    "time": row["time"],
                    "kind": "check",
                    "status": "ok" if row["passed"] else "failed",
                    "score": float(row["score"]),
                    "max_score": float(row["points"]),
                    "message": None if row["passed"] else row["message"],
                }
            )
    timings["score"] = time.perf_counter() - t
    total = sum(r["score"] or 0.0 for r in rows)
    max_total = sum(r["max_score"] for r in rows)
    first_error = _first_error_elsewhere(executed, ref)
    messages = list(
        dict.fromkeys(
            notes
            + msgs
            + ([first_error] if first_error else [])
            + [r["message"] for r in rows if r.get("message") and r["kind"] != "answer"]
        )
    )
    result = {
        "schema": SCHEMA,
        "status": "graded",
        "student": sub.student,
        "assignment": sub.assignment,
        "notebook": sub.notebook,
        "score": round(total, 6),
        "max_score": round(max_total, 6),
        "cells": rows,
        "checks": check_rows,
        "messages": messages,
        "limits_hit": hits,
        "isolation": isolation,
        "submission_sha256": sub.sha256,
        "reference": ref.digest,
        "executed": nbformat.writes(executed),
        "feedback_html": None,
        "timings": timings,
        "graded_at": time.time(),
    }
    if lab is not None:
        result["lab"] = lab.summary()
    if opts.feedback:
        t = time.perf_counter()
        from .feedback import render

        try:
            result["feedback_html"] = render(executed, result)
        except Exception as exc:  # noqa: BLE001 - feedback must never lose a grade
            result["messages"].append(f"feedback could not be rendered: {exc.__class__.__name__}")
        timings["feedback"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return result
