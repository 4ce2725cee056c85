"""The grading service: ``livelab grader serve`` (``python -m grading.service --home DIR``).

Why a service: a learner's signal must come in seconds, not when someone runs the grader.  A
``livelab grade`` run pays for a Dask cluster, worker imports, kernel start-up and reference
builds every time; the service pays once and keeps them warm:

* **warm workers**: a Dask cluster (a local one whose workers are forks of the preloaded fork
  server, :mod:`grading.forkserver`, or ``--scheduler`` for an existing cluster), each worker
  keeping its next kernel (or lab namespace + kernel) started ahead;
* **references built once**: every module of the course's current release, at start;
* **an independent observer on every learner namespace**: one control-plane subscription to
  ``livelab/#`` from the moment the service (supervised with the lab) starts, so every
  message of every namespace is kept from the moment the namespace exists - the evidence the
  checks judge, which nothing in a learner's kernel can edit or delete.

Transport: MQTT request/response on the lab's own broker.  A learner's kernel publishes on
``livelab/<ns>/learner/grader/request`` and reads ``livelab/<ns>/learner/grader/reply``; the
broker's ACL lets a learner write only into its own namespace, so the **namespace in the topic
is the authenticated identity**, and the learner is that namespace's registered owner (never a
field of the request).  ``livelab grade`` (the lab owner's CLI) talks to the service over a
Unix socket in the lab's ``run/`` directory, mode 0600.

Requests:

* ``check``: run the module's checks (:mod:`grading.checks`, the code that grades) on the
  learner's namespace evidence since the module was opened; reply per item; the service
  writes one signed ``check-passed``/``check-failed`` event per check;
* ``submit``: grade the notebook in a fresh namespace exactly as ``livelab grade`` does;
  attempts are unlimited and each is kept (attempt number on events, results and the
  gradebook's ``livelab_attempts`` table); reply with the score and the feedback page.

A failure of the grading machine is never a learner's result (:mod:`grading.outcomes`).
"""

from __future__ import annotations

from . import _fast_imports  # noqa: F401  (first: see its docstring)

import argparse
import base64
import collections
import functools
import json
import logging
import os
import shutil
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("livelab.grading.service")

REQUEST_SCHEMA = "livelab.grader-request/v1"
REPLY_SCHEMA = "livelab.grader-reply/v1"
SOCKET = "grader.sock"
RUNFILE = "grader.json"
#: Messages kept per namespace (a 3-device namespace publishes ~10 a second).
MAX_MESSAGES = 200_000
#: Largest notebook a learner may submit over MQTT.
MAX_NOTEBOOK = 16 * 2**20
DEFAULT_COURSE = "edge-ml-foundations"


def request_topic(ns: str) -> str:
    return f"livelab/{ns}/learner/grader/request"


def reply_topic(ns: str) -> str:
    return f"livelab/{ns}/learner/grader/reply"


def socket_path(home: Path) -> Path:
    return Path(home) / "run" / SOCKET


def running(home: str | os.PathLike | None = None) -> dict | None:
    """The running service's run file (``pid``, ``socket``, ``ready``), or None."""
    from lab_hardware import home as _home

    h = _home.resolve(home)
    try:
        info = _home.read_json(h / "run" / RUNFILE)
    except (OSError, ValueError):
        return None
    if not info.get("ready") or not _home.pid_alive(info.get("pid")) or not socket_path(h).exists():
        return None
    return info


