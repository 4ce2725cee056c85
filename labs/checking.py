"""Signal from the notebook: ``lab.check()``, ``lab.submit()`` and the ✓ line of a passing test.

The learner's kernel asks the grading service (``livelab grader serve``) over the lab's broker:
it publishes a request on ``livelab/<ns>/learner/grader/request`` and waits for the reply on
``.../reply``.  The broker lets a learner publish only in its own namespace, so the service
knows who asks from the topic alone; nothing in the request names the learner, and the
kernel never writes an event that counts (the service does, signed).

:class:`CheckReport` and :class:`SubmitResult` show as a widget-like HTML table in JupyterLab
and as plain text anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REQUEST_SCHEMA = "livelab.grader-request/v1"
#: Seconds to wait for the service to acknowledge a request (it answers in milliseconds).
ACK_TIMEOUT = 5.0


class GraderUnavailable(RuntimeError):
    """No grading service answered; the message says how to start one."""


def _topic(ns: str, leaf: str) -> str:
    return f"livelab/{ns}/learner/grader/{leaf}"


def ask(lab, op: str, payload: dict, *, timeout: float) -> dict:
    """One request to the grading service through ``lab``'s learner connection."""
    from lab_hardware import mqtt

    rid = uuid.uuid4().hex
    ack, done = threading.Event(), threading.Event()
    reply: dict = {}
    client = lab._client
    topic = _topic(lab.namespace, "reply")

    def on_reply(cl, ud, msg):
        try:
            d = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(d, dict) or d.get("id") != rid:
            return
        if d.get("ack"):
            ack.set()
            return
        reply.update(d)
        ack.set()
        done.set()

    client.message_callback_add(topic, on_reply)
    try:
        if not getattr(lab, "_grader_subscribed", False):
            mqtt.subscribe_wait(client, topic, qos=1)
            lab._grader_subscribed = True
        info = client.publish(
            _topic(lab.namespace, "request"),
            json.dumps({"schema": REQUEST_SCHEMA, "id": rid, "op": op, **payload}),
            qos=1,
        )
        info.wait_for_publish(ACK_TIMEOUT)
        if not ack.wait(ACK_TIMEOUT):
            raise GraderUnavailable(
                "no grading service answered: start one with 'livelab grader serve' (or ask whoever runs your lab)"
            )
        if not done.wait(timeout):
            raise TimeoutError(f"the grading service did not answer within {timeout:.0f} s")
    finally:
        client.message_callback_remove(topic)
    return reply


# ---- what the learner sees ----------------------------------------------------------------
_CSS = (
    "<style>.ll-check td{padding:2px 8px;vertical-align:top}.ll-ok{color:#1a7f37}.ll-bad{color:#cf222e}"
    ".ll-infra{color:#9a6700}</style>"
)


@dataclass
class CheckReport:
    """The module's checks judged on your namespace so far: each item passed or failed."""

    module: str
    checks: list[dict] = field(default_factory=list)
    status: str = "graded"
    note: str = ""
    error: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "graded" and not self.error and all(c.get("passed") for c in self.checks)

    def items(self) -> list[tuple[str, str, bool, str]]:
        """(check, item, ok, message) for every item."""
        return [
            (c["name"], i["name"], bool(i["ok"]), i.get("message") or "")
            for c in self.checks
            for i in c.get("items", [])
        ]

    def __str__(self) -> str:
        if self.error:
            return f"{self.module}: {self.error}"
        if self.status != "graded":
            return f"{self.module}: not judged - {self.note or self.error} (this is not about your work)"
        lines = [f"{self.module}: " + ("all checks pass" if self.passed else "some checks do not pass yet")]
        if self.note:
            lines.append(self.note)
        for c in self.checks:
            lines.append(
                f"{'✓' if c.get('passed') else '✗'} {c['name']}: {c.get('score', 0):g} / {c.get('points', 0):g}"
            )
            for i in c.get("items", []):
                lines.append(
                    f"    {'✓' if i['ok'] else '✗'} {i['name']}" + ("" if i["ok"] else f": {i.get('message')}")
                )
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        e = html.escape
        if self.error or self.status != "graded":
            cls = "ll-infra" if self.status != "graded" else "ll-bad"
            return (
                f"{_CSS}<div class='ll-check'><b>{e(self.module)}</b>: <span class='{cls}'>{e(str(self))}</span></div>"
            )
        rows = []
        for c in self.checks:
            rows.append(
                f"<tr><td class='{'ll-ok' if c.get('passed') else 'll-bad'}'>{'✓' if c.get('passed') else '✗'}</td>"
                f"<td><b>{e(c['name'])}</b></td><td>{c.get('score', 0):g} / {c.get('points', 0):g}</td></tr>"
            )
            for i in c.get("items", []):
                rows.append(
                    f"<tr><td></td><td class='{'ll-ok' if i['ok'] else 'll-bad'}'>{'✓' if i['ok'] else '✗'} "
                    f"{e(i['name'])}</td><td>{'' if i['ok'] else e(i.get('message') or '')}</td></tr>"
                )
        note = f"<div>{e(self.note)}</div>" if self.note else ""
        head = "all checks pass" if self.passed else "some checks do not pass yet"
        return f"{_CSS}<div class='ll-check'><b>{e(self.module)}</b>: {head}{note}<table>{''.join(rows)}</table></div>"

    def widget(self):
        """The report as an ipywidgets HTML widget (what the panel's Check button shows)."""
        import ipywidgets as W

        return W.HTML(self._repr_html_())


