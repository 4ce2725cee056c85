"""Bring a lab up, look at it, bring it down: the library behind ``livelab up|down|status|logs``.

A lab is one broker + N devices + a state directory.  ``up`` writes the lab
config and identities, starts the supervisor detached, and returns once every
device is online; the learner descriptor ``lab.json`` is written only then.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab_hardware.runtime import broker as _broker
from lab_hardware.runtime import oracle as _oracle
from lab_hardware import home as _home
from lab_hardware import mqtt, profiles, topics


class LabError(RuntimeError):
    """A problem the user can fix; the message is one line saying how."""


def _check_writable(home: Path) -> None:
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise LabError(
            f"state directory {home} is not writable ({exc.strerror}): choose another with --home or LIVELAB_HOME"
        ) from None


def _supervisor_pid(home: Path) -> int | None:
    try:
        pid = int((home / "run" / "supervisor.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _home.pid_alive(pid) else None


def is_running(home: Path) -> bool:
    return _supervisor_pid(home) is not None


def service_names(home: Path) -> list[str]:
    """The lab services the lab in ``home`` was started with (e.g. ``["oracle", "recorder"]``);
    empty when its config cannot be read."""
    try:
        cfg = _home.read_json(_home.resolve(home) / "config.json")
    except (OSError, ValueError):
        return []
    return sorted(str(s.get("name")) for s in cfg.get("services") or [] if isinstance(s, dict))


def descriptor(home: Path) -> dict[str, Any]:
    """The learner descriptor of a running lab, or LabError."""
    home = _home.resolve(home)
    if not is_running(home):
        raise LabError(f"no lab is running in {home}: start one with 'livelab up'")
    return _home.read_json(home / _home.DESCRIPTOR)


def owner_name() -> str | None:
    """The learner name of whoever runs ``livelab up`` (``$LIVELAB_LEARNER``, else the login
    name), or None if it is not a valid name: the single-user lab records the commands of
    its learner identity under this name (and the SDK defaults to it)."""
    import pwd

    for cand in (os.environ.get("LIVELAB_LEARNER"), os.environ.get("USER")):
        if cand:
            break
    else:
        try:
            cand = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            return None
    return cand if topics.AUTHOR_RE.match(cand) and cand != _broker.CONTROL_USER else None


def name_learner(home: str | os.PathLike | None, namespace: str, name: str, *, timeout: float = 5.0) -> None:
    """Tell a namespace's devices the learner name of its learner identity (a retained,
    control-only message): their audit records then say ``by: <name>`` for the commands the
    broker proves came from ``learner.<namespace>``.  Used when the learner is known only
    after the namespace exists (a grading slot taken from a pool)."""
    topics.check_name("namespace", namespace)
    if not isinstance(name, str) or not topics.AUTHOR_RE.match(name) or name == _broker.CONTROL_USER:
        raise LabError(f"invalid learner name {name!r}")
    c = control_client(_home.resolve(home))
    try:
        payload = topics.encode({"schema": topics.SCHEMA_LEARNERS, "names": {_broker.learner_user(namespace): name}})
        info = c.publish(topics.control(namespace, "learners"), payload, qos=1, retain=True)
        info.wait_for_publish(timeout)
    finally:
        mqtt.stop(c)


def _identities(namespaces: dict[str, list[str]], old: dict[str, str]) -> dict[str, str]:
    users = [_broker.CONTROL_USER, _broker.ORACLE_USER]
    for ns, devs in namespaces.items():
        users.append(_broker.learner_user(ns))
        users += [_broker.device_user(ns, d) for d in devs]
    return {u: old.get(u) or secrets.token_urlsafe(18) for u in users}


def up(
    home: str | os.PathLike | None = None,
    *,
    scenario: dict[str, Any],
    devices: int = 3,
    profile: str = "none",
    namespace: str = "default",
    broker_url: str | None = None,
    port: int | None = None,
    device_options: dict[str, Any] | None = None,
    timeout: float = 30.0,
    services: list[dict[str, Any]] | None = None,
    oracle: bool | dict[str, Any] = False,
    observer: bool = True,
) -> dict[str, Any]:
    """Start a lab (or reuse the running one with the same shape) and return its descriptor.

    ``scenario`` is a materialized scenario (see ``labs.scenarios``): file paths
    and parameters the devices read, so this layer never imports scenario code.
    ``services`` are lab-side processes the supervisor runs beside the devices (see
    ``lab_hardware.runtime.supervisor``: ``{"name", "argv", "ready_file"?}``), e.g. the
    trusted recorder of learner events; named by command line, so this layer imports none.
    ``oracle`` (True, or its options ``{"concurrency", "queue"}``) also runs the lab oracle
    (``lab_hardware.runtime.oracle``), which devices route ambiguous decisions to when their
    bundle declares ``routing``.  Off by default: an idle oracle costs a process, ~60 MB and a
    model load, which most modules do not need.  ``observer`` (default on) runs the metadata
    trail's observer in the supervisor (``lab_hardware.runtime.observer``: the privacy audit of
    what devices send, the events of installs, revocations and captures).
    """
    home = _home.resolve(home)
    topics.check_name("namespace", namespace)
    if not 1 <= devices <= 64:
        raise LabError(f"--devices must be between 1 and 64, not {devices}")
    prof = profiles.load(profile)
    svcs = list(services or [])
    if oracle:
        if not scenario.get("oracle_model"):
            raise LabError(f"scenario {scenario.get('name')!r} has no oracle model: add [oracle] to its scenario.toml")
        try:
            svcs.append(_oracle.service(oracle if isinstance(oracle, dict) else None))
        except ValueError as exc:
            raise LabError(str(exc)) from None
    svcs = _check_services(svcs)
    _check_writable(home)
    wanted = {
        "devices": devices,
        "profile": profile,
        "scenario": scenario.get("name"),
        "namespace": namespace,
        "broker_url": broker_url,
    }
    if oracle:  # (only then: labs started without one keep the shape they had)
        wanted["oracle"] = True
    if is_running(home):
        cfg = _home.read_json(home / "config.json")
        if cfg.get("shape") == wanted and (port is None or cfg["broker"]["port"] == port):
            desc = descriptor(home)
            desc["reused"] = True
            return desc
        raise LabError(
            f"a lab with another shape is already running in {home}: run 'livelab down' first (or use another --home)"
        )
    if broker_url:
        try:
            addr = _broker.BrokerAddress.from_url(broker_url)
        except ValueError as exc:
            raise LabError(str(exc)) from None
        broker_cfg = {
            "external": True,
            "host": addr.host,
            "port": addr.port,
            "username": addr.username,
            "password": addr.password,
            "url": broker_url,
        }
        _probe_external(addr)
    else:
        _broker.find_mosquitto()
        _broker.find_mosquitto_passwd()
        if port is not None and _broker.port_in_use(port):
            raise LabError(f"port {port} on 127.0.0.1 is in use: choose another with --port or omit it")
        broker_cfg = {"external": False, "host": "127.0.0.1", "port": port or _broker.free_port()}

    names = [f"dev-{i}" for i in range(devices)]
    models = list(scenario["device_models"])
    ns_cfg = {
        namespace: {
            "devices": [{"name": n, "profile": profile, "model": models[i % len(models)]} for i, n in enumerate(names)]
        }
    }
    owner = owner_name()
    if owner and not broker_url:
        ns_cfg[namespace]["learners"] = {_broker.learner_user(namespace): owner}
    sdir = _home.secrets_dir(home)
    old = _home.read_json(sdir / "identities.json") if (sdir / "identities.json").exists() else {}
    ids = _identities({namespace: names}, old)
    _home.write_json(sdir / "identities.json", ids, mode=0o600)
    # the key the lab's own writers sign outcome events with: from the first minute, so an
    # event a learner forges before any grading is already one that does not count
    _home.events_key(home)
    control = (
        {"username": broker_cfg["username"], "password": broker_cfg["password"]}
        if broker_url
        else {"username": _broker.CONTROL_USER, "password": ids[_broker.CONTROL_USER]}
    )
    _home.write_json(sdir / "control.json", control, mode=0o600)
    cfg = {
        "shape": wanted,
        "broker": broker_cfg,
        "namespaces": ns_cfg,
        "scenario": scenario,
        "profiles": {profile: prof.as_dict()},
        "device_options": device_options or {},
        "ready_timeout": timeout,
        "owner": owner,
        "services": svcs,
        "observer": bool(observer),
    }
    if owner:  # the learner of the lab's own namespace, for the lab's trusted event writers
        ns_cfg[namespace]["learner"] = owner
    _home.write_json(home / "config.json", cfg, mode=0o600)
    (home / _home.DESCRIPTOR).unlink(missing_ok=True)
    (home / "run").mkdir(exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)

    with open(home / "logs" / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lab_hardware.runtime.supervisor", "--home", str(home)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    (home / "run" / "supervisor.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout + 5
    run_file = home / "run" / "supervisor.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (home / "run" / "supervisor.pid").unlink(missing_ok=True)
            raise LabError(f"lab failed to start: {_last_error(home)}")
        try:
            if _home.read_json(run_file).get("ready"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    else:
        _stop_supervisor(home, proc.pid)
        raise LabError(f"lab did not become ready within {timeout:.0f} s: {_last_error(home)}")

    learner = (
        {"username": broker_cfg["username"], "password": broker_cfg["password"]}
        if broker_url
        else {"username": _broker.learner_user(namespace), "password": ids[_broker.learner_user(namespace)]}
    )
    desc = {
        "schema": "livelab.lab/v1",
        "home": str(home),
        "broker": {"host": broker_cfg["host"], "port": broker_cfg["port"], "external": bool(broker_url)},
        "namespace": namespace,
        "learner": learner,
        "devices": names,
        "scenario": scenario.get("name"),
        "intents": scenario.get("intents"),
        "defect_intent": scenario.get("defect_intent"),
        "profile": profile,
        "supervisor_pid": proc.pid,
        "started": time.time(),
        **({"owner": owner, "learner_name": owner} if owner else {}),
    }
    _home.write_json(home / _home.DESCRIPTOR, desc, mode=0o644)
    return desc


def _check_services(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refuse a malformed service list with one line (the supervisor trusts config.json)."""
    out, seen = [], set()
    for svc in services:
        if (
            not isinstance(svc, dict)
            or not isinstance(svc.get("argv"), list)
            or not svc["argv"]
            or not all(isinstance(a, str) for a in svc["argv"])
        ):
            raise LabError(f"a lab service needs a non-empty 'argv' list of strings, not {svc!r}")
        name = topics.check_name("service", svc.get("name", ""))
        if name in seen:
            raise LabError(f"two lab services are named {name!r}")
        seen.add(name)
        out.append({k: svc[k] for k in ("name", "argv", "ready_file", "env") if k in svc})
    return out