# ---- the observer of every learner namespace --------------------------------------------------
class NamespaceLogs:
    """Every message of every learner namespace (grading namespaces ``g-*`` have their own)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.logs: dict[str, collections.deque] = {}
        self.first: dict[str, float] = {}
        self.opened: dict[tuple[str, str], float] = {}  # (ns, module) -> lab time of its last opening
        self.acting: dict[tuple[str, str], str] = {}  # (ns, module) -> name the kernel acts under

    def add(self, ns: str, msg) -> str | None:
        """Keep ``msg``; the module it opens, if it is a learner's ``module-opened`` event."""
        with self.lock:
            log_ = self.logs.get(ns)
            if log_ is None:
                log_ = self.logs[ns] = collections.deque(maxlen=MAX_MESSAGES)
                self.first[ns] = msg.time
            log_.append(msg)
        if msg.topic.endswith("/learner/events"):
            d = msg.json() or {}
            if d.get("kind") == "module-opened" and isinstance(d.get("module"), str):
                with self.lock:
                    self.opened[(ns, d["module"])] = msg.time
                    if isinstance(d.get("learner"), str):
                        self.acting[(ns, d["module"])] = d["learner"]
                return d["module"]
        return None

    def since(self, ns: str, t0: float) -> list:
        """Messages of ``ns`` from ``t0`` on, plus each topic's last retained/state message
        before it (what the devices reported when the module was opened)."""
        with self.lock:
            msgs = list(self.logs.get(ns, ()))
        before: dict[str, Any] = {}
        out = []
        for m in msgs:
            if m.time >= t0:
                out.append(m)
            elif m.retain or m.topic.endswith("/state"):
                before[m.topic] = m
        return sorted(before.values(), key=lambda m: m.time) + out


