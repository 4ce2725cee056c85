"""A papermill engine for grading: papermill's NBClient engine plus the limits a grader needs.

Registered as papermill engine ``livelab-grading``.  On top of papermill's client it:

* records every cell's execute-reply status (``ok``/``error``/``timeout``/``not-run``), so a
  test whose error the notebook hid (``set_custom_exc``, swallowed tracebacks) or that never
  ran (the kernel died or was killed first) cannot score as a pass: nbgrader gives full
  points to a grade cell without an error *output*, whatever happened;
* bounds the notebook's total output (``Limits.output_bytes``): past the bound, outputs are
  dropped and replaced by one notice, the kernel is interrupted and, if the flood goes on,
  killed;
* interrupts a cell at its per-cell timeout (then the next cell runs), with an error output
  saying so.

One run's state lives in a :class:`RunContext` handed in through ``engine_kwargs``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

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
    nb: NotebookNode | None = None              # the notebook being executed (outputs so far)
    replies: dict[int, str] = field(default_factory=dict)   # id(cell) -> reply status
    output_total: int = 0
    flooded: bool = False
    flood_cell: int | None = None
    interrupted_at: float | None = None
    timeouts: list[int] = field(default_factory=list)       # id(cell) of interrupted cells
    marks: dict[str, float] = field(default_factory=dict)    # monotonic times: ready, cells_done
    on_ready: Callable[[], None] | None = None              # the kernel answered: start the total clock
    lock: threading.Lock = field(default_factory=threading.Lock)


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

    def papermill_execute_cells(self):
        self.ctx.marks["ready"] = time.monotonic()  # the kernel answered kernel_info
        if self.ctx.on_ready is not None:
            self.ctx.on_ready()
        try:
            super().papermill_execute_cells()
        finally:
            self.ctx.marks["cells_done"] = time.monotonic()

    def _record_reply(self, cell, cell_index, execute_reply):  # nbclient hook
        status = "timeout" if execute_reply is None else execute_reply.get("content", {}).get("status", "?")
        if id(cell) in self.ctx.timeouts:
            status = "timeout"
        self.ctx.replies[id(cell)] = status

    async def _async_handle_timeout(self, timeout, cell=None):
        if cell is not None:
            self.ctx.timeouts.append(id(cell))
        return await super()._async_handle_timeout(timeout, cell)

    def output(self, outs, msg, display_id, cell_index):
        ctx = self.ctx
        if ctx.flooded:
            now = time.monotonic()
            if ctx.interrupted_at is not None and now - ctx.interrupted_at > 2.0:
                ctx.kill()  # ignored the interrupt and keeps flooding
            return None
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            ctx.output_total += _size(out)
            if ctx.output_total > ctx.output_bytes:
                ctx.flooded = True
                ctx.flood_cell = cell_index
                if out in outs:
                    outs.remove(out)
                outs.append(new_output("stream", name="stdout", text=(
                    f"\n[livelab grader: output stopped here: the notebook produced more than "
                    f"{ctx.output_bytes:,} bytes of output; the cell was interrupted]\n")))
                ctx.interrupted_at = time.monotonic()
                try:
                    from jupyter_core.utils import run_sync
                    run_sync(self.km.interrupt_kernel)()
                except Exception:  # noqa: BLE001 - dead already: nothing to interrupt
                    ctx.kill()
                return None
        return out


class GradingEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                 stderr_file=None, start_timeout=60, execution_timeout=None,
                                 run_context: RunContext | None = None, **kwargs: Any):
        kwargs.pop("input_path", None)
        kwargs.pop("timeout", None)
        kwargs.pop("startup_timeout", None)
        client = GradingNotebookClient(
            nb_man, run_context=run_context, timeout=execution_timeout, startup_timeout=start_timeout,
            kernel_name=kernel_name, log_output=log_output, stdout_file=stdout_file,
            stderr_file=stderr_file, **kwargs)
        return client.execute()


papermill_engines.register(ENGINE, GradingEngine)
