"""Kernel fork server: start each grading kernel by forking a process that already imported
ipykernel, instead of starting a new interpreter.

Why: starting a kernel costs about 0.25 s of CPU, almost all of it importing ipykernel and
IPython, and on a 2-core grader that CPU, not the wall time, bounds throughput.  This server
imports them once (no thread is running then: it checks) and forks one child per kernel.  A
child is a *fresh* process in which no submission ever ran: it clears the environment and
installs the submission's, reseeds ``random``, confines itself exactly as the launcher does
(:func:`launcher.confine`: cgroups, rlimits, namespaces, mounts, no capabilities), and only
then starts the kernel.  One kernel per submission, never reused.

Run as ``python -I zygote.py`` by :class:`grading.sandbox.ForkServer`; requests and replies
are JSON lines on stdin/stdout.  When the grader goes away (stdin closes) the server exits
and every kernel it forked dies with it (parent-death signals down the chain).
"""

import atexit
import json
import os
import random
import select
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
#: Imported by every kernel during start-up (the debugger support) or at its first error
#: (traceback formatting); importing them once here saves each kernel about 70 ms of CPU.
PRELOAD = (
    "ipykernel.debugger",
    "IPython.core.debugger",
    "IPython.core.ultratb",
    "stack_data",
    "executing",
    "pure_eval",
    "asttokens",
    "pygments.lexers.python",
    "pygments.formatters.terminal256",
    "pydoc",
    "email.parser",
    "mimetypes",
    "gzip",
    "xml.dom.minidom",
    "http.client",
    "fractions",
    # what the rest of a kernel's start imports (found by comparing a started kernel's
    # sys.modules with this server's): the shell's inspector and completer, store magic ...
    "IPython.core.oinspect",
    "IPython.core.completerlib",
    "IPython.core.logger",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "tornado.platform.asyncio",
    "ctypes.util",
    "faulthandler",
    "resource",
)


def _guard_code():
    """The grader's kernel guard (kernel_guard.py beside this file) compiled once, with the
    digest of its source: each kernel's startup file takes it instead of compiling the source
    itself when the digests match (grading.sandbox.guard_startup)."""
    import hashlib

    try:
        with open(os.path.join(HERE, "kernel_guard.py"), encoding="utf-8") as f:
            src = f.read()
        return hashlib.sha256(src.encode()).hexdigest(), compile(src, "<livelab grader guard>", "exec")
    except (OSError, SyntaxError, ValueError):
        return None  # each kernel compiles the guard from its startup file


def _modules_ahead(code):
    """The guard's record of every module loaded here (``kernel_guard.modules_ahead``): each
    forked kernel starts from it instead of copying every module's namespace itself."""
    import builtins

    ns = {"__name__": "_livelab_guard_ahead", "__builtins__": dict(vars(builtins))}
    try:
        exec(code, ns)
        return ns["modules_ahead"]()
    except Exception:  # noqa: BLE001 - each kernel records the modules itself
        return None


def _warm_regex_caches():
    """Compile here, once, the regular expressions every kernel compiled at its start or its
    first cell: tokenize's token pattern (IPython tokenizes every cell; 1.3-2.0 ms in a fresh
    process) and the shell's completer patterns (0.2-0.4 ms), about 2-3 % of a grading
    kernel's CPU.  Forked kernels find them in ``re``'s and tokenize's caches."""
    import io
    import re
    import tokenize

    try:
        list(tokenize.generate_tokens(io.StringIO("x = f'{1}'  # warm\n").readline))
        from IPython.core.completer import CompletionSplitter

        CompletionSplitter()  # its delimiter pattern
        re.compile(r"^[\w|\s.]+\(([^)]*)\).*")  # IPCompleter's docstring patterns
        re.compile(r"[\s|\[]*(\w+)(?:\s*=\s*.*)")
    except Exception:  # noqa: BLE001 - an optimisation: each kernel compiles what it needs
        pass


def _warm_traceback_themes():
    """Build, once here, the pygments style and terminal formatter of IPython's built-in colour
    themes.  A theme builds them the first time it colours anything, and in a forked kernel
    that was its first traceback (a failing test): about 4 ms of a fresh kernel's CPU for
    each failing submission (measured: 18.3 -> 15.1 ms for a definition and a failing test).
    The kernel's tracebacks are the same text and colours; the theme objects are only made
    earlier, in the process the kernels are forked from."""
    try:
        from IPython.utils import PyColorize

        for name in PyColorize._BUILTIN_THEMES:  # the names IPython ships (no user files read)
            PyColorize.theme_table[name].format([])
    except Exception:  # noqa: BLE001 - an optimisation: each kernel builds what it colours with
        pass


