"""A papermill engine for grading: papermill's NBClient engine plus the limits a grader needs.

Registered as papermill engine ``livelab-grading``.  On top of papermill's client it:

* records every cell's execute-reply status (``ok``/``error``/``timeout``/``not-run``), so a
  test whose error the notebook hid (``set_custom_exc``, swallowed tracebacks) or that never
  ran (the kernel died or was killed first) cannot score as a pass: nbgrader gives full
  points to a grade cell without an error *output*, whatever happened;
* bounds the notebook's total output (``Limits.output_bytes``): past the bound, outputs are
  discarded (one notice says so) and the cell runs on, so a correct function defined after a
  large print is still defined; error outputs are always kept (scoring reads them), and the
  kernel itself discards printed text past the bound (:mod:`grading.kernel_guard`);
* runs every test cell on the grader's own IPython (:mod:`grading.kernel_guard`): before it,
  what the notebook installed (transformers, hooks, custom handlers, builtins, patched
  methods) is set aside; after it, put back; a test whose grader state could not be put in
  place, or was changed while it ran, does not count;
* interrupts a cell at its per-cell timeout (then the next cell runs), with an error output
  saying so.

One run's state lives in a :class:`RunContext` handed in through ``engine_kwargs``.
"""

from __future__ import annotations

import ast
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from jupyter_core.utils import run_sync
from nbformat import NotebookNode
from nbformat.v4 import new_output
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines

ENGINE = "livelab-grading"
#: the kernel's guard (:mod:`grading.kernel_guard`), as an expression
GUARD = "__import__('sys').modules['_livelab_guard']"
#: the key of the guard's calls among a cell request's ``user_expressions``
TAIL_KEY = "livelab-guard"
NO_GUARD = "no answer from the grader's guard (the notebook removed or broke it)"
#: the id of papermill's closing ``kernel_info`` request, answered from the kernel's ready reply
_READY_INFO = "livelab-ready-kernel-info"


def _answer(text: str, nonce: str) -> str:
    """The guard's answer to the call made with ``nonce``."""
    if not text.startswith(f"{nonce}:") or text.startswith(f"{nonce}:raised:"):
        return NO_GUARD
    return text[len(nonce) + 1 :]


@dataclass
class RunContext:
    """Shared between the runner and the engine for one notebook run."""

    output_bytes: int
    kill: Callable[[], None]
    nb: NotebookNode | None = None  # the notebook being executed (outputs so far)
    replies: dict[int, str] = field(default_factory=dict)  # id(cell) -> reply status
    output_total: int = 0
    flooded: bool = False
    flood_cell: int | None = None
    interrupted_at: float | None = None
    timeouts: list[int] = field(default_factory=list)  # id(cell) of interrupted cells
    marks: dict[str, float] = field(default_factory=dict)  # monotonic times: ready, cells_done
    on_ready: Callable[[], None] | None = None  # the kernel answered: start the total clock
    lock: threading.Lock = field(default_factory=threading.Lock)
    reply_errors: dict[int, tuple[str, str]] = field(default_factory=dict)  # id(cell) -> (ename, evalue)
    #: grade ids of the release's test cells and of its other locked code cells; None: no guard
    test_ids: set[str] | None = None
    release_ids: set[str] = field(default_factory=set)
    release_names: set[str] = field(default_factory=set)  # names the release's cells define
    interfered: dict[int, str] = field(default_factory=dict)  # id(cell) -> why the test does not count
    discarded: int = 0  # outputs discarded past the bound
    guard_requests: int = 0  # requests sent for the guard alone (the rest ride on cells')

    def role(self, cell) -> str:
        """``test``, ``release`` (the release's own locked code, papermill's parameters) or
        ``learner``."""
        gid = ((cell.get("metadata") or {}).get("nbgrader") or {}).get("grade_id")
        if self.test_ids is not None and gid in self.test_ids:
            return "test"
        if gid in self.release_ids or "injected-parameters" in (cell.get("metadata") or {}).get("tags", []):
            return "release"
        return "learner"


def _size(out: NotebookNode) -> int:
    if out.get("output_type") == "stream":
        return len(out.get("text", "").encode("utf-8", "replace"))
    try:
        return len(json.dumps(out.get("data") or out, default=str))
    except (TypeError, ValueError):
        return 1024


