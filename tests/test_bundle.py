"""Signed model bundles: keys, adapter, build/sign/read/verify and every refusal, plus the CLI.

Real Ed25519 (cryptography), real onnxruntime, real files; malicious archives are
crafted by hand with tarfile so the reader is tested against what an attacker
could send, not against what our own writer happens to produce.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lab_hardware.modelops import adapter, bundle, keys
from lab_hardware import profiles
from lab_hardware.modelops.bundle import BundleError
from lab_hardware.inference import Model

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "labs" / "voice-intents" / "models" / "candidate.onnx"
INTENTS = ["weather", "timer", "music", "call", "lights", "shopping"]
CREATED = "2026-11-25T12:00:00Z"


# ---- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A lab home with a trusted key 'alice' and an untrusted key 'mallory'."""
    h = tmp_path_factory.mktemp("home")
    keys.new_key(h, "alice")
    keys.new_key(h, "mallory")
    keys.trust(h, h / "keys" / "alice.pub")
    return h


@pytest.fixture(scope="module")
def trusted(home):
    return keys.trusted(home)


@pytest.fixture(scope="module")
def x():
    """Feature vectors of the scenario's first 1500 utterances (what devices decide on)."""
    from lab_hardware import features
    from labs import scenarios

    recs = scenarios.load("voice-intents").stream(1500)
    return features.extract_batch([r["text"] for r in recs])


def _build(tmp_path: Path, fname="b.lbundle", **kw) -> Path:
    kw.setdefault("name", "candidate")
    kw.setdefault("version", "1.0.0")
    kw.setdefault("created", CREATED)
    return bundle.build(MODEL, tmp_path / fname, **kw)


def _signed(tmp_path: Path, home: Path, key="alice", **kw) -> Path:
    return bundle.sign(_build(tmp_path, **kw), home / "keys" / f"{key}.key")