def _quick_empty_flush():
    """A kernel's ``sys.stdout.flush()`` / ``sys.stderr.flush()`` with nothing written since
    the last one returns at once.  ipykernel flushes both streams before every reply and after
    every request, and each flush hands two callbacks to its IO thread and waits for them,
    written or not: about 1.6 ms of a grading kernel's CPU per cell (measured: 5.6 ms -> 4.1
    ms per request).  Anything written (by the kernel, a thread of it or a forked child) is
    flushed exactly as before; what goes through the IO thread keeps its order."""
    try:
        from ipykernel.iostream import OutStream
    except Exception:  # noqa: BLE001 - an optimisation: the kernel flushes as it always did
        return
    flush = OutStream.flush
    if getattr(flush, "_livelab_quick", False):
        return

    def quick_flush(self):
        try:
            idle = self.echo is None and not (self._flush_pending or self._subprocess_flush_pending or self._buffers)
        except AttributeError:  # another ipykernel's stream: flush as it does
            idle = False
        if not idle:
            return flush(self)
        return None

    quick_flush._livelab_quick = True
    quick_flush.__doc__ = flush.__doc__
    OutStream.flush = quick_flush


def _one_shell():
    """Grading kernels without kernel subshells: ipykernel 7 gives every kernel a shell-channel
    thread that receives each shell request and hands it to the main thread (and the reply
    back) so that a client may open subshells that run code concurrently.  A grading kernel
    has one client, nbclient, which runs one cell at a time and never opens a subshell; with
    no such thread (the configuration ipykernel keeps for it: the main thread reads the shell
    socket) a forked kernel runs one thread fewer and each request crosses no thread.  Per
    kernel, CPU of its threads (schedstat, median of 12 kernels, three runs alternating):
    49.8-59.8 ms -> 46.2-53.0 ms.  Kernels started otherwise (the learner's own) keep them."""
    try:
        from ipykernel import kernelapp
    except Exception:  # noqa: BLE001 - an optimisation: kernels keep ipykernel's default
        return
    if not hasattr(kernelapp, "ShellChannelThread") or getattr(kernelapp.ShellChannelThread, "_livelab_none", False):
        return

    def no_shell_channel_thread(*args, **kwargs):
        return None  # IPKernelApp.init_control: ``self.shell_channel_thread = ShellChannelThread(...)``

    no_shell_channel_thread._livelab_none = True
    kernelapp.ShellChannelThread = no_shell_channel_thread


#: stands for the connection file's path in a command line parsed ahead (never a real path)
_PATH_SLOT = "/livelab-connection-file-slot/kernel.json"
#: command-line shape -> (configuration, extra args) or False (parsed by each kernel itself)
_ARGV_AHEAD: dict = {}
_ARGV_AHEAD_KEEP = 16


def _argv_ahead(args):
    """A kernel's command line (``-f <connection file> [options]``) parsed once per shape.

    traitlets reads a command line by building an argparse parser of every option of every
    configurable class the kernel app knows: 3.8-4.0 ms of a forked kernel's 19-20 ms of
    ``IPKernelApp.initialize`` (CPU, each step timed); taken from here, the whole step is
    17.3-18.7 ms (part of what parsing did, such as setting up logging, moves on).  Here, in
    the server, the line is parsed with the connection file's path replaced by a slot; each
    kernel then takes that configuration with its own path (:func:`_apply_argv_ahead`).  Any
    other shape (help, a subcommand, no ``-f``) returns None: the kernel parses it itself."""
    args = list(args)
    if len(args) < 2 or args[0] != "-f" or args[1] == _PATH_SLOT:
        return None
    if any(a in ("-h", "--help", "--help-all", "--version", "-V", "--", "help") for a in args):
        return None
    shape = tuple([args[0], _PATH_SLOT, *args[2:]])
    got = _ARGV_AHEAD.get(shape)
    if got is None:
        got = False
        try:
            from ipykernel.kernelapp import IPKernelApp

            app = IPKernelApp()  # a throwaway: not the kernel's singleton
            app.parse_command_line(list(shape))
            if _slot_in(app.cli_config) and _PATH_SLOT not in app.extra_args:
                got = (app.cli_config, list(app.extra_args))
        except (Exception, SystemExit):  # noqa: BLE001 - the kernel parses (and reports) it itself
            got = False
        if len(_ARGV_AHEAD) >= _ARGV_AHEAD_KEEP:
            _ARGV_AHEAD.clear()
        _ARGV_AHEAD[shape] = got
    return got or None


def _slot_in(cfg) -> bool:
    return any(_slot_in(v) if isinstance(v, dict) else (isinstance(v, str) and v == _PATH_SLOT) for v in cfg.values())


