"""Release checklists: a promotion beyond the canary needs a signed course completion.

A real lab, real signed bundles, the real events store; completions are written the way the
grader writes them (signed with the lab's events key), forgeries the way a learner's kernel
could (unsigned, or signed with another key).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grading.outcomes import sign
from lab_hardware.home import events_key
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import keys
from lab_hardware.runtime import lab
from labs import CommandRefused, Lab, rollout
from labs.learning_events import Event, EventStore
from tests.conftest import start_lab
from tests.test_device_bundles import _make, _wait

COURSE = "edge-ml-foundations"


@pytest.fixture(scope="module")
def clab(tmp_path_factory, mosquitto_available):
    home = tmp_path_factory.mktemp("clab")
    start_lab(home, device_options={"window_seconds": 0.3})
    keys.new_key(home, "author")
    keys.trust(home, home / "keys" / "author.pub")
    tmp = tmp_path_factory.mktemp("cbundles")
    try:
        with Lab.connect(home=home) as sdk:
            assert sdk.conn.learner_name, "the lab's descriptor names its learner (the promoter)"
            yield home, sdk, tmp
    finally:
        lab.down(home)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "livelab", "--home", str(home), "rollout", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _completion(home: Path, learner: str, version: str, *, key: bytes | None, module="m3-bundles") -> dict:
    """A module-completed event as the grader writes it; signed with ``key`` (None: unsigned)."""
    ev = {
        "schema": "livelab.event/v1",
        "source": "grader",
        "kind": "module-completed",
        "learner": learner,
        "module": module,
        "course": COURSE,
        "version": version,
        "key": secrets.token_hex(8),
        "time": time.time(),
        "detail": {"score": 10, "points": 10},
    }
    if key is not None:
        ev = sign([ev], key)[0]
    with EventStore(home) as store:
        assert store.write([ev]) == 1
        (written,) = store.query(id=Event.from_dict(ev).id)
    return written.as_dict()


def _installs(sdk: Lab, dev: str) -> list[dict]:
    return [r for r in sdk.audit_chain(dev).records if r["kind"] == "install"]


def test_bad_policy_input_is_refused_in_one_line(tmp_path):
    home = tmp_path / "h"
    for args, words in [
        (("--require", "m3-bundles"), "MODULE@VERSION"),
        (("--require", "m3-bundles@1.2"), "semver"),
        (("--require", "@1.2.0"), "MODULE@VERSION"),
        (("--require", "m3\x1bbundles@1.2.0"), "module"),
        (("--course", COURSE), "--require"),
        (("--require", "m3-bundles@1.2.0", "--clear"), "not both"),
    ]:
        p = _cli(home, "policy", *args)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and words in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr
    p = _cli(home, "start", "x.lbundle", "--require", "m3-bundles@1.2.0")
    assert p.returncode == 2 and "livelab rollout policy" in p.stderr
    # nothing was written by the refusals
    assert rollout.policy(home)["require"] == []
    p = _cli(home, "policy", "--require", "m3-bundles@1.2.0", "--course", COURSE, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["require"] == [{"module": "m3-bundles", "version": "1.2.0", "course": COURSE}]
    p = _cli(home, "policy")
    assert p.returncode == 0 and "m3-bundles at version >= 1.2.0" in p.stdout
    assert _cli(home, "policy", "--clear").returncode == 0
    assert rollout.policy(home)["require"] == []
    # a policy file someone broke by hand is refused in one line, never read as "no policy"
    for broken in ("{", '{"require": ["m3-bundles@1.2.0"]}', '{"require": [{"module": "m3", "version": "x"}]}'):
        (home / "rollouts" / "policy.json").write_text(broken)
        p = _cli(home, "policy")
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "unreadable" in p.stderr, p.stderr
        with pytest.raises(rollout.RolloutError, match="unreadable"):
            rollout.policy(home)


def test_rollback_is_never_blocked(clab):
    home, sdk, tmp = clab
    rollout.set_policy(home, ["m4-observability@9.0.0"], course=COURSE)  # nobody has that
    b = _make(tmp, home, "intents", "1.1.0", call_bias=-3.0)
    dig = _bundle.read(b).digest
    rollout.start(sdk, home, b, ["dev-1"])
    assert _wait(lambda: sdk.states["dev-1"]["bundle"] == dig)
    p = _cli(home, "finish", "--back")
    assert p.returncode == 0, p.stderr
    assert _wait(lambda: sdk.states["dev-1"]["bundle"] != dig)
    assert rollout.current(home)["state"] == "back"


def test_checklist_refuses_then_allows_a_promotion(clab):
    home, sdk, tmp = clab
    me = sdk.conn.learner_name
    lab_key = events_key(home)
    rollout.set_policy(home, ["m3-bundles@1.2.0"], course=COURSE)
    b = _make(tmp, home, "intents", "1.2.0", call_bias=-3.0)
    dig = _bundle.read(b).digest
    rollout.start(sdk, home, b, ["dev-1"])
    assert _wait(lambda: sdk.states["dev-1"]["bundle"] == dig)
    before = {d: len(_installs(sdk, d)) for d in ("dev-0", "dev-2")}

    def refused(*words: str) -> None:
        p = _cli(home, "finish", "--forward")
        assert p.returncode == 1, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        for w in ("m3-bundles", ">= 1.2.0", me, *words):
            assert w in p.stderr, (w, p.stderr)
        assert rollout.current(home)["state"] == "canary"  # still open: nothing changed

    refused("no completion signed")
    # a completion the learner's kernel could write: unsigned, or signed with another key
    _completion(home, me, "1.2.0", key=None)
    refused("1 unsigned completion(s) ignored")
    _completion(home, me, "1.3.0", key=secrets.token_bytes(32))
    refused("2 unsigned completion(s) ignored")
    # signed by the lab, but for an older version of the module, or by someone else
    _completion(home, me, "1.1.0", key=lab_key)
    refused("only at version 1.1.0")
    _completion(home, "someone-else", "1.2.0", key=lab_key)
    refused("only at version 1.1.0")
    # the signed, tampered-with copy of a completion does not count either
    with EventStore(home) as store:
        forged = store.query(learner="someone-else", module="m3-bundles")[0].as_dict()
        forged.update(learner=me, id="", key=secrets.token_hex(8))
        store.write([forged])
    refused("3 unsigned completion(s) ignored")
    # the devices beyond the canary were not touched by any refusal
    assert {d: len(_installs(sdk, d)) for d in ("dev-0", "dev-2")} == before
    assert all(sdk.states[d]["bundle"] != dig for d in ("dev-0", "dev-2"))
    assert len(rollout.current(home)["refusals"]) == 6

    good = _completion(home, me, "1.2.0", key=lab_key)
    p = _cli(home, "finish", "--forward", "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)["rollout"]
    assert st["state"] == "forward"
    relied = {k: good[k] for k in ("learner", "course", "module", "version", "time")} | {"event": good["id"]}
    assert st["checklist"]["promoter"] == me
    assert st["checklist"]["completions"] == [relied]
    assert _wait(lambda: all(sdk.states[d]["bundle"] == dig for d in sdk.devices))
    # the devices' audit records of the promotion name the completion it relied on
    for d in ("dev-0", "dev-2"):
        rec = _installs(sdk, d)[-1]
        assert rec["data"]["bundle"] == dig
        assert rec["data"]["checklist"] == {"promoter": me, "completions": [relied]}
        assert rec["data"]["by"] == me
        assert sdk.audit_chain(d).verify()


def test_a_device_refuses_a_malformed_checklist(clab):
    home, sdk, tmp = clab
    b = _make(tmp, home, "intents", "1.3.0", call_bias=-3.0)
    for bad in ({"promoter": "x"}, {"promoter": "x", "completions": [{"event": "nothex"}]}, ["x"]):
        with pytest.raises(CommandRefused, match="checklist"):
            sdk.install("dev-0", b, checklist=bad)


def test_the_promoter_is_the_labs_learner_not_a_claimed_name(clab):
    home, sdk, tmp = clab
    me = sdk.conn.learner_name
    rollout.set_policy(home, ["m2-replay@1.0.0"], course=COURSE)
    _completion(home, "claimed-name", "1.0.0", key=events_key(home), module="m2-replay")
    with Lab.connect(home=home, learner="claimed-name") as claiming:
        assert claiming.learner == "claimed-name"
        with pytest.raises(rollout.ChecklistRefused, match=f"{me} has not completed module m2-replay"):
            rollout.checklist(claiming, home)
    _completion(home, me, "1.0.1", key=events_key(home), module="m2-replay")
    with Lab.connect(home=home, learner="claimed-name") as claiming:
        proof = rollout.checklist(claiming, home)
    assert proof is not None and proof["promoter"] == me
    assert [(c["learner"], c["version"]) for c in proof["completions"]] == [(me, "1.0.1")]
    rollout.set_policy(home, [])
    assert rollout.checklist(sdk, home) is None
