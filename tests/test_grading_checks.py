"""Lab checks: each submission in a fresh namespace of a live lab, judged from what the lab saw.

Small fixture notebooks do what a learner would (grant consent, read windows, capture and
build a replay) - and what a hostile one would (publish PII and erase it, reach into another
namespace, forge a replay, look for the lab's secrets).  The flagship course's real modules
(reference solutions and learner versions) are graded through the CLI and Dask at the end.
Real Mosquitto, devices, kernels; nothing mocked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from grading import isolation, reference, runner
from grading.limits import Limits
from tests.conftest import ROOT, start_lab
from tests.mqtt_helpers import Observer

COURSE = ROOT / "courses" / "edge-ml-foundations"
LIMITS = Limits(cell_timeout=60, total_timeout=180)


def _meta(gid, **kw):
    d = {"grade_id": gid, "schema_version": 3, "grade": False, "solution": False, "locked": False}
    d.update(kw)
    return {"nbgrader": d}


def fixture_source(module: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata.kernelspec = {"name": "livelab", "display_name": "livelab (Python 3)", "language": "python"}
    nb.cells = [
        new_code_cell(
            "LIVELAB_HOME = None\nNAMESPACE = None\nLEARNER = None\nSEED = 0", metadata={"tags": ["parameters"]}
        ),
        new_code_cell(
            "import json, time\nfrom pathlib import Path\nfrom labs import Lab\nfrom lab_hardware.modelops import replay\n"
            f"lab = Lab.connect(module={module!r}, home=LIVELAB_HOME, namespace=NAMESPACE, learner=LEARNER)\n"
            "HOME = Path(lab.conn.home)\nWORK = Path('work')\nWORK.mkdir(exist_ok=True)"
        ),
        new_code_cell("### BEGIN SOLUTION\nDONE = True\n### END SOLUTION", metadata=_meta("work", solution=True)),
        new_code_cell("assert DONE", metadata=_meta("done", grade=True, locked=True, points=1)),
    ]
    return nb


def submission(body: str) -> bytes:
    nb = fixture_source("fixture")
    nb.cells[2].source = body
    return nbformat.writes(nb).encode()


@pytest.fixture(scope="module")
def glab(tmp_path_factory, mosquitto_available):
    from lab_hardware.runtime import lab

    home = tmp_path_factory.mktemp("glab")
    start_lab(home, device_options={"window_seconds": 0.3})
    state = tmp_path_factory.mktemp("gstate")
    src = state / "fixture.ipynb"
    nbformat.write(fixture_source("fixture"), src)
    ref = reference.build(src, "fixture", state)
    opts = runner.RunOptions(limits=LIMITS, hide=[str(state), str(COURSE)])
    yield {"home": home, "ref": ref, "opts": opts, "state": state}
    isolation.shutdown_worker_labs()
    from grading import sandbox

    if sandbox.ForkServer._instance is not None:  # this process's kernel fork server
        sandbox.ForkServer._instance.close()
        sandbox.ForkServer._instance = None
    lab.down(home)
    assert sorted(lab._home.read_json(home / "config.json")["namespaces"]) == ["default"]


def grade(glab, student: str, body: str, checks: list[str]) -> dict:
    sub = runner.Submission(student, "fixture", "fixture", submission(body))
    return isolation.grade_in_lab(
        sub, glab["ref"], glab["opts"], {"home": str(glab["home"]), "module": "fixture", "checks": checks}
    )


def _check(r, name):
    return next(c for c in r["checks"] if c["name"] == name)


def _failed(c):
    return {i["name"] for i in c["items"] if not i["ok"]}


GOOD_CONSENT = """### BEGIN SOLUTION
lab.grant_consent("dev-1", "telemetry")
windows = list(lab.telemetry("dev-1", timeout=3, limit=4))
lab.revoke_consent("dev-1", "telemetry")
DONE = len(windows) == 4
### END SOLUTION"""


def test_consent_first_telemetry_gets_full_marks(glab):
    r = grade(glab, "ada", GOOD_CONSENT, ["consent"])
    c = _check(r, "consent")
    assert c["passed"] and c["score"] == c["points"] == 5, [
        (i["name"], i["message"], i.get("detail")) for i in c["items"] if not i["ok"]
    ]
    assert r["score"] == r["max_score"] == 6
    assert r["lab"]["observed"]["telemetry"]["messages"] >= 4
    assert r["isolation"]["namespaces"] and "net" not in r["isolation"]["namespaces"]


