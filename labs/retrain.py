"""Divergence-triggered retraining: consented captures, labelled by the oracle, a new edge model.

The loop a small team runs (docs/retraining.md): a device's ``divergence`` micro-SLO with policy
``retrain`` fires when the edge model keeps disagreeing with the lab oracle, and writes a
``retrain-suggested`` audit record with the figures behind it.  :func:`build` then

1. takes the *consented, scrubbed captures* of the replay store (``livelab replay list``): each
   capture's ``replay-capture`` consent is verified afresh against the device's audit chain, and
   every record is checked again for PII.  A capture carries only what consent allowed (scrubbed
   text, digests, the device's label), so that is all a retrained model can learn from;
2. labels them with the scenario's oracle (``[oracle]``, the lab's central model), run locally
   with onnxruntime on the features devices extract.  Offline and local, so a retraining is
   reproducible without a running lab;
3. trains a new edge model exactly as ``labs/voice-intents/build_models.py`` trains the
   scenario's (the same BLAS-free L-BFGS on the same objective, the same ONNX conversion), so
   the model's bytes depend only on the captures and the oracle;
4. writes an *unsigned* candidate bundle whose ``provenance.retraining`` names the captures (ids,
   record counts, sha256 of their records, consent references), the oracle (sha256) and the
   trigger (the audit record, when given).  Its ``created`` time is the last captured decision's,
   so two runs from the same captures give the same bundle, byte for byte.

Signing and canarying go through the existing path (``livelab bundle sign``, ``livelab rollout``).
:func:`divergence` replays a replay file through models and the oracle (sandboxed, with
``lab_hardware.modelops.replay.run``) and counts their disagreements: the retrained model's drop.

Every refusal is a :class:`RetrainError` with a one-line reason, before anything is written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from lab_hardware import audit as _audit
from lab_hardware import features
from lab_hardware import home as _home
from lab_hardware.inference import Model
from lab_hardware.modelops import bundle as _bundle
from lab_hardware.modelops import replay as _replay
from labs import scenarios, streams

SCHEMA = _bundle.SCHEMA_RETRAINING
#: The ONNX ``name`` metadata of a retrained model.
MODEL_NAME = "retrained"
#: Audit record kinds a trigger may name: the ``retrain`` policy's suggestion, or the alert of
#: a ``divergence`` objective (an ``alert``-policy one).
TRIGGER_KINDS = ("retrain-suggested", "slo-alert")
_TRIGGER = re.compile(
    r"^(?:(?P<ns>[a-z0-9][a-z0-9_-]{0,62})/)?(?P<dev>[a-z0-9][a-z0-9_-]{0,62})#(?P<index>[0-9]{1,12})$"
)


class RetrainError(ValueError):
    """A retraining that is refused: one line naming the problem and what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- inputs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Capture:
    """One stored capture, re-checked: its records in decision order and their digest."""

    namespace: str
    device: str
    capture_id: str
    consent: dict
    records: list[dict]

    @property
    def records_sha256(self) -> str:
        """sha256 of the records as canonical JSON lines in decision order (as a replay's)."""
        return _sha256(streams.to_jsonl(self.records))

    def provenance(self) -> dict:
        return {
            "namespace": self.namespace,
            "device": self.device,
            "capture_id": self.capture_id,
            "records": len(self.records),
            "records_sha256": self.records_sha256,
            "consent": {"index": self.consent["index"], "hash": self.consent["hash"]},
        }


def captures(
    home: Path | str,
    *,
    namespace: str | None = None,
    device: str | None = None,
    capture_ids: list[str] | None = None,
    chains: dict[tuple[str, str], list[dict]] | None = None,
) -> list[Capture]:
    """The stored captures to train on (all, or those of a namespace, device, ids), checked.

    ``chains`` maps ``(namespace, device)`` to the audit records that device sent over the broker
    (``Lab.audit_chain``): where the lab's home is not at hand (a learner's sandboxed kernel),
    consent is verified against them instead of the chain files.

    Refused: no capture at all, an unknown id, a capture still open (parts missing: two runs
    would not train on the same records), a capture whose consent the lab cannot verify
    now (no audit chain of the device in this home, a broken chain, a reference it does not
    hold), a record with PII or outside its consent, a capture with no records."""
    home = Path(home)
    metas = [
        m
        for m in _replay.list_captures(home)
        if (namespace is None or m["namespace"] == namespace) and (device is None or m["device"] == device)
    ]
    where = _replay.captures_dir(home, namespace, device if namespace else None)
    if not metas:
        raise RetrainError(
            f"no captures to retrain from in {where}; grant replay-capture consent and capture first "
            "(livelab consent grant DEVICE --scope replay-capture, lab.capture(DEVICE))"
        )
    if capture_ids:
        known = {m["capture_id"] for m in metas}
        unknown = sorted(set(capture_ids) - known)
        if unknown:
            raise RetrainError(f"unknown capture {unknown[0]!r}; available: {', '.join(sorted(known))}")
        metas = [m for m in metas if m["capture_id"] in set(capture_ids)]
    out = []
    for m in metas:
        ns, dev, cid = m["namespace"], m["device"], m["capture_id"]
        if not m.get("complete"):
            raise RetrainError(
                f"capture {cid} of {ns}/{dev} is not complete (parts {m.get('parts')} received, last part "
                f"{m.get('last_part')}): wait for it to finish, or leave it out with --capture"
            )
        try:
            entry, records = _replay.stored_capture(home, ns, dev, cid, chain=(chains or {}).get((ns, dev)))
        except _replay.ReplayError as exc:
            raise RetrainError(f"capture {cid} of {ns}/{dev} cannot be used: {exc}") from None
        if not entry["verified"]:
            raise RetrainError(
                f"capture {cid} of {ns}/{dev}: its replay-capture consent cannot be verified (no audit chain "
                f"of {dev} in {home}); retraining uses only captures whose consent this lab can check"
            )
        if not records:
            raise RetrainError(f"capture {cid} of {ns}/{dev} holds no records yet")
        out.append(Capture(ns, dev, cid, entry, records))
    return out


