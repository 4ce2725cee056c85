"""Learners on one lab: the registry and the provisioning behind ``livelab learners``.

A team shares one lab.  Each learner gets, under one name used everywhere (login, Unix
account, broker username, namespace, audit ``by``, events' ``learner``, gradebook student):

* a **namespace** of the running lab with its own devices, identity and ACL
  (``lab_hardware.runtime.lab.add_namespace``, with the learner's name as broker username);
* a **Unix account** (when run as root; the JupyterHub ``LocalProcessSpawner`` convention), so
  the learner's Jupyter server and kernels run as that account and the lab's state directory
  (mode 0700, with ``secrets/``, ``keys/``, config, events store, device state) is out of reach;
* a **learner home** (the account's home, mode 0700) holding, of the lab, only
  ``.livelab/lab.json``: the learner's own broker credentials and namespace -- never control
  or device credentials, never a signing key.

The registry (``learners.json`` in the lab's state directory, mode 0600) records who is who;
``learner_for_path`` answers "whose work is this file" for the grader.

Without root there is no account to run a learner's processes as, so ``add`` refuses unless
told ``account=False`` (a trusted single-user machine, a benchmark): then the learner home is
a folder under ``learners_root`` owned by whoever runs this, and nothing is hidden from anyone.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from lab_hardware import home as _home
from lab_hardware import topics
from lab_hardware.runtime import lab as _lab

REGISTRY = "learners.json"
SCHEMA = "livelab.learners/v1"
#: Names that are identities of the lab itself (broker users, namespaces, system accounts).
RESERVED = frozenset({"control", "default", "observer", "root", "nobody", "admin", "livelab", "mosquitto"})
RESERVED_PREFIXES = ("device", "learner.")
#: Where learners' homes go when accounts are not created (``account=False``) and no
#: ``learners_root`` is given: beside the lab's state directory, never inside it.
ENV_ROOT = "LIVELAB_LEARNERS_DIR"
#: Unix accounts below this uid belong to the system: never adopted as a learner.
MIN_UID = 1000


class LearnerError(ValueError):
    """A learner operation the user can fix; the message is one line saying how."""


def check_name(name: str) -> str:
    """A learner name: a valid topic level and broker username, and not the lab's own."""
    try:
        topics.check_name("learner", name)
        if not topics.NAME_RE.fullmatch(name):  # '$' alone lets a trailing newline through
            raise topics.TopicError(f"invalid learner name {name!r}: use 1-63 lower-case letters, digits, '-' or '_'")
    except topics.TopicError as exc:
        raise LearnerError(str(exc)) from None
    if name in RESERVED or name.startswith(RESERVED_PREFIXES):
        raise LearnerError(f"learner name {name!r} is reserved for the lab itself: choose another")
    return name


def is_root() -> bool:
    return os.geteuid() == 0


# ---- the registry -----------------------------------------------------------------------
class _Lock:
    """One writer of the registry at a time (a hub spawning two learners at once)."""

    def __init__(self, home: Path):
        (home / "run").mkdir(parents=True, exist_ok=True)
        self.path = home / "run" / "learners.lock"

    def __enter__(self) -> "_Lock":
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _read(home: Path) -> dict[str, Any]:
    path = home / REGISTRY
    if not path.exists():
        return {"schema": SCHEMA, "learners": {}}
    return _home.read_json(path)


def _write(home: Path, reg: dict[str, Any]) -> None:
    _home.write_json(home / REGISTRY, reg, mode=0o600)


