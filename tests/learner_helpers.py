"""Helpers for tests that act as a learner's Unix account (test_learners.py, test_hub.py)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

PY = sys.executable

#: Reads one byte of each file named in argv[1] (JSON label -> path); prints label -> outcome.
PROBE = r"""
import json, sys
results = {}
for label, path in json.loads(sys.argv[1]).items():
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        results[label] = "READ"
    except PermissionError:
        results[label] = "denied"
    except FileNotFoundError:
        results[label] = "missing"
    except OSError as exc:
        results[label] = type(exc).__name__
print(json.dumps(results))
"""


def learner_env(user: str) -> dict[str, str]:
    pw = pwd.getpwnam(user)
    return {
        "HOME": pw.pw_dir,
        "USER": user,
        "PATH": f"{Path(PY).parent}:/usr/bin:/bin",
        "LIVELAB_HOME": f"{pw.pw_dir}/.livelab",
    }


def as_user(user: str, code: str, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run Python ``code`` as a learner's Unix account (its uid and gid, no other group, its HOME)."""
    pw = pwd.getpwnam(user)
    return subprocess.run(
        [PY, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=learner_env(user),
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=[],
        cwd="/",
        **kw,
    )


def popen_as(user: str, code: str, *args: str) -> subprocess.Popen:
    pw = pwd.getpwnam(user)
    return subprocess.Popen(
        [PY, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=learner_env(user),
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=[],
        cwd="/",
    )


def secret_targets(home: Path, other: dict, root: Path) -> dict[str, Path]:
    """Every secret a learner must not read, made to exist first (so a denial means something):
    the lab's credentials, config, events store, a signing key, a grader's reference, the
    course's source notebooks with hidden tests, and another learner's home."""
    from grading import reference
    from lab_hardware.modelops import keys
    from labs.learning_events import EventStore

    course = root / "courses" / "edge-ml-foundations"
    rel_src = course / "releases" / "1.1.0" / "source" / "m1-telemetry" / "m1-telemetry.ipynb"
    ref = reference.build(rel_src, "m1-telemetry", home / "grading")
    ref_file = next(p for p in Path(ref.root).rglob("*.ipynb"))
    key_dir = home / "keys"
    existing = sorted(key_dir.glob("*.key")) if key_dir.is_dir() else []
    signing_key = existing[0] if existing else Path(keys.new_key(home, "lab-signer")["key"])
    EventStore(home).close()  # the lab's events store (the recorder creates it on first use)
    ns = other["namespace"]
    targets = {
        "control credentials": home / "secrets" / "control.json",
        "device passwords": home / "secrets" / "identities.json",
        "lab config": home / "config.json",
        "device config (password)": home / "devices" / ns / "dev-0" / "config.json",
        "broker passwords": home / "broker" / "passwd",
        "learner registry": home / "learners.json",
        "events store": home / "events.sqlite",
        "signing key": signing_key,
        "grader reference": ref_file,
        "course source notebook": course / "source" / "m1-telemetry" / "m1-telemetry.ipynb",
        "released source (hidden tests)": rel_src,
        "other learner's descriptor": Path(other["descriptor"]),
        "other learner's home": Path(other["home_dir"]) / ".profile",
    }
    for label, p in targets.items():
        assert p.exists(), f"{label}: {p} should exist for the probe to mean something"
    return targets


def probe_as(user: str, targets: dict[str, Path]) -> dict[str, str]:
    r = as_user(user, PROBE, json.dumps({k: str(v) for k, v in targets.items()}))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


#: As a learner: subscribe with the learner's own credentials (its lab.json) to another
#: namespace and to everything; print READY once subscribed, then, when stdin closes, the
#: topics received as JSON.
SPY = r"""
import json, sys
from lab_hardware import mqtt
from labs.sdk import _find
c = _find()
got = []
cl = mqtt.client(username=c.username, password=c.password)
cl.on_message = lambda cl_, u, m: got.append(m.topic)
mqtt.connect(cl, c.host, c.port)
for t in sys.argv[1:]:
    mqtt.subscribe_wait(cl, t)
print("READY", flush=True)
sys.stdin.read()
mqtt.stop(cl)
print(json.dumps(got))
"""


def uid_of(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def remove_accounts(*names: str) -> None:
    """Remove test accounts; a process a failed test left running as one is stopped first (by
    pid), since userdel refuses an account in use."""
    import psutil

    for name in names:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
        for p in left:
            p.terminate()
        psutil.wait_procs(left, timeout=10)
        subprocess.run(["userdel", "-r", name], capture_output=True)


def is_root() -> bool:
    return os.geteuid() == 0