def _probe_external(addr: _broker.BrokerAddress) -> None:
    c = mqtt.client(username=addr.username, password=addr.password)
    try:
        mqtt.connect(c, addr.host, addr.port, timeout=3)
    except mqtt.ConnectError as exc:
        raise LabError(str(exc)) from None
    mqtt.stop(c)


def _last_error(home: Path) -> str:
    try:
        lines = (home / "logs" / "supervisor.log").read_text(errors="replace").splitlines()
    except OSError:
        return "no supervisor log"
    for line in reversed(lines):
        if " ERROR " in line:
            return line.split(" ERROR ", 1)[1].removeprefix("FATAL ").strip()
    return lines[-1].strip() if lines else "no supervisor log"


def _stop_supervisor(home: Path, pid: int, timeout: float = 15.0) -> None:
    _terminate(pid, timeout, group=True)
    try:  # reap it if it is our child (tests and 'up' failures)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _is_ours(pid: int, home: Path) -> bool:
    """Guard against PID reuse: our processes name the state directory on their command line."""
    try:
        return str(home) in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        return False


def _terminate(pid: int, timeout: float = 5.0, *, group: bool = False) -> None:
    """SIGTERM, wait, then SIGKILL (the whole process group for the supervisor)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _home.pid_alive(pid):
        time.sleep(0.02)
    if _home.pid_alive(pid):
        try:
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def lab_pids(home: Path) -> list[int]:
    """Every process the lab's supervisor says it runs (for down and for tests)."""
    pids = []
    home = _home.resolve(home)
    sup = _supervisor_pid(home)
    if sup:
        pids.append(sup)
    try:
        run = _home.read_json(home / "run" / "supervisor.json")
    except (OSError, ValueError):
        return pids
    if run.get("broker"):
        pids.append(run["broker"]["pid"])
    pids += [d["pid"] for d in run.get("devices", {}).values() if d.get("pid")]
    pids += [d["pid"] for d in run.get("services", {}).values() if d.get("pid")]
    return pids


