"""The lab supervisor: one detached process that owns the broker and the devices.

``livelab up`` starts it and returns; ``livelab down`` stops it.  It restarts
whatever dies (a broker killed with -9 comes back on the same port with its
persisted sessions; a crashed device comes back with its outbox and audit
chain), and on SIGHUP re-reads the lab config so namespaces can be added to a
running lab.  Everything it starts is its child and is reaped on stop.

Besides the broker and the devices it runs the lab's *services*: lab-side processes named in
``config.json`` as ``services: [{"name", "argv", "ready_file"?, "env"?}]`` (the trusted
recorder of learner events, the grading service...).  They are started, restarted and stopped
like devices, by command line only, so this layer never imports the code above it.  In
``argv``, ``{python}`` is this interpreter and ``{home}`` the state directory; a service with a
``ready_file`` (relative to the state directory) counts as ready when it has written that file,
and the lab is ready only when every such service is.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lab_hardware.runtime import broker as _broker
from lab_hardware import home as _home
from lab_hardware import mqtt, signals, topics

log = logging.getLogger("livelab.supervisor")

RESTART_BACKOFF = (0.05, 0.2, 0.5, 1.0, 2.0)
#: The folder holding the ``lab_hardware`` package this supervisor runs.
_CODE_ROOT = str(Path(__file__).resolve().parents[2])


class Child:
    """A supervised process with restart bookkeeping."""

    def __init__(self, name: str, start):
        self.name = name
        self._start = start
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.failures = 0
        self.next_start = 0.0
        self.started_at = 0.0
        self.settings: dict | None = None  # a device's settings (Supervisor._device_conf)

    def start(self) -> None:
        self.proc = self._start()
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Supervisor:
    def __init__(self, home: Path):
        self.home = home
        self.cfg = _home.read_json(home / "config.json")
        self.secrets = _home.read_json(home / "secrets" / "identities.json")
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker: Child | None = None
        self.devices: dict[str, Child] = {}
        self.services: dict[str, Child] = {}
        self._service_specs: dict[str, dict] = {}
        self.collector = None
        self.observer = None  # the metadata trail's observer (lab_hardware/runtime/observer.py)
        # namespaces whose captures are kept; the lock makes removing one and storing a
        # capture of it exclusive, so nothing is stored once a namespace is gone
        self.collected: set[str] = set(self.cfg["namespaces"])
        self._collect_lock = threading.Lock()
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()

    # ---- broker ------------------------------------------------------------------------
    def _broker_addr(self) -> tuple[str, int]:
        b = self.cfg["broker"]
        return b["host"], int(b["port"])

    def _namespaces(self) -> dict[str, list[str]]:
        return {ns: [d["name"] for d in spec["devices"]] for ns, spec in self.cfg["namespaces"].items()}

    def _write_broker_files(self) -> None:
        users = {ns: [spec["learner_user"]] for ns, spec in self.cfg["namespaces"].items() if spec.get("learner_user")}
        self._probe = secrets.token_urlsafe(18)  # this version's proof (broker.confirm_reload)
        _broker.write_config(
            self.home / "broker", self.cfg["broker"]["port"], self.secrets, self._namespaces(), users, probe=self._probe
        )

    def _start_broker(self) -> subprocess.Popen:
        return _broker.start(self.home / "broker", self.cfg["broker"]["port"], self.logs / "broker.log")

    # ---- devices -----------------------------------------------------------------------
    def _device_key(self, ns: str, dev: str) -> str:
        return f"{ns}/{dev}"

    def _device_conf(self, ns: str, spec: dict, dev: dict, index: int) -> dict[str, Any]:
        """What a device process is started with (its identity and password included)."""
        host, port = self._broker_addr()
        ext = self.cfg["broker"].get("external")
        user = self.cfg["broker"].get("username") if ext else _broker.device_user(ns, dev["name"])
        pw = self.cfg["broker"].get("password") if ext else self.secrets[user]
        ddir = _home.device_dir(self.home, ns, dev["name"])
        conf = {
            "namespace": ns,
            "device": dev["name"],
            "index": index,
            "state_dir": str(ddir),
            "broker": {"host": host, "port": port, "username": user, "password": pw},
            "profile": self.cfg["profiles"][dev["profile"]],
            "scenario": self.cfg["scenario"],
            "model": dev["model"],
            "seed": self.cfg.get("seed", 0),
            "home": str(self.home),
            "learners": spec.get("learners") or {},
            **{k: v for k, v in self.cfg.get("device_options", {}).items()},
        }
        return conf

    def _spawn_device(self, ns: str, spec: dict, dev: dict, index: int) -> Child:
        key = self._device_key(ns, dev["name"])
        settings = self._device_conf(ns, spec, dev, index)
        conf = Path(settings["state_dir"]) / "config.json"
        _home.write_json(conf, settings, mode=0o600)
        logfile = self.logs / f"device-{ns}-{dev['name']}.log"

        def start() -> subprocess.Popen:
            with open(logfile, "ab") as fh:
                return subprocess.Popen(
                    [sys.executable, "-m", "lab_hardware.runtime.device", "--config", str(conf)],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_home.die_with_parent,
                )

        child = Child(key, start)
        child.settings = settings
        child.start()
        return child

    def _sync_devices(self) -> None:
        wanted: dict[str, tuple] = {}
        for ns, spec in self.cfg["namespaces"].items():
            for i, dev in enumerate(spec["devices"]):
                wanted[self._device_key(ns, dev["name"])] = (ns, spec, dev, i)
        # A device whose settings changed is a new device: a namespace removed and added again
        # within one reload (its SIGHUPs coalesced) has new identities, and the old process
        # would hold the old password.  Stop it first (the two share a state directory).
        for key, args in wanted.items():
            child = self.devices.get(key)
            if child is not None and child.settings is not None and child.settings != self._device_conf(*args):
                log.info("restarting device %s (its settings changed)", key)
                self.devices.pop(key).stop()
        # new devices first (a grader is waiting for them), then stop removed ones together
        for key, args in wanted.items():
            if key not in self.devices:
                self.devices[key] = self._spawn_device(*args)
                log.info("started device %s pid %s", key, self.devices[key].pid)
        removed = [self.devices.pop(key) for key in list(self.devices) if key not in wanted]
        for child in removed:
            log.info("stopping device %s (namespace removed)", child.name)
            if child.proc is not None and child.proc.poll() is None:
                child.proc.terminate()
        for child in removed:
            child.stop()

    # ---- services ----------------------------------------------------------------------
    def _service_argv(self, spec: dict) -> list[str]:
        return [a.replace("{python}", sys.executable).replace("{home}", str(self.home)) for a in spec["argv"]]

    def _spawn_service(self, spec: dict) -> Child:
        logfile = self.logs / f"service-{spec['name']}.log"
        ready = self.home / spec["ready_file"] if spec.get("ready_file") else None
        argv = self._service_argv(spec)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **{str(k): str(v) for k, v in (spec.get("env") or {}).items()}}
        # A service runs in the state directory, so its cwd does not put this checkout on
        # sys.path: name it, so services run the same code as the lab that starts them.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_CODE_ROOT, env.get("PYTHONPATH")]))

        def start() -> subprocess.Popen:
            if ready is not None:
                ready.unlink(missing_ok=True)
            with open(logfile, "ab") as fh:
                return subprocess.Popen(
                    argv,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_home.die_with_parent,
                    env=env,
                    cwd=str(self.home),
                )

        child = Child(f"service {spec['name']}", start)
        child.start()
        return child

    def _sync_services(self) -> None:
        """Start new services, restart changed ones, stop removed ones (after a reload)."""
        wanted = {spec["name"]: spec for spec in self.cfg.get("services") or []}
        for name in list(self.services):
            if name not in wanted or wanted[name] != self._service_specs.get(name):
                child = self.services.pop(name)
                log.info("stopping %s", child.name)
                child.stop()
        for name, spec in wanted.items():
            if name not in self.services:
                try:
                    self.services[name] = self._spawn_service(spec)
                except OSError as exc:  # a wrong argv: logged, the lab keeps serving
                    log.error("service %s could not start: %s", name, exc)
                    continue
                self._service_specs[name] = spec
                log.info("started %s pid %s", self.services[name].name, self.services[name].pid)

    def _services_not_ready(self) -> list[str]:
        out = []
        for name, child in self.services.items():
            rf = self._service_specs[name].get("ready_file")
            if not rf:
                continue
            if not ((self.home / rf).exists() and child.poll() is None):
                out.append(name)
        return out

    # ---- run state ---------------------------------------------------------------------
    def write_run(self, ready: bool) -> None:
        _home.write_json(
            self.home / "run" / "supervisor.json",
            {
                "pid": os.getpid(),
                "ready": ready,
                # the config generation in effect (lab._write_config): waiters compare theirs
                "generation": int(self.cfg.get("generation") or 0),
                "broker": None if self.broker is None else {"pid": self.broker.pid, "restarts": self.broker.restarts},
                "devices": {k: {"pid": c.pid, "restarts": c.restarts} for k, c in self.devices.items()},
                "services": {k: {"pid": c.pid, "restarts": c.restarts} for k, c in self.services.items()},
            },
        )

    def _wait_devices_online(self, timeout: float) -> list[str]:
        """Keys of devices not online (their retained state from this boot) after ``timeout``."""
        host, port = self._broker_addr()
        b = self.cfg["broker"]
        user = b.get("username") if b.get("external") else _broker.CONTROL_USER
        pw = b.get("password") if b.get("external") else self.secrets[_broker.CONTROL_USER]
        online: dict[str, int] = {}

        def on_message(cl, ud, msg):
            p = topics.parse(msg.topic)
            try:
                st = topics.decode(msg.payload)
            except ValueError:
                return
            if p and st.get("online"):
                online[self._device_key(p["namespace"], p["device"])] = st.get("pid")

        c = mqtt.client(username=user, password=pw)
        c.on_message = on_message
        mqtt.connect(c, host, port)
        try:
            for ns in self.cfg["namespaces"]:
                mqtt.subscribe_wait(c, topics.namespace_prefix(ns) + "/devices/+/state")

            def pending() -> list[str]:
                return [k for k, ch in self.devices.items() if online.get(k) != ch.pid]

            mqtt.wait_until(lambda: not pending() or self.stopping.is_set(), timeout, 0.02)
            return pending()
        finally:
            mqtt.stop(c)

    # ---- replay store ------------------------------------------------------------------
    def _start_collector(self) -> None:
        """Store every capture devices publish (scrubbed on the device) in home/replays/.

        A persistent session (fixed client id, QoS 1) so captures published while the
        supervisor reconnects are not lost; duplicates are dropped by decision seq.
        """
        host, port = self._broker_addr()
        b = self.cfg["broker"]
        user = b.get("username") if b.get("external") else _broker.CONTROL_USER
        pw = b.get("password") if b.get("external") else self.secrets[_broker.CONTROL_USER]
        c = mqtt.client(f"collector.{self.home.name}-{os.getpid()}"[:60], username=user, password=pw, clean=False)

        c.on_message = lambda cl, ud, msg: self.collect(msg.payload, msg.topic)
        # (re)connecting subscribes every namespace of the current configuration
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(
            [(self._capture_topic(ns), 1) for ns in self.cfg["namespaces"]]
        )
        mqtt.connect(c, host, port)
        self.collector = c

    def collect(self, payload: bytes, topic: str = "") -> Path | None:
        """Store one capture message; None when it is refused (logged, never kept)."""
        try:
            from lab_hardware.modelops import replay

            message = topics.decode(payload, limit=16 * 2**20)
            ns = message.get("namespace") if isinstance(message, dict) else None
            with self._collect_lock:
                if ns not in self.collected:
                    log.info("capture on %s dropped: namespace %r is not in the lab (removed)", topic, ns)
                    return None
                return replay.store_capture(self.home, message)
        except Exception as exc:  # noqa: BLE001 - a bad capture is logged, never kept
            log.warning("capture on %s refused: %s", topic, str(exc).splitlines()[0])
            return None

    @staticmethod
    def _capture_topic(ns: str) -> str:
        return topics.namespace_prefix(ns) + "/devices/+/capture"

    def _follow_namespaces(self) -> None:
        """Subscribe the collector to namespaces added since (a reload); stop following the
        removed ones.  Subscribed before their devices start, so no capture is missed."""
        now = set(self.cfg["namespaces"])
        added, gone = sorted(now - self.collected), sorted(self.collected - now)
        with self._collect_lock:
            self.collected |= set(added)
        if self.collector is None:
            with self._collect_lock:
                self.collected = now
            return
        for ns in added:
            try:
                mqtt.subscribe_wait(self.collector, self._capture_topic(ns))
            except Exception as exc:  # noqa: BLE001 - on_connect subscribes it on the next reconnect
                log.warning("collector could not subscribe namespace %s yet: %s", ns, exc)
        if gone:
            self.collector.unsubscribe([self._capture_topic(ns) for ns in gone])
        with self._collect_lock:  # a capture being stored now finishes first; none after
            self.collected = now

    # ---- the metadata trail ------------------------------------------------------------
    def _start_observer(self) -> None:
        """What devices send, against what their artifacts declare (the privacy audit), and
        the run events of device-side artifacts.  Off with ``config.json`` ``"observer": false``;
        a failure to start is logged and the lab runs without it."""
        if self.cfg.get("observer") is False:
            return
        from lab_hardware.runtime import observer

        host, port = self._broker_addr()
        b = self.cfg["broker"]
        user = b.get("username") if b.get("external") else _broker.CONTROL_USER
        pw = b.get("password") if b.get("external") else self.secrets[_broker.CONTROL_USER]
        try:
            self.observer = observer.start(self.home, host, port, user, pw)
        except Exception as exc:  # noqa: BLE001 - the lab serves without its observer
            log.error("the lineage observer did not start: %s", exc)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if not self.cfg["broker"].get("external"):
            self._write_broker_files()
            self.broker = Child("broker", self._start_broker)
            self.broker.start()
            log.info("broker pid %s on 127.0.0.1:%s", self.broker.pid, self.cfg["broker"]["port"])
        self._start_collector()
        self._start_observer()
        self._sync_services()
        self._sync_devices()
        self.write_run(False)
        timeout = float(self.cfg.get("ready_timeout", 20))
        deadline = time.monotonic() + timeout
        missing = self._wait_devices_online(timeout)
        if missing:
            raise RuntimeError(f"devices did not come online: {', '.join(missing)} (see logs/)")
        while self._services_not_ready() and not self.stopping.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"lab services not ready: {', '.join(self._services_not_ready())} (see logs/service-*.log)"
                )
            time.sleep(0.02)
        self.write_run(True)
        log.info("lab ready")

    def reload(self) -> None:
        self.cfg = _home.read_json(self.home / "config.json")
        self.secrets = _home.read_json(self.home / "secrets" / "identities.json")
        if self.broker is not None:
            self._write_broker_files()
            _broker.reload(self.broker.proc)
            if self.broker.proc is not None and not _broker.confirm_reload(
                self.broker.proc, int(self.cfg["broker"]["port"]), self._probe
            ):
                log.error("the broker did not take the new identities and ACL (it may be restarting)")
        self._follow_namespaces()
        self._sync_services()
        self._sync_devices()
        self.write_run(True)
        log.info("configuration reloaded")

    def watch(self) -> None:
        """Restart what dies, with backoff, until asked to stop."""
        while not self.stopping.wait(0.05):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                try:
                    self.reload()
                except Exception as exc:  # noqa: BLE001 - the lab serves on with what it had
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    log.error("reload failed (the lab serves on as it was): %s: %s", type(exc).__name__, first)
            changed = False
            for child in (
                ([self.broker] if self.broker else []) + list(self.services.values()) + list(self.devices.values())
            ):
                rc = child.poll()
                if rc is None:
                    if child.failures and time.monotonic() - child.started_at > 10:
                        child.failures = 0
                    continue
                now = time.monotonic()
                if child.next_start == 0.0:
                    delay = RESTART_BACKOFF[min(child.failures, len(RESTART_BACKOFF) - 1)]
                    child.next_start = now + delay
                    log.warning("%s exited with code %s; restarting in %.2f s", child.name, rc, delay)
                if now >= child.next_start:
                    try:
                        child.start()
                        child.restarts += 1
                        log.info("%s restarted, pid %s", child.name, child.pid)
                    except Exception as exc:  # noqa: BLE001 - keep supervising, report it
                        log.error("%s failed to restart: %s", child.name, exc)
                    child.failures += 1
                    child.next_start = 0.0
                    changed = True
            if changed:
                self.write_run(True)

    def stop(self) -> None:
        if getattr(self, "collector", None) is not None:
            mqtt.stop(self.collector)
        if getattr(self, "observer", None) is not None:
            from lab_hardware.runtime import observer

            try:
                observer.stop(self.observer)
            except Exception as exc:  # noqa: BLE001 - stopping goes on
                log.warning("the lineage observer did not stop cleanly: %s", exc)
        for child in self.devices.values():
            if child.proc and child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + 5
        for child in self.devices.values():
            if child.proc:
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        for child in self.services.values():
            child.stop()
        if self.broker is not None:
            self.broker.stop()
        log.info("lab stopped")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab_hardware.runtime.supervisor",
        description="Supervise one lab's broker and devices (started by 'livelab up').",
    )
    p.add_argument("--home", required=True)
    args = p.parse_args(argv)
    home = Path(args.home)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sup = Supervisor(home)
    signals.route(
        {signal.SIGTERM: sup.stopping.set, signal.SIGINT: sup.stopping.set, signal.SIGHUP: sup.reload_requested.set}
    )
    code = 0
    try:
        sup.start()
        sup.watch()
    except Exception as exc:  # noqa: BLE001 - the one line 'up' shows the user
        log.error("FATAL %s", exc)
        code = 1
    finally:
        sup.stop()
        (home / "run" / "supervisor.json").unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
