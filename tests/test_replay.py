"""Replays: captures stored as devices publish them, replay files, the sandbox, diff, the CLI.

Captures are synthesised exactly as a device makes them (scrub -> features ->
model -> signal digest with the model's sha256 and the decision's sequence
number; the user undoes what was wrong against the stream's ground truth), so
"all digests match" here means the replay really reproduces the device's
inputs.  Sandbox runs are real subprocesses under ``unshare -rn``.
"""

from __future__ import annotations

import json
import re
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lab_hardware import audit, digest, features, inference
from lab_hardware.modelops import replay, scrub
from lab_hardware import home as _home
from lab_hardware.modelops.replay import ReplayError
from labs import scenarios

ROOT = Path(__file__).resolve().parents[1]
SC = scenarios.load("voice-intents")
CANDIDATE = SC.models["candidate"]
BASELINE = SC.models["baseline"]
NS, DEV = "default", "dev-1"
N = 3000
# two captures with a gap between them (consent paused): decision seqs are not contiguous
CAPTURE_A = (500, 2000)  # decisions 500..2499, from stream records 0..1999
CAPTURE_B = (3000, 1000)  # decisions 3000..3999, from stream records 2000..2999


# ---- helpers -----------------------------------------------------------------------------
def _grant(home: Path, device: str = DEV) -> dict:
    """The device's audit chain: telemetry consent, then the replay-capture grant."""
    chain = audit.AuditChain(_home.device_dir(home, NS, device) / "audit.jsonl")
    chain.append(
        "consent",
        {"id": "c0", "by": "test", "scope": "telemetry", "grant": True, "changed": True, "withdrawn_windows": 0},
    )
    return chain.append(
        "consent",
        {"id": "c1", "by": "test", "scope": "replay-capture", "grant": True, "changed": True, "withdrawn_windows": 0},
    )


def device_records(
    model: Path, first_decision: int, start: int, n: int, t0: float, *, decide=None, bundle_digest: str | None = None
) -> list[dict]:
    """Capture records as a device makes them: scrub -> features -> model -> digest; undo = wrong."""
    stream = SC.stream(start + n)[start:]
    texts = [scrub.scrub(r["text"]) for r in stream]
    truth = np.array([SC.intents.index(r["intent"]) for r in stream])
    x = features.extract_batch(texts)
    labels, _ = (decide or inference.Model(model).predict)(x)
    bd = bundle_digest or digest.file_digest(model)
    digests = digest.signal_digests(x, bd, first_decision)
    return [
        {
            "decision": first_decision + i,
            "time": round(t0 + (first_decision + i) * 0.02, 6),
            "text": texts[i],
            "bundle": bd,
            "digest": digests[i],
            "label": int(labels[i]),
            "undo": bool(labels[i] != truth[i]),
        }
        for i in range(n)
    ]


def messages(records: list[dict], capture_id: str, consent: dict, part_size: int = 700) -> list[dict]:
    parts = [records[i : i + part_size] for i in range(0, len(records), part_size)]
    return [
        {
            "schema": replay.SCHEMA_CAPTURE,
            "namespace": NS,
            "device": DEV,
            "capture_id": capture_id,
            "part": k,
            "last": k == len(parts) - 1,
            "consent": {"index": consent["index"], "hash": consent["hash"]},
            "records": part,
        }
        for k, part in enumerate(parts)
    ]