class GradingNotebookClient(PapermillNotebookClient):
    def __init__(self, nb_man, run_context: RunContext, **kw):
        super().__init__(nb_man, **kw)
        self.ctx = run_context
        self.ctx.nb = nb_man.nb
        self.on_cell_executed = self._record_reply
        self._last_role: str | None = None
        self._tail: list | None = None  # guard calls for the next execute request to carry
        self._tail_sent: list | None = None
        self._tail_reply: dict | None = None  # their user_expressions entry in its reply
        self._ahead: tuple | None = None  # (cell, answers): its guard calls, already made

    def papermill_execute_cells(self):
        self.ctx.marks["ready"] = time.monotonic()  # the kernel answered kernel_info
        kc_execute = self.kc.execute

        def execute(code, *args, **kw):  # a cell's own request carries the guard's tail
            if self._tail:
                self._tail_expressions(kw)
            return kc_execute(code, *args, **kw)

        self.kc.execute = execute
        if self.ctx.on_ready is not None:
            self.ctx.on_ready()
        try:
            super().papermill_execute_cells()
        finally:
            self.ctx.marks["cells_done"] = time.monotonic()
            if getattr(self.kc, "ready_reply", None) is not None:
                # papermill asks the kernel for its language_info once more after the cells:
                # the answer it gave when it became ready (before any notebook code) is the one
                # recorded, without a request (a kernel's CPU for one, as for a cell)
                self.kc.kernel_info = lambda *a, **kw: _READY_INFO

    def wait_for_reply(self, msg_id, cell=None):
        if msg_id is _READY_INFO:  # see papermill_execute_cells
            return self.kc.ready_reply
        return super().wait_for_reply(msg_id, cell)

    def _record_reply(self, cell, cell_index, execute_reply):  # nbclient hook
        content = {} if execute_reply is None else execute_reply.get("content", {})
        status = "timeout" if execute_reply is None else content.get("status", "?")
        if id(cell) in self.ctx.timeouts:
            status = "timeout"
        self.ctx.replies[id(cell)] = status
        if self._tail_sent:
            self._tail_reply = (content.get("user_expressions") or {}).get(TAIL_KEY)
        if status == "error":
            self.ctx.reply_errors[id(cell)] = (str(content.get("ename") or "Error"), str(content.get("evalue") or ""))

    # ---- the guard: test cells on the grader's IPython ---------------------------------
    async def _async_guard(self, call: str, *args) -> str:
        """Call ``call`` of the kernel's guard through ``user_expressions`` of an empty silent
        request (no transformer, hook or custom handler is on that path); returns its
        answer, or why there is none."""
        nonce = os.urandom(8).hex()
        self.ctx.guard_requests += 1
        try:
            msg_id = self.kc.execute(
                "",
                silent=True,
                store_history=False,
                user_expressions={"r": f"{GUARD}.{call}({', '.join(map(repr, (nonce, *args)))})"},
                allow_stdin=False,
                stop_on_error=False,
            )
            reply = await self.async_wait_for_reply(msg_id)
        except Exception as exc:  # noqa: BLE001 - a dead kernel: the cell's own run says so
            return f"no answer ({exc.__class__.__name__})"
        if reply is None:
            return "no answer in time"
        r = (reply.get("content", {}).get("user_expressions") or {}).get("r") or {}
        text = str((r.get("data") or {}).get("text/plain", ""))
        if r.get("status") != "ok":
            return NO_GUARD
        return _answer(text.strip("'\""), nonce)

    guard = run_sync(_async_guard)

    def _calls_before(self, cell, last_role: str | None) -> tuple[str | None, list[tuple[str, tuple]]]:
        """``(role, guard calls due before cell runs)``, given the role of the code cell
        before it: ``enter`` before a test cell, ``checkpoint`` before the first learner cell
        after release code."""
        ctx = self.ctx
        role = ctx.role(cell) if ctx.test_ids is not None and cell.get("cell_type") == "code" else None
        if role == "test":
            return role, [("enter", (sorted(ctx.release_names),))]
        if role == "learner" and last_role != "learner":
            return role, [("checkpoint", ())]
        return role, []

    def _next_code_cell(self, cell_index: int):
        """The code cell that :meth:`execute_cell` sees after ``cell_index`` (papermill runs
        every cell in order: errors are allowed)."""
        for nxt in self.nb.cells[cell_index + 1 :]:
            if nxt.get("cell_type") == "code":
                return nxt
        return None

    def _tail_expressions(self, kw: dict) -> None:
        """Called with the cell's own execute request: carry the guard calls due after it."""
        tail, self._tail = self._tail, None
        if tail:
            kw["user_expressions"] = {**(kw.get("user_expressions") or {}), TAIL_KEY: f"{GUARD}.run({tail!r})"}
            self._tail_sent = tail

    def execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        """Run one cell with the guard's calls around it.  The calls due after a cell (the
        test's ``leave``, the next cell's ``enter`` or ``checkpoint``) ride on the cell's own
        request as ``user_expressions`` (:func:`grading.kernel_guard.run`); those ipykernel
        did not evaluate (the cell failed, timed out or never ran) are sent on their own."""
        ctx = self.ctx
        role, before = self._calls_before(cell, self._last_role)
        ahead, self._ahead = self._ahead, None
        answered = ahead[1] if ahead is not None and ahead[0] is cell else {}
        if ahead is not None and ahead[0] is not cell and ahead[1].get("enter") == "ok":
            self.guard("leave")  # not the cell the grader's state was put in place for
        for name, args in before:
            answer = answered.get(name) or self.guard(name, *args)
            if name == "enter" and answer != "ok":
                ctx.interfered[id(cell)] = f"the grader could not run it on its own IPython: {answer}"
        if role is not None:
            self._last_role = role
        leaves = role == "test" and id(cell) not in ctx.interfered
        nxt = self._next_code_cell(cell_index)
        after_next = self._calls_before(nxt, self._last_role)[1] if nxt is not None else []
        tail = ([("leave", ())] if leaves else []) + after_next
        self._tail = [(name, os.urandom(8).hex(), args) for name, args in tail] or None
        self._tail_sent = self._tail_reply = None
        try:
            return super().execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            self._tail = None
            answers = self._tail_answers()
            if leaves:
                answer = answers.get("leave") or self.guard("leave")
                if answer.startswith("tampered:"):
                    ctx.interfered[id(cell)] = (
                        f"the notebook changed the grader's {answer.split(':', 1)[1]} while the test ran"
                    )
                elif answer != "ok":
                    ctx.interfered[id(cell)] = f"the grader could not check its own IPython after it: {answer}"
            if nxt is not None and any(name in answers for name, _ in after_next):
                self._ahead = (nxt, answers)

    def _tail_answers(self) -> dict[str, str]:
        """name -> answer of the calls carried by the cell's request; empty when ipykernel
        did not evaluate them."""
        sent, r = self._tail_sent, self._tail_reply
        self._tail_sent = self._tail_reply = None
        if not sent or not isinstance(r, dict) or r.get("status") != "ok":
            return {}
        try:
            texts = ast.literal_eval(str((r.get("data") or {}).get("text/plain", "")))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            texts = None
        if not isinstance(texts, list) or len(texts) != len(sent):
            return {}
        return {name: _answer(str(text), nonce) for (name, nonce, _), text in zip(sent, texts)}

    async def _async_handle_timeout(self, timeout, cell=None):
        if cell is not None:
            self.ctx.timeouts.append(id(cell))
        return await super()._async_handle_timeout(timeout, cell)

    def output(self, outs, msg, display_id, cell_index):
        ctx = self.ctx
        is_error = msg.get("msg_type") == "error"
        if ctx.flooded and not is_error:  # past the bound: discarded, the cell runs on
            ctx.discarded += 1
            return None
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None and not is_error:
            ctx.output_total += _size(out)
            if ctx.output_total > ctx.output_bytes:
                ctx.flooded = True
                ctx.flood_cell = cell_index
                if out in outs:
                    outs.remove(out)
                outs.append(
                    new_output(
                        "stream",
                        name="stdout",
                        text=(
                            f"\n[livelab grader: output stopped here: the notebook produced more than "
                            f"{ctx.output_bytes:,} bytes of output; the rest was discarded and the cell ran on]\n"
                        ),
                    )
                )
                return None
        return out


class GradingEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man,
        kernel_name,
        log_output=False,
        stdout_file=None,
        stderr_file=None,
        start_timeout=60,
        execution_timeout=None,
        run_context: RunContext | None = None,
        **kwargs: Any,
    ):
        kwargs.pop("input_path", None)
        kwargs.pop("timeout", None)
        kwargs.pop("startup_timeout", None)
        client = GradingNotebookClient(
            nb_man,
            run_context=run_context,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
            **kwargs,
        )
        try:
            return client.execute()
        finally:
            close_client(client.kc)


def close_client(kc) -> None:
    """Close a kernel client nbclient leaves open on a kernel it does not own (its channels'
    sockets and its own ZeroMQ context): the grader closes the kernel itself, and a worker
    grades many notebooks."""
    if kc is None:
        return
    try:
        kc.stop_channels()
    except Exception:  # noqa: BLE001 - a dead kernel's channels
        pass
    if getattr(kc, "_created_context", False):
        try:
            kc.context.destroy(linger=0)
        except Exception:  # noqa: BLE001
            pass


papermill_engines.register(ENGINE, GradingEngine)