def list_learners(home: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every registered learner (``name``, ``team``, ``namespace``, ``unix_user``, ``home_dir``,
    ``descriptor``, ...), by name, each with ``active``: its namespace is in the running lab."""
    h = _home.resolve(home)
    reg = _read(h)
    active = _active_namespaces(h)
    return [{**e, "active": e["namespace"] in active} for _, e in sorted(reg["learners"].items())]


def get(home: str | os.PathLike | None, name: str) -> dict[str, Any] | None:
    return _read(_home.resolve(home))["learners"].get(name)


def learner_for_path(home: str | os.PathLike | None, path: str | os.PathLike) -> str | None:
    """The learner whose learner home holds ``path`` (the grader's "whose work is this"), or None."""
    p = Path(path).expanduser().resolve()
    for e in _read(_home.resolve(home))["learners"].values():
        root = Path(e["home_dir"]).resolve()
        if p == root or root in p.parents:
            return e["name"]
    return None


def _active_namespaces(home: Path) -> set[str]:
    if not _lab.is_running(home):
        return set()
    try:
        return set(_home.read_json(home / "config.json")["namespaces"])
    except (OSError, ValueError, KeyError):
        return set()


# ---- Unix accounts ----------------------------------------------------------------------
def _account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _create_account(name: str, learners_root: Path | None) -> tuple[pwd.struct_passwd, bool]:
    """The learner's Unix account: adopted if a regular account of that name exists (PAM
    logins), else created with a private home.  Returns (account, created)."""
    existing = _account(name)
    if existing is not None:
        if existing.pw_uid < MIN_UID:
            raise LearnerError(f"{name!r} is a system account (uid {existing.pw_uid}): choose another learner name")
        return existing, False
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    argv = [useradd, "--create-home", "--user-group", "--shell", "/bin/bash", "--comment", f"livelab learner {name}"]
    if learners_root is not None:
        learners_root.mkdir(parents=True, exist_ok=True)
        argv += ["--home-dir", str(learners_root / name)]
    proc = subprocess.run(argv + [name], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise LearnerError(f"could not create the Unix account {name!r}: {msg[-1] if msg else 'useradd failed'}")
    return pwd.getpwnam(name), True


def _delete_account(name: str) -> None:
    userdel = shutil.which("userdel") or "/usr/sbin/userdel"
    subprocess.run([userdel, name], capture_output=True, text=True)


# ---- provisioning -----------------------------------------------------------------------
def _descriptor(ns_desc: dict[str, Any], name: str, team: str | None) -> dict[str, Any]:
    """What the learner may know of the lab: where the broker is, its own identity and devices."""
    keep = (
        "schema",
        "broker",
        "namespace",
        "learner",
        "devices",
        "scenario",
        "intents",
        "defect_intent",
        "profile",
        "started",
    )
    out = {k: ns_desc[k] for k in keep if k in ns_desc}
    out.update({"learner_name": name, "team": team or ""})
    return out


def _write_descriptor(path: Path, desc: dict[str, Any], uid: int | None, gid: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _home.write_json(path, desc, mode=0o600)
    if uid is not None:
        os.chown(path.parent, uid, gid)
        os.chmod(path.parent, 0o700)
        os.chown(path, uid, gid)


def lock_down(home: Path) -> None:
    """A lab with learner accounts: its state directory belongs to the lab and nobody else
    may enter it (secrets, keys, config, events store, device state, grading references)."""
    os.chmod(home, 0o700)
    for sub in ("secrets", "keys"):
        if (home / sub).is_dir():
            os.chmod(home / sub, 0o700)


def add(
    home: str | os.PathLike | None,
    name: str,
    team: str | None = None,
    *,
    account: bool = True,
    learners_root: str | os.PathLike | None = None,
    devices: int = 3,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Register a learner on the running lab and provision it (see the module doc).

    ``account`` (default) creates or adopts the learner's Unix account; without root that is
    refused, since the learner's processes could not run as anyone else (``account=False``:
    no account, nothing hidden -- a trusted single-user machine or a benchmark).  A learner already registered and active is refused; one whose namespace
    went with a lab restart is provisioned again (same home, same account).
    """
    h = _home.resolve(home)
    check_name(name)
    if team is not None and team != "":
        try:
            topics.check_name("team", team)
            if not topics.NAME_RE.fullmatch(team):
                raise topics.TopicError(f"invalid team name {team!r}: use 1-63 lower-case letters, digits, '-' or '_'")
        except topics.TopicError as exc:
            raise LearnerError(str(exc)) from None
    if account and not is_root():
        raise LearnerError(
            f"creating the Unix account of learner {name!r} needs root: run 'sudo livelab "
            "learners add ...' (or --no-account on a single-user machine)"
        )
    _lab.descriptor(h)  # a running lab, or LabError saying how to start one
    root = Path(learners_root or os.environ.get(ENV_ROOT) or (h.parent / f"{h.name}-learners")).expanduser()
    if account and not (learners_root or os.environ.get(ENV_ROOT)):
        root = None  # the system's default home base (/home)
    with _Lock(h):
        reg = _read(h)
        old = reg["learners"].get(name)
        if old is not None and name in _active_namespaces(h):
            raise LearnerError(
                f"learner {name!r} already exists in the lab in {h}: 'livelab learners remove {name}' first"
            )
        if old is not None and team is None:
            team = old.get("team") or None
        created = False
        uid = gid = None
        if account:
            acct, created = _create_account(name, Path(root).resolve() if root else None)
            created = created or bool(old and old.get("account_created"))
            uid, gid, home_dir = acct.pw_uid, acct.pw_gid, Path(acct.pw_dir)
            home_dir.mkdir(parents=True, exist_ok=True)
            os.chown(home_dir, uid, gid)
            os.chmod(home_dir, 0o700)
            lock_down(h)
        else:
            home_dir = Path(root).resolve() / name
            home_dir.mkdir(parents=True, exist_ok=True)
        try:
            ns_desc = _lab.add_namespace(h, name, devices=devices, learner=name, timeout=timeout)
        except Exception:
            if created and not old:
                _delete_account(name)
            raise
        desc_path = home_dir / ".livelab" / _home.DESCRIPTOR
        _write_descriptor(desc_path, _descriptor(ns_desc, name, team), uid, gid)
        entry = {
            "name": name,
            "team": team or "",
            "namespace": name,
            "broker_user": name,
            "unix_user": name if account else None,
            "uid": uid,
            "account_created": created,
            "home_dir": str(home_dir),
            "descriptor": str(desc_path),
            "devices": list(ns_desc["devices"]),
            "added": time.time(),
        }
        reg["learners"][name] = entry
        _write(h, reg)
    return dict(entry)


def ensure(home: str | os.PathLike | None, name: str, team: str | None = None, **kw: Any) -> dict[str, Any]:
    """The learner, provisioned: registered and active as is, else added (the hub's spawn hook)."""
    h = _home.resolve(home)
    e = get(h, name)
    if e is not None and name in _active_namespaces(h) and Path(e["descriptor"]).exists():
        return dict(e)
    try:
        return add(h, name, team, **kw)
    except LearnerError:
        e = get(h, name)  # another spawn of the same learner won the race
        if e is not None and name in _active_namespaces(h):
            return dict(e)
        raise


def remove(home: str | os.PathLike | None, name: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Unregister a learner: its devices stop, its broker identity goes (a kernel still running
    as the learner can read and command nothing any more), its descriptor is deleted.  Other
    learners and the lab are untouched.  The Unix account and its home stay: they hold the
    learner's work (remove them with ``userdel -r`` when that is wanted)."""
    h = _home.resolve(home)
    check_name(name)
    with _Lock(h):
        reg = _read(h)
        e = reg["learners"].get(name)
        if e is None:
            raise LearnerError(f"no learner {name!r} in the lab in {h} (see 'livelab learners list')")
        if name in _active_namespaces(h):
            _lab.remove_namespace(h, name, timeout=timeout)
        Path(e["descriptor"]).unlink(missing_ok=True)
        del reg["learners"][name]
        _write(h, reg)
    return {**e, "removed": True}


__all__ = [
    "LearnerError",
    "add",
    "ensure",
    "remove",
    "list_learners",
    "get",
    "learner_for_path",
    "check_name",
    "lock_down",
    "REGISTRY",
]
