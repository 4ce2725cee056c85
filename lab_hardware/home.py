"""The lab's state directory and the files other tools rely on.

``$LIVELAB_HOME`` (default ``~/.livelab``) or ``--home DIR``.  ``lab.json`` is
the learner descriptor (readable by notebooks); ``secrets/`` (mode 0700, files
0600) holds the control-plane and device credentials, which a learner's
notebook must not be able to read.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

DESCRIPTOR = "lab.json"
#: The key lab-side writers (the grader) sign the events that count with (``secrets/``).
EVENTS_KEY = "events.key"


def resolve(home: str | os.PathLike | None = None) -> Path:
    """``--home``, else ``$LIVELAB_HOME``, else the kernelspec's ``$LIVELAB_DEFAULT_HOME``
    (a fallback, so a kernel started by a test or grader with its own home keeps it),
    else ``~/.livelab``."""
    if home is not None:
        return Path(home).expanduser().resolve()
    env = os.environ.get("LIVELAB_HOME") or os.environ.get("LIVELAB_DEFAULT_HOME")
    return Path(env).expanduser().resolve() if env else Path.home() / ".livelab"


def write_json(path: Path, data: Any, *, mode: int = 0o644) -> None:
    """Atomic write (temp file + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def secrets_dir(home: Path) -> Path:
    d = home / "secrets"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def device_dir(home: Path, ns: str, device: str) -> Path:
    return home / "devices" / ns / device


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def die_with_parent() -> None:
    """``preexec_fn`` for supervised children: SIGTERM them if the supervisor dies,
    even by ``kill -9``, so a lab never leaves orphans behind (Linux prctl)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def events_key(home: str | os.PathLike, *, create: bool = True) -> bytes | None:
    """The lab's events key (``secrets/events.key``), created on first use by a lab process."""
    p = Path(home) / "secrets" / EVENTS_KEY
    try:
        return bytes.fromhex(p.read_text().strip())
    except (OSError, ValueError):
        if not create:
            return None
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = p.with_name(f".{EVENTS_KEY}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, p)  # first writer wins; a concurrent one reads the winner's key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(p.read_text().strip())