def down(home: str | os.PathLike | None = None, *, timeout: float = 15.0) -> dict[str, Any]:
    """Stop the lab and every process it started; safe to call when nothing runs."""
    home = _home.resolve(home)
    pid = _supervisor_pid(home)
    pids = lab_pids(home)
    if pid is None:
        stray = [p for p in pids if _home.pid_alive(p) and _is_ours(p, home)]
        for p in stray:  # the supervisor died (kill -9) and left children
            _terminate(p)
        (home / "run" / "supervisor.pid").unlink(missing_ok=True)
        (home / "run" / "supervisor.json").unlink(missing_ok=True)
        if stray:
            return {
                "stopped": True,
                "message": f"lab in {home} had lost its supervisor; stopped {len(stray)} leftover processes",
            }
        return {"stopped": False, "message": f"no lab running in {home}"}
    _stop_supervisor(home, pid, timeout)
    left = [p for p in pids if _home.pid_alive(p) and _is_ours(p, home)]
    for p in left:  # children that outlived their supervisor (it was killed -9)
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    (home / "run" / "supervisor.pid").unlink(missing_ok=True)
    (home / _home.DESCRIPTOR).unlink(missing_ok=True)
    return {"stopped": True, "message": f"lab in {home} stopped ({len(pids)} processes)"}


def control_credentials(home: Path) -> dict[str, str]:
    return _home.read_json(_home.resolve(home) / "secrets" / "control.json")


def control_client(home: Path, **kwargs):
    """A connected paho client with control-plane rights (for tools, tests and the grader)."""
    home = _home.resolve(home)
    desc = descriptor(home)
    cred = control_credentials(home)
    c = mqtt.client(username=cred["username"], password=cred["password"], **kwargs)
    mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])
    return c


# ---- namespaces on a running lab ---------------------------------------------------------
class _ConfigLock:
    """Serializes read-modify-write of config.json and identities.json (graders add and remove
    namespaces from several processes at once)."""

    def __init__(self, home: Path):
        (home / "run").mkdir(exist_ok=True)
        self.path = home / "run" / "config.lock"

    def __enter__(self):
        import fcntl

        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _running_supervisor(home: Path) -> int:
    pid = _supervisor_pid(home)
    if pid is None:
        raise LabError(f"no lab is running in {home}: start one with 'livelab up'")
    return pid


def _device_report(home: Path, ns: str, device: str, run: dict | None, online_pid: int | None) -> str:
    """What is known of a device that has not announced itself online (for one error line):
    the supervisor's process for it, what it announced, and the last line of its own log;
    empty when it is online."""
    pid = (run or {}).get("pid")
    if pid and online_pid == pid:
        return ""
    if not pid:
        state = "not started by the supervisor"
    elif not _home.pid_alive(pid):
        state = f"its process {pid} exited"
    elif online_pid is None:
        state = f"running (pid {pid}), not announced online"
    else:
        state = f"announced online from pid {online_pid}, the supervisor runs pid {pid}"
    last = _broker._tail(home / "logs" / f"device-{ns}-{device}.log").strip()
    return f"{device}: {state}; its log: {last[-240:]}"


def _wait_namespace(
    home: Path, ns: str, devices: list[str], *, present: bool, timeout: float, generation: int | None = None
) -> None:
    """Wait until the supervisor runs (present) or stopped (not present) the namespace's devices;
    when present, also until each device announced itself online from its new process.

    ``generation``: the config generation that added or removed the namespace.  Nothing counts
    until the supervisor has applied it (or a later one): before that, its run file may show
    the devices of an earlier generation (a namespace removed and added again)."""
    keys = [f"{ns}/{d}" for d in devices]
    online: dict[str, int] = {}
    c = None
    if present:
        c = control_client(home)

        def on_message(cl, ud, msg):
            p = topics.parse(msg.topic)
            try:
                st = topics.decode(msg.payload)
            except ValueError:
                return
            if p and st.get("online"):
                online[f"{p['namespace']}/{p['device']}"] = st.get("pid")

        c.on_message = on_message
        mqtt.subscribe_wait(c, topics.namespace_prefix(ns) + "/devices/+/state")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                state = _home.read_json(home / "run" / "supervisor.json")
            except (OSError, ValueError):
                state = {}
            run = state.get("devices", {})
            applied = state.get("generation")
            if generation is not None and isinstance(applied, int) and applied < generation:
                pass  # the supervisor has not applied this change yet
            elif present:
                pids = {k: (run.get(k) or {}).get("pid") for k in keys}
                if all(pids.values()) and all(online.get(k) == pids[k] for k in keys):
                    return
            elif generation is not None and isinstance(applied, int):
                return  # applied: the supervisor stops a removed namespace's devices before it says so
            elif not any(k in run and _home.pid_alive(run[k].get("pid")) for k in keys):
                return
            if time.monotonic() > deadline:
                if present:
                    late = [_device_report(home, ns, d, run.get(k), online.get(k)) for d, k in zip(devices, keys)]
                    raise LabError(
                        f"the devices of namespace {ns!r} did not come online within {timeout:.0f} s: "
                        + "; ".join(r for r in late if r)
                        + f" (supervisor: {_last_error(home)})"
                    )
                raise LabError(
                    f"the devices of namespace {ns!r} did not stop within {timeout:.0f} s: {_last_error(home)}"
                )
            time.sleep(0.02)
    finally:
        if c is not None:
            mqtt.stop(c)


def _write_config(home: Path, cfg: dict[str, Any]) -> int:
    """Write the running lab's ``config.json`` (under :class:`_ConfigLock`) with its next
    ``generation``; returns it.  The supervisor writes the generation it applied last into
    ``run/supervisor.json``: a change is in effect once that is at least this one (SIGHUPs sent
    close together coalesce into one reload, which applies the latest config)."""
    cfg["generation"] = int(cfg.get("generation") or 0) + 1
    _home.write_json(home / "config.json", cfg, mode=0o600)
    return cfg["generation"]


def set_service(home: str | os.PathLike | None, name: str, spec: dict[str, Any] | None) -> None:
    """Add, replace (``spec``) or remove (None) a lab service in the running lab's config and
    ask the supervisor to reload: it starts, restarts or stops it (see the supervisor's doc)."""
    home = _home.resolve(home)
    pid = _running_supervisor(home)
    with _ConfigLock(home):
        cfg = _home.read_json(home / "config.json")
        svcs = [s for s in cfg.get("services") or [] if s.get("name") != name]
        if spec is not None:
            if not isinstance(spec.get("argv"), list) or not all(isinstance(a, str) for a in spec["argv"]):
                raise LabError(f"service {name!r}: argv must be a list of strings")
            svcs.append({**spec, "name": name})
        cfg["services"] = svcs
        _write_config(home, cfg)
    os.kill(pid, signal.SIGHUP)


def add_namespace(
    home: str | os.PathLike | None = None,
    namespace: str = "",
    *,
    devices: int = 3,
    models: list[str] | None = None,
    profile: str | None = None,
    timeout: float = 60.0,
    learner: str | None = None,
) -> dict[str, Any]:
    """Add a namespace with its own devices and learner identity to the running lab.

    Why in a running lab: a grading job (or a team member) needs topics, credentials and
    devices of its own, and starting a broker per job costs more than adding identities to
    the one that runs (see bench/grading.py).  The namespace and its device identities are
    written to ``config.json`` and ``secrets/identities.json``, the supervisor is asked to
    reload (SIGHUP: the broker re-reads passwords and ACL, the new devices start), and this
    returns once every new device is online.  Returns the namespace's descriptor (as
    ``lab.json`` would hold it, learner credentials included).

    ``learner`` makes it a registered learner's namespace (``labs.learners``): the broker
    username is then the learner's own name (one identity from login to audit chain), and
    the lab's trusted writers take that name as the ``learner`` of the namespace's events.
    Without it (grading jobs) the username stays ``learner.<namespace>``.
    """
    home = _home.resolve(home)
    topics.check_name("namespace", namespace)
    if learner is not None:
        topics.check_name("learner", learner)
    if not 1 <= devices <= 64:
        raise LabError(f"devices must be between 1 and 64, not {devices}")
    pid = _running_supervisor(home)
    names = [f"dev-{i}" for i in range(devices)]
    with _ConfigLock(home):
        cfg = _home.read_json(home / "config.json")
        if cfg["broker"].get("external"):
            raise LabError(
                "namespaces can be added only to a lab with its own broker (not --broker-url): "
                "an external broker's identities are not the lab's to change"
            )
        if namespace in cfg["namespaces"]:
            raise LabError(f"namespace {namespace!r} already exists in the lab in {home}")
        prof_name = profile or cfg["shape"]["profile"]
        if prof_name not in cfg["profiles"]:
            cfg["profiles"][prof_name] = profiles.load(prof_name).as_dict()
        sc = cfg["scenario"]
        chosen = list(models or sc["device_models"])
        unknown = [m for m in chosen if m not in sc["models"]]
        if unknown:
            raise LabError(f"unknown model {unknown[0]!r}; the scenario has {', '.join(sc['models'])}")
        sdir = _home.secrets_dir(home)
        ids = _home.read_json(sdir / "identities.json")
        learner_user = learner or _broker.learner_user(namespace)
        if learner_user in ids:
            raise LabError(f"broker identity {learner_user!r} already exists in the lab in {home}")
        cfg["namespaces"][namespace] = {
            "devices": [
                {"name": n, "profile": prof_name, "model": chosen[i % len(chosen)]} for i, n in enumerate(names)
            ]
        }
        if learner is not None:
            cfg["namespaces"][namespace].update(
                {"learner": learner, "learner_user": learner_user, "learners": {learner_user: learner}}
            )
        for user in [learner_user] + [_broker.device_user(namespace, n) for n in names]:
            ids[user] = secrets.token_urlsafe(18)
        _home.write_json(sdir / "identities.json", ids, mode=0o600)
        generation = _write_config(home, cfg)
    os.kill(pid, signal.SIGHUP)
    try:
        _wait_namespace(home, namespace, names, present=True, timeout=timeout, generation=generation)
    except LabError as exc:
        try:  # take it back out (its own bound: the wait above may have been a short one)
            remove_namespace(home, namespace, timeout=max(timeout, 30.0))
        except LabError as again:
            raise LabError(f"{exc} (and taking the namespace back out failed: {again})") from None
        raise
    desc = descriptor(home)
    out = {
        **desc,
        "namespace": namespace,
        "devices": names,
        "learner": {"username": learner_user, "password": ids[learner_user]},
        "started": time.time(),
    }
    out.pop("owner", None)
    out.pop("learner_name", None)
    if learner is not None:
        out["learner_name"] = learner
    return out


def remove_namespace(
    home: str | os.PathLike | None = None, namespace: str = "", *, purge: bool = False, timeout: float = 30.0
) -> dict[str, Any]:
    """Stop a namespace's devices and remove its identities from the running lab.

    Its retained messages are cleared; its device state (audit chains, installed bundles)
    stays on disk as evidence unless ``purge``.  The lab's own namespace cannot be removed.
    """
    import shutil

    home = _home.resolve(home)
    topics.check_name("namespace", namespace)
    pid = _running_supervisor(home)
    with _ConfigLock(home):
        cfg = _home.read_json(home / "config.json")
        if namespace == cfg["shape"].get("namespace"):
            raise LabError(f"namespace {namespace!r} is the lab's own: stop the lab with 'livelab down'")
        spec = cfg["namespaces"].pop(namespace, None)
        if spec is None:
            raise LabError(f"no namespace {namespace!r} in the lab in {home}")
        names = [d["name"] for d in spec["devices"]]
        sdir = _home.secrets_dir(home)
        ids = _home.read_json(sdir / "identities.json")
        learner_user = spec.get("learner_user") or _broker.learner_user(namespace)
        for user in [learner_user] + [_broker.device_user(namespace, n) for n in names]:
            ids.pop(user, None)
        generation = _write_config(home, cfg)
        _home.write_json(sdir / "identities.json", ids, mode=0o600)
    os.kill(pid, signal.SIGHUP)
    _wait_namespace(home, namespace, names, present=False, timeout=timeout, generation=generation)
    retained = []
    try:
        c = control_client(home)
        pre = topics.namespace_prefix(namespace)
        for topic in [topics.state(namespace, n) for n in names] + [
            f"{pre}/control/revocations",
            f"{pre}/control/learners",
        ]:
            retained.append(c.publish(topic, b"", qos=1, retain=True))
        for info in retained:
            info.wait_for_publish(2.0)
        mqtt.stop(c)
    except (mqtt.ConnectError, RuntimeError, ValueError):
        pass
    if purge:
        shutil.rmtree(_home.device_dir(home, namespace, "x").parent, ignore_errors=True)
        from lab_hardware.modelops import keys

        shutil.rmtree(keys.namespace_home(home, namespace), ignore_errors=True)
    return {"namespace": namespace, "devices": names, "purged": purge}


