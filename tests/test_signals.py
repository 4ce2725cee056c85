"""Signals of the lab's long-running processes are handled off the main thread
(``lab_hardware.signals.route``): a handler that takes a lock deadlocks when the signal arrives
while the main thread - or an earlier handler - holds it."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ["livelab", "grading", "labs", "lab_hardware", "reports", "courses", "kernels"]

_CHILD = textwrap.dedent(
    """
    import signal, sys, threading, time
    sys.path.insert(0, {root!r})
    from lab_hardware import signals

    stop, hup = threading.Event(), threading.Event()
    hups = [0]

    def on_hup():
        hups[0] += 1
        hup.set()

    signals.route({{signal.SIGHUP: on_hup, signal.SIGTERM: stop.set}})
    print("ready", flush=True)
    while not stop.wait(0.01):  # the main thread takes the events' locks all the time
        hup.clear()
    print("stopped", hups[0] > 0, flush=True)
    """
)


def test_a_flood_of_signals_neither_wedges_nor_overflows_a_routed_process():
    """With ``signal.signal(SIGHUP, lambda *a: event.set())`` the same child hangs for good
    within a second of this flood (nested handlers: one waits for the lock the one it
    interrupted holds) or dies of RecursionError; routed, it keeps running and stops on
    SIGTERM."""
    p = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            os.kill(p.pid, signal.SIGHUP)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)  # a bound for a busy machine; it stops at once
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out
    assert out.strip() == "stopped True"


def _lambda_handlers(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "signal"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "signal"
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Lambda)
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_product_process_sets_an_event_from_a_python_signal_handler():
    """Every ``signal.signal(sig, lambda ...)`` in the product was an ``Event.set`` on the main
    thread (supervisor, devices, oracle, recorder, grading service): they go through
    ``signals.route`` instead."""
    found = [hit for pkg in PRODUCT for path in sorted((ROOT / pkg).rglob("*.py")) for hit in _lambda_handlers(path)]
    assert not found, "Python signal handlers that call into locks (use lab_hardware.signals.route): " + ", ".join(
        found
    )


_FORKING = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    sys.path.insert(0, {root!r})
    from lab_hardware import signals

    stop = threading.Event()
    signals.route({{signal.SIGTERM: stop.set}})
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(ready_w, b"x")  # past fork(): its at-fork handlers have run
        time.sleep(60)  # ended by the SIGTERM below, as any unrouted process is
        os._exit(3)
    os.read(ready_r, 1)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    time.sleep(0.5)  # were the child's signal written to this process's pipe, stop is set by now
    print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, stop.is_set(), flush=True)
    """
)


def test_a_process_forked_from_a_routed_one_keeps_its_signals_to_itself():
    """A fork (no exec) of a routed process inherited the wakeup pipe: a SIGTERM to the child
    ran the parent's callback (a forked helper's SIGTERM would stop the supervisor) and did
    not end the child.  The child gets the default handling back."""
    out = subprocess.run(
        [sys.executable, "-c", _FORKING.format(root=str(ROOT))], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr
