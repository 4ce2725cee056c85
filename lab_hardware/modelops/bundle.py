"""Signed model bundles: the one file a device verifies before it runs anything.

A bundle (``*.lbundle``) is an uncompressed tar with ``manifest.json``,
``model.onnx``, optionally ``adapter.json`` and, once signed,
``signature.json``.  The manifest pins every other file by sha256 and size,
so a signature over the *canonical manifest bytes* covers the whole bundle,
and the sha256 of those bytes is the bundle's content ``digest`` (what
telemetry reports and signal digests bind).  A signed bundle's *identity* is
that digest and its signer, ``<digest>:<keyid>`` (:attr:`Bundle.identity`):
the same content re-signed by another key is another bundle for installs,
rollback targets and revocations (a revocation names a signer, or says
explicitly that it covers every signer).

Why so strict: a device installs whatever passes :func:`verify`, so every
parsing decision is made here, once.  The tar is read from memory by a small
walker (never extracted, never handed to ``tarfile.extractall``) that refuses
links, devices, ``..``, absolute paths, duplicates, unknown members, oversize
members and anything truncated; the manifest must be canonical JSON with no
unknown keys.  Writing is deterministic (sorted members, mtime from the
manifest's ``created``, uid/gid 0, mode 0644, ustar without pax headers), so
the same inputs give the same bytes and a bundle can be rebuilt and compared.

Every refusal is a :class:`BundleError` with a one-line message naming the
problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature

from lab_hardware.modelops import adapter as _adapter
from lab_hardware import features, topics, window
from lab_hardware.modelops import keys as _keys
from lab_hardware.modelops import slo as _slo
from lab_hardware.modelops.adapter import ADAPTER_BUDGET, Adapter
from lab_hardware.profiles import Profile

SCHEMA = "livelab.bundle/v1"
SCHEMA_SIGNATURE = "livelab.signature/v1"
SUFFIX = ".lbundle"

MANIFEST, MODEL, ADAPTER, SIGNATURE = "manifest.json", "model.onnx", "adapter.json", "signature.json"
#: Every member a bundle may contain, in the order they are written (sorted).
MEMBERS = tuple(sorted((MANIFEST, MODEL, ADAPTER, SIGNATURE)))
#: Largest bundle file :func:`read` accepts by default (devices have little memory).
DEFAULT_MAX_SIZE = 16 * 2**20
#: Per-member caps; the model is capped by the bundle's max_size.
MANIFEST_LIMIT = 256 * 1024
SIGNATURE_LIMIT = 4096

_BLOCK = tarfile.BLOCKSIZE

#: Compute needs a bundle declares unless told otherwise: they fit the ``rpi4`` profile.
DEFAULT_COMPUTE = {
    "min_cores": 1,
    "min_memory_mb": 256,
    "max_inference_slowdown": 8.0,
    "latency_budget_ms": 50.0,
    "health_decisions": 50,
    "max_error_rate": 0.02,
}
DEFAULT_RETENTION_DAYS = 30


class BundleError(ValueError):
    """A bundle (or a request about one) that is refused; always one line."""


# ---- small helpers -----------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0]


def canonical(obj: dict) -> bytes:
    """The bytes that are hashed and signed: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_digest(manifest: dict) -> str:
    """A bundle's identity: sha256 hex of its canonical manifest."""
    return hashlib.sha256(canonical(manifest)).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _parse_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BundleError(f"{what} is not valid JSON (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{what} is not valid JSON ({_first_line(exc)})") from None


# ---- semantic versions -------------------------------------------------------------------
_SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_VERSION_MAX = 128


