"""The metadata trail: OpenLineage run events of every artifact, and the privacy audit.

Events are validated against the OpenLineage spec's JSON schema (vendored, 2-0-2) and
livelab's custom facets against their own schema; a real lab carries the events of a real
bundle build/sign/install and a real capture/replay to its metadata topic and to the file; a
real device running a bundle that declares fewer telemetry fields than it sends fails the
privacy audit.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from lab_hardware import mqtt, topics
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import keys
from lab_hardware.modelops import lineage
from lab_hardware.runtime import lab
from lab_hardware.window import ALLOWED_FIELDS
from labs import Lab, scenarios
from livelab.cli import main
from tests.conftest import start_lab

SC = scenarios.load("voice-intents")
SPEC = json.loads((lineage.SCHEMAS / "OpenLineage.json").read_text())
FACETS = json.loads((lineage.SCHEMAS / "LivelabFacets.json").read_text())
REGISTRY = Registry().with_resources(
    [(SPEC["$id"], Resource.from_contents(SPEC)), (FACETS["$id"], Resource.from_contents(FACETS))]
)
V = jsonschema.Draft202012Validator


def _validator(schema: dict) -> jsonschema.protocols.Validator:
    return V(schema, registry=REGISTRY, format_checker=V.FORMAT_CHECKER)


def validate_event(ev: dict) -> None:
    """The spec's schema, then each livelab facet against its own definition."""
    _validator(SPEC).validate(ev)
    assert ev["schemaURL"].startswith(SPEC["$id"])
    facets = {**(ev["run"].get("facets") or {})}
    for out in ev.get("outputs") or []:
        facets.update(out.get("facets") or {})
    for name, facet in facets.items():
        if not name.startswith("livelab_"):
            continue
        ref = facet["_schemaURL"]
        assert ref.startswith(FACETS["$id"] + "#/$defs/"), ref
        _validator({"$ref": ref}).validate(facet)


