"""Signals for the lab's long-running processes, handled off the main thread.

Python runs a signal handler on the main thread, between two bytecodes of whatever it is
doing - also between two bytecodes of an earlier handler.  A handler that takes a lock
(``threading.Event.set`` takes the event's) therefore deadlocks when the main thread holds that
lock at that moment, and a second signal arriving while the first handler runs is exactly that
case: the lab's supervisor hung for good after two SIGHUPs came close together (graders add
and remove a namespace per submission, each with a SIGHUP), and a steady stream of signals
overflowed its stack with nested handlers.

:func:`route` installs a handler that does nothing and lets the interpreter's C-level handler
write the signal's number to a pipe (``signal.set_wakeup_fd``); a daemon thread reads the pipe
and runs the callbacks.  A callback may take locks and do real work; signals that arrive while
one runs are coalesced into one more call.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

__all__ = ["route"]

log = logging.getLogger("livelab.signals")


def _ignore(signum: int, frame: object) -> None:  # the C-level handler has already written to the pipe
    pass


def route(callbacks: dict[int, Callable[[], object]], *, name: str = "signals") -> threading.Thread:
    """Run ``callbacks[signum]()`` on a helper thread each time ``signum`` arrives.

    Call it once, from the main thread (``set_wakeup_fd`` is per process); the process must not
    run an asyncio loop with signal handlers in its main thread (that takes the wakeup fd).
    Returns the helper thread (a daemon)."""
    r, w = os.pipe()  # not inherited by children (PEP 446)
    os.set_blocking(w, False)
    old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    if old != -1:
        signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)
        raise RuntimeError("this process already has a signal wakeup fd: route() would take it")
    for signum in callbacks:
        signal.signal(signum, _ignore)

    def in_forked_child() -> None:
        # a fork (no exec) inherits the wakeup fd and the pipe: its signals would be written
        # to this process's pipe and run this process's callbacks (stop the supervisor when a
        # forked helper gets SIGTERM), while its own do nothing.  Give it the defaults back.
        signal.set_wakeup_fd(-1)
        for signum in callbacks:
            signal.signal(signum, signal.SIG_DFL)
        os.close(r)
        os.close(w)

    os.register_at_fork(after_in_child=in_forked_child)

    def pump() -> None:
        while True:
            data = os.read(r, 4096)
            if not data:
                return
            for signum in dict.fromkeys(data):  # each signal once per read, in arrival order
                cb = callbacks.get(signum)
                if cb is None:
                    continue
                try:
                    cb()
                except Exception:  # noqa: BLE001 - later signals must still be handled
                    log.exception("the handler of signal %s failed", signum)

    t = threading.Thread(target=pump, name=name, daemon=True)
    t.start()
    return t
