"""Resource limits for a grading kernel, and the cgroups that enforce them when possible.

Why cgroups first: graders run as root on these machines, and ``RLIMIT_NPROC`` does not apply
to root, so a fork bomb is only stopped by a ``pids`` cgroup (or, without one, by the
watchdog in :mod:`grading.sandbox`, which counts the kernel's descendants and kills the group).
A ``memory`` cgroup catches what ``RLIMIT_DATA`` misses (memory mapped by native libraries).
Both cgroup v1 (one hierarchy per controller, as on this machine) and a delegated cgroup v2
subtree are supported; whatever is not writable is reported, never assumed.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Limits:
    """What one submission may use.  Times in seconds, sizes in MB or bytes as named."""

    cell_timeout: float = 30.0  # per cell (papermill/nbclient); interrupted, then the next cell runs
    total_timeout: float = 300.0  # whole run; the watchdog kills the kernel's process group
    startup_timeout: float = 60.0  # kernel start
    memory_mb: int = 1024  # RLIMIT_DATA, and the memory cgroup (+ slack)
    max_processes: int = 64  # pids cgroup, else the watchdog's bound on descendants
    output_bytes: int = 1_000_000  # all outputs of the notebook together; a flood is cut off
    file_size_mb: int = 64  # RLIMIT_FSIZE: no single file larger (disk floods)
    open_files: int = 1024  # RLIMIT_NOFILE
    tmp_mb: int = 64  # the kernel's private /tmp (tmpfs)

    def with_(self, **kw) -> "Limits":
        return replace(self, **kw)

    def as_dict(self) -> dict:
        return asdict(self)

    def rlimits(self) -> dict[str, int]:
        mb = 1024 * 1024
        return {
            "RLIMIT_DATA": self.memory_mb * mb,
            "RLIMIT_FSIZE": self.file_size_mb * mb,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_CORE": 0,
            # counts per uid and is ignored for root, but bounds a non-root grader
            "RLIMIT_NPROC": max(self.max_processes * 4, 256),
        }


def _own_cgroup_paths() -> dict[str, str]:
    """controller -> this process's cgroup path ('' key for cgroup v2)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(","):
                out[c] = path
    except OSError:
        pass
    return out


def _writable_dir(p: Path) -> bool:
    return p.is_dir() and os.access(p, os.W_OK)


def detect() -> dict:
    """Which cgroup mechanism this process can use: ``{"mode": "v1"|"v2"|None, ...}``."""
    own = _own_cgroup_paths()
    v1 = {}
    for ctrl in ("pids", "memory"):
        if ctrl in own:
            base = CGROUP_ROOT / ctrl / own[ctrl].lstrip("/")
            if _writable_dir(base) and (base / "cgroup.procs").exists():
                v1[ctrl] = base
    if "pids" in v1:
        return {"mode": "v1", "bases": {k: str(v) for k, v in v1.items()}}
    if "" in own:
        for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
            base = root / own[""].lstrip("/")
            if (base / "cgroup.subtree_control").exists() and _writable_dir(base):
                ctrls = (
                    (base / "cgroup.controllers").read_text().split() if (base / "cgroup.controllers").exists() else []
                )
                if "pids" in ctrls:
                    return {"mode": "v2", "bases": {"": str(base)}}
    return {"mode": None, "bases": {}}


class KernelCgroup:
    """The cgroup(s) of one kernel: created before launch, joined by the launcher, removed after."""

    def __init__(self, name: str, limits: Limits, support: dict):
        self.mode = support["mode"]
        self.dirs: list[Path] = []
        self.errors: list[str] = []
        if self.mode == "v1":
            for ctrl, base in support["bases"].items():
                d = Path(base) / name
                try:
                    d.mkdir()
                    if ctrl == "pids":
                        (d / "pids.max").write_text(str(limits.max_processes))
                    elif ctrl == "memory":
                        (d / "memory.limit_in_bytes").write_text(str((limits.memory_mb + 256) * 1024 * 1024))
                    self.dirs.append(d)
                except OSError as exc:
                    self.errors.append(f"{ctrl}: {exc.strerror}")
        elif self.mode == "v2":
            base = Path(support["bases"][""])
            d = base / name
            try:
                d.mkdir()
                if not (d / "pids.max").exists():
                    (base / "cgroup.subtree_control").write_text("+pids +memory")
                (d / "pids.max").write_text(str(limits.max_processes))
                if (d / "memory.max").exists():
                    (d / "memory.max").write_text(str((limits.memory_mb + 256) * 1024 * 1024))
                self.dirs.append(d)
            except OSError as exc:
                self.errors.append(f"v2: {exc.strerror}")
        self.active = bool(self.dirs) and any((d / "pids.max").exists() for d in self.dirs)

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(out)

    def pids_current(self) -> int | None:
        for d in self.dirs:
            f = d / "pids.current"
            if f.exists():
                try:
                    return int(f.read_text())
                except (OSError, ValueError):
                    return None
        return None

    def hit_limits(self) -> list[str]:
        """Limits the kernel ran into (fork refused, memory OOM-killed)."""
        hits = []
        for d in self.dirs:
            try:
                if (d / "pids.events").exists():
                    ev = dict(l.split() for l in (d / "pids.events").read_text().splitlines() if l.strip())
                    if int(ev.get("max", 0)):
                        hits.append("processes")
                if (d / "memory.failcnt").exists() and int((d / "memory.failcnt").read_text()):
                    hits.append("memory")
                if (d / "memory.events").exists():
                    ev = dict(l.split() for l in (d / "memory.events").read_text().splitlines() if l.strip())
                    if int(ev.get("oom_kill", 0)):
                        hits.append("memory")
            except (OSError, ValueError):
                pass
        return sorted(set(hits))

    def kill(self, timeout: float = 3.0) -> int:
        """SIGKILL every process in the cgroup until it is empty; returns how many were killed."""
        killed = 0
        for d in self.dirs:
            if (d / "cgroup.kill").exists():
                try:
                    (d / "cgroup.kill").write_text("1")
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        return killed

    def remove(self) -> None:
        self.kill()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.dirs = []