def _refused(match: str, fn, *args, **kw) -> str:
    """fn must raise a one-line BundleError containing ``match``."""
    with pytest.raises(BundleError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert match in msg, msg
    assert "\n" not in msg and msg.strip() == msg
    return msg


def _tar(entries: list, fmt=tarfile.GNU_FORMAT) -> bytes:
    """A hand-made tar: entries are (name, data or None, {TarInfo attribute: value})."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data, attrs in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(data) if data is not None else 0
            for k, v in attrs.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _canon(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _offsets(data: bytes) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) in a tar."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return {m.name: (m.offset_data, m.size) for m in tf.getmembers()}


def _flip(data: bytes, at: int, new: int | None = None) -> bytes:
    b = bytearray(data)
    b[at] = new if new is not None else b[at] ^ 0x01
    return bytes(b)


def _sign_manifest(home: Path, manifest: dict, key="alice") -> bytes:
    priv = keys.load_private(home / "keys" / f"{key}.key")
    return _canon(
        {
            "schema": "livelab.signature/v1",
            "keyid": keys.keyid_of(priv.public_key()),
            "signature": priv.sign(_canon(manifest)).hex(),
        }
    )


# ---- keys --------------------------------------------------------------------------------
def test_keys_files_modes_and_trust_store(tmp_path):
    rec = keys.new_key(tmp_path, "ci-signer")
    key, pub = Path(rec["key"]), Path(rec["pub"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    doc = json.loads(pub.read_text())
    assert doc == {"schema": "livelab.pubkey/v1", "name": "ci-signer", "keyid": rec["keyid"], "public": rec["public"]}
    assert rec["keyid"] == hashlib.sha256(bytes.fromhex(rec["public"])).hexdigest()[:16]
    keyid, public = keys.load_public(pub)
    assert keyid == rec["keyid"]
    assert keys.load_private(key).public_key().public_bytes_raw() == public.public_bytes_raw()

    with pytest.raises(keys.KeyringError, match="already exists"):
        keys.new_key(tmp_path, "ci-signer")
    with pytest.raises(keys.KeyringError, match="invalid key name"):
        keys.new_key(tmp_path, "../evil")

    assert keys.trusted(tmp_path) == {}
    assert keys.trust(tmp_path, pub) == keyid == keys.trust(tmp_path, pub)  # idempotent
    assert list(keys.trusted(tmp_path)) == [keyid]
    hexes = keys.trusted_hex(tmp_path)
    assert hexes == {keyid: rec["public"]}
    assert keys.from_hex(hexes)[keyid].public_bytes_raw() == public.public_bytes_raw()
    assert [(r["name"], r["private"], r["trusted"]) for r in keys.list_keys(tmp_path)] == [("ci-signer", True, True)]
    keys.untrust(tmp_path, keyid)
    assert keys.trusted(tmp_path) == {}
    with pytest.raises(keys.KeyringError, match="not trusted"):
        keys.untrust(tmp_path, keyid)
    with pytest.raises(keys.KeyringError, match="invalid key id"):
        keys.untrust(tmp_path, "../../etc/passwd")


def test_keys_refuse_malformed_files_in_one_line(tmp_path):
    rec = keys.new_key(tmp_path, "a")
    other = keys.new_key(tmp_path, "b")
    bad = tmp_path / "bad.pub"
    cases = {
        "not JSON": (b"not json", "invalid JSON"),
        "keyid lie": (
            _canon({**json.loads(Path(rec["pub"]).read_text()), "keyid": other["keyid"]}),
            "does not match its public key",
        ),
        "unknown key": (_canon({**json.loads(Path(rec["pub"]).read_text()), "x": 1}), "unknown key 'x'"),
        "short hex": (_canon({**json.loads(Path(rec["pub"]).read_text()), "public": "ab"}), "64 lower-case hex"),
    }
    for data, match in cases.values():
        bad.write_bytes(data)
        with pytest.raises(keys.KeyringError) as ei:
            keys.load_public(bad)
        assert match in str(ei.value) and "\n" not in str(ei.value)
    for path, match in [(tmp_path / "missing.key", "cannot read private key"), (bad, "not a usable private key")]:
        with pytest.raises(keys.KeyringError, match=match):
            keys.load_private(path)
    with pytest.raises(keys.KeyringError, match="does not match"):
        keys.from_hex({other["keyid"]: rec["public"]})
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "0123456789abcdef.pub").write_bytes(b"{}")
    with pytest.raises(keys.KeyringError, match="missing key"):  # never silently skipped
        keys.trusted(tmp_path)


# ---- adapter -----------------------------------------------------------------------------
def test_adapter_validates_strictly():
    good = adapter.make(INTENTS, {"call": -2})
    assert json.loads(good) == {"schema": "livelab.adapter/v1", "intents": INTENTS, "logit_bias": {"call": -2.0}}
    a = adapter.load(good, INTENTS)
    assert a.logit_bias == {"call": -2.0} and not a.neutral
    base = json.loads(good)
    cases = [
        (b"\xff\xfe", "not valid JSON"),
        (b'{"schema": "livelab.adapter/v1", "intents": [], "logit_bias": {"call": NaN}}', "finite"),
        (_canon({**base, "extra": 1}), "unknown key 'extra'"),
        (_canon({k: v for k, v in base.items() if k != "logit_bias"}), "missing key 'logit_bias'"),
        (_canon({**base, "schema": "livelab.adapter/v2"}), "schema"),
        (_canon({**base, "intents": INTENTS[::-1]}), "do not match the model's"),
        (_canon({**base, "logit_bias": {"sing": 1.0}}), "unknown intent 'sing'"),
        (_canon({**base, "logit_bias": {"call": True}}), "must be a number"),
        (_canon({**base, "logit_bias": {"call": 1e300}}), "finite and within"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"schema": 1, "schema": 2}', "duplicate key"),
        (b" " * (adapter.ADAPTER_BUDGET + 1), "over the 1,000,000-byte budget"),
    ]
    for data, match in cases:
        with pytest.raises(adapter.AdapterError) as ei:
            adapter.load(data, INTENTS)
        assert match in str(ei.value) and "\n" not in str(ei.value), (data[:60], str(ei.value))


def test_adapter_apply_is_renormalised_deterministic_and_neutral_is_identity():
    rng = np.random.default_rng(20261125)
    logits = rng.normal(size=(500, 6)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p = p.astype(np.float32)
    neutral = adapter.load(adapter.make(INTENTS, {}), INTENTS)
    labels, q = neutral.apply(p)
    assert q.tobytes() == p.tobytes() and (labels == p.argmax(axis=1)).all() and labels.dtype == np.int64

    a = adapter.load(adapter.make(INTENTS, {"call": -3.0, "music": 0.5}), INTENTS)
    l1, q1 = a.apply(p)
    l2, q2 = a.apply(p.copy())
    assert q1.dtype == np.float32 and q1.tobytes() == q2.tobytes() and (l1 == l2).all()
    bias = np.array([0, 0, 0.5, -3.0, 0, 0])
    expect = p * np.exp(bias)
    expect /= expect.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(q1, expect, rtol=1e-5, atol=1e-7)
    assert (l1 == 3).sum() < (p.argmax(axis=1) == 3).sum()
    with pytest.raises(adapter.AdapterError, match="shape"):
        a.apply(p[:, :5])


# ---- round trip --------------------------------------------------------------------------
def test_build_sign_verify_round_trip_and_decide(tmp_path, home, trusted, x):
    zero = tmp_path / "zero.json"
    zero.write_bytes(adapter.make(INTENTS, {"call": 0.0}))
    path = _build(tmp_path, adapter=zero)
    unsigned = bundle.read(path)
    assert unsigned.keyid is None and unsigned.signature is None
    _refused("bundle is not signed", bundle.verify, path, trusted)

    assert bundle.sign(path, home / "keys" / "alice.key") == path
    b = bundle.verify(path, trusted, profile=profiles.load("rpi4"))
    alice = keys.load_public(home / "keys" / "alice.pub")[0]
    assert b.verified and b.keyid == alice and b.digest == unsigned.digest
    assert b.digest == hashlib.sha256(_canon(b.manifest)).hexdigest()
    m = b.manifest
    assert m["schema"] == "livelab.bundle/v1"
    assert (m["name"], m["version"], m["created"]) == ("candidate", "1.0.0", CREATED)
    assert m["files"]["model.onnx"] == {
        "sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(),
        "size": MODEL.stat().st_size,
    }
    assert m["io"]["input"] == {
        "name": "features",
        "shape": [None, 512],
        "dtype": "float32",
        "features": "livelab.features.hashed-words/v1",
    }
    assert m["io"]["intents"] == INTENTS
    assert m["compute"]["latency_budget_ms"] == 50 and m["compute"]["health_decisions"] == 50
    assert m["privacy"]["raw_inputs_leave_device"] is False
    meta = Model(MODEL).session.get_modelmeta().custom_metadata_map
    assert m["provenance"]["training_data_digest"] == meta["training_data_digest"]
    assert m["provenance"]["source_commit"]  # the test runs inside the project's git checkout
    # the device path: trust store -> plain hex in a config -> keys again
    assert bundle.verify(path.read_bytes(), keys.from_hex(keys.trusted_hex(home))).digest == b.digest

    raw_labels, raw_probs = Model(MODEL).predict(x)
    labels, probs = b.decide(x)
    assert (labels == raw_labels).all() and probs.tobytes() == raw_probs.tobytes()

    fix = tmp_path / "fix.json"
    fix.write_bytes(adapter.make(INTENTS, {"call": -4.0}))
    fixed = bundle.verify(
        bundle.sign(
            _build(tmp_path, "fix.lbundle", version="1.0.1", adapter=fix, provenance={"parent_bundle": b.digest}),
            home / "keys" / "alice.key",
        ),
        trusted,
        installed_version="1.0.0",
    )
    fixed_labels, _ = fixed.decide(x)
    call = INTENTS.index("call")
    assert 0 < (fixed_labels == call).sum() < (raw_labels == call).sum()
    assert fixed.manifest["provenance"]["parent_bundle"] == b.digest

    info = bundle.inspect(path)
    assert (info["name"], info["version"], info["digest"], info["keyid"], info["signed"]) == (
        "candidate",
        "1.0.0",
        b.digest,
        alice,
        True,
    )
    assert info["size"] == path.stat().st_size and info["model_size"] == MODEL.stat().st_size
    assert set(info) >= {"compute", "privacy", "provenance", "revocation", "adapter_size"}


def test_one_megabyte_bundle_verifies(tmp_path, home, trusted):
    padded = adapter.make(INTENTS, {"call": -1.0})
    padded += b" " * (adapter.ADAPTER_BUDGET - 1000 - len(padded))  # JSON allows trailing whitespace
    big = tmp_path / "big.json"
    big.write_bytes(padded)
    path = _signed(tmp_path, home, adapter=big)
    assert 1_000_000 < path.stat().st_size < 1_100_000
    b = bundle.verify(path, trusted)
    assert b.adapter is not None and b.adapter.logit_bias == {"call": -1.0}
    assert b.size == path.stat().st_size


def test_build_is_deterministic_and_tar_is_plain(tmp_path, home):
    a = _build(tmp_path, "a.lbundle").read_bytes()
    b = _build(tmp_path, "b.lbundle").read_bytes()
    assert a == b
    sa = bundle.sign(tmp_path / "a.lbundle", home / "keys" / "alice.key").read_bytes()
    sb = bundle.sign(tmp_path / "b.lbundle", home / "keys" / "alice.key").read_bytes()
    assert sa == sb  # Ed25519 is deterministic
    with tarfile.open(fileobj=io.BytesIO(sa), mode="r:") as tf:
        ms = tf.getmembers()
    assert [m.name for m in ms] == ["manifest.json", "model.onnx", "signature.json"]
    for m in ms:
        assert m.isreg() and (m.uid, m.gid, m.mode, m.uname, m.gname) == (0, 0, 0o644, "", "")
        assert m.mtime == 1795608000 and not m.pax_headers  # 2026-11-25T12:00:00Z
    assert b"PaxHeader" not in sa and b"ustar\x0000" in sa[:512]
    assert _offsets(sa)["manifest.json"][1] == len(_canon(bundle.read(sa).manifest))


def test_sign_replaces_signature_and_writes_out(tmp_path, home, trusted):
    path = _signed(tmp_path, home, key="mallory")
    mallory = keys.load_public(home / "keys" / "mallory.pub")[0]
    _refused(f"signed by unknown key {mallory}", bundle.verify, path, trusted)
    out = bundle.sign(path, home / "keys" / "alice.key", tmp_path / "resigned.lbundle")
    assert bundle.verify(out, trusted).keyid != mallory
    assert bundle.read(path).keyid == mallory  # the input is untouched when -o is given
    _refused("cannot read private key", bundle.sign, path, tmp_path / "nope.key")


# ---- refusals: tampering, trust, revocation, versions, profiles --------------------------
@pytest.mark.parametrize(
    "where, match",
    [
        ("model", "model.onnx does not match its manifest hash"),
        ("manifest", "signature does not verify"),
        ("signature", "signature does not verify"),
        ("header", "truncated or corrupt bundle"),
    ],
)
def test_one_flipped_byte_is_refused(tmp_path, home, trusted, where, match):
    data = _signed(tmp_path, home).read_bytes()
    offs = _offsets(data)
    if where == "model":
        start, size = offs["model.onnx"]
        bad = _flip(data, start + size // 2)
    elif where == "manifest":
        start, size = offs["manifest.json"]
        at = data.index(b'"name":"candidate"', start) + len(b'"name":"')
        bad = _flip(data, at, ord("k"))  # still valid, canonical JSON: only the signature can tell
    elif where == "signature":
        start, size = offs["signature.json"]
        at = data.index(b'"signature":"', start) + len(b'"signature":"') + 10
        bad = _flip(data, at, ord("0") if data[at] != ord("0") else ord("1"))
    else:
        bad = _flip(data, offs["model.onnx"][0] - 512 + 10)  # a byte of the model's tar header name
    assert bundle.verify(data, trusted)
    _refused(match, bundle.verify, bad, trusted)


def test_unknown_signer_and_revoked_digest(tmp_path, home, trusted):
    data = _signed(tmp_path, home).read_bytes()
    digest = bundle.read(data).digest
    _refused(f"bundle {digest[:12]} is revoked", bundle.verify, data, trusted, revoked={digest})
    assert bundle.verify(data, trusted, revoked={"0" * 64}).digest == digest
    alice = keys.load_public(home / "keys" / "alice.pub")[0]
    _refused(f"signed by unknown key {alice}", bundle.verify, data, {})


def test_semver_precedence():
    order = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.9.0",
        "1.10.0",
        "2.0.0",
        "2.1.0",
        "2.1.1",
    ]
    for lo, hi in zip(order, order[1:]):
        assert bundle.compare_versions(lo, hi) == -1 and bundle.compare_versions(hi, lo) == 1, (lo, hi)
    assert bundle.compare_versions("1.0.0+build.1", "1.0.0+build.2") == 0
    assert bundle.compare_versions("1.0.0-1", "1.0.0-a") == -1  # numeric below alphanumeric
    for bad in ["1.0", "01.0.0", "1.0.0-", "1.0.0-01", "v1.0.0", "1.0.0\n", "1.0.0+", "١.0.0", ""]:
        _refused("is not semver 2.0.0", bundle.parse_version, bad)


def test_downgrade_refused_unless_explicit_rollback(tmp_path, home, trusted):
    data = _signed(tmp_path, home, version="1.0.0").read_bytes()
    digest = bundle.read(data).digest
    _refused(
        "version 1.0.0 is a downgrade from installed 1.2.0", bundle.verify, data, trusted, installed_version="1.2.0"
    )
    _refused("version 1.0.0 is not newer than installed 1.0.0", bundle.verify, data, trusted, installed_version="1.0.0")
    _refused(
        "is not newer than installed 1.0.0+other-build",
        bundle.verify,
        data,
        trusted,
        installed_version="1.0.0+other-build",
    )  # build metadata does not count
    assert bundle.verify(data, trusted, installed_version="1.2.0", rollback_to={digest}).digest == digest
    assert bundle.verify(data, trusted, installed_version="1.0.0-rc.1").version == "1.0.0"
    _refused(
        f"bundle {digest[:12]} is revoked",
        bundle.verify,
        data,
        trusted,
        installed_version="1.2.0",
        rollback_to={digest},
        revoked={digest},
    )  # a rollback target can still be revoked
    _refused("installed version", bundle.verify, data, trusted, installed_version="latest")


def test_incompatible_profile(tmp_path, home, trusted):
    rpi4, none = profiles.load("rpi4"), profiles.load("none")
    data = _signed(tmp_path, home, compute={"min_memory_mb": 4096}).read_bytes()
    _refused("needs 4096 MB memory, device profile rpi4 has 2048", bundle.verify, data, trusted, profile=rpi4)
    assert bundle.verify(data, trusted, profile=none)  # 0 = unlimited
    data = _signed(tmp_path, home, compute={"min_cores": 8}).read_bytes()
    _refused("needs 8 cores, device profile rpi4 has 4", bundle.verify, data, trusted, profile=rpi4)
    data = _signed(tmp_path, home, compute={"max_inference_slowdown": 2.0}).read_bytes()
    _refused("device profile rpi4 is 6x slower", bundle.verify, data, trusted, profile=rpi4)
    assert bundle.verify(data, trusted, profile=none)


# ---- refusals: malformed manifests -------------------------------------------------------
_ROUTING = {"margin_threshold": 0.2, "timeout_ms": 50, "max_share": 0.3}


def test_routing_is_optional_declared_signed_and_inspected(tmp_path, home, trusted):
    """A bundle without ``routing`` has none (devices never route for it); one built with it
    carries it in the signed manifest, and inspect shows it."""
    plain = bundle.read(_build(tmp_path))
    assert "routing" not in plain.manifest and bundle.inspect(plain.to_bytes())["routing"] is None
    out = _build(tmp_path, "routed.lbundle", routing=_ROUTING)
    routed = bundle.read(out)
    assert routed.manifest["routing"] == _ROUTING and bundle.inspect(out)["routing"] == _ROUTING
    assert routed.digest != plain.digest
    with pytest.raises(bundle.BundleError, match="routing.max_share must be a finite number > 0"):
        _build(tmp_path, "bad.lbundle", routing={**_ROUTING, "max_share": 0})


def _set(path: str, value):
    def mutate(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        m[last] = value

    return mutate


def _del(path: str):
    def mutate(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        del m[last]

    return mutate


@pytest.mark.parametrize(
    "mutate, match",
    [
        (b'{"name": "candidate", ', "manifest.json is not valid JSON"),
        (b"\xff" * 10, "manifest.json is not valid JSON"),
        (b'{"schema":"livelab.bundle/v1","schema":"livelab.bundle/v1"}', "duplicate key"),
        (b"[]", "manifest: the manifest must be a JSON object"),
        (_set("foo", 1), "manifest: unknown key 'foo'"),
        (_set("compute.gpu", 1), "manifest: unknown key 'compute.gpu'"),
        (_del("provenance"), "manifest: missing key 'provenance'"),
        (_del("privacy.retention_days"), "manifest: missing key 'privacy.retention_days'"),
        (_set("schema", "livelab.bundle/v2"), "manifest: schema must be"),
        (_set("name", "Not A Name"), "manifest: name"),
        (_set("compute.min_cores", "4"), "manifest: compute.min_cores must be an integer"),
        (_set("compute.health_decisions", True), "manifest: compute.health_decisions must be an integer"),
        (_set("compute.max_error_rate", 1.5), "manifest: compute.max_error_rate must be a finite number"),
        (_set("compute.latency_budget_ms", 1e999), "manifest.json is not valid JSON (Infinity is not valid JSON)"),
        (
            (b'"latency_budget_ms":50.0', b'"latency_budget_ms":1e999'),
            "manifest: compute.latency_budget_ms must be a finite number > 0",
        ),
        ((b'"min_cores":1', b'"min_cores":-1'), "manifest: compute.min_cores must be an integer >= 0"),
        (_set("version", "1.0"), "manifest: version '1.0' is not semver 2.0.0"),
        (_set("version", 1), "is not semver 2.0.0"),
        (_set("created", "2026-11-25T12:00:00+02:00"), "manifest: created must be an ISO-8601 UTC time"),
        (_set("created", "2026-02-30T12:00:00Z"), "manifest: created is not a valid date"),
        (_set("privacy.raw_inputs_leave_device", True), "raw_inputs_leave_device must be false"),
        (_set("privacy.raw_inputs_leave_device", 0), "raw_inputs_leave_device must be a boolean"),
        (_set("privacy.telemetry_fields", ["counts", "text"]), "has 'text', which telemetry may not contain"),
        (_set("revocation.topic", "livelab/+/control/revocations"), "manifest: revocation.topic"),
        (_set("provenance.parent_bundle", "abc"), "manifest: provenance.parent_bundle"),
        (_set("io.input.shape", [None, 256]), "manifest: io.input.shape"),
        (_set("io.intents", []), "manifest: io.intents"),
        (_set("routing", 0.2), "manifest: routing must be a JSON object"),
        (_set("routing", {"margin_threshold": 0.2, "timeout_ms": 50}), "manifest: missing key 'routing.max_share'"),
        (_set("routing", {**_ROUTING, "url": "x"}), "manifest: unknown key 'routing.url'"),
        (_set("routing", {**_ROUTING, "margin_threshold": 0}), "routing.margin_threshold must be a finite number > 0"),
        (_set("routing", {**_ROUTING, "margin_threshold": 1.5}), "routing.margin_threshold must be a finite number"),
        (
            _set("routing", {**_ROUTING, "timeout_ms": 5000}),
            "routing.timeout_ms must be a finite number > 0 and <= 1000",
        ),
        (_set("routing", {**_ROUTING, "max_share": True}), "manifest: routing.max_share must be a number"),
        (
            lambda m: m["files"].update({"extra.bin": {"sha256": "0" * 64, "size": 1}}),
            "manifest: unknown key 'files.extra.bin'",
        ),
        (lambda m: m["files"].pop("model.onnx"), "manifest: missing key 'files.model.onnx'"),
        (lambda m: m["files"]["model.onnx"].update(size=1), "bytes, its manifest says 1"),
        (lambda m: m["files"]["model.onnx"].update(sha256="0" * 64), "model.onnx does not match its manifest hash"),
        (lambda m: m["files"]["model.onnx"].update(sha256="0" * 63), "manifest: files.model.onnx.sha256"),
        ("pretty", "manifest.json is not in canonical form"),
    ],
)
def test_malformed_manifest_is_refused(tmp_path, home, trusted, mutate, match):
    b = bundle.read(_build(tmp_path))
    entries = [("model.onnx", b.model, {})]
    if isinstance(mutate, bytes):
        raw = mutate
    elif isinstance(mutate, tuple):  # edit the canonical bytes: values JSON can hold but Python can't write
        assert mutate[0] in b.canonical
        raw = b.canonical.replace(*mutate)
    elif mutate == "pretty":
        raw = json.dumps(b.manifest, indent=1, sort_keys=True).encode()
    else:
        m = json.loads(json.dumps(b.manifest))
        mutate(m)
        raw = _canon(m)
        # signed by the trusted key: the refusal must come from validation, not from trust
        entries.append(("signature.json", _sign_manifest(home, m), {}))
    data = _tar([("manifest.json", raw, {}), *entries])
    _refused(match, bundle.read, data)
    _refused(match, bundle.verify, data, trusted)


# ---- refusals: hostile or broken archives ------------------------------------------------
def test_oversize_adapter_refused_at_build_and_at_verify(tmp_path, home, trusted):
    big = tmp_path / "big.json"
    big.write_bytes(adapter.make(INTENTS, {}) + b" " * 1_200_000)
    _refused(
        f"adapter.json is {big.stat().st_size:,} bytes, over the 1,000,000-byte budget", _build, tmp_path, adapter=big
    )
    # crafted by hand: a signed manifest that lists a 1,200,000-byte adapter
    payload = adapter.make(INTENTS, {})
    payload += b" " * (1_200_000 - len(payload))
    m = json.loads(json.dumps(bundle.read(_build(tmp_path)).manifest))
    m["files"]["adapter.json"] = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    data = _tar(
        [
            ("adapter.json", payload, {}),
            ("manifest.json", _canon(m), {}),
            ("model.onnx", MODEL.read_bytes(), {}),
            ("signature.json", _sign_manifest(home, m), {}),
        ]
    )
    _refused("adapter.json is 1,200,000 bytes, over the 1,000,000-byte budget", bundle.verify, data, trusted)


@pytest.mark.parametrize(
    "entry, match",
    [
        (("../x", b"hi", {}), "archive member '../x' escapes the bundle"),
        (("a/../../x", b"hi", {}), "escapes the bundle"),
        (("/etc/passwd", b"root", {}), "absolute path '/etc/passwd' in bundle"),
        (("model.onnx", None, {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}), "is a symbolic link"),
        (("model.onnx", None, {"type": tarfile.LNKTYPE, "linkname": "manifest.json"}), "is a hard link"),
        (("model.onnx", None, {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}), "is a character device"),
        (("model.onnx", None, {"type": tarfile.DIRTYPE}), "is a directory"),
        (("manifest.json", b"{}", {}), "duplicate archive member 'manifest.json'"),
        (("notes.txt", b"hello", {}), "unexpected archive member 'notes.txt'"),
        (("manifest.json/", None, {"type": tarfile.DIRTYPE}), "is a directory"),
    ],
)
def test_hostile_archive_members_are_refused(tmp_path, trusted, entry, match):
    b = bundle.read(_build(tmp_path))
    data = _tar(
        [("manifest.json", b.canonical, {}), entry, ("model.onnx", b.model, {})]
        if entry[0] != "model.onnx"
        else [("manifest.json", b.canonical, {}), entry]
    )
    _refused(match, bundle.read, data)
    _refused(match, bundle.verify, data, trusted)


def test_pax_headers_and_trailing_garbage_are_refused(tmp_path):
    b = bundle.read(_build(tmp_path))
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("manifest.json")
        ti.size, ti.pax_headers = len(b.canonical), {"comment": "hi"}
        tf.addfile(ti, io.BytesIO(b.canonical))
    _refused("is a pax header", bundle.read, pax.getvalue())
    good = b.to_bytes()
    assert bundle.read(good).digest == b.digest
    _refused("data after the end of the archive", bundle.read, good[:-512] + b"\x01" * 512)
    _refused("over the 1,000-byte limit", bundle.read, good, max_size=1000)


def test_truncated_bundles_are_refused_at_every_cut(tmp_path, home, trusted):
    data = _signed(tmp_path, home).read_bytes()
    start, size = _offsets(data)["signature.json"]
    end = start + -(-size // 512) * 512  # where the end-of-archive marker starts
    cuts = sorted(set(range(0, end + 1024, 512)) | {1, 100, 511, 513, start + 5, end + 600, len(data) - 1})
    for cut in cuts:
        _refused("truncated or corrupt bundle", bundle.verify, data[:cut], trusted)
    # cutting only zero padding after the end-of-archive marker loses nothing
    assert bundle.verify(data[: end + 1024], trusted)


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"hello, I am not a bundle",
        bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8)),
        b"{}" + b" " * 1022,
        "gzip",
    ],
)
def test_not_a_tar_is_refused(tmp_path, junk):
    data = gzip.compress(_build(tmp_path).read_bytes(), mtime=0) if junk == "gzip" else junk
    if junk == "gzip":
        data += b"\0" * (-len(data) % 512)
    msg = _refused("truncated or corrupt bundle", bundle.read, data)
    assert "Traceback" not in msg
    missing = tmp_path / "missing.lbundle"
    _refused(f"cannot read bundle {missing}", bundle.read, missing)
    _refused("not a regular file", bundle.read, tmp_path)


def test_build_refuses_bad_input(tmp_path):
    _refused("is not semver 2.0.0", _build, tmp_path, version="1.0")
    _refused("manifest: name", _build, tmp_path, name="Bad Name")
    _refused("manifest: unknown key 'compute.gpus'", _build, tmp_path, compute={"gpus": 1})
    _refused("raw_inputs_leave_device must be false", _build, tmp_path, privacy={"raw_inputs_leave_device": True})
    _refused("manifest: created must be an ISO-8601 UTC time", _build, tmp_path, created="yesterday")
    _refused(
        "cannot read model", bundle.build, tmp_path / "nope.onnx", tmp_path / "o.lbundle", name="x", version="1.0.0"
    )
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    _refused(
        "model.onnx: onnxruntime cannot load it", bundle.build, junk, tmp_path / "o.lbundle", name="x", version="1.0.0"
    )
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(adapter.make(["a", "b"], {}))
    _refused("adapter.json: intents (a, b) do not match", _build, tmp_path, adapter=wrong)
    assert not (tmp_path / "o.lbundle").exists() and not (tmp_path / "b.lbundle").exists()


# ---- CLI ---------------------------------------------------------------------------------
def _cli(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "livelab", "--home", str(home), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    return res


def test_cli_keys_and_bundle_happy_path_and_failures(tmp_path):
    home = tmp_path / "home"
    ok = lambda *a: _cli(home, *a, cwd=tmp_path)  # noqa: E731
    r = ok("keys", "new", "author")
    assert r.returncode == 0 and "keyid" in r.stdout
    keyid = keys.load_public(home / "keys" / "author.pub")[0]
    assert ok("keys", "new", "author").returncode == 2
    assert ok("keys", "trust", "author").returncode == 0
    r = ok("keys", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["keyid"] == keyid

    out = tmp_path / "c.lbundle"
    r = ok(
        "bundle",
        "build",
        str(MODEL),
        "-o",
        str(out),
        "--name",
        "candidate",
        "--version",
        "1.1.0",
        "--min-memory-mb",
        "512",
        "--latency-budget-ms",
        "40",
        "--created",
        CREATED,
    )
    assert r.returncode == 0, r.stderr
    assert ok("bundle", "sign", str(out), "--key", "author").returncode == 0
    r = ok("bundle", "verify", str(out), "--profile", "rpi4", "--installed-version", "1.0.0")
    assert r.returncode == 0 and r.stderr == "" and keyid in r.stdout, r.stderr
    r = ok("bundle", "inspect", str(out), "--json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["keyid"] == keyid and info["compute"]["min_memory_mb"] == 512
    assert info["compute"]["latency_budget_ms"] == 40
    r = ok("bundle", "inspect", str(out))
    assert r.returncode == 0 and "valid, trusted key" in r.stdout and info["digest"][:20] in r.stdout

    data = out.read_bytes()
    start, size = _offsets(data)["model.onnx"]
    bad = tmp_path / "tampered.lbundle"
    bad.write_bytes(_flip(data, start + size // 2))
    r = ok("bundle", "verify", str(bad))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == ["livelab: verify failed: model.onnx does not match its manifest hash"]
    r = ok("bundle", "verify", str(out), "--installed-version", "2.0.0")
    assert r.returncode == 1 and "downgrade" in r.stderr and len(r.stderr.splitlines()) == 1

    r = ok("bundle", "verify", str(tmp_path / "missing.lbundle"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "missing.lbundle" in r.stderr
    r = ok("bundle", "verify", str(out), "--profile", "cray")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    r = ok("bundle", "build", str(MODEL), "-o", str(out), "--name", "candidate", "--version", "one")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "livelab: error: manifest: version 'one' is not semver 2.0.0 (e.g. 1.2.0 or 1.2.0-rc.1)"
    ]
    assert ok("keys", "untrust", keyid).returncode == 0
    r = ok("bundle", "verify", str(out))
    assert r.returncode == 1 and r.stderr.strip() == f"livelab: verify failed: signed by unknown key {keyid}"
