"""Kernel launcher: confine a grading kernel, then exec it.

Run as ``python -I -S launcher.py SPEC.json -- KERNEL ARGV...`` (the sandbox puts it in
front of the kernelspec's argv).  Standard library only and run by path, so it costs one
small interpreter start and never imports the grader or the submission's environment.

Why a launcher and not ``preexec_fn``: the grader runs threads (Dask, paho, watchdogs), and
code between fork and exec in a threaded process may deadlock; a separate process that execs
the kernel has no such problem and leaves the kernel's PID equal to what jupyter_client saw.

In order (each step only when the spec asks for it and the machine allows it):

1. join the kernel's cgroups (pids and memory limits cover every descendant);
2. set rlimits (data segment = memory, file size, open files, no core dumps);
3. ``unshare`` a mount, PID and (optionally) network namespace;  with a PID namespace the
   launcher forks: the kernel becomes PID 1 of its namespace, so when it dies every process
   it started dies with it (fork bombs and double-forked daemons included), and it cannot
   see or signal any process outside;  the launcher stays as a tiny waiting parent;
4. in the mount namespace: make every mount private, mount a fresh ``/proc``, mount an empty
   tmpfs over each hidden path (the course's sources and gradebook, the grader's files, other
   kernels' directories, the lab's secrets) and bind the exposed paths back (the kernel's own
   directory);
5. drop every capability from the bounding, effective, permitted and inheritable sets and set
   no_new_privs, so the kernel, although uid 0, cannot undo the mounts, trace other processes
   or regain privileges through exec;
6. write what it achieved to ``status`` (JSON) and exec the kernel.
"""

import ctypes
import ctypes.util
import errno
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
O_PATH = getattr(os, "O_PATH", 0o10000000)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(src, target, fstype, flags, data=None):
    _check(
        _libc.mount(
            src.encode() if src else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _drop_caps():
    cap = 0
    while cap < 64:
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:
                break  # past the last capability this kernel knows
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")
        cap += 1

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    hdr = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)()
    _check(_libc.capset(ctypes.byref(hdr), ctypes.byref(data)), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _setup_mounts(spec, status, have_pidns):
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if have_pidns:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    keep = []
    for item in spec.get("expose", []):
        src, dst = (item, item) if isinstance(item, str) else item
        if os.path.exists(src):
            keep.append((dst, os.open(src, O_PATH), os.path.isdir(src)))
    hidden = []

    def hide(path):
        if not os.path.lexists(path) or os.path.islink(path):
            return
        if os.path.isdir(path):
            size = spec.get("tmpfs_size", {}).get(path, "64k")
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0755")
        else:
            _mount("/dev/null", path, None, MS_BIND)
        hidden.append(path)

    for path in spec.get("hide", []):
        hide(path)
    for path, fd, is_dir in keep:
        if is_dir:
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                open(path, "a").close()
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    # A hidden path inside an exposed one (course content inside a checkout that sits under a
    # hidden /tmp) came back with the bind: hide it again, on top.
    for path in spec.get("hide", []):
        if any(path == k or path.startswith(k.rstrip("/") + "/") for k, _, _ in keep):
            hide(path)
    status["hidden"] = hidden
    status["exposed"] = [p for p, _, _ in keep]


def _write_status(spec, status):
    path = spec.get("status")
    if path:
        with open(path + ".tmp", "w") as fh:
            json.dump(status, fh)
        os.replace(path + ".tmp", path)


def _shim(child, parent):
    """The waiting parent of a PID namespace: mirror the kernel's exit status; if our own
    parent goes away (the grader died), take the kernel and its namespace down with us."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        # jupyter_client signals the whole process group, which the kernel is part of: it
        # gets the signal itself; forwarding would deliver it twice.
        signal.signal(sig, signal.SIG_IGN)
    import time

    while True:
        try:
            pid, st = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            os._exit(1)
        if pid:
            break
        if os.getppid() != parent:
            os.kill(child, signal.SIGKILL)
        time.sleep(0.1)
    os._exit(os.waitstatus_to_exitcode(st) & 0xFF if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))


def confine(spec):
    """Apply the spec to this process; returns the status dict (in the kernel-to-be: with a
    PID namespace, the calling process becomes the waiting shim and never returns)."""
    status = {"pid": os.getpid(), "cgroups": [], "namespaces": [], "caps_dropped": False, "errors": []}
    parent = os.getppid()
    for procs in spec.get("cgroups", []):
        try:
            with open(procs, "w") as fh:
                fh.write(str(os.getpid()))
            status["cgroups"].append(procs)
        except OSError as exc:
            status["errors"].append(f"cgroup {procs}: {exc.strerror}")

    for name, value in spec.get("rlimits", {}).items():
        try:
            lim = getattr(resource, name)
            resource.setrlimit(lim, (value, value))
        except (OSError, ValueError, AttributeError) as exc:
            status["errors"].append(f"{name}: {exc}")

    flags = 0
    wanted = spec.get("namespaces", [])
    for name, flag in (("mount", CLONE_NEWNS), ("pid", CLONE_NEWPID), ("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC)):
        if name in wanted:
            flags |= flag
    have = []
    if flags:
        if _libc.unshare(flags) == 0:
            have = [n for n in ("mount", "pid", "net", "ipc") if n in wanted]
        else:
            status["errors"].append(f"unshare: {os.strerror(ctypes.get_errno())}")
            if spec.get("require_namespaces"):
                raise OSError(errno.EPERM, "cannot create namespaces")
    status["namespaces"] = have

    if "pid" in have:
        child = os.fork()
        if child:
            _shim(child, parent)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # (getppid() is 0 here: the shim lives outside this PID namespace)

    try:
        if "mount" in have:
            _setup_mounts(spec, status, "pid" in have)
        if spec.get("drop_caps", True) and os.geteuid() == 0:
            _drop_caps()
            status["caps_dropped"] = True
    except OSError as exc:
        status["errors"].append(str(exc))
        if spec.get("require_namespaces"):
            raise
    os.chdir(spec.get("cwd") or "/")
    _write_status(spec, status)
    return status


def main(argv):
    sep = argv.index("--")
    with open(argv[1]) as fh:
        spec = json.load(fh)
    cmd = argv[sep + 1 :]
    try:
        confine(spec)
    except OSError as exc:
        print(f"livelab launcher: {exc}", file=sys.stderr)
        os._exit(70)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv)
