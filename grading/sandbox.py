"""One confined, fresh kernel per submission.

A :class:`Kernel` is a ``livelab`` kernel started through :mod:`grading.launcher` with:

* its own directory ``<root>/<id>/``: ``work/`` (its cwd: the submission's files only),
  ``ipc/`` (the connection file and the ZeroMQ IPC sockets), ``home/`` (``$HOME``), so no
  TCP port of the kernel is reachable by anything else and nothing of the grader is in reach
  of its cwd or environment (the environment is built from scratch, never inherited);
* a mount namespace that hides the course's sources and gradebook, the grader's state, other
  kernels' directories, ``/tmp`` (replaced by a private tmpfs) and the lab's secrets, and
  binds back only what this submission may use (see :class:`SandboxConfig`);
* a PID namespace (the kernel is PID 1: it cannot see or signal other processes, and every
  process it starts dies with it), optionally a network namespace (tests-only assignments
  get no network at all);
* no capabilities (root without CAP_SYS_ADMIN cannot undo the mounts);
* rlimits and, when writable, a pids + memory cgroup; and a :class:`Watchdog` thread that
  enforces the total timeout and, without cgroups, the process and memory bounds by
  counting the kernel's descendants with psutil.

Every mechanism is feature-detected; what a machine does not allow is reported in the
result's ``isolation`` facts, never silently assumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync

from . import limits as _limits
from .limits import KernelCgroup, Limits

log = logging.getLogger("livelab.grading.sandbox")

LAUNCHER = Path(__file__).with_name("launcher.py")
KERNEL_NAME = "livelab"


@dataclass
class SandboxConfig:
    """How to confine one kernel.

    ``hide``: extra paths the kernel must not see (course dirs, gradebook, grader state).
    ``binds``: ``(source, target)`` pairs made visible at ``target`` inside the kernel's view
    (a learner's view of the lab home is built this way).  ``network``: False puts the
    kernel in a network namespace of its own (no network at all).  ``env``: extra
    environment (lab connection, learner id).
    """

    limits: Limits = field(default_factory=Limits)
    kernel_name: str = KERNEL_NAME
    hide: list[str] = field(default_factory=list)
    binds: list[tuple[str, str]] = field(default_factory=list)
    network: bool = True
    isolate: bool = True
    env: dict[str, str] = field(default_factory=dict)
    fork_server: bool = True
    #: files to create in the kernel's directory before it starts (a path ending in "/" is a
    #: directory); "{kernel}" in bind targets, env values and these files is the kernel's dir
    files: dict[str, bytes] = field(default_factory=dict)

    def key(self) -> str:
        return json.dumps(
            [
                self.limits.as_dict(),
                self.kernel_name,
                sorted(self.hide),
                sorted(map(list, self.binds)),
                self.network,
                self.isolate,
                sorted(self.env.items()),
                self.fork_server,
                sorted((k, v.decode("latin-1")) for k, v in self.files.items()),
            ]
        )


_ROOT_LOCK = threading.Lock()
_ROOT: Path | None = None


_LIVE: "set[Kernel]" = set()
KERNEL_CPU_SECONDS = 0.0  # CPU of every kernel this process closed (accounting)
_CLOSERS: list[threading.Thread] = []


def _memory_bounded() -> bool:
    """Does every kernel get a memory cgroup here (see :class:`grading.limits.KernelCgroup`)?"""
    sup = cgroup_support()
    if sup["mode"] == "v1":
        return "memory" in sup["bases"]
    if sup["mode"] == "v2":
        try:
            return "memory" in (Path(sup["bases"][""]) / "cgroup.controllers").read_text().split()
        except OSError:
            return False
    return False


def _tmpfs(path: str) -> bool:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    return any(
        line.split()[4] == path and line.split(" - ")[1].split()[0] == "tmpfs" for line in lines if " - " in line
    )


def kernel_dirs_base() -> str:
    """Where this process puts kernel directories: /dev/shm when it is a tmpfs and each kernel
    gets a memory cgroup (what a notebook writes there is charged to it), else /tmp.  A
    kernel's directory is made and removed for every submission; on ext4 that cost the machine
    about 9 ms of CPU per kernel more than on tmpfs (alternating A/B, 10 kernels x 12)."""
    if _tmpfs("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) and _memory_bounded():
        return "/dev/shm"
    return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()


def grading_root() -> Path:
    """This process's directory for kernel dirs (short: IPC socket paths are limited to 107 bytes)."""
    global _ROOT
    with _ROOT_LOCK:
        if _ROOT is None or not _ROOT.exists():
            base = kernel_dirs_base()
            _sweep_stale_roots(base)
            _ROOT = Path(tempfile.mkdtemp(prefix=f"llg-{os.getpid()}-", dir=base))
            os.chmod(_ROOT, 0o700)
            import atexit

            atexit.register(_cleanup_at_exit)
            _sweep_stale_cgroups()
        return _ROOT


def close_thread_loop() -> None:
    """Close the asyncio loop jupyter_core's ``run_sync`` made for this (non-main, finishing)
    thread: its selector and self-pipe are three open files per thread otherwise."""
    import asyncio

    if threading.current_thread() is threading.main_thread():
        return
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        return
    if not loop.is_running() and not loop.is_closed():
        loop.close()
    asyncio.set_event_loop(None)


def in_thread(fn, *args) -> None:
    """``fn(*args)``, then close the event loop its ``run_sync`` calls made for this thread."""
    try:
        fn(*args)
    finally:
        close_thread_loop()


def close_later(kernel: "Kernel") -> None:
    """Close a kernel in the background (the next submission need not wait); joined at exit.
    Its CPU is accounted here, at once: the run's totals need not wait for the closer."""
    kernel.account_cpu()
    th = threading.Thread(target=in_thread, args=(kernel.close,), daemon=True, name=f"close-{kernel.id}")
    th.start()
    with _ROOT_LOCK:
        _CLOSERS[:] = [t for t in _CLOSERS if t.is_alive()] + [th]


def _cleanup_at_exit() -> None:
    """Nothing of a grading process outlives it: kernels, cgroups, directories."""
    for th in list(_CLOSERS):
        th.join(10)
    for k in list(_LIVE):
        k.close()
    if _ROOT is not None:
        shutil.rmtree(_ROOT, ignore_errors=True)


def _sweep_stale_roots(base: str) -> None:
    """Remove the kernel directories of graders that are gone (``llg-<pid>-*`` whose process
    no longer runs: a worker killed mid-run), which in /dev/shm would hold memory until a
    reboot.  A directory of a process id now reused by another process stays (that process
    is alive)."""
    for d in Path(base).glob("llg-*-*"):
        pid = d.name.split("-")[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # alive (another user's process): not ours to judge
            pass


def _sweep_stale_cgroups(min_age: float = 120.0) -> None:
    """Remove empty kernel cgroups left by a grader that was killed (older than ``min_age``)."""
    sup = cgroup_support()
    now = time.time()
    for base in sup.get("bases", {}).values():
        for d in Path(base).glob("livelab-*"):
            try:
                if now - d.stat().st_mtime > min_age and not (d / "cgroup.procs").read_text().strip():
                    d.rmdir()
            except OSError:
                pass


@lru_cache(maxsize=1)
def cgroup_support() -> dict:
    return _limits.detect()


@lru_cache(maxsize=4)
def namespace_support(network: bool = False) -> dict:
    """Probe once whether the launcher can create namespaces and drop capabilities here."""
    with tempfile.TemporaryDirectory(prefix="llg-probe-") as tmp:
        spec = {
            "namespaces": ["mount", "pid"] + (["net"] if network else []),
            "hide": [],
            "expose": [],
            "status": f"{tmp}/status.json",
            "cwd": tmp,
            "drop_caps": True,
        }
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-S", str(LAUNCHER), f"{tmp}/spec.json", "--", "/bin/true"],
                capture_output=True,
                timeout=20,
            )
            st = json.loads(Path(tmp, "status.json").read_text())
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return {"namespaces": [], "caps_dropped": False, "errors": [str(exc)]}
        st["returncode"] = proc.returncode
        return st


def _python_for(argv0: str) -> str:
    if os.path.isabs(argv0):
        return argv0
    if argv0.startswith("python"):
        return sys.executable
    return shutil.which(argv0) or argv0


def _under(path: str, parent: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(parent)]) == os.path.abspath(parent)
    except ValueError:
        return False


