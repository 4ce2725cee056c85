"""Divergence-triggered retraining: consented captures -> oracle labels -> a new edge model.

Captures are synthesised exactly as devices make them (``tests/test_replay.py``'s helpers:
scrub -> features -> model -> signal digest, consent in the device's audit chain); the oracle
and every model run in real onnxruntime, replays in the real sandbox.  Nothing here depends on
how fast the machine is.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab_hardware import audit
from lab_hardware import home as _home
from lab_hardware.modelops import bundle, replay
from labs import retrain, streams
from labs.retrain import RetrainError
from tests.test_replay import CANDIDATE, DEV, NS, SC, _captured_home, _one_line, device_records, messages

ROOT = Path(__file__).resolve().parents[1]
ORACLE = SC.oracle_model
VERSION = "1.3.0"


def _suggest(home: Path, device: str = DEV) -> dict:
    """The ``retrain-suggested`` record a device's ``retrain`` divergence SLO writes (figures as
    ``slo.trigger_figures`` makes them), appended to its audit chain after an ``slo-alert``."""
    chain = audit.AuditChain(_home.device_dir(home, NS, device) / "audit.jsonl")
    cand = hashlib.sha256(CANDIDATE.read_bytes()).hexdigest()
    common = {"id": None, "by": "slo", "bundle": cand, "keyid": None, "slo": "agree-call", "indicator": "divergence"}
    alert = chain.append("slo-alert", {**common, "severity": "ticket", "action": "retrain"})
    span = {"windows": 6, "answered": 40, "diverged": 17, "divergence": 0.425}
    return chain.append(
        "retrain-suggested",
        {**common, "alert": {"index": alert["index"], "hash": alert["hash"]}, "long": span, "short": span},
    )


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A lab home with two candidate captures of dev-1 (cap-a, cap-b) and a retrain suggestion."""
    home = _captured_home(tmp_path_factory.mktemp("retrain-home"))
    return home, _suggest(home)


@pytest.fixture(scope="module")
def built(captured, tmp_path_factory):
    home, sugg = captured
    out = tmp_path_factory.mktemp("retrained") / "intents-1.3.0.lbundle"
    res = retrain.build(home, out, version=VERSION, trigger=f"{DEV}#{sugg['index']}")
    return res, out