def check_oracle(path: Path | str, sc: scenarios.Scenario) -> Path:
    """The oracle model to label with: it must be the scenario's ``[oracle]`` model, byte for byte
    (a retraining labelled by anything else would say it was labelled by the oracle)."""
    if sc.oracle_model is None:
        raise RetrainError(f"scenario {sc.name} has no [oracle] model to label captures with")
    path = Path(path)
    if not path.is_file():
        raise RetrainError(f"oracle model not found: {path}")
    got, want = _sha256(path.read_bytes()), _sha256(sc.oracle_model.read_bytes())
    if got != want:
        raise RetrainError(
            f"{path} is not the {sc.name} oracle (sha256 {got[:12]}, the oracle's is {want[:12]}: "
            f"{sc.oracle_model}); retraining labels only with the scenario's oracle"
        )
    return path


def resolve_trigger(
    home: Path | str, ref: str, namespace: str = "default", chains: dict[tuple[str, str], list[dict]] | None = None
) -> dict:
    """The trigger ``[NAMESPACE/]DEVICE#INDEX``: that audit record of the device, from its chain in
    ``home`` (or in ``chains``, as :func:`captures`; the chain must verify), a ``retrain-suggested``
    record or a divergence ``slo-alert``."""
    m = _TRIGGER.match(ref or "")
    if m is None:
        raise RetrainError(
            f"trigger {str(ref)[:80]!r} must be DEVICE#INDEX or NAMESPACE/DEVICE#INDEX "
            "(the audit record an alert event names: its 'retrain' or 'audit' index)"
        )
    ns, dev, index = m["ns"] or namespace, m["dev"], int(m["index"])
    path = _home.device_dir(Path(home), ns, dev) / "audit.jsonl"
    given = (chains or {}).get((ns, dev))
    if given is not None:
        verdict = _audit.verify(given)
        if not verdict:
            raise RetrainError(f"trigger {ref}: the audit chain of {dev} is broken ({verdict.reason})")
        records = list(given)
    elif not path.is_file():
        raise RetrainError(f"trigger {ref}: no audit chain of {ns}/{dev} in {home}")
    else:
        try:
            records = _audit.read_verified(path)
        except ValueError as exc:
            raise RetrainError(f"trigger {ref}: the audit chain of {dev} {exc}") from None
    if index >= len(records):
        raise RetrainError(f"trigger {ref}: {dev}'s audit chain has {len(records)} records")
    rec = records[index]
    data = rec.get("data") or {}
    if rec["kind"] not in TRIGGER_KINDS or data.get("indicator") != "divergence":
        raise RetrainError(
            f"trigger {ref}: audit record {index} of {dev} is a {rec['kind']!r} record, not a divergence "
            "alert or retrain suggestion"
        )
    return {
        "namespace": ns,
        "device": dev,
        "index": index,
        "hash": rec["hash"],
        "kind": rec["kind"],
        "slo": data.get("slo"),
        "bundle": data.get("bundle"),
        "divergence": data.get("long"),  # a retrain-suggested record's figures (None for an alert)
    }


def _scenario(name: str) -> scenarios.Scenario:
    try:
        return scenarios.load(name)
    except (scenarios.ScenarioError, OSError) as exc:
        raise RetrainError((str(exc).splitlines() or [f"unknown scenario {name!r}"])[0]) from None