@lru_cache(maxsize=1)
def _interpreter_paths() -> list[str]:
    """Where the kernel's interpreter, standard library and the project code a notebook imports
    (the SDK ``labs``, the lab formats ``lab_hardware`` and the course tooling ``courses``, e.g.
    ``courses.incidents``) live: they must stay visible even when the checkout sits under a
    hidden path such as /tmp (a CI clone).  The course *content* folders inside ``courses/``
    (sources with hidden tests, releases) stay hidden: they are on every kernel's hide list,
    and the launcher hides them again inside an exposed path."""
    import importlib.util

    # find_spec locates a package without importing it: ``courses`` sits above ``grading``
    # in the layers, so grading names its folder but never imports it.
    pkgs = [importlib.util.find_spec(name) for name in ("labs", "lab_hardware", "courses")]
    paths = {
        sys.prefix,
        sys.base_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        *(os.path.dirname(os.path.realpath(s.origin)) for s in pkgs if s and s.origin),
    }
    return sorted(p for p in paths if p and os.path.isdir(p))


ZYGOTE = Path(__file__).with_name("zygote.py")
GUARD = Path(__file__).with_name("kernel_guard.py")
GUARD_STARTUP = "home/.ipython/profile_default/startup/00-livelab-grader-guard.py"


#: where a kernel forked by the fork server finds the guard compiled ahead (see zygote.py)
GUARD_CODE_ATTR = "_livelab_guard_code"


