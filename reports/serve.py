"""Serve the time-to-signal dashboard with Voila on loopback, and export the static report.

``serve`` starts Voila on ``127.0.0.1`` (``--Voila.ip``: a bare ``--ip`` is silently ignored)
on a free port with no browser, and returns once it answers HTTP.  ``stop`` ends it by PID
with SIGTERM (Voila then shuts its kernels down) and reaps any kernel it left behind: the
report must never leave processes around.  Both are what ``livelab report serve`` runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping

from labs.learning_events import ENV_URL, EventStore
from reports.static import ReportError, export  # noqa: F401  (export is part of this API)

NOTEBOOK = Path(__file__).resolve().parent / "time_to_signal.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise ReportError(
                f"Voila exited with code {proc.returncode} before serving the report; "
                f"its log ({log}) ends: {' '.join(tail.split())[-400:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise ReportError(f"Voila did not answer {url} within {timeout:.0f} s (log: {log})")


def serve(
    home: str | os.PathLike | None = None,
    port: int | None = None,
    *,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    log: str | os.PathLike | None = None,
    cull_idle: int = 120,
) -> tuple[subprocess.Popen, str]:
    """Start Voila on the dashboard; returns (process, URL).  Stop it with :func:`stop`.

    The events come from ``url`` (or ``$LIVELAB_EVENTS_URL``), else ``home``'s store; the
    store is opened once here first, so a missing or unreachable database is reported as a
    one-line error before any server starts.

    Every page view runs the notebook in a kernel of its own, and Voila does not stop it when
    the page closes; kernels with no page connected are culled after ``cull_idle`` idle seconds
    so that a report served for days does not pile them up.
    """
    with EventStore(home, url=url):
        pass
    from lab_hardware.home import resolve

    port = port or free_port()
    if not 0 < port < 65536:
        raise ReportError(f"port {port} is not a TCP port: use 1-65535 or leave it out for a free one")
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ReportError(f"port {port} on 127.0.0.1 is in use: choose another with --port") from None
    child_env = {**os.environ, **(env or {})}
    child_env["LIVELAB_HOME"] = str(resolve(home))
    if url:
        child_env[ENV_URL] = url
    child_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + child_env.get("PATH", "")
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="livelab-report-voila-", suffix=".log")[1])
    fh = open(log_path, "wb")
    argv = [
        sys.executable,
        "-m",
        "voila",
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--Voila.port_retries=0",
        f"--MappingKernelManager.cull_idle_timeout={int(cull_idle)}",
        f"--MappingKernelManager.cull_interval={max(1, min(60, int(cull_idle) // 2))}",
        "--MappingKernelManager.cull_connected=False",
        str(NOTEBOOK),
    ]
    # A session of its own: a Ctrl-C in the terminal reaches the CLI, which stops Voila in order.
    proc = subprocess.Popen(
        argv,
        cwd=str(NOTEBOOK.parent),
        env=child_env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    fh.close()
    proc.log_path = log_path  # type: ignore[attr-defined]
    address = f"http://127.0.0.1:{port}/"
    try:
        # Any answer from a static route means it listens (GET / would start a kernel).
        _wait_http(f"{address}voila/static/", proc, log_path, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc, address


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM Voila (it shuts its kernels down), wait, then reap any kernel it left behind."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    _, alive = psutil.wait_procs(children, timeout=10)
    for p in alive:  # only the kernels this Voila started
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