def _check_out(out: Path) -> None:
    """Refuse an output we could not write, before any work (nothing is half-written after)."""
    if out.is_dir():
        raise RetrainError(f"output {out} is a directory: give a file name")
    if out.suffix != _bundle.SUFFIX:
        raise RetrainError(f"output {out} must end in {_bundle.SUFFIX}")
    parent = out.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise RetrainError(f"cannot write {out}: {parent} {what}")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".livelab-probe-"):
            pass
    except OSError as exc:
        raise RetrainError(f"cannot write {out}: {exc.strerror or exc}") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise RetrainError(f"cannot write {out}: permission denied")


# ---- training ----------------------------------------------------------------------------
def _build_models(sc: scenarios.Scenario) -> ModuleType:
    """The scenario's ``build_models.py`` (content, not a package): its training functions."""
    path = sc.root / "build_models.py"
    spec = importlib.util.spec_from_file_location(f"_livelab_build_models_{sc.name.replace('-', '_')}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise RetrainError(f"scenario {sc.name} has no build_models.py to train with ({path})")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def label(oracle: Path | str, texts: list[str]) -> list[int]:
    """The oracle's labels of scrubbed texts (features as devices extract them)."""
    labels, _ = Model(Path(oracle)).predict(features.extract_batch(texts))
    return [int(x) for x in labels]


def train(sc: scenarios.Scenario, records: list[dict], *, oracle_sha256: str, captures_sha256: str) -> bytes:
    """The ONNX bytes of an edge model trained on ``records`` ({"text", "intent"}): build_models'
    fit and conversion, with metadata naming the retraining (record count, oracle, captures)."""
    bm = _build_models(sc)
    missing = [i for i in sc.intents if not any(r["intent"] == i for r in records)]
    if missing:
        raise RetrainError(
            f"the oracle labelled no captured record as {missing[0]!r}: a model needs every intent of "
            f"{sc.name}; capture more decisions"
        )
    digest = _sha256(streams.to_jsonl(records))
    model = bm._fit(sc, records, sc.raw["training"])
    onx = bm._to_onnx(sc, model, MODEL_NAME, digest)
    meta = {p.key: p.value for p in onx.metadata_props}
    meta.update(training_n=str(len(records)), labelled_by=oracle_sha256, captures_sha256=captures_sha256)
    del onx.metadata_props[:]
    for key, value in meta.items():
        onx.metadata_props.add(key=key, value=value)
    return onx.SerializeToString(deterministic=True)


def _created(caps: list[Capture]) -> str:
    """The last captured decision's time (UTC, whole seconds): a build time fixed by the inputs."""
    t = max(r["time"] for c in caps for r in c.records)
    return datetime.fromtimestamp(int(t), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(
    home: Path | str,
    out: Path | str,
    *,
    version: str,
    name: str = "intents",
    scenario: str = "voice-intents",
    oracle: Path | str | None = None,
    namespace: str | None = None,
    device: str | None = None,
    capture_ids: list[str] | None = None,
    trigger: str | None = None,
    parent: Path | str | None = None,
    created: str | None = None,
    chains: dict[tuple[str, str], list[dict]] | None = None,
) -> dict:
    """Retrain from the captures in ``home`` and write an unsigned candidate bundle ``out``.

    ``oracle`` defaults to the scenario's; ``trigger`` is ``[NS/]DEVICE#INDEX`` (see
    :func:`resolve_trigger`); ``parent`` (a ``.lbundle``, e.g. the diverging one) lends its
    routing, SLOs and compute needs so the canary judges the same objectives, and becomes
    ``provenance.parent_bundle`` (else the trigger's bundle, else the captures' one bundle).
    ``chains`` (``(namespace, device)`` -> the audit records the device sent, see :func:`captures`)
    verifies consent and the trigger where the lab's chain files are not at hand.
    Returns a summary (bundle, digest, model sha256, captures, labels, agreement, seconds)."""
    t0 = time.perf_counter()
    home, out = Path(home), Path(out)
    try:
        _bundle.parse_version(version)
    except _bundle.BundleError as exc:
        raise RetrainError(str(exc)) from None
    _check_out(out)
    sc = _scenario(scenario)
    oracle_path = check_oracle(oracle if oracle is not None else (sc.oracle_model or ""), sc)
    par = None
    if parent is not None:
        try:
            par = _bundle.read(parent)
        except (_bundle.BundleError, OSError) as exc:
            raise RetrainError(f"parent bundle {parent}: {exc}") from None
    trig = resolve_trigger(home, trigger, namespace or "default", chains) if trigger else None
    caps = captures(home, namespace=namespace, device=device, capture_ids=capture_ids, chains=chains)

    oracle_sha = _sha256(oracle_path.read_bytes())
    texts = [r["text"] for c in caps for r in c.records]
    labels = label(oracle_path, texts)
    records = [{"text": t, "intent": sc.intents[k]} for t, k in zip(texts, labels)]
    cap_prov = [c.provenance() for c in caps]
    captures_sha = _sha256(json.dumps(cap_prov, sort_keys=True, separators=(",", ":")).encode())
    data = train(sc, records, oracle_sha256=oracle_sha, captures_sha256=captures_sha)

    counts = {i: 0 for i in sc.intents}
    for r in records:
        counts[r["intent"]] += 1
    bundles = sorted({r["bundle"] for c in caps for r in c.records})
    parent_digest = par.digest if par is not None else (trig or {}).get("bundle")
    if parent_digest is None and len(bundles) == 1:
        parent_digest = bundles[0]
    retraining = {
        "schema": SCHEMA,
        "captures": cap_prov,
        "records": len(records),
        "oracle": {"name": oracle_path.name, "sha256": oracle_sha},
        "labels": counts,
        "trigger": trig,
    }
    kw: dict[str, Any] = {}
    if par is not None:
        m = par.manifest
        kw = {"compute": dict(m["compute"]), "slos": m.get("slos"), "routing": m.get("routing")}
    with tempfile.TemporaryDirectory(prefix="livelab-retrain-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(data)
        try:
            _bundle.build(
                model_path,
                out,
                name=name,
                version=version,
                created=created or _created(caps),
                provenance={
                    "builder": "livelab labs.retrain",
                    "parent_bundle": parent_digest,
                    "retraining": retraining,
                },
                **kw,
            )
        except _bundle.BundleError as exc:
            raise RetrainError(str(exc)) from None
        # how far the retrained model agrees with the oracle on its own training inputs
        mine, _ = Model(data).predict(features.extract_batch(texts))
    agree = sum(int(a) == b for a, b in zip(mine, labels))
    b = _bundle.read(out)
    return {
        "bundle": str(out),
        "digest": b.digest,
        "model_sha256": _sha256(data),
        "model_size": len(data),
        "version": version,
        "created": b.manifest["created"],
        "records": len(records),
        "captures": cap_prov,
        "oracle": retraining["oracle"],
        "labels": counts,
        "trigger": trig,
        "parent_bundle": parent_digest,
        "agreement": round(agree / len(records), 6),
        "seconds": round(time.perf_counter() - t0, 3),
    }


# ---- the divergence drop -----------------------------------------------------------------
def divergence(
    replay: Path | str,
    models: Sequence[Path | str],
    *,
    oracle: Path | str | None = None,
    scenario: str = "voice-intents",
    sandbox: bool = True,
) -> dict:
    """Edge/oracle divergence of each model over a replay file: the share of replayed records on
    which the model's label differs from the oracle's, overall and per (model's) intent.

    Every model and the oracle run through :func:`lab_hardware.modelops.replay.run` (the sandbox,
    the device's features, deterministic onnxruntime), so the figures are exact and repeatable."""
    sc = _scenario(scenario)
    oracle_path = check_oracle(oracle if oracle is not None else (sc.oracle_model or ""), sc)
    try:
        return _divergence(replay, models, oracle_path, sandbox)
    except _replay.ReplayError as exc:
        raise RetrainError(str(exc)) from None


def _divergence(replay: Path | str, models: Sequence[Path | str], oracle_path: Path, sandbox: bool) -> dict:
    rp = _replay.read(replay)
    paths = [_replay.check_model(m) for m in models]
    if not paths:
        raise RetrainError("divergence needs at least one model")
    with tempfile.TemporaryDirectory(prefix="livelab-divergence-") as tmp:
        res = _replay.run(replay, oracle_path, Path(tmp) / "oracle.jsonl", sandbox=sandbox)
        ref, _ = _replay.read_output(Path(tmp) / "oracle.jsonl")
        sides = []
        for k, path in enumerate(paths):
            r = _replay.run(replay, path, Path(tmp) / f"m{k}.jsonl", sandbox=sandbox)
            rows, _ = _replay.read_output(Path(tmp) / f"m{k}.jsonl")
            per: dict[str, list[int]] = {}
            for a, o in zip(rows, ref):
                key = a["intent"] if a["intent"] is not None else str(a["label"])
                n = per.setdefault(key, [0, 0])
                n[0] += 1
                n[1] += int(a["label"] != o["label"])
            diverged = sum(v[1] for v in per.values())
            sides.append(
                {
                    "model": str(path),
                    "digest": r["model_digest"],
                    "diverged": diverged,
                    "divergence": round(diverged / len(rows), 6) if rows else 0.0,
                    "by_intent": {
                        i: {"decisions": d, "diverged": v, "divergence": round(v / d, 6)}
                        for i, (d, v) in sorted(per.items())
                    },
                    "network_isolated": r["network_isolated"],
                }
            )
    return {
        "replay": str(replay),
        "records": len(rp),
        "oracle": {"model": str(oracle_path), "digest": res["model_digest"]},
        "models": sides,
    }