def test_retraining_is_byte_identical_across_two_runs(captured, built, tmp_path):
    """Model bytes and bundle digest depend only on the captures and the oracle: a second run,
    in another process with another hash seed, writes the same bundle byte for byte."""
    home, sugg = captured
    res, out = built
    again = tmp_path / "again.lbundle"
    code = (
        "import sys, json; from labs import retrain; "
        "r = retrain.build(sys.argv[1], sys.argv[2], version=sys.argv[3], trigger=sys.argv[4]); "
        "print(json.dumps(r))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(home), str(again), VERSION, f"{DEV}#{sugg['index']}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    other = json.loads(proc.stdout.strip().splitlines()[-1])
    assert again.read_bytes() == out.read_bytes()
    assert other["digest"] == res["digest"] == bundle.read(out).digest
    assert other["model_sha256"] == res["model_sha256"] == hashlib.sha256(bundle.read(out).model).hexdigest()
    assert res["created"] == bundle.read(out).manifest["created"]  # the last captured decision's time, not now


def test_the_candidate_bundle_is_unsigned_and_its_model_is_an_edge_model(built):
    res, out = built
    b = bundle.read(out)
    assert b.keyid is None and b.signature is None  # signed through the existing path, not here
    assert b.manifest["version"] == VERSION and b.intents == list(SC.intents)
    from lab_hardware.inference import Model

    m = Model(b.model)
    meta = m.session.get_modelmeta().custom_metadata_map
    assert meta["name"] == "retrained" and meta["training_n"] == str(res["records"])
    assert meta["labelled_by"] == hashlib.sha256(ORACLE.read_bytes()).hexdigest()
    assert res["records"] == 3000 and sum(res["labels"].values()) == 3000
    assert res["agreement"] > 0.95  # it learned the oracle's labels of the captured inputs


def test_provenance_names_the_captures_the_oracle_and_the_trigger(captured, built):
    home, sugg = captured
    res, out = built
    pv = bundle.read(out).manifest["provenance"]
    r = pv["retraining"]
    assert r["schema"] == "livelab.retraining/v1" and r["records"] == 3000
    # the captures: ids, record counts and the sha256 of their records as stored, in decision order
    assert [(c["device"], c["capture_id"], c["records"]) for c in r["captures"]] == [
        (DEV, "cap-a", 2000),
        (DEV, "cap-b", 1000),
    ]
    chain = audit.read(_home.device_dir(home, NS, DEV) / "audit.jsonl")
    grant = next(x for x in chain if x["kind"] == "consent" and x["data"]["scope"] == "replay-capture")
    for c in r["captures"]:
        folder = replay.captures_dir(home, NS, DEV)
        recs = sorted(
            (json.loads(line) for line in (folder / f"{c['capture_id']}.jsonl").open()), key=lambda x: x["decision"]
        )
        assert c["records_sha256"] == hashlib.sha256(streams.to_jsonl(recs)).hexdigest()
        assert c["consent"] == {"index": grant["index"], "hash": grant["hash"]}
    # the oracle that labelled them
    assert r["oracle"] == {"name": "oracle.onnx", "sha256": hashlib.sha256(ORACLE.read_bytes()).hexdigest()}
    # the trigger: that audit record of the device, with its figures
    t = r["trigger"]
    assert (t["device"], t["index"], t["hash"], t["kind"]) == (DEV, sugg["index"], sugg["hash"], "retrain-suggested")
    assert t["slo"] == "agree-call" and t["divergence"]["diverged"] == 17
    # the diverging bundle is the parent; the training data digest is that of the labelled records
    assert pv["parent_bundle"] == t["bundle"] == hashlib.sha256(CANDIDATE.read_bytes()).hexdigest()
    assert pv["training_data_digest"] and pv["builder"] == "livelab labs.retrain"
    assert bundle.inspect(out)["provenance"]["retraining"] == r


def test_a_parent_bundle_lends_its_routing_and_slos(captured, tmp_path):
    home, _ = captured
    slos = [
        {"name": "agree-call", "indicator": "divergence", "intent": "call", "objective": 0.95,
         "period_windows": 20, "policy": "retrain"},
    ]  # fmt: skip
    routing = {"margin_threshold": 0.5, "timeout_ms": 150, "max_share": 0.5}
    parent = bundle.build(
        CANDIDATE, tmp_path / "p.lbundle", name="intents", version="1.2.0", created="2026-11-25T12:00:00Z",
        slos=slos, routing=routing,
    )  # fmt: skip
    res = retrain.build(home, tmp_path / "r.lbundle", version=VERSION, parent=parent, capture_ids=["cap-b"])
    m = bundle.read(tmp_path / "r.lbundle").manifest
    assert m["slos"] == slos and m["routing"] == routing
    assert m["provenance"]["parent_bundle"] == bundle.read(parent).digest == res["parent_bundle"]
    assert [c["capture_id"] for c in m["provenance"]["retraining"]["captures"]] == ["cap-b"]
    assert m["provenance"]["retraining"]["trigger"] is None


def _nothing_written(folder: Path) -> None:
    assert [p.name for p in folder.iterdir()] == [], list(folder.iterdir())


def test_refusals_are_one_line_and_write_nothing(captured, tmp_path):
    home, sugg = captured
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "r.lbundle"
    empty = tmp_path / "empty-home"
    empty.mkdir()
    cases = [
        (dict(home=empty), "no captures to retrain from"),
        (dict(capture_ids=["nope"]), "unknown capture 'nope'"),
        (dict(oracle=CANDIDATE), "is not the voice-intents oracle"),
        (dict(oracle=tmp_path / "missing.onnx"), "oracle model not found"),
        (dict(trigger="dev-1"), "must be DEVICE#INDEX"),
        (dict(trigger=f"{DEV}#0"), "is a 'consent' record, not a divergence alert or retrain suggestion"),
        (dict(trigger=f"{DEV}#999"), "audit chain has"),
        (dict(trigger="dev-7#1"), "no audit chain of default/dev-7"),
        (dict(version="one"), "version"),
        (dict(out=out_dir / "r.onnx"), "must end in .lbundle"),
        (dict(out=tmp_path / "no-such-dir" / "r.lbundle"), "no-such-dir does not exist"),
        (dict(out=out_dir / "file" / "r.lbundle"), "is not a directory"),
    ]
    (out_dir / "file").write_text("x")
    for kw, match in cases:
        args = {"home": home, "out": out, "version": VERSION, **kw}
        with pytest.raises(RetrainError) as info:
            retrain.build(args.pop("home"), args.pop("out"), **args)
        assert match in _one_line(info), (kw, str(info.value))
    assert sorted(p.name for p in out_dir.iterdir()) == ["file"]
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder refuses only others
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(RetrainError) as info:
            retrain.build(home, ro / "r.lbundle", version=VERSION)
        assert "cannot write" in _one_line(info)
        _nothing_written(ro)


def test_captures_with_unverifiable_consent_or_still_open_are_refused(tmp_path):
    """A capture stored without its device's audit chain in this lab (its consent is the device's
    unproven claim) is never trained on; nor is one whose chain was altered since."""
    home = tmp_path / "home"
    recs = device_records(CANDIDATE, 10, 0, 300, 1_700_000_000.0)
    for m in messages(recs, "cap-x", {"index": 1, "hash": "ab" * 32}):
        replay.store_capture(home, m)  # no audit chain of dev-1 here: stored, unverified
    assert replay.list_captures(home)[0]["consent"]["verified"] is False
    out = tmp_path / "r.lbundle"
    with pytest.raises(RetrainError) as info:
        retrain.build(home, out, version=VERSION)
    assert "consent cannot be verified" in _one_line(info) and "cap-x" in str(info.value)
    assert not out.exists()

    # a capture still open (a part missing): two runs would not see the same records
    home3 = _captured_home(tmp_path / "home3")
    grant = next(
        r for r in audit.read(_home.device_dir(home3, NS, DEV) / "audit.jsonl") if r["kind"] == "consent"
        and r["data"]["scope"] == "replay-capture"
    )  # fmt: skip
    open_msgs = messages(device_records(CANDIDATE, 9000, 0, 200, grant["time"] + 1), "cap-open", grant, part_size=100)
    replay.store_capture(home3, open_msgs[1])  # the last part came, the first did not (yet)
    with pytest.raises(RetrainError) as info:
        retrain.build(home3, out, version=VERSION)
    assert "capture cap-open of default/dev-1 is not complete" in _one_line(info)
    assert not out.exists()
    retrain.build(home3, out, version=VERSION, capture_ids=["cap-a", "cap-b"])  # leaving it out works
    out.unlink()

    home2 = _captured_home(tmp_path / "home2")
    chain_path = _home.device_dir(home2, NS, DEV) / "audit.jsonl"
    lines = chain_path.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["data"]["scope"] = "telemetry"  # rewrite the grant: the chain no longer verifies
    chain_path.write_text("\n".join([lines[0], json.dumps(rec), *lines[2:]]) + "\n")
    with pytest.raises(RetrainError) as info:
        retrain.build(home2, out, version=VERSION)
    assert "cannot be used" in _one_line(info) and "broken" in str(info.value)
    assert not out.exists()


def test_a_replay_shows_the_retrained_models_divergence_drop(captured, tmp_path):
    """Retrained on cap-a only, replayed on cap-b (held out): the retrained model disagrees with
    the oracle far less than the candidate it replaces, above all on the defect intent."""
    home, _ = captured
    res = retrain.build(home, tmp_path / "r.lbundle", version=VERSION, capture_ids=["cap-a"])
    held_out = replay.build(home, NS, DEV, tmp_path / "cap-b.lreplay", capture_ids=["cap-b"])
    d = retrain.divergence(held_out, [CANDIDATE, tmp_path / "r.lbundle"])
    assert d["records"] == 1000 and d["oracle"]["digest"] == hashlib.sha256(ORACLE.read_bytes()).hexdigest()
    cand, new = d["models"]
    assert new["digest"] == res["digest"]
    assert cand["diverged"] >= 50, cand  # the candidate's 'call' defect
    assert new["diverged"] * 3 <= cand["diverged"], (cand["diverged"], new["diverged"])
    assert new["by_intent"]["call"]["diverged"] * 5 <= cand["by_intent"]["call"]["diverged"]
    assert sum(v["decisions"] for v in new["by_intent"].values()) == 1000
    # deterministic: the same replay gives the same figures
    assert retrain.divergence(held_out, [tmp_path / "r.lbundle"])["models"][0]["diverged"] == new["diverged"]


# ---- the CLI -----------------------------------------------------------------------------
def _cli(home: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "livelab", "--home", str(home), "retrain", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    return res


def test_cli_build_and_divergence(captured, built, tmp_path):
    home, sugg = captured
    res, out = built
    cli_out = tmp_path / "cli.lbundle"
    r = _cli(home, "build", "-o", str(cli_out), "--version", VERSION, "--trigger", f"{DEV}#{sugg['index']}")
    assert r.returncode == 0, r.stderr
    assert f"retrained {cli_out}" in r.stdout and "unsigned" in r.stdout and "livelab bundle sign" in r.stdout
    assert f"audit #{sugg['index']}" in r.stdout
    assert cli_out.read_bytes() == out.read_bytes()  # the CLI is the library: same bytes
    rp = replay.build(home, NS, DEV, tmp_path / "all.lreplay")
    r = _cli(home, "divergence", str(rp), "--bundle", str(CANDIDATE), "--bundle", str(cli_out), "--json")
    assert r.returncode == 0, r.stderr
    cand, new = json.loads(r.stdout)["models"]
    assert new["diverged"] < cand["diverged"] and new["digest"] == res["digest"]
    r = _cli(home, "divergence", str(rp), "--bundle", str(CANDIDATE))
    assert r.returncode == 0 and "edge/oracle divergence over 3,000 replayed records" in r.stdout, r.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (
            ["build", "-o", "x.lbundle", "--version", VERSION, "--oracle", str(CANDIDATE)],
            "is not the voice-intents oracle",
        ),
        (["build", "-o", "x.lbundle", "--version", VERSION, "--capture", "nope"], "unknown capture 'nope'"),
        (["build", "-o", "nodir/x.lbundle", "--version", VERSION], "nodir does not exist"),
        (["build", "-o", "x.lbundle", "--version", VERSION, "--trigger", "dev-1#0"], "not a divergence alert"),
        (["build", "-o", "x.lbundle"], "the following arguments are required: --version"),
        (["divergence", "missing.lreplay", "--bundle", str(CANDIDATE)], "no replay file at missing.lreplay"),
    ],
)
def test_cli_errors_are_one_line_exit_2_and_write_nothing(captured, tmp_path, args, match):
    home, _ = captured
    r = _cli(home, *args, cwd=tmp_path)
    assert r.returncode == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_consent_and_trigger_are_verified_against_a_chain_the_device_sent(captured, built, tmp_path):
    """A learner's sandboxed kernel has the replay store but not the lab's chain files:
    ``chains=`` (what ``Lab.retrain`` passes, the chain the device sent) verifies consent and the
    trigger instead, with the same result; a tampered chain is refused in one line."""
    import shutil

    home, sugg = captured
    view = tmp_path / "learner-home"  # the store without the devices' folders
    shutil.copytree(replay.captures_dir(home), replay.captures_dir(view))
    out = tmp_path / "from-view.lbundle"
    trigger = f"{DEV}#{sugg['index']}"
    with pytest.raises(retrain.RetrainError, match="no audit chain") as exc:
        retrain.build(view, out, version=VERSION, trigger=trigger)
    _one_line(exc)
    chain = audit.read(_home.device_dir(home, NS, DEV) / "audit.jsonl")
    res = retrain.build(view, out, version=VERSION, trigger=trigger, chains={(NS, DEV): chain})
    first, first_out = built
    assert res["digest"] == first["digest"] and out.read_bytes() == Path(first_out).read_bytes()
    forged = [dict(r) for r in chain]
    forged[1] = {**forged[1], "data": {**forged[1]["data"], "scope": "telemetry"}}
    with pytest.raises(retrain.RetrainError, match="broken") as exc:
        retrain.build(view, tmp_path / "forged.lbundle", version=VERSION, trigger=trigger, chains={(NS, DEV): forged})
    _one_line(exc)
    assert not (tmp_path / "forged.lbundle").exists()