def parse_version(version: str) -> tuple:
    """Precedence key of a semver 2.0.0 version (build metadata ignored).

    Pre-release identifiers compare numerically when numeric, in ASCII order
    otherwise, numeric below alphanumeric, and a longer list above its prefix;
    a release ranks above all of its pre-releases (semver.org, item 11).
    """
    m = _SEMVER.fullmatch(version) if isinstance(version, str) and len(version) <= _VERSION_MAX else None
    if m is None:
        raise BundleError(f"version {version!r} is not semver 2.0.0 (e.g. 1.2.0 or 1.2.0-rc.1)")
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        pre_key: tuple = (1,)
    else:
        pre_key = (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return (major, minor, patch, pre_key)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` has lower, equal or higher precedence than ``b``."""
    ka, kb = parse_version(a), parse_version(b)
    return (ka > kb) - (ka < kb)


# ---- manifest validation -----------------------------------------------------------------
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|\+00:00)")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REVOCATION_TOPIC = re.compile(
    re.escape(topics.ROOT) + r"/" + topics.NAME_RE.pattern.strip("^$") + r"/control/revocations"
)
#: tar's ustar mtime field holds 11 octal digits.
_MTIME_MAX = 8**11


def _bad(path: str, what: str) -> BundleError:
    return BundleError(f"manifest: {path} {what}")


def parse_time(value: Any, path: str = "created") -> datetime:
    """An ISO-8601 UTC time such as ``2026-11-25T14:00:00Z`` (offset must be zero)."""
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _bad(path, f"must be an ISO-8601 UTC time such as 2026-11-25T14:00:00Z, not {value!r}")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(path, f"is not a valid date and time: {value!r}") from None
    if not 0 <= dt.timestamp() < _MTIME_MAX:
        raise _bad(path, f"is out of range: {value!r}")
    return dt


def _exact_keys(obj: Any, spec: tuple[str, ...], path: str) -> dict:
    if not isinstance(obj, dict):
        raise BundleError(f"manifest: {path or 'the manifest'} must be a JSON object")
    prefix = f"{path}." if path else ""
    unknown = sorted(set(obj) - set(spec))
    if unknown:
        raise BundleError(f"manifest: unknown key '{prefix}{unknown[0]}'")
    for key in spec:
        if key not in obj:
            raise BundleError(f"manifest: missing key '{prefix}{key}'")
    return obj


def _str(v: Any, path: str, *, empty: bool = True, limit: int = 4096) -> str:
    if not isinstance(v, str):
        raise _bad(path, "must be a string")
    if not empty and not v:
        raise _bad(path, "must not be empty")
    if len(v) > limit:
        raise _bad(path, f"is longer than {limit} characters")
    return v


def _int(v: Any, path: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(path, "must be an integer")
    if v < lo or v > 2**53:
        raise _bad(path, f"must be an integer >= {lo}")
    return v


def _num(v: Any, path: str, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(path, "must be a number")
    f = float(v)
    if not math.isfinite(f) or f < lo or f > hi or (lo_open and f == lo):
        rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise _bad(path, f"must be a finite number {rng}" + (f" and <= {hi:g}" if hi != math.inf else ""))
    return f


_TOP = ("schema", "name", "version", "created", "files", "io", "compute", "privacy", "revocation", "provenance")
#: Top-level sections a manifest may leave out (absent: none declared, and a bundle built before
#: they existed keeps its digest): ``slos``, the bundle's micro-SLOs (:mod:`.slo`), and
#: ``routing`` (absent: the device never asks the oracle).
_OPTIONAL_TOP = ("slos", "routing")
#: ``routing``: send decisions whose top-1 minus top-2 probability is under ``margin_threshold``
#: to the lab oracle, wait at most ``timeout_ms`` for its answer, route at most ``max_share`` of
#: decisions (see lab_hardware/runtime/oracle.py).
_ROUTING = ("margin_threshold", "timeout_ms", "max_share")
#: Longest a device may wait for the oracle on one batch: beyond, routing is not edge inference.
MAX_ROUTING_TIMEOUT_MS = 1000
_FILE = ("sha256", "size")
_IO = ("input", "output", "intents")
_INPUT = ("name", "shape", "dtype", "features")
_OUTPUT = ("label", "probabilities")
_COMPUTE = tuple(DEFAULT_COMPUTE)
_PRIVACY = ("telemetry_fields", "retention_days", "raw_inputs_leave_device")
_REVOCATION = ("topic", "contact")
_PROVENANCE = (
    "builder",
    "source_repository",
    "source_commit",
    "training_data_digest",
    "parent_bundle",
    "build_started",
    "build_finished",
)
#: ``provenance.retraining`` (optional: absent for a bundle not made by retraining, whose digest
#: stays as it was): what a retrained model was made from, written by ``labs.retrain``.
SCHEMA_RETRAINING = "livelab.retraining/v1"
_RETRAINING = ("schema", "captures", "records", "oracle", "labels", "trigger")
_RETRAINING_CAPTURE = ("namespace", "device", "capture_id", "records", "records_sha256", "consent")
_RETRAINING_ORACLE = ("name", "sha256")
#: ``provenance.federated`` (optional): the federated round that made a bundle's adapter, written
#: by ``labs.federated``: the round, how many devices took part, the clipping norm, the noise
#: multiplier and the noise's standard deviation, and the privacy (epsilon, delta) it spent.
SCHEMA_FEDERATED = "livelab.federated/v1"
_FEDERATED = (
    "schema",
    "round",
    "rounds",
    "participants",
    "devices",
    "clipping_norm",
    "noise_multiplier",
    "noise_stdv",
    "epsilon",
    "delta",
    "accountant",
)
_RETRAINING_TRIGGER = ("namespace", "device", "index", "hash", "kind", "slo", "bundle", "divergence")


def validate_manifest(m: Any) -> dict:
    """Check every key and type of a ``livelab.bundle/v1`` manifest; returns it unchanged."""
    _exact_keys({k: v for k, v in m.items() if k not in _OPTIONAL_TOP} if isinstance(m, dict) else m, _TOP, "")
    if "routing" in m:
        validate_routing(m["routing"])
    if m["schema"] != SCHEMA:
        raise _bad("schema", f"must be {SCHEMA!r}, not {m['schema']!r}")
    if not isinstance(m["name"], str) or not topics.NAME_RE.match(m["name"]):
        raise _bad("name", f"{m['name']!r} is invalid: use 1-63 lower-case letters, digits, '-' or '_'")
    try:
        parse_version(m["version"])
    except BundleError as exc:
        raise BundleError(f"manifest: {exc}") from None
    parse_time(m["created"], "created")

    files = m["files"]
    if not isinstance(files, dict):
        raise _bad("files", "must be a JSON object")
    unknown = sorted(set(files) - {MODEL, ADAPTER})
    if unknown:
        raise BundleError(f"manifest: unknown key 'files.{unknown[0]}'")
    if MODEL not in files:
        raise BundleError(f"manifest: missing key 'files.{MODEL}'")
    for name, entry in files.items():
        _exact_keys(entry, _FILE, f"files.{name}")
        if not isinstance(entry["sha256"], str) or not _HEX64.fullmatch(entry["sha256"]):
            raise _bad(f"files.{name}.sha256", "must be 64 lower-case hex characters")
        _int(entry["size"], f"files.{name}.size", 0)

    io_ = _exact_keys(m["io"], _IO, "io")
    inp = _exact_keys(io_["input"], _INPUT, "io.input")
    _str(inp["name"], "io.input.name", empty=False, limit=256)
    if inp["shape"] != [None, features.DIM]:
        raise _bad("io.input.shape", f"must be a list of null and {features.DIM} (a batch of feature vectors)")
    if inp["dtype"] != "float32":
        raise _bad("io.input.dtype", "must be 'float32'")
    if inp["features"] != features.SCHEMA:
        raise _bad("io.input.features", f"must be {features.SCHEMA!r} (the features devices extract)")
    out = _exact_keys(io_["output"], _OUTPUT, "io.output")
    if out["label"] != "int64" or out["probabilities"] != "float32":
        raise _bad("io.output", "must be label 'int64' and probabilities 'float32'")
    intents = io_["intents"]
    if (
        not isinstance(intents, list)
        or not intents
        or len(intents) > 1024
        or not all(isinstance(i, str) and i and len(i) <= 256 for i in intents)
    ):
        raise _bad("io.intents", "must be a non-empty list of intent names")
    if len(set(intents)) != len(intents):
        raise _bad("io.intents", "must not repeat an intent")

    c = _exact_keys(m["compute"], _COMPUTE, "compute")
    _int(c["min_cores"], "compute.min_cores", 0)
    _int(c["min_memory_mb"], "compute.min_memory_mb", 0)
    _num(c["max_inference_slowdown"], "compute.max_inference_slowdown", 1.0)
    _num(c["latency_budget_ms"], "compute.latency_budget_ms", 0.0, lo_open=True)
    _int(c["health_decisions"], "compute.health_decisions", 1)
    _num(c["max_error_rate"], "compute.max_error_rate", 0.0, 1.0)

    p = _exact_keys(m["privacy"], _PRIVACY, "privacy")
    fields_ = p["telemetry_fields"]
    if not isinstance(fields_, list) or not all(isinstance(f, str) for f in fields_):
        raise _bad("privacy.telemetry_fields", "must be a list of field names")
    extra = sorted(set(fields_) - window.ALLOWED_FIELDS)
    if extra:
        raise _bad("privacy.telemetry_fields", f"has {extra[0]!r}, which telemetry may not contain")
    if len(set(fields_)) != len(fields_):
        raise _bad("privacy.telemetry_fields", "must not repeat a field")
    _int(p["retention_days"], "privacy.retention_days", 0)
    if not isinstance(p["raw_inputs_leave_device"], bool):
        raise _bad("privacy.raw_inputs_leave_device", "must be a boolean")
    if p["raw_inputs_leave_device"]:
        raise _bad("privacy.raw_inputs_leave_device", "must be false: devices never publish raw inputs")

    r = _exact_keys(m["revocation"], _REVOCATION, "revocation")
    if r["topic"] is not None and (not isinstance(r["topic"], str) or not _REVOCATION_TOPIC.fullmatch(r["topic"])):
        raise _bad("revocation.topic", "must be null or 'livelab/<namespace>/control/revocations'")
    _str(r["contact"], "revocation.contact")

    pv_all = m["provenance"]
    pv = _exact_keys(
        {k: v for k, v in pv_all.items() if k not in ("retraining", "federated")}
        if isinstance(pv_all, dict)
        else pv_all,
        _PROVENANCE,
        "provenance",
    )
    if "retraining" in pv_all:
        validate_retraining(pv_all["retraining"])
    if "federated" in pv_all:
        validate_federated(pv_all["federated"])
    for key in ("builder", "source_repository", "source_commit", "training_data_digest"):
        _str(pv[key], f"provenance.{key}")
    if pv["parent_bundle"] is not None and (
        not isinstance(pv["parent_bundle"], str) or not _HEX64.fullmatch(pv["parent_bundle"])
    ):
        raise _bad("provenance.parent_bundle", "must be null or a bundle digest (64 lower-case hex characters)")
    started = parse_time(pv["build_started"], "provenance.build_started")
    finished = parse_time(pv["build_finished"], "provenance.build_finished")
    if finished < started:
        raise _bad("provenance.build_finished", "is before build_started")
    if "slos" in m:
        try:
            _slo.parse(m["slos"], intents)
        except _slo.SloError as exc:
            raise BundleError(f"manifest: {exc}") from None
    return m


def validate_retraining(r: Any) -> dict:
    """Check ``provenance.retraining``: the captures (ids, record counts, sha256 of their records,
    consent references), the oracle that labelled them (sha256) and the trigger (an audit record
    of a device, or null)."""
    path = "provenance.retraining"
    _exact_keys(r, _RETRAINING, path)
    if r["schema"] != SCHEMA_RETRAINING:
        raise _bad(f"{path}.schema", f"must be {SCHEMA_RETRAINING!r}")
    caps = r["captures"]
    if not isinstance(caps, list) or not caps:
        raise _bad(f"{path}.captures", "must be a non-empty list of captures")
    total = 0
    for i, c in enumerate(caps):
        where = f"{path}.captures[{i}]"
        _exact_keys(c, _RETRAINING_CAPTURE, where)
        for key in ("namespace", "device", "capture_id"):
            _str(c[key], f"{where}.{key}", empty=False, limit=128)
        total += _int(c["records"], f"{where}.records", 1)
        if not isinstance(c["records_sha256"], str) or not _HEX64.fullmatch(c["records_sha256"]):
            raise _bad(f"{where}.records_sha256", "must be 64 lower-case hex characters")
        ref = _exact_keys(c["consent"], ("index", "hash"), f"{where}.consent")
        _int(ref["index"], f"{where}.consent.index", 0)
        if not isinstance(ref["hash"], str) or not _HEX64.fullmatch(ref["hash"]):
            raise _bad(f"{where}.consent.hash", "must be 64 lower-case hex characters")
    if _int(r["records"], f"{path}.records", 1) != total:
        raise _bad(f"{path}.records", f"must be the captures' record count ({total})")
    o = _exact_keys(r["oracle"], _RETRAINING_ORACLE, f"{path}.oracle")
    _str(o["name"], f"{path}.oracle.name", empty=False, limit=256)
    if not isinstance(o["sha256"], str) or not _HEX64.fullmatch(o["sha256"]):
        raise _bad(f"{path}.oracle.sha256", "must be 64 lower-case hex characters")
    labels = r["labels"]
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        raise _bad(f"{path}.labels", "must map intents to the number of records the oracle gave each")
    t = r["trigger"]
    if t is not None:
        _exact_keys(t, _RETRAINING_TRIGGER, f"{path}.trigger")
        _int(t["index"], f"{path}.trigger.index", 0)
        if not isinstance(t["hash"], str) or not _HEX64.fullmatch(t["hash"]):
            raise _bad(f"{path}.trigger.hash", "must be the audit record's sha256 (64 lower-case hex characters)")
    return r


def validate_federated(f: Any) -> dict:
    """Check ``provenance.federated``: the round id, rounds run, participants' count and names,
    the DP parameters (clipping norm, noise multiplier, noise stdv) and the (epsilon, delta) spent."""
    path = "provenance.federated"
    _exact_keys(f, _FEDERATED, path)
    if f["schema"] != SCHEMA_FEDERATED:
        raise _bad(f"{path}.schema", f"must be {SCHEMA_FEDERATED!r}")
    _str(f["round"], f"{path}.round", empty=False, limit=64)
    _int(f["rounds"], f"{path}.rounds", 1)
    n = _int(f["participants"], f"{path}.participants", 1)
    devs = f["devices"]
    if not isinstance(devs, list) or len(devs) != n or not all(isinstance(d, str) and d for d in devs):
        raise _bad(f"{path}.devices", f"must list the {n} participating devices")
    _num(f["clipping_norm"], f"{path}.clipping_norm", 0, lo_open=True)
    _num(f["noise_multiplier"], f"{path}.noise_multiplier", 0, lo_open=True)
    _num(f["noise_stdv"], f"{path}.noise_stdv", 0, lo_open=True)
    _num(f["epsilon"], f"{path}.epsilon", 0)
    _num(f["delta"], f"{path}.delta", 0, 1, lo_open=True)
    if f["accountant"] not in ("rdp", "pld"):
        raise _bad(f"{path}.accountant", "must be 'rdp' or 'pld'")
    return f


def validate_routing(r: Any) -> dict:
    """Check a manifest's ``routing`` object (margin threshold, timeout in ms, max share)."""
    _exact_keys(r, _ROUTING, "routing")
    _num(r["margin_threshold"], "routing.margin_threshold", 0.0, 1.0, lo_open=True)
    _num(r["timeout_ms"], "routing.timeout_ms", 0.0, MAX_ROUTING_TIMEOUT_MS, lo_open=True)
    _num(r["max_share"], "routing.max_share", 0.0, 1.0, lo_open=True)
    return r


def check_profile(manifest: dict, profile: Profile) -> None:
    """Refuse a device profile that cannot meet the bundle's compute needs (0 = unlimited)."""
    c = manifest["compute"]
    if profile.cores and c["min_cores"] > profile.cores:
        raise BundleError(f"needs {c['min_cores']} cores, device profile {profile.name} has {profile.cores}")
    if profile.memory_mb and c["min_memory_mb"] > profile.memory_mb:
        raise BundleError(
            f"needs {c['min_memory_mb']} MB memory, device profile {profile.name} has {profile.memory_mb}"
        )
    if profile.inference_slowdown > c["max_inference_slowdown"]:
        raise BundleError(
            f"tolerates inference at most {c['max_inference_slowdown']:g}x slower, device "
            f"profile {profile.name} is {profile.inference_slowdown:g}x slower"
        )


# ---- the bundle --------------------------------------------------------------------------
@dataclass
class Bundle:
    """A parsed bundle; ``keyid`` is the claimed signer until :func:`verify` sets ``verified``."""

    manifest: dict
    digest: str
    model: bytes = field(repr=False)
    adapter: Adapter | None
    keyid: str | None
    size: int
    signature: bytes | None = field(default=None, repr=False)
    adapter_data: bytes | None = field(default=None, repr=False)
    verified: bool = False
    _model: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def intents(self) -> list[str]:
        return list(self.manifest["io"]["intents"])

    @property
    def identity(self) -> str | None:
        """``<digest>:<keyid>``: content and signer (None while unsigned)."""
        return f"{self.digest}:{self.keyid}" if self.keyid is not None else None

    @property
    def canonical(self) -> bytes:
        """The signed bytes (also the manifest.json member)."""
        return canonical(self.manifest)

    def load_model(self):
        """The onnxruntime model (built once, then cached); checked against the manifest's io."""
        if self._model is None:
            from lab_hardware.inference import Model

            try:
                m = Model(self.model)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BundleError(f"model.onnx: onnxruntime cannot load it ({_first_line(exc)})") from None
            io_ = self.manifest["io"]
            if m.intents != io_["intents"]:
                raise BundleError("model.onnx: its intents do not match the manifest's io.intents")
            if m.session.get_inputs()[0].name != io_["input"]["name"]:
                raise BundleError("model.onnx: its input name does not match the manifest's io.input.name")
            self._model = m
        return self._model

    def decide(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """labels (int64 [N]) and probabilities (float32 [N, K]): the model, then the adapter."""
        labels, probs = self.load_model().predict(np.asarray(x, dtype=np.float32))
        if self.adapter is not None:
            labels, probs = self.adapter.apply(probs)
        return labels, probs

    def members(self) -> dict[str, bytes]:
        """Member name -> bytes, as written to the tar."""
        out = {MANIFEST: self.canonical, MODEL: self.model}
        if self.adapter_data is not None:
            out[ADAPTER] = self.adapter_data
        if self.signature is not None:
            out[SIGNATURE] = canonical(
                {"schema": SCHEMA_SIGNATURE, "keyid": self.keyid, "signature": self.signature.hex()}
            )
        return out

    def to_bytes(self) -> bytes:
        """The bundle file, byte for byte as :func:`build`/:func:`sign` write it."""
        return _tar_bytes(self.members(), int(parse_time(self.manifest["created"]).timestamp()))


# ---- tar: deterministic writing, strict in-memory reading --------------------------------
def _tar_bytes(members: dict[str, bytes], mtime: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in sorted(members):
            data = members[name]
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), mtime, 0o644
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.type = tarfile.REGTYPE
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _corrupt(why: str) -> BundleError:
    return BundleError(f"truncated or corrupt bundle: {why}")


_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a directory",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.XHDTYPE: "a pax header",
    tarfile.XGLTYPE: "a pax global header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long name",
    tarfile.GNUTYPE_LONGLINK: "a GNU long link",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


def _untar(data: bytes, max_size: int) -> dict[str, bytes]:
    """Walk the tar in memory, refusing anything a bundle must not contain."""
    n = len(data)
    if n == 0:
        raise _corrupt("the file is empty")
    if n % _BLOCK:
        raise _corrupt(f"not a tar archive, or cut short ({n:,} bytes is not a whole number of {_BLOCK}-byte blocks)")
    limits = {MANIFEST: MANIFEST_LIMIT, SIGNATURE: SIGNATURE_LIMIT, ADAPTER: ADAPTER_BUDGET, MODEL: max_size}
    members: dict[str, bytes] = {}
    off = 0
    while True:
        if off + _BLOCK > n:
            raise _corrupt("the end-of-archive marker is missing (file cut short?)")
        header = data[off : off + _BLOCK]
        if header.count(0) == _BLOCK:
            if off + 2 * _BLOCK > n or data[off + _BLOCK : off + 2 * _BLOCK].count(0) != _BLOCK:
                raise _corrupt("the end-of-archive marker is missing (file cut short?)")
            if data[off + 2 * _BLOCK :].count(0) != n - off - 2 * _BLOCK:
                raise _corrupt("data after the end of the archive")
            break
        try:
            ti = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
        except (tarfile.HeaderError, ValueError) as exc:
            if off == 0:
                raise _corrupt(f"not a tar archive ({_first_line(exc)})") from None
            raise _corrupt(f"bad tar header at offset {off:,} ({_first_line(exc)})") from None
        name = ti.name
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise BundleError(f"absolute path {name!r} in bundle")
        parts = re.split(r"[/\\]", name)
        if ".." in parts:
            raise BundleError(f"archive member {name!r} escapes the bundle")
        if ti.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            what = _TYPE_NAMES.get(ti.type, f"of unsupported type {ti.type!r}")
            raise BundleError(f"archive member {name!r} is {what}; bundles contain regular files only")
        if name in members:
            raise BundleError(f"duplicate archive member {name!r}")
        if name not in limits:
            raise BundleError(f"unexpected archive member {name!r}; a bundle holds only {', '.join(MEMBERS)}")
        size = ti.size
        if size < 0:
            raise _corrupt(f"member {name!r} has a negative size")
        if size > limits[name]:
            if name == ADAPTER:
                raise BundleError(f"adapter.json is {size:,} bytes, over the {ADAPTER_BUDGET:,}-byte budget")
            raise BundleError(f"{name} is {size:,} bytes, over the {limits[name]:,}-byte limit")
        start = off + _BLOCK
        if start + size > n:
            raise _corrupt(f"member {name!r} runs past the end of the file (file cut short?)")
        members[name] = data[start : start + size]
        off = start + -(-size // _BLOCK) * _BLOCK
    return members


def _load(src: Path | str | bytes, max_size: int) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        path = Path(src)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"cannot read bundle {path}: not a regular file")
            if st.st_size > max_size:
                raise BundleError(f"bundle is {st.st_size:,} bytes, over the {max_size:,}-byte limit")
            with open(path, "rb") as fh:
                data = fh.read(max_size + 1)
        except OSError as exc:
            raise BundleError(f"cannot read bundle {path}: {exc.strerror or _first_line(exc)}") from None
    if len(data) > max_size:
        raise BundleError(f"bundle is {len(data):,} bytes, over the {max_size:,}-byte limit")
    return data


def _parse_signature(raw: bytes) -> tuple[str, bytes]:
    sig = _parse_json(raw, "signature.json")
    if not isinstance(sig, dict):
        raise BundleError("signature.json must be a JSON object")
    unknown = sorted(set(sig) - {"schema", "keyid", "signature"})
    if unknown:
        raise BundleError(f"signature.json: unknown key {unknown[0]!r}")
    for key in ("schema", "keyid", "signature"):
        if key not in sig:
            raise BundleError(f"signature.json: missing key {key!r}")
    if sig["schema"] != SCHEMA_SIGNATURE:
        raise BundleError(f"signature.json: schema must be {SCHEMA_SIGNATURE!r}")
    if not isinstance(sig["keyid"], str) or not _keys.KEYID_RE.match(sig["keyid"]):
        raise BundleError("signature.json: keyid must be 16 lower-case hex characters")
    if not isinstance(sig["signature"], str) or not re.fullmatch(r"[0-9a-f]{128}", sig["signature"]):
        raise BundleError("signature.json: signature must be 128 lower-case hex characters (Ed25519)")
    return sig["keyid"], bytes.fromhex(sig["signature"])


def _from_members(members: dict[str, bytes], size: int) -> Bundle:
    if MANIFEST not in members:
        raise BundleError("bundle has no manifest.json")
    raw = members[MANIFEST]
    manifest = _parse_json(raw, "manifest.json")
    validate_manifest(manifest)
    canon = canonical(manifest)
    if canon != raw:
        raise BundleError("manifest.json is not in canonical form (sorted keys, no spaces, ASCII)")
    files = manifest["files"]
    for name in (MODEL, ADAPTER):
        present, listed = name in members, name in files
        if listed and not present:
            raise BundleError(f"{name} is listed in the manifest but missing from the bundle")
        if present and not listed:
            raise BundleError(f"{name} is in the bundle but not listed in the manifest")
        if present:
            data, entry = members[name], files[name]
            if len(data) != entry["size"]:
                raise BundleError(f"{name} is {len(data):,} bytes, its manifest says {entry['size']:,}")
            if _sha256(data) != entry["sha256"]:
                raise BundleError(f"{name} does not match its manifest hash")
    adapter = None
    if ADAPTER in members:
        try:
            adapter = _adapter.load(members[ADAPTER], manifest["io"]["intents"])
        except _adapter.AdapterError as exc:
            raise BundleError(str(exc)) from None
    keyid = signature = None
    if SIGNATURE in members:
        keyid, signature = _parse_signature(members[SIGNATURE])
    return Bundle(
        manifest=manifest,
        digest=_sha256(canon),
        model=members[MODEL],
        adapter=adapter,
        keyid=keyid,
        size=size,
        signature=signature,
        adapter_data=members.get(ADAPTER),
    )


def read(src: Path | str | bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Bundle:
    """Parse and integrity-check a bundle (hashes, sizes, manifest) without trusting it.

    Nothing is extracted to disk.  The signature is parsed but not checked:
    that needs a trust store, see :func:`verify`.
    """
    data = _load(src, max_size)
    return _from_members(_untar(data, max_size), size=len(data))


def verify(
    src: Path | str | bytes | Bundle,
    trusted: dict,
    *,
    revoked: set[str] | frozenset = frozenset(),
    installed_version: str | None = None,
    rollback_to: set[str] | frozenset = frozenset(),
    profile: Profile | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> Bundle:
    """Everything a device checks before installing: integrity, a trusted signature,
    not revoked, a newer version (or an explicit rollback) and a compatible profile.

    ``trusted`` maps key id -> Ed25519 public key (:func:`lab_hardware.modelops.keys.trusted`
    or :func:`~lab_hardware.modelops.keys.from_hex`).  ``revoked`` and ``rollback_to``
    hold identities (``digest:keyid``: that signer's copy) or bare digests / ``digest:*``
    (every signer's copy).  ``rollback_to`` names bundles the device ran before: only
    those may have a version that is not newer than ``installed_version``.  Returns the
    bundle with ``verified`` set.
    """
    b = src if isinstance(src, Bundle) else read(src, max_size=max_size)
    if b.digest in revoked or f"{b.digest}:*" in revoked or (b.identity is not None and b.identity in revoked):
        raise BundleError(f"bundle {b.digest[:12]} is revoked")
    if b.keyid is None or b.signature is None:
        raise BundleError("bundle is not signed")
    public = trusted.get(b.keyid)
    if public is None:
        raise BundleError(f"signed by unknown key {b.keyid}")
    try:
        public.verify(b.signature, b.canonical)
    except InvalidSignature:
        raise BundleError("signature does not verify") from None
    if installed_version is not None:
        try:
            parse_version(installed_version)
        except BundleError:
            raise BundleError(f"installed version {installed_version!r} is not semver 2.0.0") from None
        order = compare_versions(b.version, installed_version)
        if order <= 0 and not ({b.digest, f"{b.digest}:*", b.identity} & set(rollback_to)):
            if order < 0:
                raise BundleError(f"version {b.version} is a downgrade from installed {installed_version}")
            raise BundleError(f"version {b.version} is not newer than installed {installed_version}")
    if profile is not None:
        check_profile(b.manifest, profile)
    return dataclasses.replace(b, verified=True)


# ---- authoring ---------------------------------------------------------------------------
def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(*args: str) -> str:
    try:
        res = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def _builder() -> str:
    try:
        from importlib.metadata import version

        return f"livelab {version('livelab')} lab_hardware.modelops.bundle"
    except Exception:  # not installed as a distribution
        return "livelab lab_hardware.modelops.bundle"


def describe_model(data: bytes) -> tuple[dict, dict[str, str]]:
    """The manifest ``io`` of an ONNX model (read with onnxruntime) and its metadata."""
    from lab_hardware.inference import Model

    try:
        m = Model(data)
    except ValueError as exc:
        raise BundleError(f"model.onnx: {_first_line(exc)}") from None
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"model.onnx: onnxruntime cannot load it ({_first_line(exc)})") from None
    sess = m.session
    inp = sess.get_inputs()[0]
    if inp.type != "tensor(float)" or len(inp.shape) != 2:
        raise BundleError(f"model.onnx: input must be a float32 tensor of shape (N, {features.DIM})")
    outs = {o.name: o.type for o in sess.get_outputs()}
    if outs.get("label") != "tensor(int64)" or outs.get("probabilities") != "tensor(float)":
        raise BundleError("model.onnx: outputs must be 'label' (int64) and 'probabilities' (float32)")
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if not m.intents or not all(isinstance(i, str) for i in m.intents):
        raise BundleError("model.onnx: metadata 'intents' (a JSON list of intent names) is missing")
    if meta.get("features_schema", features.SCHEMA) != features.SCHEMA:
        raise BundleError(
            f"model.onnx: features_schema {meta['features_schema']!r} is not "
            f"{features.SCHEMA!r}, the features devices extract"
        )
    io_ = {
        "input": {"name": inp.name, "shape": [None, features.DIM], "dtype": "float32", "features": features.SCHEMA},
        "output": {"label": "int64", "probabilities": "float32"},
        "intents": list(m.intents),
    }
    return io_, meta


def _read_input(path: Path, what: str, limit: int, over: str | None = None) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise BundleError(over or f"{what} {path} is {size:,} bytes, over the {limit:,}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {what} {path}: {exc.strerror or _first_line(exc)}") from None


def _write_atomic(out: Path, blob: bytes) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"cannot write {out}: {exc.strerror or _first_line(exc)}") from None


def build(
    model: Path,
    out: Path,
    *,
    name: str,
    version: str,
    adapter: Path | None = None,
    compute: dict | None = None,
    privacy: dict | None = None,
    provenance: dict | None = None,
    revocation: dict | None = None,
    created: str | None = None,
    slos: list | None = None,
    routing: dict | None = None,
) -> Path:
    """Write an unsigned bundle; the ``io`` section is read from the model itself.

    ``compute``/``privacy``/``provenance``/``revocation`` are merged over
    defaults (compute fits the ``rpi4`` profile; provenance comes from git and
    the model's ``training_data_digest`` metadata).  With an explicit
    ``created`` the build is reproducible: the build times default to it too.
    ``slos`` declares the bundle's micro-SLOs (:mod:`lab_hardware.modelops.slo`).
    ``routing`` (optional, see ``validate_routing``) routes ambiguous decisions to the lab oracle.
    """
    started = _utc_now()
    model, out = Path(model), Path(out)
    data = _read_input(model, "model", DEFAULT_MAX_SIZE)
    io_, meta = describe_model(data)
    adapter_data = None
    if adapter is not None:
        adapter = Path(adapter)
        size = adapter.stat().st_size if adapter.is_file() else 0
        adapter_data = _read_input(
            adapter,
            "adapter",
            ADAPTER_BUDGET,
            f"adapter.json is {size:,} bytes, over the {ADAPTER_BUDGET:,}-byte budget",
        )
        try:
            _adapter.load(adapter_data, io_["intents"])
        except _adapter.AdapterError as exc:
            raise BundleError(str(exc)) from None
    reproducible = created is not None
    created = created if reproducible else _utc_now()
    files = {MODEL: {"sha256": _sha256(data), "size": len(data)}}
    if adapter_data is not None:
        files[ADAPTER] = {"sha256": _sha256(adapter_data), "size": len(adapter_data)}
    prov = {
        "builder": _builder(),
        "source_repository": _git("remote", "get-url", "origin"),
        "source_commit": _git("rev-parse", "HEAD"),
        "training_data_digest": meta.get("training_data_digest", ""),
        "parent_bundle": None,
        "build_started": created if reproducible else started,
        "build_finished": created,
    }
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "version": version,
        "created": created,
        "files": files,
        "io": io_,
        "compute": {**DEFAULT_COMPUTE, **(compute or {})},
        "privacy": {
            "telemetry_fields": sorted(window.ALLOWED_FIELDS),
            "retention_days": DEFAULT_RETENTION_DAYS,
            "raw_inputs_leave_device": False,
            **(privacy or {}),
        },
        "revocation": {"topic": None, "contact": "", **(revocation or {})},
        "provenance": {**prov, **(provenance or {})},
    }
    if slos is not None:
        manifest["slos"] = slos
    if routing is not None:
        manifest["routing"] = dict(routing)
    validate_manifest(manifest)
    members = {MANIFEST: canonical(manifest), MODEL: data}
    if adapter_data is not None:
        members[ADAPTER] = adapter_data
    blob = _tar_bytes(members, int(parse_time(created).timestamp()))
    if len(blob) > DEFAULT_MAX_SIZE:
        raise BundleError(
            f"bundle would be {len(blob):,} bytes, over the {DEFAULT_MAX_SIZE:,}-byte limit devices accept"
        )
    _write_atomic(out, blob)
    return out


def sign(bundle: Path, key: Path, out: Path | None = None) -> Path:
    """Sign a bundle's canonical manifest with an Ed25519 key (replacing any signature).

    Ed25519 signatures are deterministic, so signing is reproducible too.
    Writes ``out`` (default: the bundle itself, atomically).
    """
    b = read(bundle)
    try:
        private = _keys.load_private(key)
    except _keys.KeyringError as exc:
        raise BundleError(str(exc)) from None
    signed = dataclasses.replace(
        b, keyid=_keys.keyid_of(private.public_key()), signature=private.sign(b.canonical), verified=False, _model=None
    )
    target = Path(out) if out is not None else Path(bundle)
    _write_atomic(target, signed.to_bytes())
    return target


def inspect(src: Path | str | bytes) -> dict:
    """A summary for people and scripts (``livelab bundle inspect``); checks integrity, not trust."""
    b = read(src)
    m = b.manifest
    return {
        "name": m["name"],
        "version": m["version"],
        "digest": b.digest,
        "created": m["created"],
        "signed": b.keyid is not None,
        "keyid": b.keyid,
        "identity": b.identity,
        "size": b.size,
        "files": {k: dict(v) for k, v in sorted(m["files"].items())},
        "model_size": m["files"][MODEL]["size"],
        "adapter_size": m["files"][ADAPTER]["size"] if ADAPTER in m["files"] else None,
        "adapter": ({"logit_bias": dict(b.adapter.logit_bias)} if b.adapter is not None else None),
        "intents": list(m["io"]["intents"]),
        "compute": dict(m["compute"]),
        "privacy": dict(m["privacy"]),
        "revocation": dict(m["revocation"]),
        "provenance": dict(m["provenance"]),
        "slos": list(m.get("slos", [])),
        "routing": dict(m["routing"]) if "routing" in m else None,
    }