def test_doing_nothing_earns_no_consent_points(glab):
    r = grade(glab, "idle", "DONE = True", ["consent"])
    c = _check(r, "consent")
    assert c["score"] == 0 and "consent-used" in _failed(c)
    assert "grant the scope you need" in c["message"]


def test_pii_published_then_erased_is_caught_by_the_observer(glab):
    body = (
        GOOD_CONSENT
        + """
topic = f"livelab/{lab.namespace}/learner/notes"
lab._client.publish(topic, json.dumps({"note": "call Grace Okafor at grace.okafor@example.com"}), qos=1, retain=True).wait_for_publish(5)
time.sleep(0.3)
lab._client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)   # erase the retained copy
Path("notes.txt").unlink(missing_ok=True)
DONE = True"""
    )
    r = grade(glab, "eve", body, ["consent"])
    c = _check(r, "consent")
    assert "no-pii-published" in _failed(c) and 0 < c["score"] < 5
    item = next(i for i in c["items"] if i["name"] == "no-pii-published")
    assert {"email", "name"} <= set(item["detail"]["messages"][0]["kinds"]), item["detail"]
    assert "grace" not in json.dumps(item).lower()  # the report names kinds, never the PII


def test_other_namespaces_are_out_of_reach(glab):
    """A submission cannot command, read or write another namespace: the broker's ACL refuses,
    checked by an independent observer on the victim namespace and its audit chains."""
    from lab_hardware import audit, home as _home

    home = glab["home"]
    victim = Observer(home, "livelab/default/#")
    chains = {d: len(audit.read(_home.device_dir(home, "default", d) / "audit.jsonl")) for d in ("dev-0", "dev-1")}
    body = """### BEGIN SOLUTION
import paho.mqtt.client as m
payload = json.dumps({"schema": "livelab.command/v1", "id": "x1", "by": "mallory", "scope": "telemetry", "grant": True})
for t in ["livelab/default/devices/dev-0/cmd/consent", "livelab/default/devices/dev-1/telemetry",
          "livelab/default/control/revocations", "livelab/default/learner/events"]:
    lab._client.publish(t, payload, qos=1).wait_for_publish(5)
got = []
lab._client.on_message = lambda c, u, msg: got.append(msg.topic) if msg.topic.startswith("livelab/default/") else None
rc, mid = lab._client.subscribe("livelab/default/#", qos=1)
time.sleep(1.0)
print("READ", len(got))
import os
print("SECRETS", [p for p in [HOME / "secrets" / "control.json", HOME / "config.json", HOME.parent / "secrets"] if p.exists()],
      sorted(os.listdir(HOME)))
DONE = True
### END SOLUTION"""
    try:
        r = grade(glab, "mallory", body, ["consent"])
        time.sleep(0.5)
        seen = [
            t
            for t, _ in victim.raw()
            if "/cmd/" in t or "/learner/" in t or "/control/" in t or t.endswith("/dev-1/telemetry")
        ]
    finally:
        victim.close()
    assert not seen, seen
    after = {d: len(audit.read(_home.device_dir(home, "default", d) / "audit.jsonl")) for d in ("dev-0", "dev-1")}
    assert after == chains  # no command reached the victim's devices
    assert "READ 0" in r["executed"]
    assert "SECRETS []" in r["executed"] and "'lab.json'" in r["executed"]


CAPTURE = """### BEGIN SOLUTION
lab.grant_consent("dev-1", "replay-capture")
cid = lab.capture("dev-1", 150)
lab.revoke_consent("dev-1", "replay-capture")
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    metas = [m for m in replay.list_captures(HOME) if m["capture_id"] == cid]
    if metas and metas[0]["records"] >= 150:
        break
    time.sleep(0.1)
REPLAY = replay.build(HOME, lab.namespace, "dev-1", WORK / "dev-1.lreplay", capture_ids=[cid])
DONE = True
### END SOLUTION"""


def test_replay_from_consented_captures_passes(glab):
    r = grade(glab, "rita", CAPTURE, ["consent", "replay"])
    c = _check(r, "replay")
    assert c["passed"] and c["score"] == 5, c["message"]
    det = next(i for i in c["items"] if i["name"] == "deterministic")
    assert det["detail"]["isolated"] is True
    fp = next(i for i in c["items"] if i["name"] == "reproduces-false-positives")["detail"]
    assert fp["fp"] > fp["other_fp"]
    assert _check(r, "consent")["passed"]