def guard_digest(src: str) -> str:
    return hashlib.sha256(src.encode()).hexdigest()


@lru_cache(maxsize=1)
def guard_startup() -> bytes:
    """The IPython startup file that installs :mod:`grading.kernel_guard` in a grading kernel
    before any notebook code: in a module of its own, with a private copy of the builtins.

    A kernel forked by the fork server takes the guard's code object the server compiled once
    from the same file (matched by digest; compiling it was 5% of a grading kernel's CPU);
    any other kernel compiles the source embedded here."""
    src = GUARD.read_text()
    return (
        "def _livelab_guard():\n"
        "    import builtins, sys, types\n"
        "    m = types.ModuleType('_livelab_guard')\n"
        "    m.__dict__['__builtins__'] = dict(vars(builtins))\n"
        f"    pre = sys.__dict__.pop({GUARD_CODE_ATTR!r}, None)\n"
        f"    ahead = pre is not None and pre[0] == {guard_digest(src)!r}\n"
        f"    code = pre[1] if ahead else compile({src!r}, '<livelab grader guard>', 'exec')\n"
        "    m.__dict__['COMPILED_AHEAD'] = ahead\n"
        "    exec(code, m.__dict__)\n"
        "    m.__dict__['MODULES_AHEAD'] = pre[2] if ahead and len(pre) > 2 else None\n"
        "    sys.modules['_livelab_guard'] = m\n"
        "    m.install(get_ipython())\n"
        "_livelab_guard()\n"
        "del _livelab_guard\n"
    ).encode()


class _ForkedProcess:
    """A Popen-like handle on a kernel forked by the fork server (not our child: a pidfd
    tells when it exits; the server reaps it)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self._fd = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self._fd is not None:
            import select

            r, _, _ = select.select([self._fd], [], [], 0)
            dead = bool(r)
        else:
            dead = not _alive(self.pid)
        if dead:
            self.returncode = 1
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("kernel", timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ForkServer:
    """This process's kernel fork server (see :mod:`grading.zygote`), started on first use."""

    _lock = threading.Lock()
    _instance: "ForkServer | None" = None

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(ZYGOTE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
            close_fds=True,
        )
        line = self.proc.stdout.readline()
        hello = json.loads(line) if line else {"ready": False, "error": "fork server exited"}
        if not hello.get("ready"):
            self.close()
            raise RuntimeError(hello.get("error", "fork server failed"))
        self.preload_seconds = hello.get("preload_seconds")
        self._io = threading.Lock()
        self._n = 0

    @classmethod
    def get(cls) -> "ForkServer":
        with cls._lock:
            if cls._instance is None or cls._instance.proc.poll() is not None:
                cls._instance = ForkServer()
                import atexit

                atexit.register(cls._instance.close)
            return cls._instance

    def spawn(self, spec: dict, env: dict, args: list[str], log: str) -> int:
        with self._io:
            self._n += 1
            req = {"id": self._n, "spec": spec, "env": env, "args": args, "log": log}
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the kernel fork server died")
        return int(json.loads(line)["pid"])

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fork_server_usable(argv: list[str]) -> bool:
    """The fork server runs ipykernel in this interpreter: only for such kernelspecs."""
    return (
        len(argv) >= 3
        and argv[1:3] == ["-m", "ipykernel_launcher"]
        and os.path.realpath(_python_for(argv[0])) == os.path.realpath(sys.executable)
    )


