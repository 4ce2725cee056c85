"""Lab isolation for lab modules: a fresh namespace, an independent observer, a learner's view.

Why a namespace in the running lab and not a broker per submission: the broker confines each
namespace's identities with an ACL (a learner reads only its namespace and writes only
commands to its own devices), each namespace gets devices of its own, and adding one to a
running lab costs the devices' start-up only - an own broker per submission adds a broker
start, a supervisor and a second copy of every device process (``bench/grading.py`` measures
both: ``lab.add_namespace`` vs ``lab.up``).

A :class:`LabSlot` is one submission's lab:

* ``lab.add_namespace``: new devices, learner credentials, topics ``livelab/<ns>/...``;
* an :class:`Observer`: a control-plane subscriber on ``livelab/<ns>/#`` that keeps every
  message (time, topic, bytes, retained flag) from before the notebook starts until after it
  is gone - the evidence the checks judge, which nothing in the notebook can edit or delete.
  It also stores the namespace's captures in the lab's replay store (as the supervisor's
  collector does; the store drops the duplicates);
* the learner's view of the lab home inside the kernel's sandbox: a ``lab.json`` for this
  namespace, the scenario, this namespace's replay captures and this namespace's own trust
  store (``keys.namespace_home``: a key the submission trusts verifies bundles on its devices
  only, and goes with the namespace), and private ``keys/`` - never the lab's secrets, config,
  other namespaces' devices or captures;
* afterwards the namespace is removed, its evidence (observer log, audit chains) kept with
  the result.

:func:`grade_in_lab` is what a Dask worker runs for a lab module; each worker keeps the next
slot (namespace + observer + kernel) starting while it grades the current one.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from . import _fast_imports  # noqa: F401
from .checks.base import CheckContext, Message
from .sandbox import Kernel, SandboxConfig

log = logging.getLogger("livelab.grading.isolation")

#: Files a notebook leaves that checks may read (never private keys).
ARTIFACT_SUFFIXES = (".lreplay", ".lbundle", ".jsonl", ".json", ".pub")
ARTIFACT_LIMIT = 64 * 2**20


def _first_opening(msgs, namespace: str) -> float | None:
    """When the lab saw the learner open the module: the observer's arrival time of the SDK's
    first ``module-opened`` message (the lab's clock, not the notebook's claim)."""
    topic = f"livelab/{namespace}/learner/events"
    for m in msgs:
        if m.topic == topic:
            try:
                if json.loads(m.payload).get("kind") == "module-opened":
                    return m.time
            except (ValueError, AttributeError):
                continue
    return None


def device_silences(msgs: list[Message]) -> dict[str, float]:
    """Per device, the longest time (s) the observer received nothing at all from it between
    two of its messages.  A lab device sends its state every second, so a long silence is a
    device (or the observer) the machine starved: the evidence behind the SDK's stall line."""
    last: dict[str, float] = {}
    longest: dict[str, float] = {}
    for m in msgs:
        parts = m.topic.split("/")
        if len(parts) > 4 and parts[2] == "devices":
            d = parts[3]
            if d in last:
                longest[d] = max(longest.get(d, 0.0), m.time - last[d])
            last[d] = m.time
    return {d: round(s, 3) for d, s in sorted(longest.items())}