def _wait(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def _cli(capsys, home: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--home", str(home), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- events and the spec -------------------------------------------------------------------
def test_the_vendored_spec_is_a_valid_2020_12_schema():
    V.check_schema(SPEC)
    V.check_schema(FACETS)
    assert SPEC["$id"] == "https://openlineage.io/spec/2-0-2/OpenLineage.json"


@pytest.mark.parametrize("kind", lineage.KINDS)
def test_events_of_every_kind_validate_against_the_openlineage_schema(kind):
    priv = lineage.capture_privacy()
    ok = lineage.build_event(
        lineage.Artifact(kind, "some/artifact"),
        privacy=priv,
        inputs=[("livelab:bundles", "a" * 64)],
        details={"device": "dev-0", "n": 3},
        verdict=lineage.audit(priv, {"schema", "records[].text"}, messages=2),
        lab_namespace="default",
    )
    ev = lineage.to_dict(ok)
    validate_event(ev)
    assert ev["eventType"] == "COMPLETE" and ev["job"]["name"] == kind
    assert ev["run"]["facets"][lineage.FACET_ARTIFACT]["kind"] == kind
    bad = lineage.to_dict(
        lineage.build_event(
            lineage.Artifact(kind, "x"), privacy=priv, verdict=lineage.audit(priv, {"schema", "text"}), failed=None
        )
    )
    validate_event(bad)
    assert bad["eventType"] == "FAIL"
    assert "undeclared field text" in bad["run"]["facets"]["errorMessage"]["message"]


def test_validation_can_fail():
    """The check above is not vacuous: what the spec requires is enforced."""
    ev = lineage.to_dict(lineage.build_event(lineage.Artifact("grade", "g"), privacy=lineage.grade_privacy()))
    for broken in (
        {k: v for k, v in ev.items() if k != "producer"},
        {**ev, "run": {"runId": "not-a-uuid"}},
        {**ev, "eventType": "DONE"},
        {**ev, "eventTime": "yesterday"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            _validator(SPEC).validate(broken)
    facet = ev["outputs"][0]["facets"][lineage.FACET_PRIVACY]
    with pytest.raises(jsonschema.ValidationError):  # a custom facet needs _producer and _schemaURL
        _validator({"$ref": SPEC["$id"] + "#/$defs/DatasetFacet"}).validate(
            {k: v for k, v in facet.items() if k != "_producer"}
        )
    with pytest.raises(jsonschema.ValidationError):
        _validator({"$ref": facet["_schemaURL"]}).validate({**facet, "rawInputsLeaveDevice": True})


def test_the_privacy_facet_is_a_valid_custom_facet():
    ev = lineage.to_dict(
        lineage.build_event(lineage.Artifact("bundle.build", "d" * 64), privacy=lineage.telemetry_default())
    )
    facet = ev["outputs"][0]["facets"]["livelab_privacy"]
    # OpenLineage's rules: a prefixed name, _producer and _schemaURL (URIs), and it is a DatasetFacet
    assert facet["_producer"] == lineage.PRODUCER
    _validator({"$ref": SPEC["$id"] + "#/$defs/DatasetFacet"}).validate(facet)
    _validator({"$ref": facet["_schemaURL"]}).validate(facet)
    assert facet["declaredFields"] == sorted(ALLOWED_FIELDS)
    assert facet["consentScope"] == "telemetry" and facet["rawInputsLeaveDevice"] is False


# ---- the audit and declarations ------------------------------------------------------------
def test_audit_passes_what_is_declared_and_fails_an_undeclared_field():
    priv = lineage.Privacy("telemetry window", ("schema", "counts", "seq"), "telemetry", 30, True)
    v = lineage.audit(priv, {"schema", "counts"}, messages=4)
    assert v.ok and v.undeclared == () and "all declared" in v.reason
    v = lineage.audit(priv, {"schema", "counts", "latency_ms"}, messages=4, source="dev-0")
    assert not v.ok and v.undeclared == ("latency_ms",)
    assert v.reason.startswith("sent undeclared field latency_ms on dev-0")
    assert lineage.observed_fields({"a": 1, "records": [{"text": "x"}, {"bundle": "y"}]}) == {
        "a",
        "records",
        "records[].text",
        "records[].bundle",
    }


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"fields": "counts"}, "must be a list of field names"),
        ({"consent_scope": "everything"}, "consent scope 'everything' is not one of"),
        ({"retention_days": -1}, "retention_days"),
        ({"raw_inputs_leave_device": True}, "devices never publish raw inputs"),
        ({"subject": ""}, "needs a subject"),
    ],
)
def test_a_bad_privacy_declaration_is_refused_in_one_line(kw, match):
    args = {"subject": "s", "fields": ("a",), **kw}
    with pytest.raises(lineage.LineageError, match=match) as info:
        lineage.Privacy(**args)
    assert "\n" not in str(info.value)


def test_emit_artifact_refuses_bad_requests(tmp_path):
    with pytest.raises(lineage.LineageError, match="unknown artifact kind 'model.train'"):
        lineage.emit_artifact(tmp_path, "model.train", "x", privacy=None)
    with pytest.raises(lineage.LineageError, match="needs a privacy declaration"):
        lineage.emit_artifact(tmp_path, "adapter.round", "r1", privacy=None, observed={"a"})
    assert not (tmp_path / lineage.EVENTS_FILE).exists()