def _provisioner_class():
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    class ForkServerProvisioner(LocalProvisioner):
        """Launches the kernel through the fork server instead of a new interpreter."""

        launch_spec: dict = {}
        log_path: str = os.devnull

        async def launch_kernel(self, cmd, **kwargs):
            args = cmd[cmd.index("-f") :] if "-f" in cmd else cmd[3:]
            env = dict(kwargs.get("env") or {})
            pid = ForkServer.get().spawn(self.launch_spec, env, list(args), self.log_path)
            self.process = _ForkedProcess(pid)
            self.pid = pid
            self.pgid = pid
            self.cwd = kwargs.get("cwd")
            return self.connection_info

    return ForkServerProvisioner


from jupyter_client.asynchronous import AsyncKernelClient  # noqa: E402


class FastReadyClient(AsyncKernelClient):
    """A kernel client with the grader's two channels, ready without a fixed wait.

    ``start_channels`` opens the shell and IOPub channels unless asked for more: nbclient and
    the grader send every request on shell and read every output on IOPub; the kernel
    manager interrupts and stops a kernel with signals and its own control socket, and asks
    the process, not the heartbeat, whether the kernel lives.  The heartbeat channel was a thread with its
    own event loop per kernel, and each channel a socket to open and close.

    ``wait_for_ready``: jupyter_client sends ``kernel_info`` and, after the reply, waits up to
    0.2 s for an IOPub message to prove IOPub is connected; the first request's IOPub
    messages usually go out before the subscription is in place, so every start pays the
    full 0.2 s.  Here the proof is the first IOPub message: the kernel's welcome to the
    subscription (ipykernel 7 sends one) or a status of the request; the request is
    repeated only while none comes (an older kernel, a lost subscription).
    """

    #: the kernel's answer to ``kernel_info`` when it became ready (what it runs: language_info)
    ready_reply: dict | None = None

    def start_channels(self, shell=True, iopub=True, stdin=False, hb=False, control=False):
        super().start_channels(shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control)

    async def wait_for_ready(self, timeout=None):
        from queue import Empty

        deadline = time.monotonic() + (timeout if timeout is not None else 60.0)
        reply = None
        while True:
            self.kernel_info()
            if reply is None:
                try:
                    msg = await self.shell_channel.get_msg(timeout=0.5)
                    if msg["msg_type"] == "kernel_info_reply":
                        reply = msg
                except Empty:
                    pass
            if reply is not None:
                try:
                    await self.iopub_channel.get_msg(timeout=0.2)
                    self._handle_kernel_info_reply(reply)
                    self.ready_reply = reply
                    break
                except Empty:
                    pass
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout} seconds")
        while True:  # flush IOPub, as jupyter_client does
            try:
                await self.iopub_channel.get_msg(timeout=0.01)
            except Empty:
                break


class SandboxKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose kernel command goes through the launcher."""

    launcher_prefix: list[str] = []

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        cmd = [_python_for(cmd[0]), *cmd[1:]]
        return [*self.launcher_prefix, "--", *cmd] if self.launcher_prefix else cmd


def _base_env(kdir: Path, extra: dict[str, str]) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    home = kdir / "home"
    env = {
        "PATH": os.pathsep.join([venv_bin, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(home),
        "USER": "learner",
        "LOGNAME": "learner",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": str(kdir / "tmp"),
        "IPYTHONDIR": str(home / ".ipython"),
        "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),
        "JUPYTER_RUNTIME_DIR": str(kdir / "ipc"),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local" / "share" / "jupyter"),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "LIVELAB_GRADING": "1",
    }
    env.update(extra)
    return env


def default_hidden() -> list[str]:
    """Paths hidden from every grading kernel: shared temp space, the invoking user's home
    (Jupyter runtime dirs hold other kernels' connection keys) and shared memory."""
    out = ["/tmp", "/var/tmp", "/dev/shm", str(Path.home())]
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        out.append(jupyter_runtime_dir())
    except Exception:  # noqa: BLE001
        pass
    return out


class Watchdog(threading.Thread):
    """Enforces the total timeout (and process/memory bounds without cgroups) on one kernel.

    It kills the kernel's whole process group, its cgroup and every descendant it has seen,
    so a kernel that ignores SIGINT, a dead kernel that hangs the client and a fork bomb
    all end.  The reason is kept for the submission's message.
    """

    def __init__(self, kernel: "Kernel", interval: float = 0.05):
        super().__init__(daemon=True, name=f"watchdog-{kernel.id}")
        self.kernel = kernel
        self.interval = interval
        self.deadline: float | None = None
        self.stopped = threading.Event()
        self.reason: str | None = None
        self.seen: set[int] = set()
        self.peak_processes = 0
        self.peak_rss_mb = 0.0

    def arm(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def run(self) -> None:
        import psutil

        k = self.kernel
        lim = k.config.limits
        root_pid = k.pid
        while not self.stopped.wait(self.interval):
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.trip(f"total-timeout: the notebook ran longer than {lim.total_timeout:g} s")
                return
            if root_pid is None:
                root_pid = k.pid
                continue
            cg = k.cgroup
            if cg and cg.active:
                # the cgroup lists the kernel's processes; walking the process tree instead reads
                # every process of the machine (/proc/*/stat) twenty times a second per kernel
                pids = cg.pids()
            else:
                try:
                    root = psutil.Process(root_pid)
                    pids = [root.pid] + [p.pid for p in root.children(recursive=True)]
                except psutil.Error:
                    continue
            self.seen.update(pids)
            n = len(pids)
            self.peak_processes = max(self.peak_processes, n)
            # Over the process bound, the run stops (with a cgroup the extra forks were refused,
            # but lingering children leave the kernel no room for its own threads, so what
            # follows would be graded by chance).  Memory needs no watchdog: RLIMIT_DATA bounds
            # each process, the process bound bounds how many there are, and a memory cgroup,
            # when there is one, bounds the sum.
            if cg and cg.active:
                if "processes" in cg.hit_limits():
                    self.trip(f"processes: the notebook tried to run more than {lim.max_processes} processes")
                    return
            elif n > lim.max_processes + 2:  # + launcher shim and kernel
                self.trip(f"processes: the notebook tried to run more than {lim.max_processes} processes")
                return

    def trip(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            log.warning("kernel %s killed: %s", self.kernel.id, reason)
        self.kernel.kill()

    def stop(self) -> None:
        self.stopped.set()


class Kernel:
    """A started, sandboxed kernel that belongs to exactly one submission."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.id = uuid.uuid4().hex[:10]
        self._accounted = False  # its CPU added to KERNEL_CPU_SECONDS
        self.dir = grading_root() / self.id
        self.work = self.dir / "work"
        for sub in ("work", "ipc", "home", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        guard = self.dir / GUARD_STARTUP  # runs before any notebook code (see kernel_guard)
        guard.parent.mkdir(parents=True, exist_ok=True)
        guard.write_bytes(guard_startup())
        for rel, data in config.files.items():
            target = self.dir / rel
            if rel.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data.replace(b"{kernel}", str(self.dir).encode()))
        self.mounts = bool(config.isolate) and "mount" in namespace_support(False).get("namespaces", [])
        if not self.mounts:  # no mount namespace here: the learner's view is made of symlinks
            for src, dst in config.binds:
                t = Path(self.sub(dst))
                t.parent.mkdir(parents=True, exist_ok=True)
                if not t.exists():
                    t.symlink_to(src)
        self.cgroup: KernelCgroup | None = None
        self.km: SandboxKernelManager | None = None
        self.watchdog: Watchdog | None = None
        self.started = 0.0
        self._killed = False
        self.isolation: dict = {}

    def sub(self, text: str) -> str:
        return text.replace("{kernel}", str(self.dir))

    # ---- start ------------------------------------------------------------------------
    def _spec(self) -> dict:
        cfg = self.config
        lim = cfg.limits
        ns: list[str] = []
        if cfg.isolate:
            ns = ["mount", "pid", "ipc"] + ([] if cfg.network else ["net"])
        hide = default_hidden() + [str(grading_root())] + list(cfg.hide)
        expose = [[str(self.dir), str(self.dir)]] + (
            [[str(s), self.sub(str(t))] for s, t in cfg.binds] if self.mounts else []
        )
        for p in _interpreter_paths():  # e.g. a pyenv Python under a hidden $HOME
            if any(_under(p, h) for h in hide):
                expose.append([p, p])
        return {
            "namespaces": ns,
            "hide": hide,
            "expose": expose,
            "cwd": str(self.work),
            "tmpfs_size": {"/tmp": f"{lim.tmp_mb}m"},
            "rlimits": lim.rlimits(),
            "cgroups": self.cgroup.procs_files if self.cgroup else [],
            "status": str(self.dir / "ipc" / "launch-status.json"),
            "drop_caps": cfg.isolate,
        }

    def start(self) -> "Kernel":
        cfg = self.config
        if cfg.isolate:
            # LIVELAB_GRADING_TAG (inherited by Dask workers) lets a caller tell its own kernels'
            # cgroups from those of other graders on the machine
            tag = "".join(c for c in os.environ.get("LIVELAB_GRADING_TAG", "") if c.isalnum())[:16]
            self.cgroup = KernelCgroup(f"livelab-{tag + '-' if tag else ''}{self.id}", cfg.limits, cgroup_support())
        spec = self._spec()
        # launcher bind-mounts by (source, target); pass them as such
        spec_path = self.dir / "ipc" / "launch.json"
        spec_path.write_text(json.dumps(spec))
        km = SandboxKernelManager(kernel_name=cfg.kernel_name, transport="ipc", ip=str(self.dir / "ipc" / "k"))
        km.connection_file = str(self.dir / "ipc" / "kernel.json")
        km.client_class = "grading.sandbox.FastReadyClient"
        env = _base_env(
            self.dir,
            {"LIVELAB_OUTPUT_BYTES": str(cfg.limits.output_bytes), **{k: self.sub(v) for k, v in cfg.env.items()}},
        )
        self.via = "exec"
        if cfg.fork_server and fork_server_usable(list(km.kernel_spec.argv)):
            km.kernel_id = str(uuid.uuid4())
            prov = _provisioner_class()(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
            prov.launch_spec = spec
            prov.log_path = str(self.dir / "ipc" / "kernel.log")
            km.provisioner = prov
            self.via = "fork-server"
        else:
            km.launcher_prefix = [sys.executable, "-I", "-S", str(LAUNCHER), str(spec_path)]
        self.started = time.monotonic()
        _LIVE.add(self)
        try:
            # no input-history database (and its writer thread) in a one-shot grading kernel
            run_sync(km.start_kernel)(env=env, cwd=str(self.work), extra_arguments=["--HistoryManager.enabled=False"])
        except BaseException:
            self.km = km
            self.close()
            raise
        self.km = km
        self.watchdog = Watchdog(self)
        self.watchdog.start()
        return self

    @property
    def pid(self) -> int | None:
        prov = getattr(self.km, "provisioner", None) if self.km else None
        proc = getattr(prov, "process", None)
        return proc.pid if proc is not None else None

    def launch_status(self) -> dict:
        try:
            return json.loads((self.dir / "ipc" / "launch-status.json").read_text())
        except (OSError, ValueError):
            return {}

    def facts(self) -> dict:
        """What confinement this kernel actually got (for the result and the report)."""
        st = self.launch_status()
        cg = self.cgroup
        return {
            "namespaces": st.get("namespaces", []),
            "caps_dropped": st.get("caps_dropped", False),
            "hidden": len(st.get("hidden", [])),
            "cgroup": cg.mode if cg and cg.active else None,
            "cgroup_errors": (cg.errors if cg else []),
            "launch_errors": st.get("errors", []),
            "transport": "ipc",
            "network": self.config.network,
            "started_by": self.via,
            "peak_processes": self.watchdog.peak_processes if self.watchdog else None,
        }

    # ---- run --------------------------------------------------------------------------
    def arm(self, seconds: float) -> None:
        if self.watchdog:
            self.watchdog.arm(seconds)

    def limit_hits(self) -> list[str]:
        hits = self.cgroup.hit_limits() if self.cgroup else []
        if self.watchdog and self.watchdog.reason:
            hits.append(self.watchdog.reason.split(":", 1)[0])
        return sorted(set(hits))

    def kill(self) -> None:
        """Kill everything of this kernel now (safe to call repeatedly and from any thread)."""
        self._killed = True
        pid = self.pid
        if pid:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.cgroup:
            self.cgroup.kill()
        if self.watchdog:
            for p in list(self.watchdog.seen):
                if p != os.getpid():
                    try:
                        os.kill(p, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass

    def alive(self) -> bool:
        return bool(self.km) and bool(run_sync(self.km.is_alive)())

    def cpu_seconds(self) -> float:
        """CPU used by the kernel's process tree so far (for the benchmark's accounting)."""
        import psutil

        total = 0.0
        try:
            if self.cgroup and self.cgroup.active:
                pids = self.cgroup.pids()
            else:
                root = psutil.Process(self.pid)
                pids = [root.pid] + [p.pid for p in root.children(recursive=True)]
            for pid in pids:
                try:
                    t = psutil.Process(pid).cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except (psutil.Error, TypeError, ValueError):
            pass
        return total

    def account_cpu(self) -> None:
        """Add the kernel's CPU so far to ``KERNEL_CPU_SECONDS`` (once; for the benchmark)."""
        global KERNEL_CPU_SECONDS
        if self.pid and not self._accounted:
            self._accounted = True
            KERNEL_CPU_SECONDS += self.cpu_seconds()

    def close(self) -> None:
        """Stop the kernel and remove everything it had (its directory and cgroup)."""
        if self.watchdog:
            self.watchdog.stop()
        self.account_cpu()
        if self.km is not None:
            try:
                run_sync(self.km.shutdown_kernel)(now=True)
            except Exception:  # noqa: BLE001 - already dead, or killed by the watchdog
                pass
            try:
                run_sync(self.km.cleanup_resources)()
            except Exception:  # noqa: BLE001
                pass
        self.kill()
        pid = self.pid
        if pid:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if self.cgroup:
            self.cgroup.remove()
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)


class KernelPool:
    """Keeps the next kernel starting while the current submission runs.

    One fresh kernel per submission, never reused: ``take`` hands out a kernel started ahead
    of time (if its configuration matches) and immediately starts the next one, so kernel
    start-up overlaps execution instead of adding to it.
    """

    def __init__(self, size: int = 1):
        self.size = size
        self._ready: list[Kernel] = []
        self._lock = threading.Lock()

    def take(self, config: SandboxConfig, *, prestart: bool = True) -> Kernel:
        key = config.key()
        with self._lock:
            stale = self._evict(key)
            k = self._ready.pop(0) if self._ready else None
        for x in stale:
            close_later(x)
        if k is None:
            k = Kernel(config).start()
        if prestart:
            self.prestart(config)
        return k

    def prestart(self, config: SandboxConfig) -> None:
        """Have ``size`` kernels of ``config`` starting; kernels started ahead for another
        configuration (the previous run's hide list) give way, so that a run's first
        submission finds its kernel already booting."""
        with self._lock:
            stale = self._evict(config.key())
            while len(self._ready) < self.size:
                self._ready.append(Kernel(config).start())
        for x in stale:
            close_later(x)  # in the background: this may be a Dask worker's event loop

    def _evict(self, key: str) -> list["Kernel"]:
        """Take out (under the lock) the kernels that cannot serve ``key``: another
        configuration, or dead since they were started."""
        stale = [x for x in self._ready if x.config.key() != key or not x.alive()]
        for x in stale:
            self._ready.remove(x)
        return stale

    def close(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for k in ready:
            k.close()