class Observer:
    """Independent subscriber (control-plane identity) recording every message of a namespace."""

    def __init__(self, home: Path, namespace: str, *, store_captures: bool = True):
        from lab_hardware.runtime import lab as _lab
        from lab_hardware import mqtt, topics

        self.home, self.namespace = Path(home), namespace
        self.messages: list[Message] = []
        self.store_captures = store_captures
        self.capture_errors: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        self._sync_topic = topics.namespace_prefix(namespace) + "/grader/observer-sync"
        self._sync_token = uuid.uuid4().hex.encode()
        self._synced = threading.Event()
        self.client = _lab.control_client(self.home, client_id=f"observer-{namespace}-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.topic = topics.namespace_prefix(namespace) + "/#"
        mqtt.subscribe_wait(self.client, self.topic, qos=1)
        self.started = time.time()

    def _on_message(self, client, userdata, msg) -> None:
        if self._closed:
            return
        if msg.topic == self._sync_topic:  # the observer's own marker (close()), not evidence
            if msg.payload == self._sync_token:
                self._synced.set()
            return
        m = Message(time.time(), msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._lock:
            self.messages.append(m)
        if self.store_captures and msg.topic.endswith("/capture"):
            from lab_hardware.modelops import replay

            try:
                replay.store_capture(self.home, json.loads(msg.payload))
            except Exception as exc:  # noqa: BLE001 - a refused capture is evidence, not a crash
                self.capture_errors.append(str(exc).splitlines()[0][:200])

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def close(self, drain: float = 5.0) -> None:
        """Stop recording once the broker has delivered everything published before now (the
        kernel is dead: what it sent is in flight or here).  The broker handles messages in
        order, so a marker published now and received back comes after all of them: a wait
        on that condition, bounded by ``drain`` seconds (0: stop at once)."""
        from lab_hardware import mqtt

        if self._closed:
            return
        if drain > 0:
            try:
                self.client.publish(self._sync_topic, self._sync_token, qos=1)
                if not self._synced.wait(drain):
                    log.warning("observer of %s: no marker back within %.0f s", self.namespace, drain)
            except Exception as exc:  # noqa: BLE001 - the broker may be gone: stop anyway
                log.warning("observer of %s: could not sync before closing: %s", self.namespace, exc)
        self._closed = True
        mqtt.stop(self.client)

    def dump(self) -> bytes:
        """The capture as gzipped JSON lines (payloads base64), kept with the result."""
        lines = [
            json.dumps(
                {"t": m.time, "topic": m.topic, "retain": m.retain, "payload": base64.b64encode(m.payload).decode()}
            )
            for m in self.snapshot()
        ]
        return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6)


class LabSlot:
    """One submission's lab: namespace, observer, learner view, kernel (see module doc)."""

    def __init__(self, home: Path, module: str, *, seed: int = 0, devices: int = 3, module_meta: dict | None = None):
        self.home = Path(home)
        self.module = module
        self.seed = seed
        self.ndevices = devices
        self.module_meta = module_meta or {}
        # letters only: a namespace is in every topic and identity, and ten digits in a row
        # would read as a phone number to the PII check
        self.namespace = "g-" + "".join(chr(97 + int(c, 16)) for c in uuid.uuid4().hex[:12])
        self.desc: dict | None = None
        self.untidy: list[dict] = []
        self.observer: Observer | None = None
        self.kernel: Kernel | None = None
        self.artifacts = Path(os.environ.get("TMPDIR", "/tmp")) / f"livelab-lab-{self.namespace}"
        self.student = ""
        self.created = 0.0
        self.timings: dict[str, float] = {}

    # ---- setting up ---------------------------------------------------------------------
    def open(self, config: SandboxConfig) -> "LabSlot":
        from lab_hardware.runtime import lab as _lab
        from lab_hardware.modelops import replay

        t = time.perf_counter()
        self.created = time.time()
        self.desc = _lab.add_namespace(self.home, self.namespace, devices=self.ndevices)
        self.timings["namespace"] = time.perf_counter() - t
        t = time.perf_counter()
        self.observer = Observer(self.home, self.namespace)
        replay.captures_dir(self.home, self.namespace).mkdir(parents=True, exist_ok=True)
        self.timings["observer"] = time.perf_counter() - t
        t = time.perf_counter()
        self.untidy = self.seed_untidy()
        self.timings["untidy"] = time.perf_counter() - t
        t = time.perf_counter()
        cfg = SandboxConfig(
            limits=config.limits,
            kernel_name=config.kernel_name,
            hide=[*config.hide, *self.hidden()],
            binds=self.binds(),
            network=True,
            isolate=config.isolate,
            env={**config.env, **self.env()},
            fork_server=config.fork_server,
            files=self.files(),
        )
        self.kernel = Kernel(cfg).start()
        self.timings["kernel_start"] = time.perf_counter() - t
        return self

    def seed_untidy(self) -> list[dict]:
        """The module's seeded untidy start (``grading/untidy.py``), with the observer on."""
        from .untidy import seed_namespace

        return seed_namespace(
            self.home,
            self.namespace,
            list(self.desc["devices"]),
            self.module_meta.get("untidy"),
            seed=self.seed,
            module=self.module,
        )

    def learner_home(self) -> str:
        return "{kernel}/lab"

    def files(self) -> dict[str, bytes]:
        d = dict(self.desc)
        d["home"] = self.learner_home()  # placeholder, filled in by the sandbox
        return {"lab/lab.json": (json.dumps(d, indent=2, sort_keys=True) + "\n").encode(), "lab/keys/": b""}

    def binds(self) -> list[tuple[str, str]]:
        from lab_hardware.modelops import replay

        lh = self.learner_home()
        from lab_hardware.modelops import keys

        trust = keys.namespace_home(self.home, self.namespace) / "trust"  # this namespace's own store
        trust.mkdir(parents=True, exist_ok=True)
        return [
            (str(self.home / "scenario"), f"{lh}/scenario"),
            (str(replay.captures_dir(self.home, self.namespace)), f"{lh}/replays/captures/{self.namespace}"),
            (str(trust), f"{lh}/trust"),
        ]

    def hidden(self) -> list[str]:
        return [str(self.home)]

    def env(self) -> dict[str, str]:
        return {"LIVELAB_HOME": self.learner_home(), "LIVELAB_DEFAULT_HOME": self.learner_home()}

    def parameters(self) -> dict:
        return {
            "LIVELAB_HOME": self.learner_home_path(),
            "NAMESPACE": self.namespace,
            "LEARNER": self.student,
            "SEED": self.seed,
            "learner_id": self.student,
            "seed": self.seed,
        }

    def learner_home_path(self) -> str:
        return str(self.kernel.dir / "lab") if self.kernel else ""

    def name_learner(self) -> None:
        """The devices record the broker-proven commands of ``learner.<ns>`` under the
        student's name (audit ``by``); a name that is not a valid one keeps the username."""
        from lab_hardware.runtime import lab as _lab

        if self.student and self.desc is not None:
            try:
                _lab.name_learner(self.home, self.namespace, self.student)
            except (_lab.LabError, OSError, RuntimeError):
                pass

    # ---- running ------------------------------------------------------------------------
    def start_observing(self) -> None:
        self.run_started = time.time()

    def stop_observing(self) -> None:
        if self.observer is not None:
            self.observer.close()

    def collect(self, kernel: Kernel) -> dict:
        """Copy what the notebook left in its working directory that checks read (no keys)."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        total, files = 0, []
        for p in sorted(kernel.work.rglob("*")):
            if not p.is_file() or p.is_symlink() or p.suffix not in ARTIFACT_SUFFIXES:
                continue
            size = p.stat().st_size
            if total + size > ARTIFACT_LIMIT:
                break
            dest = self.artifacts / p.relative_to(kernel.work)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
            total += size
            files.append(str(p.relative_to(kernel.work)))
        return {"files": files, "bytes": total}

    def context(self, artifacts=None) -> CheckContext:
        return CheckContext(
            home=self.home,
            namespace=self.namespace,
            devices=list(self.desc["devices"]),
            learner=self.student,
            module=self.module,
            started=self.created,
            ended=time.time(),
            messages=self.observer.snapshot() if self.observer else None,
            artifacts=self.artifacts,
            module_meta=self.module_meta,
        )

    def summary(self) -> dict:
        msgs = self.observer.snapshot() if self.observer else []
        by_kind: dict[str, list[int]] = {}
        for m in msgs:
            parts = m.topic.split("/")
            kind = parts[4] if len(parts) > 4 and parts[2] == "devices" else parts[2] if len(parts) > 2 else "?"
            by_kind.setdefault(kind, [0, 0])
            by_kind[kind][0] += 1
            by_kind[kind][1] += m.size
        return {
            "namespace": self.namespace,
            "devices": list(self.desc["devices"]) if self.desc else [],
            "opened_at": _first_opening(msgs, self.namespace),
            "observed": {k: {"messages": v[0], "bytes": v[1]} for k, v in sorted(by_kind.items())},
            "capture_store_errors": (self.observer.capture_errors[:5] if self.observer else []),
            "device_silence_s": device_silences(msgs),
            "untidy": self.untidy,
            "setup_seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def evidence(self) -> dict:
        """Observer log and audit chains (base64 gzip) to keep next to the result."""
        from lab_hardware import home as _home

        out = {}
        if self.observer is not None:
            out["observer.jsonl.gz"] = base64.b64encode(self.observer.dump()).decode()
        for d in (self.desc or {}).get("devices", []):
            p = _home.device_dir(self.home, self.namespace, d) / "audit.jsonl"
            if p.exists():
                out[f"audit-{d}.jsonl.gz"] = base64.b64encode(gzip.compress(p.read_bytes())).decode()
        return out

    def close(self) -> None:
        from lab_hardware.runtime import lab as _lab
        from lab_hardware.modelops import replay

        if self.kernel is not None:
            self.kernel.close()
        if self.observer is not None:
            self.observer.close(drain=0)
        if self.desc is not None:
            try:
                _lab.remove_namespace(self.home, self.namespace, purge=True)
            except Exception as exc:  # noqa: BLE001 - the lab may be gone; never fail a grade here
                log.warning("could not remove namespace %s: %s", self.namespace, exc)
            shutil.rmtree(replay.captures_dir(self.home, self.namespace), ignore_errors=True)
        shutil.rmtree(self.artifacts, ignore_errors=True)


class LabPool:
    """Keeps the next slot (namespace + observer + kernel) opening while one is graded."""

    def __init__(
        self,
        home: Path,
        module: str,
        config: SandboxConfig,
        *,
        seed: int = 0,
        module_meta: dict | None = None,
        prefetch: bool = True,
    ):
        self.home, self.module, self.config, self.seed = Path(home), module, config, seed
        self.module_meta = module_meta or {}
        self.prefetch = prefetch
        self._next: threading.Thread | None = None
        self._slot: LabSlot | None = None
        self._error: BaseException | None = None
        self._closing: list[threading.Thread] = []
        self._lock = threading.Lock()  # take() runs in a task, prefetch_now() from client.run

    def _open(self) -> None:
        try:
            self._slot = LabSlot(self.home, self.module, seed=self.seed, module_meta=self.module_meta).open(self.config)
        except BaseException as exc:  # noqa: BLE001 - re-raised in take()
            self._error = exc

    def _start(self) -> None:
        self._slot, self._error = None, None
        from .sandbox import in_thread

        self._next = threading.Thread(target=in_thread, args=(self._open,), daemon=True, name="lab-slot")
        self._next.start()

    def prefetch_now(self) -> bool:
        with self._lock:
            if self._next is not None:
                return False
            self._start()
            return True

    def close_later(self, slot: "LabSlot") -> None:
        from .sandbox import in_thread

        th = threading.Thread(target=in_thread, args=(slot.close,), daemon=True, name="lab-slot-close")
        th.start()
        self._closing = [t for t in self._closing if t.is_alive()] + [th]

    def take(self) -> LabSlot:
        with self._lock:
            if self._next is None:
                self._start()
            opening = self._next
        opening.join()
        with self._lock:
            slot, err = self._slot, self._error
            self._next = None
            if self.prefetch:
                self._start()
        if err is not None:
            raise err
        return slot

    def settle(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` s) until every slot handed back is closed; True if all are."""
        deadline = time.monotonic() + timeout
        for th in list(self._closing):
            th.join(max(0.0, deadline - time.monotonic()))
        return not any(th.is_alive() for th in self._closing)

    def close(self) -> None:
        for th in self._closing:
            th.join()
        self._closing = []
        if self._next is not None:
            self._next.join()
            if self._slot is not None:
                self._slot.close()
            self._next = None


_POOLS: dict[str, LabPool] = {}
_POOLS_LOCK = threading.Lock()


def shutdown_worker_labs() -> None:
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.close()


def settle_worker_labs(timeout: float = 120.0) -> bool:
    """Wait (bounded) until every namespace this process graded in is removed (slots close in
    the background, after the grade is returned); True if all are."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
    return all(p.settle(timeout) for p in pools)


def lab_pool(labcfg: dict, opts) -> LabPool:
    """This worker's pool of ready slots for one module of one lab (and one sandbox)."""
    from . import runner

    key = json.dumps(
        [labcfg["home"], labcfg["module"], labcfg.get("seed", 0), opts.limits.as_dict(), sorted(opts.hide)]
    )
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            import atexit

            pool = _POOLS[key] = LabPool(
                Path(labcfg["home"]),
                labcfg["module"],
                runner.sandbox_config(opts),
                seed=labcfg.get("seed", 0),
                module_meta=labcfg.get("module_meta"),
            )
            atexit.register(pool.close)
    return pool


def prefetch_lab(labcfg: dict, opts) -> bool:
    """Start opening this worker's next slot for the module, if none is opening yet (the
    grading service asks when a learner first checks a module: the submission that follows
    then finds its namespace, observer and kernel ready).  True if it started one now."""
    return lab_pool(labcfg, opts).prefetch_now()


def grade_in_lab(sub, ref, opts, labcfg: dict, *, pool: LabPool | None = None) -> dict:
    """Grade one lab-module submission in a fresh namespace of the running lab."""
    from . import runner
    from .checks.base import load_checks

    if pool is None:
        pool = lab_pool(labcfg, opts)
    t0 = time.perf_counter()
    slot = pool.take()
    waited = time.perf_counter() - t0
    slot.student = sub.student
    slot.name_learner()
    try:
        result = runner.grade(sub, ref, opts, lab=slot, checks=load_checks(labcfg["checks"]))
        result.setdefault("timings", {})["lab_wait"] = waited
        result["evidence"] = slot.evidence()
    except BaseException:
        slot.close()
        raise
    # the namespace is judged: take it down after the result is on its way (nothing of the
    # submission runs any more; the pool waits for it before the worker exits)
    pool.close_later(slot)
    return result
