"""nbgrader's own exchange, graded on submit (``livelab grader serve --exchange DIR``).

A course that hands out and collects work through nbgrader's exchange keeps doing so: learners
run ``nbgrader fetch_assignment``, ``nbgrader submit`` and ``nbgrader fetch_feedback`` (or the
Assignments tab of JupyterLab's nbgrader extension) exactly as nbgrader documents them.  The
grading service then does what an instructor would do by hand with ``collect``, ``autograde``,
``generate_feedback`` and ``release_feedback``, at once, for every submission:

* :func:`publish` puts the course's current release into ``<root>/<course>/outbound/<module>``
  (what ``nbgrader release_assignment`` does) and creates ``inbound`` and ``feedback`` with
  nbgrader's modes, so ``fetch_assignment`` and ``submit`` work;
* :class:`ExchangeWatcher` notices each complete submission in ``inbound`` (nbgrader writes
  ``submission_secret.txt`` last), grades every notebook of it through the service's
  :meth:`~grading.service.GraderService.submit` (a fresh namespace, each attempt kept), and
  writes the feedback page where ``nbgrader fetch_feedback`` looks for it:
  ``feedback/<md5(secret + notebook id)>.html`` (``nbgrader.utils.notebook_hash``).

Identity: a submission's student id is the learner's login, which in a team lab is the
learner's name (:mod:`labs.learners`); a student id that is not a learner of this lab is
refused and nothing is graded.  Refusals and grading-machine failures are kept in
``<state>/exchange.json`` with their one-line reason; a grading-machine failure gives the
learner a page saying so and that it is not their work (nothing is scored).
"""

from __future__ import annotations

import html
import logging
import os
import re
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("livelab.grading.exchange")

SCHEMA = "livelab.exchange-log/v1"
#: nbgrader's modes: inbound is write-only for learners (0733), feedback traversable (0711).
INBOUND_MODE = 0o733
FEEDBACK_MODE = 0o711
OUTBOUND_MODE = 0o755
_PART = re.compile(r"^[^+/*]+$")


class ExchangeError(ValueError):
    """An exchange the service cannot use, or a submission it refuses: one line saying why."""


@dataclass(frozen=True)
class Inbound:
    """One submission in ``inbound``: ``student+assignment+timestamp[+random]``."""

    path: Path
    student: str
    assignment: str
    timestamp: str

    @property
    def key(self) -> str:
        return self.path.name


def parse_inbound(path: Path) -> Inbound:
    parts = path.name.split("+")
    if len(parts) not in (3, 4) or not all(_PART.match(p) for p in parts):
        raise ExchangeError(f"{path.name!r} is not an nbgrader submission (student+assignment+timestamp[+random])")
    return Inbound(path, parts[0], parts[1], parts[2])


def course_dir(root: Path, course_id: str) -> Path:
    return Path(root) / course_id


def _ensure(path: Path, mode: int, *, always: bool = False) -> None:
    """Create ``path`` with ``mode``; an existing folder keeps its mode unless ``always``
    (inbound and feedback must have nbgrader's, or learners cannot submit or fetch)."""
    if path.is_dir() and not always:
        return
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)


def publish(root: str | os.PathLike, course_id: str, releases: dict[str, Path]) -> list[str]:
    """Release ``{module: learner folder}`` to the exchange (``outbound/<module>``), as
    ``nbgrader release_assignment`` does; a module already there with the same files is left
    alone, one that changed is replaced whole.  Returns the modules (re)published."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ExchangeError(f"exchange {root} is a file, not a directory")
    c = course_dir(root, course_id)
    try:
        for d, mode in ((root, 0o755), (c, 0o755), (c / "outbound", OUTBOUND_MODE)):
            _ensure(d, mode)
        for d, mode in ((c / "inbound", INBOUND_MODE), (c / "feedback", FEEDBACK_MODE)):
            _ensure(d, mode, always=True)
    except OSError as exc:
        raise ExchangeError(f"exchange {root} cannot be prepared: {exc.strerror or exc}") from None
    done = []
    for module, src in sorted(releases.items()):
        dest = c / "outbound" / module
        if dest.is_dir() and _same_tree(src, dest):
            continue
        tmp = c / "outbound" / f".{module}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        done.append(module)
    return done


def _same_tree(a: Path, b: Path) -> bool:
    def files(p: Path) -> dict[str, bytes]:
        return {
            str(f.relative_to(p)): f.read_bytes()
            for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        }

    return files(a) == files(b)


def pending(root: str | os.PathLike, course_id: str, seen: dict[str, Any]) -> list[Path]:
    """Complete submissions not handled yet, oldest first (nbgrader writes the secret last)."""
    inbound = course_dir(Path(root), course_id) / "inbound"
    if not inbound.is_dir():
        return []
    out = [
        p for p in inbound.iterdir() if p.is_dir() and p.name not in seen and (p / "submission_secret.txt").is_file()
    ]
    return sorted(out, key=lambda p: p.stat().st_mtime)


def feedback_path(root: str | os.PathLike, course_id: str, secret: str, notebook_id: str) -> Path:
    """Where ``nbgrader fetch_feedback`` looks for a notebook's feedback."""
    from nbgrader.utils import notebook_hash

    return (
        course_dir(Path(root), course_id) / "feedback" / f"{notebook_hash(secret=secret, notebook_id=notebook_id)}.html"
    )