# ---- transports ----------------------------------------------------------------------------
class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append({"path": self.path, "event": json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_file_and_http_transports_and_a_failing_one_is_visible(tmp_path, capsys):
    """An adapter round (what labs/federated.py emits) through the file and a real HTTP server;
    then with the server gone: the artifact is still recorded, the failure is visible."""
    _Collector.received = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    (tmp_path / "lineage").mkdir()
    (tmp_path / lineage.CONFIG_FILE).write_text(
        json.dumps({"schema": lineage.SCHEMA_CONFIG, "http": {"url": url, "timeout": 5}})
    )
    priv = lineage.Privacy("adapter update", ("round", "clients", "logit_bias"), None, None, True)
    try:
        em = lineage.emit_artifact(
            tmp_path, "adapter.round", "intents/round-1", privacy=priv, details={"clients": 3}, lab_namespace="default"
        )
    finally:
        srv.shutdown()
        srv.server_close()
    assert em.failures == [] and not em.failed
    assert [r["path"] for r in _Collector.received] == ["/api/v1/lineage"]
    assert _Collector.received[0]["event"] == em.event
    assert lineage.read_events(tmp_path) == [em.event]
    validate_event(em.event)

    em2 = lineage.emit_artifact(tmp_path, "adapter.round", "intents/round-2", privacy=priv)
    assert len(em2.failures) == 1 and em2.failures[0].startswith("http: ")
    assert [lineage.summary(e)["artifact"] for e in lineage.read_events(tmp_path)] == [
        "intents/round-1",
        "intents/round-2",
    ]
    failures = [json.loads(x) for x in (tmp_path / lineage.FAILURES_FILE).read_text().splitlines()]
    assert [(f["transport"], f["artifact"]) for f in failures] == [("http", "intents/round-2")]
    code, out, err = _cli(capsys, tmp_path, "lineage", "list", "--json")
    assert code == 0 and [r["artifact"] for r in json.loads(out)] == ["intents/round-1", "intents/round-2"]
    assert "1 lineage deliveries failed" in err


def test_a_learner_home_writes_its_file_and_a_broken_control_plane_is_reported(tmp_path):
    """A learner's home holds lab.json only: its commands write the file, and nothing is
    reported missing (the observer reports its devices).  A lab home whose control credentials
    are unreadable reports the metadata topic as a failed delivery."""
    desc = {"namespace": "default", "broker": {"host": "127.0.0.1", "port": 1}}
    (tmp_path / "lab.json").write_text(json.dumps(desc))
    with lineage.Trail(tmp_path) as t:
        assert [n for n, _ in t.transports] == ["file"] and t.setup_failures == []
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "control.json").write_text("{not json")
    em = lineage.emit_artifact(tmp_path, "bundle.sign", "d" * 64 + ":" + "0" * 16, privacy=None)
    assert len(em.failures) == 1 and em.failures[0].startswith("mqtt: a lab runs in")
    assert lineage.read_events(tmp_path) == [em.event]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json\n", "line 1: not valid JSON"),
        ('{"eventTime": "2026-01-01T00:00:00Z"}\n', "line 1: not an OpenLineage run event (no 'producer')"),
        ("[1, 2]\n", "line 1: not a JSON object"),
    ],
)
def test_a_malformed_lineage_file_is_refused_in_one_line(tmp_path, capsys, content, match):
    (tmp_path / "lineage").mkdir()
    (tmp_path / lineage.EVENTS_FILE).write_text(content)
    for action in ("list", "audit"):
        code, out, err = _cli(capsys, tmp_path, "lineage", action)
        assert code == 2, (action, out, err)
        assert match in err and len(err.strip().splitlines()) == 1


def test_a_torn_last_line_is_not_an_error(tmp_path):
    em = lineage.emit_artifact(tmp_path, "grade", "c@1/m1/ada/m1", privacy=lineage.grade_privacy())
    with open(tmp_path / lineage.EVENTS_FILE, "a") as fh:
        fh.write('{"eventTime": "2026')  # a writer mid-line
    assert lineage.read_events(tmp_path) == [em.event]


@pytest.mark.parametrize(
    "config, match",
    [
        ("nope", "not valid JSON"),
        ('{"http": null}', "schema 'livelab.lineage-config/v1'"),
        ('{"schema": "livelab.lineage-config/v1", "kafka": {}}', "unknown key 'kafka'"),
        ('{"schema": "livelab.lineage-config/v1", "http": {"url": "ftp://x"}}', "must start with http://"),
        ('{"schema": "livelab.lineage-config/v1", "http": {"url": "http://x", "timeout": 0}}', "http.timeout"),
        ('{"schema": "livelab.lineage-config/v1", "mqtt": "yes"}', "'mqtt' must be true or false"),
    ],
)
def test_a_malformed_lineage_config_is_refused_in_one_line(tmp_path, capsys, config, match):
    (tmp_path / "lineage").mkdir()
    (tmp_path / lineage.CONFIG_FILE).write_text(config)
    code, out, err = _cli(capsys, tmp_path, "lineage", "audit")
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    # ... and an artifact made meanwhile is still recorded, the config problem reported
    em = lineage.emit_artifact(tmp_path, "grade", "c@1/m/ada/m", privacy=lineage.grade_privacy())
    assert any(f.startswith("config: ") and match in f for f in em.failures)
    assert lineage.read_events(tmp_path) == [em.event]