@dataclass
class SubmitResult:
    """A graded attempt: score, messages and where its feedback page is."""

    module: str
    attempt: int | None
    status: str
    score: float | None
    max_score: float | None
    messages: list[str] = field(default_factory=list)
    feedback: str | None = None  # path of the feedback page, next to the notebook
    error: str = ""
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # the grader's phases (execute, cells, ...)

    def __str__(self) -> str:
        if self.error:
            return f"{self.module}: {self.error}"
        if self.status != "graded":
            return f"{self.module} attempt {self.attempt}: " + "; ".join(self.messages)
        lines = [f"{self.module} attempt {self.attempt}: {self.score:g} / {self.max_score:g}"]
        lines += [f"  - {m}" for m in self.messages[:8]]
        if self.feedback:
            lines.append(f"feedback: {self.feedback}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        e = html.escape
        if self.error or self.status != "graded":
            return f"{_CSS}<div class='ll-check ll-infra'>{e(str(self))}</div>"
        msgs = "".join(f"<li>{e(m)}</li>" for m in self.messages[:8])
        link = ""
        if self.feedback:
            rel = os.path.relpath(self.feedback, os.getcwd()) if os.path.isabs(self.feedback) else self.feedback
            link = f"<div><a href='{e(rel)}' target='_blank'>feedback (attempt {self.attempt})</a></div>"
        return (
            f"{_CSS}<div class='ll-check'><b>{e(self.module)}</b> attempt {self.attempt}: "
            f"<b>{self.score:g} / {self.max_score:g}</b><ul>{msgs}</ul>{link}</div>"
        )


def check(lab, module: str | None = None, *, timeout: float = 60.0) -> CheckReport:
    mod = module or lab.module
    if not mod:
        raise ValueError("which module? connect with Lab.connect(module=...) or pass module=")
    try:
        r = ask(lab, "check", {"module": mod}, timeout=timeout)
    except GraderUnavailable as exc:
        return CheckReport(mod, error=str(exc))
    if not r.get("ok"):
        return CheckReport(
            mod,
            status=r.get("status") or "refused",
            error=str(r.get("error") or "refused"),
            seconds=float(r.get("seconds") or 0),
        )
    return CheckReport(
        mod,
        list(r.get("checks") or []),
        r.get("status") or "graded",
        r.get("note") or r.get("infrastructure") or "",
        seconds=float(r.get("seconds") or 0),
    )


def notebook_path(module: str | None = None) -> Path | None:
    """The notebook this kernel runs: JupyterLab names it in ``JPY_SESSION_NAME``; otherwise the
    working directory's notebook named after the module."""
    name = os.environ.get("JPY_SESSION_NAME")
    if name and name.endswith(".ipynb"):
        p = Path(name)
        if not p.is_absolute():
            p = Path.cwd() / p.name if not p.exists() else p
        if p.exists():
            return p
    if module:
        for cand in (Path.cwd() / f"{module}.ipynb", *sorted(Path.cwd().glob(f"{module}*.ipynb"))):
            if cand.exists():
                return cand
    nbs = sorted(Path.cwd().glob("*.ipynb"))
    return nbs[0] if len(nbs) == 1 else None


def submit(
    lab, notebook: str | os.PathLike | None = None, module: str | None = None, *, timeout: float = 600.0
) -> SubmitResult:
    mod = module or lab.module
    if not mod:
        raise ValueError("which module? connect with Lab.connect(module=...) or pass module=")
    path = Path(notebook) if notebook else notebook_path(mod)
    if path is None or not path.exists():
        raise FileNotFoundError(
            "cannot tell which notebook to submit: save it and pass its path, lab.submit('m1-telemetry.ipynb')"
        )
    data = path.read_bytes()
    try:
        r = ask(
            lab,
            "submit",
            {"module": mod, "name": path.stem, "notebook": base64.b64encode(data).decode()},
            timeout=timeout,
        )
    except GraderUnavailable as exc:
        return SubmitResult(mod, None, "refused", None, None, error=str(exc))
    if not r.get("ok"):
        return SubmitResult(mod, None, r.get("status") or "refused", None, None, error=str(r.get("error") or "refused"))
    fb = None
    if r.get("feedback_html"):  # next to the notebook, where JupyterLab opens it
        d = path.parent / "feedback"
        try:
            d.mkdir(exist_ok=True)
            p = d / f"{mod}-attempt-{r.get('attempt')}.html"
            p.write_text(r["feedback_html"], encoding="utf-8")
            fb = str(p)
        except OSError:
            fb = r.get("feedback_path")
    return SubmitResult(
        mod,
        r.get("attempt"),
        r.get("status") or "graded",
        r.get("score"),
        r.get("max_score"),
        list(r.get("messages") or []),
        fb,
        seconds=float(r.get("seconds") or 0),
        timings=dict(r.get("timings") or {}),
    )


# ---- the ✓ line of a visible test ------------------------------------------------------------
def _norm(src: str) -> str:
    return hashlib.sha256("\n".join(l.rstrip() for l in src.strip().splitlines()).encode()).hexdigest()


class PassMarks:
    """An IPython ``post_run_cell`` hook: after a cell that is one of the notebook's nbgrader test
    cells runs without error, print ``✓ <test name> passed (<points> points)``.

    The kernel does not see cell metadata, so the test cells are read from the notebook file
    (``notebook_path``) and matched by their source; an edited test cell is no longer the
    test, and gets no ✓."""

    def __init__(self, module: str | None):
        self.module = module
        self._mtime = None
        self._tests: dict[str, tuple[str, float]] = {}

    def tests(self) -> dict[str, tuple[str, float]]:
        p = notebook_path(self.module)
        if p is None:
            return {}
        try:
            mtime = p.stat().st_mtime
            if mtime != self._mtime:
                nb = json.loads(p.read_text(encoding="utf-8"))
                tests = {}
                for c in nb.get("cells", []):
                    meta = (c.get("metadata") or {}).get("nbgrader") or {}
                    if c.get("cell_type") == "code" and meta.get("grade") and not meta.get("solution"):
                        src = "".join(c.get("source") or "")
                        tests[_norm(src)] = (str(meta.get("grade_id")), float(meta.get("points") or 0))
                self._tests, self._mtime = tests, mtime
        except (OSError, ValueError):
            return {}
        return self._tests

    def __call__(self, result) -> None:
        try:
            if not result.success:
                return
            src = getattr(result.info, "raw_cell", None) or ""
            hit = self.tests().get(_norm(src)) if "assert" in src else None
            if hit:
                print(
                    f"✓ {hit[0]} passed ({hit[1]:g} point{'s' if hit[1] != 1 else ''}; hidden tests are run when you submit)"
                )
        except Exception:  # noqa: BLE001 - a display nicety must never break a cell
            pass


def install_test_marks(module: str | None) -> PassMarks | None:
    """Install :class:`PassMarks` in the running IPython (once per kernel); None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    ip = get_ipython()
    if ip is None:
        return None
    for fn in list(ip.events.callbacks.get("post_run_cell", [])):
        if isinstance(fn, PassMarks):
            fn.module = module or fn.module
            return fn
    marks = PassMarks(module)
    ip.events.register("post_run_cell", marks)
    return marks


__all__ = ["CheckReport", "SubmitResult", "GraderUnavailable", "check", "submit", "install_test_marks", "ask"]