def _captured_home(home: Path, model: Path = CANDIDATE, **kw) -> Path:
    grant = _grant(home)
    t0 = grant["time"] + 1
    for cid, (first, n) in (("cap-a", CAPTURE_A), ("cap-b", CAPTURE_B)):
        start = 0 if cid == "cap-a" else CAPTURE_A[1]
        recs = device_records(model, first, start, n, t0, **kw)
        msgs = messages(recs, cid, grant)
        for m in msgs:
            replay.store_capture(home, m)
        replay.store_capture(home, msgs[1])  # QoS 1 re-delivers a part
    return home


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lab home with two candidate captures of dev-1 and a replay built from them."""
    home = _captured_home(tmp_path_factory.mktemp("replay-home"))
    path = replay.build(home, NS, DEV, home / "dev-1.lreplay")
    return home, path


# ---- store -------------------------------------------------------------------------------
def test_store_is_idempotent_and_keeps_the_consent_reference(lab):
    home, _ = lab
    caps = {c["capture_id"]: c for c in replay.list_captures(home)}
    assert set(caps) == {"cap-a", "cap-b"}
    a = caps["cap-a"]
    assert a["records"] == CAPTURE_A[1] and a["complete"] and a["parts"] == [0, 1, 2]
    lines = Path(a["path"]).read_bytes().splitlines()
    assert len(lines) == CAPTURE_A[1], "a re-delivered part must not duplicate records"
    assert len({json.loads(x)["decision"] for x in lines}) == CAPTURE_A[1]
    chain = audit.read(_home.device_dir(home, NS, DEV) / "audit.jsonl")
    assert a["consent"]["index"] == 1 and a["consent"]["hash"] == chain[1]["hash"]
    assert a["consent"]["verified"] and a["consent"]["scope"] == "replay-capture"
    meta = Path(a["path"]).with_name("cap-a.meta.json")
    assert json.loads(meta.read_text())["consent"]["hash"] == chain[1]["hash"]


def test_collector_keeps_nothing_of_a_removed_namespace(tmp_path):
    """A capture still in flight when its namespace is removed is dropped, not stored.

    The collector's session is persistent (QoS 1), so a device's last capture can reach
    it after the namespace is gone and its captures folder deleted; storing it would
    recreate the folder and leave a learner's data behind (seen in CI).
    """
    from lab_hardware.runtime.supervisor import Supervisor

    _home.write_json(tmp_path / "config.json", {"namespaces": {NS: {"devices": [{"name": DEV}]}}, "broker": {}})
    _home.write_json(tmp_path / "secrets" / "identities.json", {})
    sup = Supervisor(tmp_path)
    grant = _grant(tmp_path)
    recs = device_records(CANDIDATE, 0, 0, 20, grant["time"] + 1)
    first, late = messages(recs[:10], "cap", grant)[0], messages(recs[10:], "cap", grant)[0]
    assert sup.collect(json.dumps(first).encode()) is not None
    assert replay.captures_dir(tmp_path, NS, DEV).is_dir()

    sup.cfg = {**sup.cfg, "namespaces": {}}  # the namespace is removed: a reload
    sup._follow_namespaces()
    import shutil

    shutil.rmtree(replay.captures_dir(tmp_path, NS))  # what grading does once it is gone
    assert sup.collect(json.dumps(late).encode()) is None
    assert not replay.captures_dir(tmp_path, NS).exists()


def test_store_refuses_raw_pii_and_stores_nothing(tmp_path):
    grant = _grant(tmp_path)
    recs = device_records(CANDIDATE, 0, 0, 50, grant["time"] + 1)
    ok = messages(recs[:10], "cap", grant)[0]
    path = replay.store_capture(tmp_path, ok)
    before = path.read_bytes()
    for raw in ("call Grace Okafor", "email tara.kaur@example.org", "dial 555-123-4567"):
        bad = messages([*recs[10:20], {**recs[20], "text": raw}], "cap", grant)[0]
        with pytest.raises(ReplayError) as info:
            replay.store_capture(tmp_path, bad)
        assert "still contains PII" in _one_line(info)
        assert path.read_bytes() == before


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m, c: {**m, "schema": "livelab.capture/v0"}, "unknown capture schema"),
        (lambda m, c: {k: v for k, v in m.items() if k != "consent"}, "missing consent"),
        (lambda m, c: {**m, "consent": {"index": 1}}, "'consent' must be"),
        (lambda m, c: {**m, "consent": {**m["consent"], "hash": "0" * 64}}, "is not in dev-1's audit chain"),
        (lambda m, c: {**m, "consent": {"index": 0, "hash": c[0]["hash"]}}, "does not grant replay-capture"),
        (lambda m, c: {**m, "device": "Dev 1"}, "invalid device name"),
        (lambda m, c: {**m, "capture_id": "../x"}, "'capture_id' must be"),
        (lambda m, c: {**m, "records": [{**m["records"][0], "extra": 1}]}, "exactly the fields"),
        (lambda m, c: {**m, "records": [{**m["records"][0], "digest": "xyz"}]}, "16-hex-digit"),
        (lambda m, c: {**m, "records": [{**m["records"][0], "time": 1.0}]}, "outside the replay-capture consent"),
        (lambda m, c: [m], "must be a JSON object"),
    ],
)
def test_store_refuses_bad_capture_messages(tmp_path, mutate, match):
    grant = _grant(tmp_path)
    chain = audit.read(_home.device_dir(tmp_path, NS, DEV) / "audit.jsonl")
    msg = messages(device_records(CANDIDATE, 0, 0, 5, grant["time"] + 1), "cap", grant)[0]
    with pytest.raises(ReplayError) as info:
        replay.store_capture(tmp_path, mutate(msg, chain))
    assert match in _one_line(info)
    assert not replay.list_captures(tmp_path)


def test_store_refuses_a_conflicting_redelivery(tmp_path):
    grant = _grant(tmp_path)
    msg = messages(device_records(CANDIDATE, 0, 0, 5, grant["time"] + 1), "cap", grant)[0]
    replay.store_capture(tmp_path, msg)
    forged = {**msg, "records": [{**msg["records"][0], "label": (msg["records"][0]["label"] + 1) % 6}]}
    with pytest.raises(ReplayError) as info:
        replay.store_capture(tmp_path, forged)
    assert "differs from the record already stored" in _one_line(info)


# ---- build and read ----------------------------------------------------------------------
def test_replay_file_layout(lab):
    home, path = lab
    rp = replay.read(path)
    m = rp.manifest
    assert m["schema"] == "livelab.replay/v1" and m["features"] == features.SCHEMA
    assert m["namespace"] == NS and m["device"] == DEV and m["capture_ids"] == ["cap-a", "cap-b"]
    assert m["bundle"] == digest.file_digest(CANDIDATE)
    assert m["records"] == len(rp) == CAPTURE_A[1] + CAPTURE_B[1]
    (entry,) = m["consent_trail"]
    chain = audit.read(_home.device_dir(home, NS, DEV) / "audit.jsonl")
    assert (entry["device"], entry["index"], entry["hash"]) == (DEV, 1, chain[1]["hash"])
    assert entry["scope"] == "replay-capture" and entry["grant"] is True and entry["time"] == chain[1]["time"]
    assert m["provenance"]["records_from"] == CAPTURE_A[0]
    assert m["provenance"]["records_to"] == CAPTURE_B[0] + CAPTURE_B[1] - 1
    decisions = [r["decision"] for r in rp.records]
    assert decisions == sorted(decisions) and len(set(decisions)) == len(decisions)
    lines = path.read_bytes().split(b"\n")
    assert json.loads(lines[1]) == rp.records[0] and all(scrub.find(r["text"]) == [] for r in rp.records)


def test_build_refuses_missing_captures_and_unknown_ids(lab, tmp_path):
    home, _ = lab
    with pytest.raises(ReplayError) as info:
        replay.build(home, NS, "dev-9", tmp_path / "x.lreplay")
    assert "no captures for device dev-9" in _one_line(info)
    with pytest.raises(ReplayError) as info:
        replay.build(home, NS, DEV, tmp_path / "x.lreplay", capture_ids=["nope"])
    assert "unknown capture 'nope'" in _one_line(info)
    with pytest.raises(ReplayError) as info:
        replay.build(home, NS, DEV, tmp_path / "x.lreplay", consent_trail=[])
    assert "no consent trail" in _one_line(info)
    only_b = replay.read(replay.build(home, NS, DEV, tmp_path / "b.lreplay", capture_ids=["cap-b"]))
    assert len(only_b) == CAPTURE_B[1] and only_b.manifest["capture_ids"] == ["cap-b"]


def _rewrite(path: Path, out: Path, edit_manifest=None, edit_body=None) -> Path:
    """A replay with an edited manifest/body, its hash and count kept consistent."""
    import hashlib

    head, body = path.read_bytes().split(b"\n", 1)
    manifest = json.loads(head)
    if edit_body:
        body = edit_body(body)
    manifest["records"] = body.count(b"\n")
    manifest["records_sha256"] = hashlib.sha256(body).hexdigest()
    if edit_manifest:
        edit_manifest(manifest)
    out.write_bytes(json.dumps(manifest).encode() + b"\n" + body)
    return out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _flip_in_record(data: bytes) -> bytes:
    i = data.index(b'"text":"', data.index(b"\n", data.index(b"\n") + 1)) + 9
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p, t: _write(t, _flip_in_record(p.read_bytes())), "is corrupted"),
        (lambda p, t: _write(t, p.read_bytes()[:-40]), "last line is torn"),
        (
            lambda p, t: _write(t, p.read_bytes()[: p.read_bytes().rindex(b"\n", 0, -1) + 1]),
            "manifest says 3000 records, the file has 2999",
        ),
        (lambda p, t: _write(t, p.read_bytes() + p.read_bytes().split(b"\n")[1] + b"\n"), "truncated or padded"),
        (lambda p, t: _rewrite(p, t, lambda m: m.update(consent_trail=[])), "has no consent trail"),
        (lambda p, t: _rewrite(p, t, lambda m: m.pop("consent_trail")), "has no consent trail"),
        (
            lambda p, t: _rewrite(p, t, lambda m: m["consent_trail"][0].update(grant=False)),
            "does not grant replay-capture",
        ),
        (lambda p, t: _rewrite(p, t, lambda m: m.update(schema="livelab.replay/v9")), "unknown schema"),
        (lambda p, t: _rewrite(p, t, lambda m: m.update(features="other/v1")), "captured with features"),
        (lambda p, t: _rewrite(p, t, edit_body=lambda b: b.replace(b"\n", b"\nnot json\n", 1)), "is not JSON"),
        (
            lambda p, t: _rewrite(p, t, edit_body=lambda b: b"\n".join(reversed(b.split(b"\n")[:-1])) + b"\n"),
            "increasing decision order",
        ),
        (lambda p, t: _write(t, b""), "is empty"),
        (lambda p, t: _write(t, b"PK\x03\x04 zip\n"), "line 1 is not JSON"),
        (lambda p, t: t, "replay not found"),
    ],
)
def test_read_refuses_bad_replays_in_one_line(lab, tmp_path, make, match):
    _, path = lab
    bad = make(path, tmp_path / "bad.lreplay")
    with pytest.raises(ReplayError) as info:
        replay.read(bad)
    assert match in _one_line(info)
    with pytest.raises(ReplayError) as info:  # run refuses before starting a sandbox
        replay.run(bad, CANDIDATE, tmp_path / "out.jsonl")
    assert match in _one_line(info)
    assert not (tmp_path / "out.jsonl").exists()


# ---- run ---------------------------------------------------------------------------------
def test_run_is_byte_identical_across_processes_and_threads(lab, tmp_path, monkeypatch):
    _, path = lab
    first = replay.run(path, CANDIDATE, tmp_path / "1.jsonl")
    second = replay.run(path, CANDIDATE, tmp_path / "2.jsonl")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    threaded = replay.run(path, CANDIDATE, tmp_path / "3.jsonl", threads=2)
    plain = replay.run(path, CANDIDATE, tmp_path / "4.jsonl", sandbox=False)
    outs = [(tmp_path / f"{i}.jsonl").read_bytes() for i in (1, 2, 3, 4)]
    assert outs[0] == outs[1] == outs[2] == outs[3]
    assert {r["output_sha256"] for r in (first, second, threaded, plain)} == {first["output_sha256"]}
    isolated = bool(replay._unshare()[0])
    assert first["network_isolated"] is isolated and first["network_guard"] is True
    assert plain["network_isolated"] is False
    n = CAPTURE_A[1] + CAPTURE_B[1]
    assert first["records"] == n and first["same_model"] and first["digest_matches"] == n
    assert first["labels_changed"] == 0 and first["records_per_s"] > 0 and first["wall_seconds"] > first["seconds"]

    rows, summary = replay.read_output(tmp_path / "1.jsonl")
    rp = replay.read(path)
    assert [r["decision"] for r in rows] == [r["decision"] for r in rp.records]
    assert all(r["digest_ok"] and r["digest"] == rec["digest"] for r, rec in zip(rows, rp.records))
    assert all(r["intent"] == SC.intents[r["label"]] for r in rows)
    assert set(rows[0]) == {"decision", "label", "intent", "probs", "digest", "digest_ok"}
    probs = np.frombuffer(bytes.fromhex(rows[0]["probs"]), dtype="<f4")
    assert probs.shape == (len(SC.intents),) and abs(float(probs.sum()) - 1) < 1e-5
    assert summary["records"] == n and summary["digest_matches"] == n
    assert not {"time", "created", "seconds", "threads", "when"} & set(summary)  # nothing that varies per run


def test_run_with_another_model_recomputes_digests_with_it(lab, tmp_path):
    _, path = lab
    res = replay.run(path, BASELINE, tmp_path / "b.jsonl")
    assert not res["same_model"] and res["digest_matches"] == 0
    rows, _ = replay.read_output(tmp_path / "b.jsonl")
    rp = replay.read(path)
    x = features.extract_batch([rp.records[0]["text"]])
    assert rows[0]["digest"] == digest.signal_digest(x[0], digest.file_digest(BASELINE), rp.records[0]["decision"])


def test_run_refuses_a_missing_or_unknown_model(lab, tmp_path):
    _, path = lab
    with pytest.raises(ReplayError) as info:
        replay.run(path, tmp_path / "gone.onnx", tmp_path / "o.jsonl")
    assert _one_line(info) == f"bundle not found: {tmp_path / 'gone.onnx'}"
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(ReplayError) as info:
        replay.run(path, tmp_path / "model.txt", tmp_path / "o.jsonl")
    assert "must be a .onnx file or a .lbundle" in _one_line(info)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ReplayError) as info:  # refused inside the sandbox, reported in one line
        replay.run(path, tmp_path / "broken.onnx", tmp_path / "o.jsonl")
    assert "cannot be loaded" in _one_line(info)


def test_sandbox_has_no_network(tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        control = replay.probe_network("127.0.0.1", port, sandbox=False)
        assert control["namespace"] == "connected", control  # the probe can reach the listener ...
        assert control["guard"].startswith("blocked: network access is disabled"), control
        if not replay._unshare()[0]:
            pytest.skip(f"no network namespace here: {replay._unshare()[1]}")
        sandboxed = replay.probe_network("127.0.0.1", port)
        assert sandboxed["namespace"].startswith("blocked"), sandboxed  # ... but not from the sandbox
        assert sandboxed["guard"].startswith("blocked: network access is disabled"), sandboxed
        assert sandboxed["interfaces"] == ["lo"] and sandboxed["network_isolated"] is True
    finally:
        listener.close()


def test_no_sandbox_process_is_left_behind(lab, tmp_path):
    _, path = lab
    replay.run(path, CANDIDATE, tmp_path / "o.jsonl")
    me = str(os.getpid())
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == me and b"replay_sandbox" in cmd:
            children.append(stat.parent.name)
    assert not children


# ---- diff --------------------------------------------------------------------------------
def test_diff_shows_the_candidates_false_positives(lab):
    _, path = lab
    d = replay.diff(path, CANDIDATE, BASELINE)
    a, b = d["a"], d["b"]
    assert d["records"] == CAPTURE_A[1] + CAPTURE_B[1] and d["defect_intent"] == "call"
    assert a["same_model"] and a["digest_matches"] == d["records"] and not b["same_model"]
    assert a["defect_false_positives"] >= 100, a
    assert b["defect_false_positives"] * 10 <= a["defect_false_positives"], (a, b)
    assert a["counts"]["call"] > b["counts"]["call"]
    assert d["changed"] > 0 and sum(d["transitions"].values()) == d["changed"]
    assert max(d["transitions"], key=d["transitions"].get).startswith("call -> ")
    assert d["examples"] and all(scrub.find(e["text"]) == [] for e in d["examples"])
    # the same model on both sides changes nothing
    same = replay.diff(path, CANDIDATE, CANDIDATE)
    assert same["changed"] == 0 and same["a"]["output_sha256"] == same["b"]["output_sha256"]


# ---- bundles -----------------------------------------------------------------------------
def test_bundle_replay_reproduces_bundle_digests(tmp_path):
    bundle = pytest.importorskip("lab_hardware.modelops.bundle")
    created = "2026-11-25T12:00:00Z"
    cand = bundle.build(CANDIDATE, tmp_path / "candidate.lbundle", name="candidate", version="1.0.0", created=created)
    fixed = bundle.build(BASELINE, tmp_path / "fixed.lbundle", name="candidate", version="1.0.1", created=created)
    b = bundle.read(cand)
    home = tmp_path / "home"
    _captured_home(home, CANDIDATE, decide=b.decide, bundle_digest=b.digest)
    path = replay.build(home, NS, DEV, tmp_path / "b.lreplay")
    assert replay.read(path).bundle == b.digest
    res = replay.run(path, cand, tmp_path / "o1.jsonl")
    assert res["same_model"] and res["digest_matches"] == res["records"]
    again = replay.run(path, cand, tmp_path / "o2.jsonl", threads=2)
    assert again["output_sha256"] == res["output_sha256"]
    raw = replay.run(path, CANDIDATE, tmp_path / "o3.jsonl")  # same weights, another identity
    assert not raw["same_model"] and raw["digest_matches"] == 0
    d = replay.diff(path, cand, fixed)
    assert d["a"]["defect_false_positives"] >= 100
    assert d["b"]["defect_false_positives"] * 10 <= d["a"]["defect_false_positives"]


# ---- CLI ---------------------------------------------------------------------------------
def _cli(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "livelab", "--home", str(home), "replay", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_cli_list_build_run_diff(lab, tmp_path):
    home, path = lab
    res = _cli(home, "list")
    assert res.returncode == 0 and "cap-a" in res.stdout and "cap-b" in res.stdout, res.stderr
    out = tmp_path / "cli.lreplay"
    res = _cli(home, "build", "--device", DEV, "--capture", "cap-a", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert replay.read(out).manifest["capture_ids"] == ["cap-a"]
    res = _cli(home, "run", str(path), "--bundle", str(CANDIDATE), "-o", str(tmp_path / "o.jsonl"), "--json")
    assert res.returncode == 0, res.stderr
    lib = replay.run(path, CANDIDATE, tmp_path / "lib.jsonl")
    assert json.loads(res.stdout)["output_sha256"] == lib["output_sha256"]
    res = _cli(home, "run", str(path), "--bundle", str(CANDIDATE), "-o", str(tmp_path / "o2.jsonl"))
    assert res.returncode == 0 and "records/s" in res.stdout and lib["output_sha256"][:20] in res.stdout
    res = _cli(home, "diff", str(path), "--bundle", str(CANDIDATE), "--bundle", str(BASELINE))
    assert res.returncode == 0, res.stderr
    assert "call false positives" in res.stdout and "call -> " in res.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (lambda p, t: ["run", str(p), "--bundle", str(t / "missing.onnx")], "bundle not found"),
        (lambda p, t: ["run", str(t / "none.lreplay"), "--bundle", str(CANDIDATE)], "no replay file at"),
        (lambda p, t: ["run", str(t / "bad.lreplay"), "--bundle", str(CANDIDATE)], "is corrupted"),
        (lambda p, t: ["diff", str(p), "--bundle", str(CANDIDATE)], "exactly two models"),
        (
            lambda p, t: ["diff", str(t / "bad.lreplay"), "--bundle", str(CANDIDATE), "--bundle", str(BASELINE)],
            "is corrupted",
        ),
        (lambda p, t: ["build", "--device", "dev-7", "-o", str(t / "x.lreplay")], "no captures for device dev-7"),
        (lambda p, t: ["build", "--device", "Bad Name", "-o", str(t / "x.lreplay")], "invalid device name"),
        (
            lambda p, t: ["run", str(p), "--bundle", str(CANDIDATE), "--threads", "0"],
            "--threads: must be between 1 and",
        ),
    ],
)
def test_cli_errors_are_one_line_exit_2(lab, tmp_path, args, match):
    home, path = lab
    (tmp_path / "bad.lreplay").write_bytes(_flip_in_record(path.read_bytes()))
    res = _cli(home, *args(path, tmp_path))
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    # "livelab: error: ..." from the command, "livelab replay run: error: ..." from its parser
    assert len(lines) == 1 and match in lines[0] and re.match(r"livelab( [a-z ]+)?: error: ", lines[0]), res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_captures_of_a_namespace_added_to_a_running_lab_are_stored(tmp_path, mosquitto_available):
    """The supervisor's collector follows namespaces added after it started (a grading job's,
    a team member's): their consented captures land in the replay store too."""
    import time as _time

    from lab_hardware.runtime import lab as _lab
    from labs import Lab

    home = tmp_path / "lab"
    _lab.up(home, scenario=scenarios.load("voice-intents").materialize(home / "scenario"), devices=1)
    try:
        desc = _lab.add_namespace(home, "late", devices=1)
        learner_home = tmp_path / "late-home"
        learner_home.mkdir()
        _home.write_json(learner_home / _home.DESCRIPTOR, desc)
        with Lab.connect(home=learner_home) as sdk:
            assert sdk.namespace == "late"
            dev = sdk.devices[0]
            sdk.grant_consent(dev, "replay-capture")
            cid = sdk.capture(dev, 40)
        deadline = _time.monotonic() + 60
        while _time.monotonic() < deadline:
            caps = [c for c in replay.list_captures(home) if c.get("capture_id") == cid]
            if caps and caps[0].get("records", 0) >= 40:
                break
            _time.sleep(0.1)
        assert caps and caps[0]["namespace"] == "late" and caps[0]["records"] >= 40, replay.list_captures(home)
    finally:
        _lab.down(home)