def test_forged_replay_fails_provenance(glab):
    body = CAPTURE.replace(
        "DONE = True\n### END",
        """import hashlib
lines = REPLAY.read_bytes().split(b"\\n")
man = json.loads(lines[0]); recs = [json.loads(l) for l in lines[1:] if l]
recs[0]["text"] = "call <name> now"            # an input the device never saw
body = b"".join(json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\\n" for x in recs)
man["records_sha256"] = hashlib.sha256(body).hexdigest()
REPLAY.write_bytes(json.dumps(man, sort_keys=True, separators=(",", ":")).encode() + b"\\n" + body)
replay.read(REPLAY)                            # it still parses and verifies its own hashes
DONE = True
### END""",
    )
    r = grade(glab, "fred", body, ["replay"])
    c = _check(r, "replay")
    assert "provenance" in _failed(c) and not c["passed"]
    assert "not in the captures the grader observed" in c["message"]


def test_a_namespace_starts_untidy_where_the_module_says(glab):
    """A module's ``untidy`` table: consent someone left granted before the learner's kernel
    starts, by someone else, seen by the observer - so doing nothing is not revoking."""
    body = """### BEGIN SOLUTION
print("START", {d: lab.states[d]["consent"] for d in lab.devices})
DONE = True
### END SOLUTION"""
    sub = runner.Submission("idle", "fixture", "fixture", submission(body))
    spec = [{"grant": "telemetry", "devices": "some"}, {"grant": "replay-capture", "devices": ["dev-1"]}]
    try:
        r = isolation.grade_in_lab(
            sub,
            glab["ref"],
            glab["opts"],
            {
                "home": str(glab["home"]),
                "module": "fixture-untidy",
                "checks": ["consent"],
                "module_meta": {"untidy": spec},
            },
        )
    finally:
        isolation.shutdown_worker_labs()  # this module's pool keeps a slot open: close it
    from grading import untidy

    want = untidy.plan(spec, ["dev-0", "dev-1", "dev-2"], module="fixture-untidy")
    assert sorted((u["device"], u["scope"]) for u in r["lab"]["untidy"]) == sorted(want)
    import ast

    nb = nbformat.reads(r["executed"], as_version=4)
    text = "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )
    start = ast.literal_eval(next(ln for ln in text.splitlines() if ln.startswith("START "))[6:])
    assert {(d, sc) for d, cons in start.items() for sc, on in cons.items() if on} == set(want)
    c = _check(r, "consent")
    assert "revoked-when-done" in _failed(c), "what someone left granted is still granted at the end"
    assert "consent-used" in _failed(c) and c["score"] == 0, "their grants are not the learner's"


def test_nothing_of_a_namespace_survives_grading(glab):
    from lab_hardware.runtime import lab
    from lab_hardware.modelops import replay

    assert isolation.settle_worker_labs(), "a graded namespace was still being removed after 120 s"
    cfg = lab._home.read_json(glab["home"] / "config.json")
    graded = [n for n in cfg["namespaces"] if n.startswith("g-")]
    assert len(graded) <= 1  # at most the slot prepared for the next submission
    leftovers = [p.name for p in replay.captures_dir(glab["home"]).iterdir() if p.name not in graded]
    assert leftovers == []