# ---- the service ------------------------------------------------------------------------------
class GraderService:
    def __init__(
        self,
        home: str | os.PathLike | None = None,
        *,
        course: str | list[str] = DEFAULT_COURSE,
        version: str | None = None,
        scheduler: str | None = None,
        workers: int = 2,
        state: str | None = None,
        out: str | None = None,
        events: str | None = None,
        warm_modules: list[str] | None = None,
        exchange: str | os.PathLike | None = None,
    ):
        from lab_hardware import home as _home

        self.home = _home.resolve(home)
        # the courses it grades (a module id names its course: the first course that has it)
        self.courses = [course] if isinstance(course, str) else list(course)
        self.course, self.version = self.courses[0], version
        self.scheduler, self.workers = scheduler, workers
        self.state = Path(state).expanduser().resolve() if state else self.home / "grading"
        self.out = Path(out).expanduser().resolve() if out else self.state / "service"
        self.events_url = events
        self.warm_modules = warm_modules
        self.exchange = Path(exchange).expanduser().resolve() if exchange else None
        self.watchers: list = []
        self.logs = NamespaceLogs()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="grader-request")
        self.store_lock = threading.Lock()  # one gradebook writer at a time (SQLite)
        self.attempt_lock = threading.Lock()
        self.prepared: set[tuple[str, str]] = set()
        self.prefetched: set[str] = set()  # lab modules whose grading slots the workers opened ahead
        self.client = self.cluster = None
        self.mq = None
        self.server = None
        self.key: bytes | None = None
        self.targets: dict[str, Any] = {}
        self.stats: dict[str, list[float]] = collections.defaultdict(list)

    # ---- identity -------------------------------------------------------------------------
    def owner(self, ns: str) -> str | None:
        """The learner a namespace belongs to: the registry's, or the single-user lab's owner;
        None for grading namespaces (they never ask)."""
        from lab_hardware import home as _home

        if ns.startswith("g-"):
            return None
        try:
            from labs import learners  # helper "team"'s registry, when present

            for entry in learners.list_learners(self.home):
                if entry.get("namespace") == ns:
                    return str(entry["name"])
        except (ImportError, AttributeError, OSError, ValueError, KeyError):
            pass
        try:
            desc = _home.read_json(self.home / _home.DESCRIPTOR)
        except (OSError, ValueError):
            desc = {}
        if ns == desc.get("namespace", "default"):
            name = desc.get("learner_name") or desc.get("owner")
            if not name:
                import pwd

                name = pwd.getpwuid(os.getuid()).pw_name
            return str(name)
        return ns  # a learner's namespace is its name (CONTRACTS §1)

    def devices(self, ns: str) -> list[str]:
        from lab_hardware import home as _home

        cfg = _home.read_json(self.home / "config.json")
        spec = cfg["namespaces"].get(ns)
        if spec is None:
            raise LookupError(f"namespace {ns!r} is not in this lab")
        return [d["name"] for d in spec["devices"]]

    # ---- start / stop ---------------------------------------------------------------------
    def start(self) -> "GraderService":
        from .outcomes import events_key

        t0 = time.perf_counter()
        self.key = events_key(self.home)
        self.out.mkdir(parents=True, exist_ok=True)
        self._start_observer()
        self._start_cluster()
        self._warm()
        self._start_socket()
        if self.exchange is not None:
            self.watch_exchange(self.exchange)
        self.stats["start_seconds"].append(time.perf_counter() - t0)
        self._write_run(True)
        log.info("grading service ready in %.1f s (pid %s)", time.perf_counter() - t0, os.getpid())
        return self

    def _write_run(self, ready: bool) -> None:
        from lab_hardware import home as _home

        _home.write_json(
            self.home / "run" / RUNFILE,
            {
                "pid": os.getpid(),
                "ready": ready,
                "socket": str(socket_path(self.home)),
                "course": self.course,
                "courses": self.courses,
                "scheduler": self.scheduler,
                "workers": self.workers,
                "exchange": str(self.exchange) if self.exchange else None,
                "started": time.time(),
            },
        )

    def _start_observer(self) -> None:
        from lab_hardware.runtime import lab as _lab
        from lab_hardware import mqtt
        from .checks.base import Message

        c = _lab.control_client(self.home, client_id=f"grader-service-{uuid.uuid4().hex[:8]}")
        logs = self.logs

        def on_message(cl, ud, msg):
            parts = msg.topic.split("/")
            if len(parts) < 3 or parts[0] != "livelab":
                return
            ns = parts[1]
            if ns.startswith("g-"):
                return
            if len(parts) >= 5 and parts[2] == "learner" and parts[3] == "grader":
                if parts[4] == "request":
                    self.pool.submit(self._handle_mqtt, ns, bytes(msg.payload))
                return
            opened = logs.add(ns, Message(time.time(), msg.topic, bytes(msg.payload), bool(msg.retain)))
            if opened is not None and opened not in self.prefetched:
                self.pool.submit(self._module_opened, opened)

        c.on_message = on_message
        mqtt.subscribe_wait(c, "livelab/#", qos=1)
        self.mq = c

    def _start_cluster(self) -> None:
        from distributed import Client

        if self.scheduler:
            self.client = Client(self.scheduler, timeout="10s")
            return
        from distributed import LocalCluster
        from distributed.security import Security
        from . import forkserver
        from .batch import NO_DASHBOARD

        forkserver.start()
        sec = Security.temporary()
        with forkserver.configured():
            self.cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                scheduler_kwargs=NO_DASHBOARD,
                silence_logs=logging.ERROR,
                security=sec,
                host="127.0.0.1",
                protocol="tls://",
                env=dict(os.environ),
            )
        self.client = Client(self.cluster, security=sec)

    def _target(self, module: str):
        """The course target of ``module``: the first of the service's courses that has it."""
        t = self.targets.get(module)
        if t is None:
            from .batch import GradeUsageError, resolve_course

            for i, course in enumerate(self.courses):
                try:
                    t = resolve_course(str(self._course_root(course)), module, self.version if i == 0 else None)
                    break
                except GradeUsageError:
                    continue
            else:
                raise RequestError(f"no module {module!r} in {', '.join(self.courses)}")
            self.targets[module] = t
        return t

    def _warm(self) -> None:
        """Build every module's reference and warm the workers with them."""
        from .batch import _warm, _warm_checks, _warm_execute, freeze_heap
        from .reference import build as build_reference

        modules = self.warm_modules
        if modules is None:
            modules = [m for course in self.courses for m in self.course_modules(course)]
        from .checks.base import check_grade_id, load_checks
        from .gradebook import ensure_assignment

        refs, tests_only = [], []
        db_url = f"sqlite:///{self.out / 'gradebook.db'}"  # where lab.submit()'s attempts go
        for m in modules:
            t = self._target(m)
            names = [n for n in (t.module_meta.get("checks") or []) if isinstance(n, str)]
            checks = [{"grade_id": check_grade_id(s.name), "points": s.points} for s in load_checks(names)]
            for src in t.sources:
                ref = build_reference(src, m, self.state, manifest=t.manifest)
                refs.append(ref)
                if not names:
                    tests_only.append(ref)
                # the submissions' gradebook knows the module before its first submission
                # (creating it and mirroring the release cost seconds, once)
                ensure_assignment(db_url, ref, checks)
            self.prepared.add((str(self.out), m))
        if refs:  # with the sandbox of lab.submit()'s runs (hide_list): its kernels fit them
            # and each worker's first kernel starts now: the first start in a process costs
            # ~0.45 s more than the next ones (a run's first request paid it on every worker)
            self.client.run(_warm, self._submit_options(), refs, None)
            if tests_only:  # one submission through the whole path on each worker
                self.client.run(_warm_execute, self._submit_options(), tests_only[:1])
        checks = sorted({c for m in modules for c in (self._target(m).module_meta.get("checks") or [])})
        if checks:  # the checks and the scrubber's models, loaded once per worker and here
            # (lab.check() judges in this process: its first check paid ~1-2 s for them)
            def warm_here() -> None:
                try:
                    _warm_checks(checks)
                except Exception as exc:  # noqa: BLE001 - an optimisation: the first check loads them
                    log.warning("could not load the checks ahead: %s", exc)

            local = threading.Thread(target=warm_here, name="warm-checks", daemon=True)
            local.start()
            self.client.run(_warm_checks, checks)
            local.join()
        from lab_hardware.modelops import lineage

        try:  # each run's driver writes a grade's lineage event per submission (in this process)
            lineage.warm()
        except Exception as exc:  # noqa: BLE001 - an optimisation: the first event loads them
            log.warning("could not load the lineage trail's classes ahead: %s", exc)
        if not self.scheduler:  # our own workers keep what they loaded (see freeze_heap); a
            # cluster given with --scheduler may be shared: its workers' heaps are not ours to freeze
            self.client.run(freeze_heap)

    def course_modules(self, course: str) -> list[str]:
        """The module ids of one of the service's courses."""
        import tomllib

        root = self._course_root(course)
        if (root / "course.toml").exists():
            toml = tomllib.loads((root / "course.toml").read_text())
            return [m["id"] for m in toml.get("modules", []) if isinstance(m, dict) and m.get("id")]
        if (root / "source").is_dir():
            return sorted(d.name for d in (root / "source").iterdir() if d.is_dir())
        return []

    def learner_of(self, login: str) -> str | None:
        """The learner a login (an nbgrader student id) is, or None when it is nobody here:
        a registered learner of a team lab, or the owner of a single-user lab."""
        try:
            from labs import learners

            registered = learners.list_learners(self.home)
        except (ImportError, OSError, ValueError, KeyError):
            registered = []
        if registered:
            return login if any(e.get("name") == login for e in registered) else None
        from lab_hardware import home as _home

        try:
            ns = _home.read_json(self.home / _home.DESCRIPTOR).get("namespace", "default")
        except (OSError, ValueError):
            ns = "default"
        return login if self.owner(ns) == login else None

    def watch_exchange(self, root: str | os.PathLike, *, poll: float = 0.5) -> list:
        """Publish each course's current release to nbgrader's exchange at ``root`` and grade
        every submission that arrives there (see :mod:`grading.exchange`)."""
        from . import exchange

        self.exchange = Path(root).expanduser().resolve()
        for course in self.courses:
            modules = self.course_modules(course)
            targets = {m: self._target(m) for m in modules}
            course_id = next(iter(targets.values())).course_id if targets else Path(course).name
            releases = {}
            for m, t in targets.items():
                learner_dir = (
                    t.root / "releases" / t.version / "learner" / m
                    if t.kind == "livelab" and t.version
                    else t.root / "release" / m
                )
                if learner_dir.is_dir():
                    releases[m] = learner_dir
            exchange.publish(self.exchange, course_id, releases)
            w = exchange.ExchangeWatcher(
                self.exchange,
                course_id,
                state=self.state,
                submit=lambda learner, module, b64, name: self.submit("", learner, module, b64, name),
                learner_of=self.learner_of,
                modules=functools.partial(_notebook_names, targets),
                poll=poll,
            )
            self.watchers.append(w.start())
            log.info("grading submissions of %s from the nbgrader exchange %s", course_id, self.exchange)
        return self.watchers

    def _course_root(self, course: str | None = None) -> Path:
        from .batch import REPO

        course = course or self.course
        p = Path(course).expanduser()
        return p.resolve() if p.is_dir() else REPO / "courses" / course

    def _start_socket(self) -> None:
        path = socket_path(self.home)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        svc = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline(4 * 2**20)
                wlock = threading.Lock()

                def progress(text: str) -> None:  # streamed before the reply
                    with wlock:
                        self.wfile.write((json.dumps({"progress": text}) + "\n").encode())
                        self.wfile.flush()

                try:
                    req = json.loads(line)
                    if req.get("op") == "grade" and (req.get("config") or {}).get("progress_lines"):
                        req["config"]["progress_sink"] = progress
                    reply = svc.handle_local(req)
                except Exception as exc:  # noqa: BLE001 - one line back to the CLI
                    reply = {
                        "ok": False,
                        "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    }
                self.wfile.write((json.dumps(reply, default=str) + "\n").encode())

        old = os.umask(0o177)
        try:
            self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(old)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="grader-socket").start()

    def stop(self) -> None:
        from lab_hardware import mqtt

        self.stopping.set()
        for w in self.watchers:
            w.stop()
        try:
            (self.home / "run" / RUNFILE).unlink(missing_ok=True)
        except OSError:
            pass
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            socket_path(self.home).unlink(missing_ok=True)
        if self.mq is not None:
            mqtt.stop(self.mq)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            from .batch import _shutdown_worker

            try:
                if self.cluster is not None:
                    self.client.run(_shutdown_worker)
            except Exception:  # noqa: BLE001 - workers may be gone
                pass
            self.client.close()
        if self.cluster is not None:
            self.cluster.close(timeout=10)
            from . import forkserver

            forkserver.stop()

    # ---- requests from learners (MQTT) --------------------------------------------------------
    def _reply(self, ns: str, payload: dict) -> None:
        from lab_hardware import topics

        self.mq.publish(reply_topic(ns), topics.encode({"schema": REPLY_SCHEMA, **payload}), qos=1)

    def _handle_mqtt(self, ns: str, raw: bytes) -> None:
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            log.warning("refused a request from %s: %s", ns, exc)
            return
        rid = str(req.get("id") or "")[:64]
        learner = self.owner(ns)
        if learner is None:
            self._reply(ns, {"id": rid, "ok": False, "error": "grading namespaces cannot ask the grading service"})
            return
        self._reply(ns, {"id": rid, "ack": True})
        t0 = time.perf_counter()
        try:
            op = req.get("op")
            if op == "check":
                out = self.check(ns, learner, str(req.get("module") or ""))
            elif op == "submit":
                out = self.submit(
                    ns, learner, str(req.get("module") or ""), req.get("notebook"), str(req.get("name") or "")
                )
            else:
                raise RequestError(f"unknown request {op!r}: use check or submit")
            out = {"id": rid, "ok": True, **out}
        except RequestError as exc:
            out = {"id": rid, "ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the machine failed, not the learner
            log.exception("request %s from %s failed", req.get("op"), ns)
            from .outcomes import INFRA, NOT_YOUR_WORK

            out = {
                "id": rid,
                "ok": False,
                "status": INFRA,
                "error": NOT_YOUR_WORK.format(
                    why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                ),
            }
        out["seconds"] = round(time.perf_counter() - t0, 4)
        self.stats[str(req.get("op"))].append(out["seconds"])
        self._reply(ns, out)

    # ---- check ---------------------------------------------------------------------------
    def check(self, ns: str, learner: str, module: str) -> dict:
        """Judge the module's checks on ``ns``'s evidence since the module was opened."""
        from .checks.base import CheckContext, judge, load_checks
        from .outcomes import INFRA, classify, sign

        try:
            target = self._target(module)
        except Exception as exc:  # noqa: BLE001 - GradeUsageError and friends
            raise RequestError(f"unknown module {module!r}: {exc}") from None
        names = [n for n in (target.module_meta.get("checks") or []) if isinstance(n, str)]
        if not names:
            return {
                "module": module,
                "learner": learner,
                "checks": [],
                "status": "graded",
                "note": f"{module} has no lab checks: its tests are graded when you submit (lab.submit())",
            }
        specs = load_checks(names)
        self._prefetch_lab(module, target, names)
        with self.logs.lock:
            opened = self.logs.opened.get((ns, module))
            first = self.logs.first.get(ns, time.time())
            # whose commands in this namespace are the learner's (devices write the sender as
            # the audit records' "by"): the name the learner's kernel acts under.  It only
            # tells the learner's own commands from the lab's (a release bot's) inside the
            # learner's own namespace; who gets the events is ``learner``, from the registry.
            acting = self.logs.acting.get((ns, module)) or learner
        started = opened if opened is not None else first
        ctx = CheckContext(
            home=self.home,
            namespace=ns,
            devices=self.devices(ns),
            learner=acting,
            module=module,
            started=started,
            ended=time.time(),
            messages=self.logs.since(ns, started - 1.0),
            artifacts=None,
            module_meta=dict(target.module_meta),
        )
        rows = [judge(spec, ctx) for spec in specs]
        why = classify({"checks": rows})
        if why:  # a crashed check is the machine's failure: no check-failed event
            return {"module": module, "learner": learner, "status": INFRA, "infrastructure": why, "checks": rows}
        now = time.time()
        evs = [
            {
                "schema": "livelab.event/v1",
                "source": "grader",
                "kind": "check-passed" if r["passed"] else "check-failed",
                "learner": learner,
                "module": module,
                "course": target.course_id,
                "version": target.version or "",
                "check": r["name"],
                "time": now,
                "key": f"check:{uuid.uuid4().hex}",
                "detail": {
                    "via": "lab.check",
                    "namespace": ns,
                    "score": r["score"],
                    "points": r["points"],
                    "failed_items": [i["name"] for i in r["items"] if not i["ok"]],
                },
            }
            for r in rows
        ]
        written = self._record(sign(evs, self.key))
        return {
            "module": module,
            "learner": learner,
            "status": "graded",
            "checks": rows,
            "events": written,
            "since": started,
        }

    def _module_opened(self, module: str) -> None:
        """A learner opened ``module``: if it is graded against the lab, prefetch its slots."""
        try:
            target = self._target(module)
        except Exception:  # noqa: BLE001 - not a module of this service's courses
            return
        names = [n for n in (target.module_meta.get("checks") or []) if isinstance(n, str)]
        if names:
            self._prefetch_lab(module, target, names)

    def _prefetch_lab(self, module: str, target, names: list[str]) -> None:
        """A learner checking a module is about to submit it: have every worker open the
        module's next grading slot (namespace, observer, kernel) now, once per module, so that
        the submission's lab is ready when it arrives (the first one per worker otherwise waits
        for it: seconds).  Fire and forget: a failure here only costs that wait."""
        with self.attempt_lock:
            if module in self.prefetched or self.client is None:
                return
            self.prefetched.add(module)
        from .isolation import prefetch_lab

        labcfg = {
            "home": str(self.home),
            "module": module,
            "checks": names,
            "seed": 0,
            "module_meta": dict(target.module_meta),
        }
        opts = self._submit_options()

        def run() -> None:
            try:
                started = self.client.run(prefetch_lab, labcfg, opts)
                log.info("%s: grading slots opening ahead on %d worker(s)", module, sum(map(bool, started.values())))
            except Exception as exc:  # noqa: BLE001 - an optimisation only
                log.warning("could not prefetch %s's grading labs: %s", module, exc)

        self.pool.submit(run)

    def _record(self, evs: list[dict]) -> int:
        from labs.learning_events import EventStore

        with EventStore(self.events_url or self.home) as store:
            return store.write(evs)

    # ---- submit --------------------------------------------------------------------------
    def _next_attempt(self, learner: str, module: str) -> int:
        from lab_hardware import home as _home

        p = self.out / "attempts.json"
        with self.attempt_lock:
            try:
                data = _home.read_json(p)
            except (OSError, ValueError):
                data = {}
            key = f"{learner}/{module}"
            data[key] = int(data.get(key, 0)) + 1
            _home.write_json(p, data, mode=0o600)
            return data[key]

    def submit(self, ns: str, learner: str, module: str, notebook_b64: Any, name: str = "") -> dict:
        """Grade a learner's notebook as ``livelab grade`` does; keep the attempt."""
        try:
            target = self._target(module)
        except Exception as exc:  # noqa: BLE001
            raise RequestError(f"unknown module {module!r}: {exc}") from None
        if not isinstance(notebook_b64, str):
            raise RequestError("the request carries no notebook")
        try:
            data = base64.b64decode(notebook_b64, validate=True)
        except ValueError:
            raise RequestError("the notebook is not base64") from None
        if len(data) > MAX_NOTEBOOK:
            raise RequestError(f"the notebook is {len(data):,} bytes, more than {MAX_NOTEBOOK:,}")
        names = [s.stem for s in target.sources]
        nbname = name if name in names else names[0]
        attempt = self._next_attempt(learner, module)
        adir = self.out / "attempts" / learner / module / f"attempt-{attempt}"
        adir.mkdir(parents=True, exist_ok=True)
        path = adir / f"{nbname}.ipynb"
        path.write_bytes(data)
        (adir / "timestamp.txt").write_text(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()) + "\n")
        summary = self.grade(
            dict(
                course=str(target.root),
                module=module,
                path=str(path),
                student=learner,
                out=str(self.out),
                attempt=attempt,
                use_cache=False,
                lab_home=str(self.home),
                version=target.version,
                events=self.events_url or str(self.home),
                stable_hide=True,
            )
        )
        res = summary["results"][0]
        from .batch import path_id

        fb = self.out / "feedback" / path_id(learner) / path_id(module) / f"{path_id(nbname)}.html"
        html = None
        if res.get("status") != "infrastructure-error" and fb.exists():
            kept = adir / "feedback.html"
            shutil.copyfile(fb, kept)
            html = kept.read_text()
        self._record_attempt(summary, res, attempt, kept_feedback=str(adir / "feedback.html") if html else None)
        return {
            "module": module,
            "learner": learner,
            "attempt": attempt,
            "status": res["status"],
            "score": res["score"],
            "max_score": res["max_score"],
            "messages": res["messages"],
            "feedback_html": html,
            "feedback_path": str(adir / "feedback.html") if html else None,
            "grading_seconds": summary["wall_seconds"],
            "timings": (summary.get("per_submission") or [{}])[0].get("timings", {}),
        }

    def _record_attempt(self, summary: dict, res: dict, attempt: int, kept_feedback: str | None) -> None:
        """The attempt in the gradebook's ``livelab_attempts`` table (nbgrader keeps the latest)."""
        import sqlalchemy as sa

        md = sa.MetaData()
        t = sa.Table(
            "livelab_attempts",
            md,
            sa.Column("student", sa.String(200), primary_key=True),
            sa.Column("assignment", sa.String(200), primary_key=True),
            sa.Column("notebook", sa.String(200), primary_key=True),
            sa.Column("attempt", sa.Integer, primary_key=True),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("score", sa.Float, nullable=True),
            sa.Column("max_score", sa.Float, nullable=False),
            sa.Column("time", sa.Float, nullable=False),
            sa.Column("feedback", sa.String(1000), nullable=True),
        )
        eng = sa.create_engine(summary["gradebook"])
        try:
            with self.store_lock, eng.begin() as conn:
                md.create_all(conn, checkfirst=True)
                conn.execute(
                    t.insert().values(
                        student=res["student"],
                        assignment=summary["module"],
                        notebook=res["notebook"],
                        attempt=attempt,
                        status=res["status"],
                        score=res["score"],
                        max_score=res["max_score"],
                        time=time.time(),
                        feedback=kept_feedback,
                    )
                )
        finally:
            eng.dispose()

    # ---- batch grading (livelab grade) ------------------------------------------------------------
    def grade(self, config: dict) -> dict:
        """Run ``livelab grade``'s driver on the warm workers."""
        from .batch import BatchConfig, Driver
        from .limits import Limits

        cfg = dict(config)
        if isinstance(cfg.get("limits"), dict):
            cfg["limits"] = Limits(**cfg["limits"])
        cfg.setdefault("lab_home", str(self.home))
        if not cfg.get("state"):  # the references the service built at start
            cfg["state"] = str(self.state)
        cfg["progress"] = False
        cfg.pop("scheduler", None)
        if cfg.pop("stable_hide", False):
            cfg["hide"] = self.hide_list()
        key = (str(cfg.get("gradebook") or cfg.get("out") or cfg.get("path")), cfg["module"])
        cfg["prepared"] = key in self.prepared
        driver = Driver(BatchConfig(**{k: v for k, v in cfg.items() if k in BatchConfig.__dataclass_fields__}))
        store = driver._store

        def locked_store(sub, res):
            with self.store_lock:
                return store(sub, res)

        driver._store = locked_store
        summary = driver.run(client=self.client)
        self.prepared.add(key)
        return summary

    def _submit_options(self):
        """The run options of every lab.submit() run (as the driver builds them from it)."""
        from .limits import Limits
        from .runner import RunOptions

        return RunOptions(limits=Limits(), hide=self.hide_list(), isolate=True, seed=0, network=False)

    def hide_list(self) -> list[str]:
        """What no learner's kernel may see, the same for every submission (so each worker's
        prestarted kernel or lab slot fits the next one): the course content, the grader's
        state and output (every attempt of every learner), the lab's home."""
        from .batch import _course_content_dirs

        return sorted(
            {
                *(str(self._course_root(c)) for c in self.courses),
                str(self.state),
                str(self.out),
                str(self.home),
                *_course_content_dirs(),
            }
        )

    def handle_local(self, req: dict) -> dict:
        """A request from the lab owner's CLI on the Unix socket."""
        op = req.get("op")
        if op == "grade":
            try:
                return {"ok": True, "summary": self.grade(req["config"])}
            except Exception as exc:  # noqa: BLE001 - GradeUsageError: exit 2 in the CLI
                from .batch import GradeUsageError

                if isinstance(exc, GradeUsageError):
                    return {"ok": False, "usage": True, "error": str(exc)}
                raise
        if op == "status":
            return {
                "ok": True,
                "pid": os.getpid(),
                "namespaces": sorted(self.logs.logs),
                "exchange": [w.status() for w in self.watchers],
                "stats": {
                    k: {"n": len(v), "median": sorted(v)[len(v) // 2] if v else None} for k, v in self.stats.items()
                },
            }
        if op == "stop":
            self.stopping.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _notebook_names(targets: dict[str, Any]) -> dict[str, list[str]]:
    """{module: the stems of its notebooks} of course targets."""
    return {m: [s.stem for s in t.sources] for m, t in targets.items()}


class RequestError(ValueError):
    """A request the service refuses (bad module, no notebook...): one line back to the learner."""


# ---- the CLI's door ---------------------------------------------------------------------------------
def call(home: str | os.PathLike | None, req: dict, *, timeout: float | None = None, progress=None) -> dict:
    """Send one request to the running service's Unix socket and return its reply
    (``progress``: called with each progress line the service streams before it)."""
    from lab_hardware import home as _home

    path = socket_path(_home.resolve(home))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall((json.dumps(req, default=str) + "\n").encode())
        with s.makefile("rb") as fh:
            for line in fh:
                msg = json.loads(line)
                if "progress" in msg and len(msg) == 1:
                    if progress is not None:
                        progress(msg["progress"])
                    continue
                return msg
    finally:
        s.close()
    raise ConnectionError("the grading service closed the connection without a reply")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m grading.service", description="The warm grading service (see 'livelab grader serve')."
    )
    p.add_argument("--home")
    p.add_argument(
        "--course", action="append", help=f"a course it grades (repeat for several; default {DEFAULT_COURSE})"
    )
    p.add_argument("--version")
    p.add_argument("--scheduler")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--state")
    p.add_argument("--out")
    p.add_argument("--events")
    p.add_argument("--exchange", help="nbgrader's exchange root: grade what learners 'nbgrader submit'")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    svc = GraderService(
        args.home,
        course=args.course or DEFAULT_COURSE,
        version=args.version,
        scheduler=args.scheduler,
        workers=args.workers,
        state=args.state,
        out=args.out,
        events=args.events,
        exchange=args.exchange,
    )
    from lab_hardware import signals

    signals.route({signal.SIGTERM: svc.stopping.set, signal.SIGINT: svc.stopping.set})
    code = 0
    try:
        svc.start()
        from .batch import freeze_heap

        freeze_heap()  # this process keeps what it loaded to serve (see grading.batch.freeze_heap)
        svc.stopping.wait()
    except Exception as exc:  # noqa: BLE001 - one line for the supervisor's log
        log.error("FATAL %s: %s", type(exc).__name__, exc)
        code = 1
    finally:
        svc.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