def test_a_malformed_observations_file_is_refused(tmp_path, capsys):
    (tmp_path / "lineage").mkdir()
    (tmp_path / lineage.OBSERVED_FILE).write_text(
        json.dumps({"schema": lineage.SCHEMA_OBSERVED, "artifacts": {"x": 1}})
    )
    code, out, err = _cli(capsys, tmp_path, "lineage", "audit")
    assert code == 2 and "artifact 'x' needs 'observed' fields" in err


def test_show_and_list_refuse_bad_references(tmp_path, capsys):
    em = lineage.emit_artifact(tmp_path, "course.release", "edge-ml@1.2.0", privacy=None)
    code, out, err = _cli(capsys, tmp_path, "lineage", "show", "edge-ml@1.2")
    assert code == 0 and json.loads(out) == em.event
    code, out, err = _cli(capsys, tmp_path, "lineage", "show", em.event["run"]["runId"][:8])
    assert code == 0 and json.loads(out)["run"]["runId"] == em.event["run"]["runId"]
    code, out, err = _cli(capsys, tmp_path, "lineage", "show", "abc")
    assert code == 2 and "at least 6 characters" in err
    code, out, err = _cli(capsys, tmp_path, "lineage", "show", "zzzzzzzz")
    assert code == 2 and "no lineage event has run id or artifact 'zzzzzzzz'" in err
    with pytest.raises(SystemExit) as info:  # argparse refuses it: exit 2, one line
        main(["--home", str(tmp_path), "lineage", "list", "--kind", "nope"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and len(err.strip().splitlines()) == 1


# ---- a real lab ----------------------------------------------------------------------------
CREATED = "2026-11-25T12:00:00Z"


@pytest.fixture(scope="module")
def llab(tmp_path_factory, mosquitto_available):
    """A lab with a metadata-topic subscriber (control plane) collecting every event."""
    home = tmp_path_factory.mktemp("llab")
    start_lab(home, device_options={"window_seconds": 0.3})
    keys.new_key(home, "author")
    keys.trust(home, home / "keys" / "author.pub")
    seen: list[dict] = []
    c = lab.control_client(home)
    c.on_message = lambda cl, ud, msg: seen.append(json.loads(msg.payload))
    mqtt.subscribe_wait(c, topics.metadata("default"))
    with Lab.connect(home=home) as sdk:
        yield home, sdk, seen
    mqtt.stop(c)
    lab.down(home)


def _events_of(home: Path, kind: str, name_prefix: str = "") -> list[dict]:
    return [
        e
        for e in lineage.read_events(home)
        if e["job"]["name"] == kind and lineage.summary(e)["artifact"].startswith(name_prefix)
    ]


def _on_topic(seen: list[dict], kind: str, name_prefix: str = "") -> list[dict]:
    return [
        e for e in list(seen) if e["job"]["name"] == kind and lineage.summary(e)["artifact"].startswith(name_prefix)
    ]


def test_bundle_build_sign_install_events_reach_the_topic_and_the_file(llab, tmp_path, capsys):
    home, sdk, seen = llab
    out = tmp_path / "fixed.lbundle"
    code, _, err = _cli(
        capsys, home, "bundle", "build", str(SC.models["candidate"]), "-o", str(out), "--name", "intents",
        "--version", "1.1.0", "--created", CREATED, "--health-decisions", "20",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = _cli(capsys, home, "bundle", "sign", str(out), "--key", "author")
    assert code == 0, err
    b = _bundle.read(out)
    for kind, name in (("bundle.build", b.digest), ("bundle.sign", b.identity)):
        assert _wait(lambda kind=kind, name=name: _on_topic(seen, kind, name)), f"no {kind} on the metadata topic"
        [ev] = _events_of(home, kind, name)
        assert ev in _on_topic(seen, kind, name)  # the same event on both
        validate_event(ev)
        facet = ev["outputs"][0]["facets"]["livelab_privacy"]
        assert facet["declaredFields"] == sorted(b.manifest["privacy"]["telemetry_fields"])
        assert facet["retentionDays"] == b.manifest["privacy"]["retention_days"]
    sign = _events_of(home, "bundle.sign", b.identity)[0]
    assert [(i["namespace"], i["name"]) for i in sign["inputs"]] == [("livelab:bundles", b.digest)]

    sdk.install("dev-0", out)
    name = f"{b.identity}@default/dev-0"
    assert _wait(lambda: _on_topic(seen, "bundle.install", name)), "the device's install was not on the trail"
    assert _wait(lambda: _events_of(home, "bundle.install", name))
    ev = _events_of(home, "bundle.install", name)[0]
    validate_event(ev)
    assert ev["eventType"] == "COMPLETE"
    assert ev["run"]["facets"]["livelab_artifact"]["details"]["device"] == "dev-0"
    # the clean bundle's telemetry, once observed, passes the privacy audit
    sdk.grant_consent("dev-0", "telemetry")
    assert _wait(lambda: (lineage.read_observed(home).get(f"bundle:{b.digest}") or {}).get("messages", 0) >= 2)
    code, out_text, err = _cli(capsys, home, "lineage", "audit", f"bundle:{b.digest}")
    assert code == 0, out_text + err
    assert f"ok   bundle:{b.digest} (default/dev-0)" in out_text
    sdk.revoke_consent("dev-0", "telemetry")


def test_capture_and_replay_events_reach_the_topic_and_the_file(llab, tmp_path, capsys):
    home, sdk, seen = llab
    sdk.grant_consent("dev-1", "replay-capture")
    cid = sdk.capture("dev-1", 30, timeout=60)
    name = f"default/dev-1/{cid}"
    assert _wait(lambda: _on_topic(seen, "capture", name)), "no capture event on the metadata topic"
    assert _wait(lambda: _events_of(home, "capture", name))
    ev = _events_of(home, "capture", name)[0]
    validate_event(ev)
    audit = ev["run"]["facets"]["livelab_privacyAudit"]
    assert ev["eventType"] == "COMPLETE" and audit["verdict"] == "pass" and audit["messages"] >= 1
    assert "records[].text" in audit["observedFields"]
    assert ev["outputs"][0]["facets"]["livelab_privacy"]["consentScope"] == "replay-capture"
    sdk.revoke_consent("dev-1", "replay-capture")
    from lab_hardware.modelops import replay

    assert _wait(lambda: any(c["capture_id"] == cid and c["complete"] for c in replay.list_captures(home)))
    rp = tmp_path / "dev1.lreplay"
    code, _, err = _cli(capsys, home, "replay", "build", "--device", "dev-1", "--capture", cid, "-o", str(rp))
    assert code == 0, err
    [ev] = _events_of(home, "replay.build")
    validate_event(ev)
    assert ev["eventType"] == "COMPLETE"
    assert [(i["namespace"], i["name"]) for i in ev["inputs"]] == [("livelab:captures", name)]
    assert _wait(lambda: _on_topic(seen, "replay.build"))
    code, _, err = _cli(capsys, home, "replay", "run", str(rp), "--bundle", str(SC.models["candidate"]), "--json")
    assert code == 0, err
    [ev] = _events_of(home, "replay.run")
    validate_event(ev)
    assert ev["eventType"] == "COMPLETE" and ev["run"]["facets"]["livelab_privacyAudit"]["verdict"] == "pass"
    assert _wait(lambda: _on_topic(seen, "replay.run"))


def test_a_bundle_sending_an_undeclared_field_fails_the_privacy_audit(llab, tmp_path, capsys):
    """A real device runs a bundle whose manifest declares every telemetry field but
    ``latency_ms``; its real windows carry ``latency_ms``: the artifact fails, at once (a FAIL
    event) and in ``livelab lineage audit`` (exit 1), with a one-line reason."""
    home, sdk, seen = llab
    out = tmp_path / "narrow.lbundle"
    _bundle.build(
        SC.models["candidate"],
        out,
        name="narrow",
        version="2.0.0",
        compute={"health_decisions": 20},
        privacy={"telemetry_fields": sorted(ALLOWED_FIELDS - {"latency_ms"})},
        created=CREATED,
    )
    _bundle.sign(out, home / "keys" / "author.key")
    b = _bundle.read(out)
    sdk.install("dev-2", out)
    sdk.grant_consent("dev-2", "telemetry")
    try:
        assert _wait(lambda: _on_topic(seen, "privacy.audit", b.digest)), "no FAIL event for the undeclared field"
    finally:
        sdk.revoke_consent("dev-2", "telemetry")
    [ev] = _events_of(home, "privacy.audit", b.digest)
    validate_event(ev)
    assert ev["eventType"] == "FAIL"
    assert ev["run"]["facets"]["livelab_privacyAudit"]["undeclaredFields"] == ["latency_ms"]
    assert (
        "sent undeclared field latency_ms on livelab/default/devices/dev-2/telemetry"
        in (ev["run"]["facets"]["errorMessage"]["message"])
    )
    code, out_text, err = _cli(capsys, home, "lineage", "audit")
    assert code == 1, out_text + err
    fail = [line for line in out_text.splitlines() if line.startswith("FAIL")]
    assert fail == [
        f"FAIL bundle:{b.digest} (default/dev-2): sent undeclared field latency_ms on "
        f"livelab/<ns>/devices/<device>/telemetry (telemetry window: {len(ALLOWED_FIELDS) - 1} fields declared)"
    ]
    code, out_text, err = _cli(capsys, home, "lineage", "list", "--failed", "--json")
    assert code == 0 and [r["artifact"] for r in json.loads(out_text)] == [b.digest]


def test_a_learner_cannot_write_the_metadata_topic(llab):
    """Only the control plane writes the trail: a learner's forged event never reaches it."""
    home, sdk, seen = llab
    desc = json.loads((home / "lab.json").read_text())
    forged = lineage.to_dict(lineage.build_event(lineage.Artifact("grade", "forged/by/learner"), privacy=None))
    c = mqtt.client(username=desc["learner"]["username"], password=desc["learner"]["password"])
    mqtt.connect(c, desc["broker"]["host"], desc["broker"]["port"])
    try:
        info = c.publish(topics.metadata("default"), json.dumps(forged).encode(), qos=1)
        info.wait_for_publish(5)  # the broker has handled (and refused) it before acknowledging
    finally:
        mqtt.stop(c)
    em = lineage.emit_artifact(home, "grade", "after/the/forgery", privacy=lineage.grade_privacy())
    assert em.failures == []
    assert _wait(lambda: _on_topic(seen, "grade", "after/the/forgery"))
    assert not _on_topic(seen, "grade", "forged/by/learner")


def test_bundle_build_declares_telemetry_fields_and_refuses_unknown_ones(tmp_path, capsys):
    out = tmp_path / "b.lbundle"
    args = ["bundle", "build", str(SC.models["baseline"]), "-o", str(out), "--name", "n", "--version", "1.0.0"]
    code, _, err = _cli(capsys, tmp_path, *args, "--telemetry-fields", "schema,seq,text")
    assert code == 2 and "privacy.telemetry_fields has 'text', which telemetry may not contain" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert lineage.read_events(tmp_path) == []
    code, _, err = _cli(capsys, tmp_path, *args, "--telemetry-fields", "schema, seq,counts")
    assert code == 0, err
    [ev] = lineage.read_events(tmp_path)
    validate_event(ev)
    assert ev["outputs"][0]["facets"]["livelab_privacy"]["declaredFields"] == ["counts", "schema", "seq"]


def test_a_revocation_is_on_the_trail_from_the_control_plane_and_each_device(llab, tmp_path, capsys):
    home, sdk, seen = llab
    out = tmp_path / "revokeme.lbundle"
    _bundle.build(
        SC.models["candidate"], out, name="revokeme", version="3.0.0", compute={"health_decisions": 20}, created=CREATED
    )
    _bundle.sign(out, home / "keys" / "author.key")
    b = _bundle.read(out)
    sdk.install("dev-1", out)
    code, _, err = _cli(capsys, home, "bundle", "revoke", str(out), "--reason", "test")
    assert code == 0, err
    [ev] = _events_of(home, "bundle.revoke", b.identity)  # the control plane's, at once
    validate_event(ev)
    assert ev["run"]["facets"]["livelab_artifact"]["details"]["reason"] == "test"
    assert _wait(lambda: _on_topic(seen, "bundle.revoke", b.identity))
    # ... and each device's revocation record, through the observer
    name = f"{b.identity}@default/dev-1"
    assert _wait(lambda: _events_of(home, "bundle.revoke", name)), "dev-1's revocation is not on the trail"
    dev_ev = _events_of(home, "bundle.revoke", name)[0]
    validate_event(dev_ev)
    assert dev_ev["run"]["facets"]["livelab_artifact"]["details"]["active_revoked"] is True


def test_the_observer_fails_a_capture_with_an_undeclared_field_and_skips_garbage(tmp_path, capsys):
    """The observer's handler on payloads as the broker delivers them (no lab needed)."""
    from lab_hardware.runtime.observer import Observer

    obs = Observer(tmp_path, client=None)
    topic = topics.capture("default", "dev-0")
    rec = {"bundle": "b" * 64, "decision": 1, "digest": "0" * 16, "label": 2, "text": "set a timer", "time": 1.0}
    msg = {
        "schema": topics.SCHEMA_CAPTURE, "namespace": "default", "device": "dev-0", "capture_id": "c1",
        "part": 0, "last": True, "consent": {"index": 1, "hash": "a" * 64}, "records": [{**rec, "undo": False}],
    }  # fmt: skip
    for junk in (b"not json", b"[1]", b"\xff\xfe"):
        obs.handle(topic, junk)
    obs.handle("livelab/default/devices/dev-0", b"{}")  # not a device topic
    assert lineage.read_events(tmp_path) == [] and obs.artifacts == {}
    obs.handle(topic, topics.encode(msg))
    assert lineage.read_events(tmp_path) == []  # every field declared
    obs.handle(topic, topics.encode({**msg, "part": 1, "records": [{**rec, "undo": False, "speaker": "ada"}]}))
    [ev] = lineage.read_events(tmp_path)
    validate_event(ev)
    assert ev["eventType"] == "FAIL" and ev["job"]["name"] == "privacy.audit"
    assert lineage.summary(ev)["artifact"] == "default/dev-0/c1"
    assert ev["run"]["facets"]["livelab_privacyAudit"]["undeclaredFields"] == ["records[].speaker"]
    obs.handle(topic, topics.encode({**msg, "part": 2, "records": [{**rec, "undo": False, "speaker": "bo"}]}))
    assert len(lineage.read_events(tmp_path)) == 1  # a field is reported once
    obs.stop()
    code, out, err = _cli(capsys, tmp_path, "lineage", "audit", "--json")
    assert code == 1
    [r] = json.loads(out)["artifacts"]
    assert (
        r["artifact"] == "capture:default/dev-0/c1" and r["messages"] == 3 and r["undeclared"] == ["records[].speaker"]
    )


def test_warm_leaves_nothing_to_load_for_a_grades_event(tmp_path):
    """The grading service writes a grade's event for every submission: openlineage-python and
    livelab's facet and transport classes were imported and built by the first run on a new
    service (0.12 s of imports, then attrs compiling each class).  ``warm`` does it at start:
    afterwards building, serialising and writing a grade's event imports nothing."""
    import subprocess
    import sys

    code = f"""
import sys
from lab_hardware.modelops import lineage
lineage.warm()
before = set(sys.modules)
ev = lineage.build_event(lineage.Artifact("grade", "c@1/a/s/n"), privacy=lineage.grade_privacy(),
                         details={{"score": 1.0}})
lineage.to_dict(ev)
lineage.Trail({str(tmp_path)!r}).emit(ev)
print(sorted(set(sys.modules) - before))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    assert (tmp_path / lineage.EVENTS_FILE).read_text().count('"grade"') >= 1