def write_feedback(path: Path, page: str) -> None:
    tmp = path.with_name(path.stem + "-tmp.html")
    tmp.write_text(page, encoding="utf-8")
    os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    os.replace(tmp, path)


def infrastructure_page(module: str, notebook: str, messages: list[str]) -> str:
    why = "".join(f"<li>{html.escape(m)}</li>" for m in messages) or "<li>the grading machine failed</li>"
    return (
        "<!doctype html><meta charset='utf-8'><title>Not graded</title>"
        f"<h1>{html.escape(module)} / {html.escape(notebook)}: not graded</h1>"
        "<p>The grading machine failed while grading this submission. <strong>This is not about "
        "your work</strong>: nothing was scored. Submit again (nbgrader submit), or tell your "
        f"course staff.</p><ul>{why}</ul>"
    )


class ExchangeWatcher:
    """Grades every new submission of an nbgrader exchange through the grading service."""

    def __init__(
        self,
        root: str | os.PathLike,
        course_id: str,
        *,
        state: Path,
        submit: Callable[..., dict],
        learner_of: Callable[[str], str | None],
        modules: Callable[[], dict[str, list[str]]],
        poll: float = 0.5,
    ):
        self.root = Path(root).expanduser().resolve()
        self.course_id = course_id
        self.log_path = Path(state) / "exchange.json"
        self.submit, self.learner_of, self.modules = submit, learner_of, modules
        self.poll = poll
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.seen: dict[str, dict] = self._load()

    # ---- the log of what was handled -------------------------------------------------------
    def _load(self) -> dict[str, dict]:
        from lab_hardware import home as _home

        try:
            data = _home.read_json(self.log_path)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return {}
        return dict((data.get("courses") or {}).get(self.course_id) or {})

    def _save(self) -> None:
        from lab_hardware import home as _home

        try:
            data = _home.read_json(self.log_path)
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            data = {"schema": SCHEMA, "courses": {}}
        data.setdefault("courses", {})[self.course_id] = self.seen
        _home.write_json(self.log_path, data, mode=0o600)

    def status(self) -> dict[str, Any]:
        with self.lock:
            counts: dict[str, int] = {}
            for rec in self.seen.values():
                counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        return {"root": str(self.root), "course": self.course_id, "submissions": counts}

    # ---- the loop --------------------------------------------------------------------------
    def start(self) -> "ExchangeWatcher":
        self.thread = threading.Thread(target=self._run, name=f"exchange-{self.course_id}", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.scan()
            except Exception as exc:  # noqa: BLE001 - the watcher keeps watching
                log.error("exchange %s: %s", self.root, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self.stopping.wait(self.poll)

    def scan(self) -> list[dict]:
        """Handle every complete submission not handled yet; returns their records."""
        out = []
        for path in pending(self.root, self.course_id, self.seen):
            if self.stopping.is_set():
                break
            rec = self.handle(path)
            with self.lock:
                self.seen[path.name] = rec
                self._save()
            out.append(rec)
        return out

    def handle(self, path: Path) -> dict:
        t0 = time.time()
        base: dict[str, Any] = {"time": t0}
        try:
            sub = parse_inbound(path)
            base.update(student=sub.student, module=sub.assignment, timestamp=sub.timestamp)
            learner = self.learner_of(sub.student)
            if learner is None:
                raise ExchangeError(f"student {sub.student!r} is not a learner of this lab: nothing was graded")
            names = self.modules().get(sub.assignment)
            if names is None:
                raise ExchangeError(f"{sub.assignment!r} is not a module this service grades")
            secret = (path / "submission_secret.txt").read_text().strip()
            notebooks = sorted(p for p in path.glob("*.ipynb") if p.stem in names)
            if not notebooks:
                raise ExchangeError(
                    f"the submission holds none of the module's notebooks ({', '.join(n + '.ipynb' for n in names)})"
                )
        except (ExchangeError, OSError) as exc:
            reason = str(exc).splitlines()[0]
            log.warning("exchange submission %s refused: %s", path.name, reason)
            return {**base, "status": "refused", "reason": reason}
        import base64

        results = []
        for nb in notebooks:
            try:
                data = nb.read_bytes()
                res = self.submit(learner, sub.assignment, base64.b64encode(data).decode(), nb.stem)
            except Exception as exc:  # noqa: BLE001 - a refusal (bad notebook...) is the learner's answer
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                res = {"status": "refused", "messages": [reason], "score": None, "max_score": None}
            fb = feedback_path(self.root, self.course_id, secret, nb.stem)
            if res.get("feedback_html"):
                write_feedback(fb, res["feedback_html"])
            elif res.get("status") == "infrastructure-error":
                write_feedback(fb, infrastructure_page(sub.assignment, nb.stem, list(res.get("messages") or [])))
            results.append(
                {
                    "notebook": nb.stem,
                    "status": res.get("status"),
                    "attempt": res.get("attempt"),
                    "score": res.get("score"),
                    "max_score": res.get("max_score"),
                    "feedback": fb.name if fb.exists() else None,
                }
            )
            log.info(
                "exchange: %s %s/%s attempt %s: %s %s/%s",
                learner,
                sub.assignment,
                nb.stem,
                res.get("attempt"),
                res.get("status"),
                res.get("score"),
                res.get("max_score"),
            )
        worst = next((r["status"] for r in results if r["status"] != "graded"), "graded")
        return {**base, "learner": learner, "status": worst, "notebooks": results, "seconds": time.time() - t0}
