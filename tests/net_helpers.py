"""Race-free ports for the HTTP servers the tests start (JupyterLab, Voila).

Picking a "free" port in the test and handing it to the server is a race: between the
probe's ``close()`` and the server's ``bind()`` another process on the machine (another
test run, another lab's broker) can take the port, and the test then talks to *that*
server (``BadStatusLine``).  Here the server binds port 0 itself, so the kernel hands it a
port nobody holds, and the test reads the port back from the server process's own
listening socket.  If the server still fails to come up because of a collision (Jupyter
Server probes port 0 and binds again a moment later), it is started again.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

import psutil


class ServerExited(AssertionError):
    """The server process ended before it listened."""


def listening_port(proc: subprocess.Popen, log: Path, timeout: float) -> int:
    """The TCP port ``proc`` itself listens on, waiting (bounded) until it does."""
    deadline = time.monotonic() + timeout
    ps = psutil.Process(proc.pid)
    while True:
        if proc.poll() is not None:
            raise ServerExited(f"server exited with {proc.returncode} before listening:\n{log.read_text()[-3000:]}")
        try:
            ports = sorted({c.laddr.port for c in ps.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN})
        except psutil.NoSuchProcess:
            ports = []
        if len(ports) == 1:
            return ports[0]
        assert len(ports) < 2, f"server {proc.pid} listens on several ports {ports}: which one is HTTP?"
        if time.monotonic() > deadline:
            raise AssertionError(f"server {proc.pid} did not listen within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def start_on_port_zero(
    start: Callable[[], subprocess.Popen], log: Path, timeout: float, attempts: int = 3
) -> tuple[subprocess.Popen, int]:
    """Start a server told to bind port 0 (``start()`` returns its process); return it and its port.

    A start that exits before listening is retried (its log says why), up to ``attempts``.
    """
    for attempt in range(1, attempts + 1):
        proc = start()
        try:
            return proc, listening_port(proc, log, timeout)
        except ServerExited:
            if attempt == attempts:
                raise
        except BaseException:
            proc.kill()
            proc.wait(10)
            raise
    raise AssertionError("unreachable")