def test_a_module_that_needs_the_oracle_is_refused_a_lab_without_one(glab, tmp_path, capsys):
    """course.toml ``services = ["oracle"]`` (m5): this lab runs no oracle, so grading the module
    against it is refused in one line before anything runs, and so is a release gate borrowing it."""
    from courses import catalog, release
    from livelab.cli import main

    tree = tmp_path / "submitted" / "ada" / "m5-hybrid-oracle"
    tree.mkdir(parents=True)
    (tree / "m5-hybrid-oracle.ipynb").write_bytes(submission("DONE = True"))
    rc = main(
        ["--home", str(glab["home"]), "grade", str(COURSE), "m5-hybrid-oracle", str(tmp_path / "submitted")]
        + ["--out", str(tmp_path / "out"), "--no-service", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "needs the lab's oracle" in err and "livelab up --oracle" in err
    assert not (tmp_path / "out" / "autograded").exists()
    m5 = catalog.load(COURSE).module("m5-hybrid-oracle")
    (line,) = release.missing_services(glab["home"], [m5, catalog.load(COURSE).module("m1-telemetry")])
    assert line.startswith("m5-hybrid-oracle: needs the lab's oracle")


# ---- the flagship course's real modules, through the CLI and Dask --------------------------
def _tree(tmp: Path, module: str, who: dict[str, Path]) -> Path:
    for student, nb in who.items():
        d = tmp / "submitted" / student / module
        d.mkdir(parents=True)
        d.joinpath(f"{module}.ipynb").write_bytes(nb.read_bytes() if isinstance(nb, Path) else nb)
    return tmp / "submitted"


@pytest.mark.slow
@pytest.mark.timeout(900)  # five lab-module submissions through Dask: a budget for all of them
@pytest.mark.skipif(not COURSE.is_dir(), reason="the flagship course is not in this checkout")
def test_course_modules_graded_through_the_cli(glab, tmp_path, capsys):
    from livelab.cli import main

    rel = COURSE / "releases" / "1.1.0"
    m3, m4 = "m3-bundles", "m4-observability"
    ref4 = nbformat.read(rel / "source" / m4 / f"{m4}.ipynb", 4)
    for cell in ref4.cells:  # a learner who names the wrong cause
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "cause":
            cell.source = cell.source.replace('CAUSE = (f"{SUSPECT_DEVICE}', 'CAUSE = (f"dev-9')
    tree3 = _tree(
        tmp_path / "c3",
        m3,
        {"solver": rel / "source" / m3 / f"{m3}.ipynb", "starter": rel / "learner" / m3 / f"{m3}.ipynb"},
    )
    tree4 = _tree(
        tmp_path / "c4",
        m4,
        {
            "solver": rel / "source" / m4 / f"{m4}.ipynb",
            "wrongcause": nbformat.writes(ref4).encode(),
            "starter": rel / "learner" / m4 / f"{m4}.ipynb",
        },
    )
    out = {}
    for module, tree in ((m3, tree3), (m4, tree4)):
        rc = main(
            [
                "--home",
                str(glab["home"]),
                "grade",
                "edge-ml-foundations",
                module,
                str(tree),
                "--json",
                "--version",
                "1.1.0",
                "--state",
                str(glab["state"]),
                "--events",
                str(tmp_path / "no-store"),
            ]
        )
        assert rc == 0
        out[module] = {r["student"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert out[m3]["solver"]["score"] == out[m3]["solver"]["max_score"] == 15
    assert out[m3]["starter"]["score"] == 0
    assert any("signed-bundle" in m for m in out[m3]["starter"]["messages"])
    assert out[m4]["solver"]["score"] == out[m4]["solver"]["max_score"] == 15
    wrong = out[m4]["wrongcause"]
    assert wrong["score"] < 15 and any("cause-named" in m for m in wrong["messages"])
    # the learner version as handed out fetches nothing: that earns no bandwidth credit
    idle = out[m4]["starter"]
    assert idle["score"] < 2 and any("bandwidth: no debugging session to judge" in m for m in idle["messages"]), idle
    db = tmp_path / "c3" / "gradebook.db"
    import sqlite3

    rows = dict(
        sqlite3.connect(db).execute(
            "select c.name, g.auto_score from grade g join base_cell c on g.cell_id = c.id "
            "join submitted_notebook n on g.notebook_id = n.id join submitted_assignment s on n.assignment_id = s.id "
            "where s.student_id = 'solver'"
        )
    )
    assert rows["livelab-check-bundle"] == 5
    ev = tmp_path / "c4" / "livelab-grading" / m4 / "evidence" / "solver" / m4
    assert (ev / "observer.jsonl.gz").stat().st_size > 0 and list(ev.glob("audit-dev-*.jsonl.gz"))


@pytest.mark.parametrize("token", ["pid", "keyid", "prev", "low_margin", "fp_proxy", "dev-0", "rpi4", "ada"])
def test_bare_identifiers_the_lab_publishes_are_not_names(token):
    """The name model reads words with their neighbours; on a bare key or id it guessed names
    (``pid``, ``keyid``) and a correct m1 lost the no-pii-published points."""
    from grading.checks.consent import _kinds

    assert "name" not in _kinds(token)


@pytest.mark.parametrize(
    "text,kind",
    [
        ("Alice", "name"),
        ("call Grace Okafor tomorrow", "name"),
        ("grace.okafor@example.com", "email"),
        ("+44 20 7946 0958", "phone"),
    ],
)
def test_pii_in_published_strings_still_counts(text, kind):
    from grading.checks.consent import _kinds

    assert kind in _kinds(text)


def _m5_context(messages):
    """A check context of an m5 grading namespace that observed ``messages``."""
    from grading.checks.base import CheckContext

    return CheckContext(
        home=Path("."),
        namespace="g-abc",
        devices=["dev-1"],
        learner="ada",
        module="m5-hybrid-oracle",
        started=0,
        ended=1,
        messages=messages,
    )


def test_the_metadata_trail_is_not_scanned_as_learner_data():
    """Only the control plane writes the metadata topic (OpenLineage run events: run ids,
    digests, capture names); identifiers the PII recognisers misread there are nobody's data.
    (An m5 right answer lost a point for an 'id' read in a lineage event.)  The same payload
    anywhere else still counts."""
    from grading.checks.base import Message
    from grading.checks.consent import pii_in_messages
    from lab_hardware import topics

    event = json.dumps({"eventType": "COMPLETE", "run": {"facets": {"note": "DE89370400440532013000"}}}).encode()
    ctx = _m5_context([Message(0.0, topics.metadata("g-abc"), event, False)])
    assert pii_in_messages(ctx) == []
    ctx.messages = [Message(0.0, "livelab/g-abc/devices/dev-1/telemetry", event, False)]
    assert [h["kinds"] for h in pii_in_messages(ctx)] == [["iban"]]


def test_the_oracle_answers_are_not_scanned_as_learner_data():
    """Only the oracle (and the control plane) may write a device's response topic, and its answers
    hold labels, probabilities and reasons it wrote itself: a shed reason the name model misreads
    is not PII that anybody published.  The same text anywhere else still counts."""
    from grading.checks.base import Message
    from grading.checks.consent import pii_in_messages

    reason = json.dumps({"ok": False, "reason": "shed: expired (249 ms queued, timeout 200 ms)"}).encode()
    ctx = _m5_context([Message(0.0, "livelab/g-abc/control/oracle/response/dev-1", reason, False)])
    assert pii_in_messages(ctx) == []
    ctx.messages = [Message(0.0, "livelab/g-abc/devices/dev-1/telemetry", reason, False)]
    assert [h["kinds"] for h in pii_in_messages(ctx)] == [["name"]]


def test_machine_identifiers_in_lab_messages_are_not_pii():
    """Every learner event carries a random session id (uuid4 hex); about one in 750 held a
    valid PESEL (``ce9e1dd02ea34060925890fc8c50f48b`` -> ``34060925890``), so a correct
    consent-first submission lost the 3 points of no-pii-published now and then.  Identifiers a
    program makes (hex, uuids, digests, base64 keys) under any key are nobody's PII; a number
    somebody wrote down still is."""
    from grading.checks.base import Message
    from grading.checks.consent import pii_in_messages
    from tests.machine_tokens import machine_tokens

    tokens = [
        "ce9e1dd02ea34060925890fc8c50f48b",
        "17678424-4288-0eea-f643-769411a65bd3",
        *machine_tokens(20261203, 600),
    ]
    events = [
        Message(float(i), "livelab/g-abc/learner/events", json.dumps({"session": t, "run": t}).encode(), False)
        for i, t in enumerate(tokens)
    ]
    hits = pii_in_messages(_m5_context(events))
    assert hits == [], [(tokens[int(h["time"])], h["kinds"]) for h in hits[:5]]
    written = {"PESEL: 34060925890": "id", "IBAN DE89370400440532013000": "iban", "call +44 20 7946 0958": "phone"}
    ctx = _m5_context(
        [Message(0.0, "livelab/g-abc/learner/notes", json.dumps({"note": w}).encode(), False) for w in written]
    )
    assert [h["kinds"] for h in pii_in_messages(ctx)] == [[k] for k in written.values()]
    lab_text = json.dumps({"status": "device dev-1 runs the bundle", "note": "consent on g-abc granted by ada"})
    ctx = _m5_context([Message(0.0, "livelab/g-abc/devices/dev-1/state", lab_text.encode(), False)])
    assert pii_in_messages(ctx) == []