def status(home: str | os.PathLike | None = None, *, timeout: float = 1.5) -> dict[str, Any]:
    """Health of the broker and each device, as ``livelab status --json`` prints it."""
    home = _home.resolve(home)
    if not is_running(home):
        return {"running": False, "home": str(home)}
    desc = descriptor(home)
    run = _home.read_json(home / "run" / "supervisor.json")
    ns = desc["namespace"]
    states: dict[str, dict] = {}
    reachable = True
    try:
        c = control_client(home)
    except mqtt.ConnectError as exc:
        reachable, c = False, None
        broker_error = str(exc)
    if c is not None:
        c.on_message = lambda cl, ud, m: states.__setitem__(topics.parse(m.topic)["device"], topics.decode(m.payload))
        try:
            mqtt.subscribe_wait(c, topics.namespace_prefix(ns) + "/devices/+/state")
            mqtt.wait_until(lambda: len(states) >= len(desc["devices"]), timeout)
        finally:
            mqtt.stop(c)
    devices = []
    for name in desc["devices"]:
        st = states.get(name, {})
        proc = run.get("devices", {}).get(f"{ns}/{name}", {})
        devices.append(
            {
                "name": name,
                "pid": proc.get("pid"),
                "alive": _home.pid_alive(proc.get("pid")),
                "restarts": proc.get("restarts", 0),
                "online": bool(st.get("online")),
                "model": st.get("model"),
                "bundle": st.get("bundle"),
                "profile": st.get("profile"),
                "consent": st.get("consent", {}),
                "telemetry_seq": st.get("telemetry_seq"),
                "last_telemetry": st.get("telemetry_time"),
                "decisions": st.get("decisions"),
                "backlog": st.get("backlog"),
                "refused": st.get("refused"),
                "routing": st.get("routing"),
                "audit_length": st.get("audit_length"),
                "active": st.get("active"),
                "health_check": st.get("health"),
                "shadow": st.get("shadow"),
                "revoked": st.get("revoked", []),
                "slo": st.get("slo"),
            }
        )
    b = run.get("broker") or {}
    svc = (run.get("services") or {}).get(_oracle.NAME)
    oracle = {"enabled": False}
    if svc is not None:
        oracle = {
            "enabled": True,
            "pid": svc.get("pid"),
            "alive": _home.pid_alive(svc.get("pid")),
            "restarts": svc.get("restarts", 0),
            **{k: v for k, v in (_oracle.read_stats(home) or {}).items() if k != "pid"},
        }
    out = {
        "running": True,
        "home": str(home),
        "namespace": ns,
        "scenario": desc["scenario"],
        "profile": desc["profile"],
        "supervisor_pid": desc["supervisor_pid"],
        "broker": {
            "host": desc["broker"]["host"],
            "port": desc["broker"]["port"],
            "external": desc["broker"]["external"],
            "pid": b.get("pid"),
            "alive": True if desc["broker"]["external"] else _home.pid_alive(b.get("pid")),
            "restarts": b.get("restarts", 0),
            "reachable": reachable,
        },
        "devices": devices,
        "oracle": oracle,
    }
    if not reachable:
        out["broker"]["error"] = broker_error
    return out


LOG_SOURCES = ("supervisor", "broker", "devices")


def logs(home: str | os.PathLike | None = None, *, source: str | None = None, lines: int = 40) -> str:
    """The tail of the lab's logs (supervisor, broker, each device)."""
    home = _home.resolve(home)
    d = home / "logs"
    if not d.is_dir():
        raise LabError(f"no logs in {home}: has a lab been started there?")
    files = sorted(d.glob("*.log"))
    if source:
        files = [
            f
            for f in files
            if f.stem == source or f.stem.startswith(source.rstrip("s") + "-") or f.stem.endswith("-" + source)
        ]
        if not files:
            raise LabError(f"no log named {source!r}; have: {', '.join(f.stem for f in sorted(d.glob('*.log')))}")
    out = []
    for f in files:
        tail = f.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"==> {f.name} <==")
        out.extend(tail)
    return "\n".join(out)
