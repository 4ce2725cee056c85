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

    def papermill_execute_cells(self):
        self.ctx.marks["ready"] = time.monotonic()  # the kernel answered kernel_info
        if self.ctx.on_ready is not None:
            self.ctx.on_ready()
        try:
            super().papermill_execute_cells()
        finally:
            self.ctx.marks["cells_done"] = time.monotonic()

    def _record_reply(self, cell, cell_index, execute_reply):  # nbclient hook
        content = {} if execute_reply is None else execute_reply.get("content", {})
        status = "timeout" if execute_reply is None else content.get("status", "?")
        if id(cell) in self.ctx.timeouts:
            status = "timeout"
        self.ctx.replies[id(cell)] = status
        if status == "error":
            self.ctx.reply_errors[id(cell)] = (str(content.get("ename") or "Error"), str(content.get("evalue") or ""))

    # ---- the guard: test cells on the grader's IPython ---------------------------------
    async def _async_guard(self, call: str, *args) -> str:
        """Call ``call`` of the kernel's guard through ``user_expressions`` of an empty silent
        request (no transformer, hook or custom handler runs on that path); returns its
        answer, or why there is none."""
        nonce = os.urandom(8).hex()
        expr = f"__import__('sys').modules['_livelab_guard'].{call}({', '.join(map(repr, (nonce, *args)))})"
        try:
            msg_id = self.kc.execute(
                "",
                silent=True,
                store_history=False,
                user_expressions={"r": expr},
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
        if r.get("status") != "ok" or not text.strip("'\"").startswith(f"{nonce}:"):
            return "no answer from the grader's guard (the notebook removed or broke it)"
        return text.strip("'\"")[len(nonce) + 1 :]

    guard = run_sync(_async_guard)

    def execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        ctx = self.ctx
        role = ctx.role(cell) if ctx.test_ids is not None and cell.get("cell_type") == "code" else None
        if role == "test":
            answer = self.guard("enter", sorted(ctx.release_names))
            if answer != "ok":
                ctx.interfered[id(cell)] = f"the grader could not run it on its own IPython: {answer}"
        elif role == "learner" and self._last_role != "learner":
            self.guard("checkpoint")
        if role is not None:
            self._last_role = role
        try:
            return super().execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            if role == "test" and id(cell) not in ctx.interfered:
                answer = self.guard("leave")
                if answer.startswith("tampered:"):
                    ctx.interfered[id(cell)] = (
                        f"the notebook changed the grader's {answer.split(':', 1)[1]} while the test ran"
                    )
                elif answer != "ok":
                    ctx.interfered[id(cell)] = f"the grader could not check its own IPython after it: {answer}"

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