def _with_path(cfg, path):
    """A deep copy of ``cfg`` with the slot replaced by ``path`` (keeping each value's type)."""
    import copy

    out = copy.deepcopy(cfg)

    def put(d):
        for k, v in list(d.items()):
            if isinstance(v, dict):
                put(v)
            elif isinstance(v, str) and v == _PATH_SLOT:
                d[k] = type(v)(path)

    put(out)
    return out


def _apply_argv_ahead(app, args, ahead) -> None:
    """What ``Application.parse_command_line(args)`` does, from the configuration parsed ahead."""
    cfg, extra = ahead
    app.argv = list(args)
    app.cli_config = _with_path(cfg, args[1])
    app.update_config(app.cli_config)
    app.extra_args = list(extra)
    app._livelab_argv_ahead = True


def _use_argv_ahead(args, ahead) -> None:
    """In a forked kernel: its app reads ``args`` from ``ahead`` instead of parsing them."""
    from ipykernel.kernelapp import IPKernelApp

    parse = IPKernelApp.parse_command_line

    def parse_command_line(self, argv=None):
        if argv is not None and list(argv) == list(args):
            return _apply_argv_ahead(self, args, ahead)
        return parse(self, argv)

    IPKernelApp.parse_command_line = parse_command_line  # type: ignore[method-assign]


def _child(req, launcher, guard=None, argv_ahead=None):
    code = 0
    try:
        os.setsid()  # own process group: jupyter_client signals the group
        launcher._libc.prctl(launcher.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        log = os.open(req.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 4096)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(req["env"])
        random.seed()
        launcher.confine(req["spec"])  # with a PID namespace this process becomes the shim
        sys.argv = ["ipykernel_launcher", *req["args"]]
        if guard is not None:
            sys._livelab_guard_code = guard  # popped by the kernel's guard startup file
        if argv_ahead is not None:
            _use_argv_ahead(req["args"], argv_ahead)
        from ipykernel import kernelapp

        kernelapp.launch_new_instance(argv=req["args"])
        atexit._run_exitfuncs()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # noqa: BLE001 - the log is all the grader gets
        traceback.print_exc()
        code = 70
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _load_launcher():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_livelab_launcher", os.path.join(HERE, "launcher.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    launcher = _load_launcher()
    t0 = time.perf_counter()
    from ipykernel import kernelapp  # noqa: F401 - the point of this process
    import ipykernel.ipkernel  # noqa: F401
    import ipykernel.zmqshell  # noqa: F401
    import IPython.core.interactiveshell  # noqa: F401
    import importlib

    for name in PRELOAD:  # what every kernel imports at start or at its first traceback
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional: the kernel imports it itself if it can
            pass
    guard = _guard_code()
    import inspect

    # fill inspect's file -> module caches for everything loaded so far: a kernel's first
    # traceback (a failing test) otherwise resolves the real path of every loaded module's file
    # (about 7% of a grading kernel's CPU, measured with py-spy)
    inspect.getmodule(compile("", "<livelab-zygote>", "exec"))
    _warm_regex_caches()
    _warm_traceback_themes()
    _quick_empty_flush()
    _one_shell()
    if guard is not None:  # the guard's first record of the loaded modules, taken once here
        guard = (*guard, _modules_ahead(guard[1]))
    import threading

    if threading.active_count() != 1:
        print(json.dumps({"ready": False, "error": "threads running after imports: cannot fork safely"}), flush=True)
        return 1
    preload = time.perf_counter() - t0
    children = set()

    def reap(*_):
        while True:
            try:
                pid, _st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            children.discard(pid)

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the subreaper of what it forks: closing a kernel kills its group, the PID-namespace shim
    # with the kernel, and the orphaned kernel went to PID 1 to be reaped, which on the grading
    # VMs (an agent as init) left it a zombie for a while; it is reaped here at once instead
    launcher._libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    out.write(json.dumps({"ready": True, "pid": os.getpid(), "preload_seconds": preload}) + "\n")
    rfd = 0
    buf = b""
    try:
        while True:
            try:
                r, _, _ = select.select([rfd], [], [], 1.0)
            except InterruptedError:
                continue
            if not r:
                continue
            try:
                data = os.read(rfd, 1 << 16)
            except InterruptedError:
                continue
            if not data:
                break  # the grader is gone
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                req = json.loads(line)
                ahead = _argv_ahead(req.get("args") or [])
                pid = os.fork()
                if pid == 0:
                    out.close()
                    _child(req, launcher, guard, ahead)
                children.add(pid)
                out.write(json.dumps({"id": req["id"], "pid": pid}) + "\n")
    finally:
        for pid in list(children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # its kernels are gone: skip the interpreter's teardown of everything it preloaded (about
    # 0.1-0.2 s of every grading worker's shutdown, measured with bench/grading.py)
    os._exit(code)
