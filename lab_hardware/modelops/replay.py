"""Replays: scrubbed, consented captures of device inputs, run in a sandbox.

Why this shape.  A learner must be able to reproduce a false positive the
device saw, byte for byte, without any raw input or PII ever leaving the
device.  So:

* devices scrub PII *before* feature extraction and decide on the scrubbed
  text; with ``replay-capture`` consent they publish capture messages
  (``livelab.capture/v1``) holding the scrubbed text, the decision's sequence
  number, the bundle digest that decided and its signal digest;
* :func:`store_capture` keeps them in the lab state directory, refusing any
  record that still contains PII (defence in depth) and any consent reference
  that the device's audit chain does not back;
* :func:`build` turns the captures of one device into a ``*.lreplay`` file: a
  manifest line (consent trail, provenance, record count and the sha256 of the
  record bytes) followed by one record per line;
* :func:`run` replays it in a separate process with no broker and no network
  (``unshare -rn`` plus a socket guard, see ``replay_sandbox``), through the
  device's own feature extraction and deterministic onnxruntime options, and
  writes one output line per record without timestamps: the same replay and
  bundle give the same output bytes in every process and thread setting.
  Recomputed signal digests prove the replayed inputs are the ones behind the
  device's decisions;
* :func:`diff` runs two models over one replay and shows what changed, in
  particular the defect intent's false positives.

Every refusal is a :class:`ReplayError` (a ``ValueError``) with a one-line
message naming the problem and what to do.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from lab_hardware import audit as _audit
from lab_hardware import features
from lab_hardware.modelops import scrub
from lab_hardware import home as _home
from lab_hardware.topics import TopicError, check_name

SCHEMA_CAPTURE = "livelab.capture/v1"
SCHEMA_CAPTURE_META = "livelab.capture-meta/v1"
SCHEMA_REPLAY = "livelab.replay/v1"
SCHEMA_OUTPUT = "livelab.replay-output/v1"
SUFFIX = ".lreplay"
CONSENT_SCOPE = "replay-capture"

#: Fields of a capture record and of a replay record, in this exact set.
RECORD_FIELDS = ("bundle", "decision", "digest", "label", "text", "time", "undo")
_RECORD_KEYS = frozenset(RECORD_FIELDS)
#: A replay file's manifest line (``livelab.replay/v1``): every key it must have.
MANIFEST_FIELDS = _MANIFEST_KEYS = (
    "schema",
    "created",
    "namespace",
    "device",
    "capture_ids",
    "bundle",
    "features",
    "consent_trail",
    "provenance",
    "records",
    "records_sha256",
)
_TRAIL_KEYS = ("device", "index", "hash", "scope", "grant", "time")
_CAPTURE_KEYS = ("schema", "namespace", "device", "capture_id", "part", "last", "consent", "records")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"[0-9a-f]{16}")
_CAPTURE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
TEXT_LIMIT = 4096
_SANDBOX_TIMEOUT = 3600.0


class ReplayError(ValueError):
    """Bad capture, replay, model or request: one line naming the problem."""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


# ---- records -----------------------------------------------------------------------------
def _check_record(rec: Any, where: str) -> None:
    """One capture/replay record: exact fields and types (PII is checked by the store)."""
    if not isinstance(rec, dict) or rec.keys() != _RECORD_KEYS:
        got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise ReplayError(f"{where}: a record must have exactly the fields {', '.join(RECORD_FIELDS)} (got {got})")
    d = rec["decision"]
    if not _is_int(d):
        raise ReplayError(f"{where}: 'decision' must be a non-negative integer")
    t = rec["time"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ReplayError(f"{where}: decision {d}: 'time' must be a finite number")
    if not isinstance(rec["text"], str) or len(rec["text"]) > TEXT_LIMIT:
        raise ReplayError(f"{where}: decision {d}: 'text' must be a string of at most {TEXT_LIMIT} characters")
    if not isinstance(rec["bundle"], str) or not _HEX64.fullmatch(rec["bundle"]):
        raise ReplayError(f"{where}: decision {d}: 'bundle' must be a sha256 hex digest")
    if not isinstance(rec["digest"], str) or not _DIGEST.fullmatch(rec["digest"]):
        raise ReplayError(f"{where}: decision {d}: 'digest' must be a 16-hex-digit signal digest")
    if not _is_int(rec["label"]):
        raise ReplayError(f"{where}: decision {d}: 'label' must be a non-negative integer")
    if not isinstance(rec["undo"], bool):
        raise ReplayError(f"{where}: decision {d}: 'undo' must be true or false")


def _check_pii(rec: dict, where: str) -> None:
    found = scrub.find(rec["text"])
    if found:
        kinds = ", ".join(sorted({k for k, _, _ in found}))
        raise ReplayError(
            f"{where}: decision {rec['decision']} still contains PII ({kinds}); "
            "devices must scrub before capture - nothing was stored"
        )


# ---- capture messages and the replay store -----------------------------------------------
def validate_capture(message: Any) -> dict:
    """Check a capture message (what devices publish on ``.../capture``); returns it."""
    if not isinstance(message, dict):
        raise ReplayError("capture message must be a JSON object")
    schema = message.get("schema")
    if schema != SCHEMA_CAPTURE:
        raise ReplayError(f"unknown capture schema {schema!r}; expected {SCHEMA_CAPTURE}")
    missing = [k for k in _CAPTURE_KEYS if k not in message]
    extra = sorted(set(message) - set(_CAPTURE_KEYS))
    if missing or extra:
        what = f"missing {', '.join(missing)}" if missing else f"unknown field(s) {', '.join(extra)}"
        raise ReplayError(f"capture message: {what}")
    try:
        check_name("namespace", message["namespace"])
        check_name("device", message["device"])
    except TopicError as exc:
        raise ReplayError(f"capture message: {exc}") from None
    cid = message["capture_id"]
    if not isinstance(cid, str) or not _CAPTURE_ID.fullmatch(cid):
        raise ReplayError(
            "capture message: 'capture_id' must be 1-128 letters, digits, '.', '_' or '-' "
            "starting with a letter or digit"
        )
    if not _is_int(message["part"]):
        raise ReplayError("capture message: 'part' must be a non-negative integer")
    if not isinstance(message["last"], bool):
        raise ReplayError("capture message: 'last' must be true or false")
    consent = message["consent"]
    if (
        not isinstance(consent, dict)
        or set(consent) != {"index", "hash"}
        or not _is_int(consent["index"])
        or not isinstance(consent["hash"], str)
        or not _HEX64.fullmatch(consent["hash"])
    ):
        raise ReplayError(
            'capture message: \'consent\' must be {"index": int, "hash": sha256 hex} '
            "referencing the audit record that granted replay-capture"
        )
    records = message["records"]
    if not isinstance(records, list):
        raise ReplayError("capture message: 'records' must be a list")
    where = f"capture {cid} part {message['part']}"
    for rec in records:
        _check_record(rec, where)
        _check_pii(rec, where)
    return message


def captures_dir(home: Path | str, namespace: str | None = None, device: str | None = None) -> Path:
    d = Path(home) / "replays" / "captures"
    if namespace is not None:
        d = d / namespace
        if device is not None:
            d = d / device
    return d


def _device_captures(home: Path, namespace: str, device: str) -> Path:
    """The captures folder of one device, its names checked first (a replay error if bad)."""
    try:
        check_name("namespace", namespace)
        check_name("device", device)
    except TopicError as exc:
        raise ReplayError(str(exc)) from None
    return captures_dir(home, namespace, device)


def _consent_record(home: Path, ns: str, device: str, ref: dict, chain: list[dict] | None = None) -> dict:
    """The consent-trail entry behind a capture's consent reference.

    When the device's audit chain is in this lab home (or given as ``chain``: the records the
    device sent over the broker, e.g. ``Lab.audit_chain``), the reference must name an intact
    ``consent`` record granting ``replay-capture``; otherwise (a device elsewhere) the
    reference is kept as the device's unverified claim.
    """
    entry = {
        "device": device,
        "index": ref["index"],
        "hash": ref["hash"],
        "scope": CONSENT_SCOPE,
        "grant": True,
        "time": None,
        "until": None,
        "verified": False,
    }
    chain_path = _home.device_dir(home, ns, device) / "audit.jsonl"
    if chain is not None:
        verdict = _audit.verify(chain)
        if not verdict:
            raise ReplayError(
                f"audit chain of {device} is broken ({verdict.reason}); its consent cannot back a capture"
            )
        records = list(chain)
    elif not chain_path.exists():
        return entry
    else:
        try:
            records = _audit.read_verified(chain_path)
        except ValueError as exc:
            raise ReplayError(f"audit chain of {device} {exc}; its consent cannot back a capture") from None
    i = ref["index"]
    if i >= len(records) or records[i]["hash"] != ref["hash"]:
        raise ReplayError(
            f"capture consent reference (audit record {i}, {ref['hash'][:12]}) is not in {device}'s audit chain"
        )
    rec = records[i]
    data = rec.get("data") or {}
    if rec["kind"] != "consent" or data.get("scope") != CONSENT_SCOPE or data.get("grant") is not True:
        raise ReplayError(f"audit record {i} of {device} does not grant {CONSENT_SCOPE} consent")
    until = next(
        (
            r["time"]
            for r in records[i + 1 :]
            if r["kind"] == "consent"
            and (r.get("data") or {}).get("scope") == CONSENT_SCOPE
            and (r.get("data") or {}).get("grant") is False
        ),
        None,
    )
    entry.update(time=rec["time"], until=until, verified=True)
    return entry


class _Lock:
    """An exclusive lock on a device's capture folder (store calls may race)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".lock"

    def __enter__(self):
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _read_lines(path: Path) -> tuple[list[bytes], int]:
    """Complete lines of a JSON-lines file and the byte length they cover (a torn tail is cut)."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    return data[:end].split(b"\n")[:-1], end


def store_capture(home: Path | str, message: dict) -> Path:
    """Validate one capture message and append its records to the replay store.

    ``home/replays/captures/<ns>/<device>/<capture_id>.jsonl`` holds one record
    per line; ``<capture_id>.meta.json`` keeps the consent reference and the
    parts received.  Re-delivered parts (QoS 1 may deliver twice) add nothing;
    a record that contradicts a stored one with the same decision is refused,
    as is the whole message when any record still contains PII.
    """
    home = Path(home)
    msg = validate_capture(message)
    ns, device, cid = msg["namespace"], msg["device"], msg["capture_id"]
    entry = _consent_record(home, ns, device, msg["consent"])
    if entry["verified"]:
        for rec in msg["records"]:
            if rec["time"] < entry["time"] or (entry["until"] is not None and rec["time"] >= entry["until"]):
                raise ReplayError(
                    f"capture {cid}: decision {rec['decision']} was made outside the "
                    f"{CONSENT_SCOPE} consent of audit record {entry['index']} - nothing was stored"
                )
    folder = captures_dir(home, ns, device)
    path = folder / f"{cid}.jsonl"
    meta_path = folder / f"{cid}.meta.json"
    with _Lock(folder):
        meta = _home.read_json(meta_path) if meta_path.exists() else None
        if meta is not None and (meta["consent"]["index"], meta["consent"]["hash"]) != (entry["index"], entry["hash"]):
            raise ReplayError(
                f"capture {cid}: part {msg['part']} names different consent "
                f"(audit record {entry['index']}) than earlier parts (audit record "
                f"{meta['consent']['index']})"
            )
        lines, good = _read_lines(path)
        stored: dict[int, bytes] = {}
        for line in lines:
            stored[json.loads(line)["decision"]] = line
        new: list[bytes] = []
        for rec in msg["records"]:
            line = _canonical(rec)
            have = stored.get(rec["decision"])
            if have is None:
                stored[rec["decision"]] = line
                new.append(line)
            elif have != line:
                raise ReplayError(
                    f"capture {cid}: decision {rec['decision']} differs from the record "
                    "already stored for it - nothing was stored"
                )
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as fh:
            if fh.tell() != good:
                fh.truncate(good)  # a torn line from an interrupted write
            if new:
                fh.write(b"\n".join(new) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        parts = sorted(set((meta or {}).get("parts", [])) | {msg["part"]})
        last_part = msg["part"] if msg["last"] else (meta or {}).get("last_part")
        decisions = sorted(stored)
        bundles = sorted(set((meta or {}).get("bundles", [])) | {r["bundle"] for r in msg["records"]})
        _home.write_json(
            meta_path,
            {
                "schema": SCHEMA_CAPTURE_META,
                "namespace": ns,
                "device": device,
                "capture_id": cid,
                "consent": entry,
                "parts": parts,
                "last_part": last_part,
                "complete": last_part is not None and parts == list(range(last_part + 1)),
                "records": len(stored),
                "first_decision": decisions[0] if decisions else None,
                "last_decision": decisions[-1] if decisions else None,
                "bundles": bundles,
            },
        )
    return path


def list_captures(home: Path | str) -> list[dict]:
    """Every stored capture (namespace, device, id, records, parts, consent), sorted."""
    root = captures_dir(home)
    out: list[dict] = []
    if not root.is_dir():
        return out
    for meta_path in sorted(root.glob("*/*/*.meta.json")):
        try:
            meta = _home.read_json(meta_path)
        except (OSError, ValueError):
            continue
        out.append({**meta, "path": str(meta_path.with_name(meta["capture_id"] + ".jsonl"))})
    return out


def stored_capture(
    home: Path | str, namespace: str, device: str, capture_id: str, *, chain: list[dict] | None = None
) -> tuple[dict, list[dict]]:
    """(consent entry, records in decision order) of one stored capture, checked again now.

    For a consumer that trains on captures (``labs.retrain``): the consent reference is
    verified afresh against the device's audit chain in ``home`` (``entry["verified"]`` is False
    when the chain is not here, so the lab cannot check it; ``chain`` verifies it against the
    records the device sent instead), every record is checked as
    :func:`build` checks it (fields, PII) and must fall inside that consent."""
    home = Path(home)
    folder = _device_captures(home, namespace, device)
    meta_path = folder / f"{capture_id}.meta.json"
    if not _CAPTURE_ID.fullmatch(capture_id) or not meta_path.is_file():
        raise ReplayError(f"unknown capture {capture_id!r} of {namespace}/{device}")
    meta = _home.read_json(meta_path)
    ref = meta.get("consent")
    if not isinstance(ref, dict) or not _is_int(ref.get("index")) or not _HEX64.fullmatch(str(ref.get("hash"))):
        raise ReplayError(f"capture {capture_id} of {device} names no consent record")
    entry = _consent_record(home, namespace, device, {"index": ref["index"], "hash": ref["hash"]}, chain)
    lines, _ = _read_lines(folder / f"{capture_id}.jsonl")
    by_decision: dict[int, dict] = {}
    where = f"capture {capture_id} of {device}"
    for line in lines:
        rec = json.loads(line)
        _check_record(rec, where)
        _check_pii(rec, where)
        if by_decision.setdefault(rec["decision"], rec) != rec:
            raise ReplayError(f"{where}: decision {rec['decision']} is stored twice, differently")
        if entry["verified"] and (
            rec["time"] < entry["time"] or (entry["until"] is not None and rec["time"] >= entry["until"])
        ):
            raise ReplayError(
                f"{where}: decision {rec['decision']} was made outside the {CONSENT_SCOPE} consent "
                f"of audit record {entry['index']}"
            )
    return entry, [by_decision[d] for d in sorted(by_decision)]


# ---- replay files ------------------------------------------------------------------------
@dataclass(frozen=True)
class Replay:
    """A replay file that passed :func:`read`: its manifest and its records in decision order."""

    path: Path
    manifest: dict
    records: list[dict]

    @property
    def bundle(self) -> str:
        return self.manifest["bundle"]

    @property
    def consent_trail(self) -> list[dict]:
        return self.manifest["consent_trail"]

    @property
    def records_sha256(self) -> str:
        return self.manifest["records_sha256"]

    def __len__(self) -> int:
        return len(self.records)


def _check_trail(trail: Any, where: str) -> list[dict]:
    if not isinstance(trail, list) or not trail:
        raise ReplayError(
            f"{where} has no consent trail: replays are built only from captures made "
            f"under {CONSENT_SCOPE} consent (livelab replay build)"
        )
    for i, e in enumerate(trail):
        if not isinstance(e, dict) or any(k not in e for k in _TRAIL_KEYS):
            raise ReplayError(f"{where}: consent trail entry {i} needs {', '.join(_TRAIL_KEYS)}")
        if e["scope"] != CONSENT_SCOPE or e["grant"] is not True:
            raise ReplayError(f"{where}: consent trail entry {i} does not grant {CONSENT_SCOPE}")
        if not _is_int(e["index"]) or not isinstance(e["hash"], str) or not _HEX64.fullmatch(e["hash"]):
            raise ReplayError(f"{where}: consent trail entry {i} must reference an audit record (index, sha256)")
    return trail


def build(
    home: Path | str,
    namespace: str,
    device: str,
    out: Path | str,
    *,
    capture_ids: list[str] | None = None,
    consent_trail: list[dict] | None = None,
) -> Path:
    """Build ``out`` (a ``*.lreplay``) from the stored captures of one device."""
    home = Path(home)
    out = Path(out)
    folder = _device_captures(home, namespace, device)
    metas = {p.name[: -len(".meta.json")]: p for p in sorted(folder.glob("*.meta.json"))} if folder.is_dir() else {}
    if not metas:
        raise ReplayError(
            f"no captures for device {device} in namespace {namespace} (in {folder}); "
            f"grant {CONSENT_SCOPE} consent and capture first"
        )
    if capture_ids:
        unknown = [c for c in capture_ids if c not in metas]
        if unknown:
            raise ReplayError(f"unknown capture {unknown[0]!r} for device {device}; available: {', '.join(metas)}")
        chosen = sorted(set(capture_ids))
    else:
        chosen = list(metas)
    records: dict[int, bytes] = {}
    trail: dict[tuple[int, str], dict] = {}
    for cid in chosen:
        meta = _home.read_json(metas[cid])
        c = meta.get("consent")
        if isinstance(c, dict) and "index" in c and "hash" in c:
            trail.setdefault(
                (c["index"], c["hash"]),
                {
                    "device": device,
                    "index": c["index"],
                    "hash": c["hash"],
                    "scope": c.get("scope", CONSENT_SCOPE),
                    "grant": c.get("grant", True),
                    "time": c.get("time"),
                    "verified": bool(c.get("verified")),
                },
            )
        lines, _ = _read_lines(folder / f"{cid}.jsonl")
        for line in lines:
            d = json.loads(line)["decision"]
            if records.setdefault(d, line) != line:
                raise ReplayError(
                    f"captures disagree on decision {d} of {device}; build from one of them with --capture"
                )
    if consent_trail is not None:
        trail_list = _check_trail(consent_trail, "consent_trail")
    else:
        trail_list = _check_trail([trail[k] for k in sorted(trail)], f"captures of {device}")
    if not records:
        raise ReplayError(f"captures {', '.join(chosen)} of {device} hold no records yet")
    order = sorted(records)
    recs = [json.loads(records[d]) for d in order]
    for rec in recs:  # the store checked on arrival; check again what goes into a file
        _check_record(rec, f"capture of {device}")
        _check_pii(rec, f"capture of {device}")
    bundles = sorted({r["bundle"] for r in recs})
    if len(bundles) > 1:
        raise ReplayError(
            f"the captures of {device} were decided by {len(bundles)} bundles "
            f"({', '.join(b[:12] for b in bundles)}); build one replay per bundle with --capture"
        )
    body = b"".join(_canonical(r) + b"\n" for r in recs)
    manifest = {
        "schema": SCHEMA_REPLAY,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "namespace": namespace,
        "device": device,
        "capture_ids": chosen,
        "bundle": bundles[0],
        "features": features.SCHEMA,
        "consent_trail": trail_list,
        "provenance": {
            "lab_home": str(home),
            "builder": "lab_hardware.modelops.replay.build",
            "records_from": order[0],
            "records_to": order[-1],
        },
        "records": len(recs),
        "records_sha256": hashlib.sha256(body).hexdigest(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(_canonical(manifest) + b"\n" + body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out


def read(path: Path | str) -> Replay:
    """Parse and check a replay file; refuses anything corrupted, truncated or unconsented."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReplayError(f"replay not found: {path}") from None
    except IsADirectoryError:
        raise ReplayError(f"replay {path} is a directory, not a replay file") from None
    except OSError as exc:
        raise ReplayError(f"replay {path} cannot be read ({exc.strerror})") from None
    if not data:
        raise ReplayError(f"replay {path} is empty")
    if not data.endswith(b"\n"):
        raise ReplayError(f"replay {path} is truncated (its last line is torn); rebuild it with livelab replay build")
    head_end = data.index(b"\n")
    try:
        manifest = json.loads(data[:head_end])
    except (ValueError, UnicodeDecodeError):
        raise ReplayError(f"replay {path}: line 1 is not JSON (not a replay file?)") from None
    if not isinstance(manifest, dict):
        raise ReplayError(f"replay {path}: line 1 is not a replay manifest")
    if manifest.get("schema") != SCHEMA_REPLAY:
        raise ReplayError(f"replay {path}: unknown schema {manifest.get('schema')!r}; expected {SCHEMA_REPLAY}")
    if "consent_trail" not in manifest or not manifest["consent_trail"]:
        _check_trail(manifest.get("consent_trail"), f"replay {path}")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ReplayError(f"replay {path}: manifest is missing {', '.join(missing)}")
    _check_trail(manifest["consent_trail"], f"replay {path}")
    if manifest["features"] != features.SCHEMA:
        raise ReplayError(
            f"replay {path} was captured with features {manifest['features']!r}; this lab extracts {features.SCHEMA!r}"
        )
    if not isinstance(manifest["bundle"], str) or not _HEX64.fullmatch(manifest["bundle"]):
        raise ReplayError(f"replay {path}: manifest 'bundle' must be a sha256 hex digest")
    expected = manifest["records"]
    if not _is_int(expected):
        raise ReplayError(f"replay {path}: manifest 'records' must be a non-negative integer")
    body = data[head_end + 1 :]
    count = body.count(b"\n")
    if count != expected:
        raise ReplayError(
            f"replay {path} is truncated or padded: the manifest says {expected} records, the file has {count}"
        )
    if hashlib.sha256(body).hexdigest() != manifest["records_sha256"]:
        raise ReplayError(f"replay {path} is corrupted: its records do not match the manifest's records_sha256")
    lines = body.split(b"\n")[:-1]
    try:
        records = json.loads(b"[" + b",".join(lines) + b"]") if lines else []
    except (ValueError, UnicodeDecodeError):
        for i, line in enumerate(lines):
            try:
                json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise ReplayError(f"replay {path}: line {i + 2} is not JSON") from None
        raise ReplayError(f"replay {path}: records are not JSON lines") from None
    prev = -1
    where = f"replay {path}"
    bundle = manifest["bundle"]
    for rec in records:
        _check_record(rec, where)
        if rec["decision"] <= prev:
            raise ReplayError(
                f"{where}: records are not in strictly increasing decision order "
                f"(decision {rec['decision']} after {prev})"
            )
        if rec["bundle"] != bundle:
            raise ReplayError(f"{where}: decision {rec['decision']} was decided by another bundle than the manifest's")
        prev = rec["decision"]
    return Replay(path=path, manifest=manifest, records=records)


# ---- models ------------------------------------------------------------------------------
def check_model(model: Path | str) -> Path:
    """A replayable model path: an existing ``.onnx`` file or ``.lbundle`` bundle."""
    model = Path(model)
    if not model.is_file():
        raise ReplayError(f"bundle not found: {model}")
    if model.suffix not in (".onnx", ".lbundle"):
        raise ReplayError(f"model must be a .onnx file or a .lbundle bundle: {model}")
    return model


def model_digest(model: Path | str) -> str:
    """The digest devices report for this model: file sha256 (.onnx) or bundle digest (.lbundle)."""
    model = check_model(model)
    if model.suffix == ".lbundle":
        from lab_hardware.modelops import bundle as _bundle  # lazily: bundles are optional for .onnx replays

        try:
            return _bundle.read(model).digest
        except ValueError as exc:
            raise ReplayError(f"bundle {model}: {exc}") from None
    from lab_hardware.digest import file_digest

    return file_digest(model)


# ---- sandbox -----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _unshare() -> tuple[list[str], str]:
    """(command prefix, why) for a user+network namespace; ([], reason) when unavailable."""
    exe = shutil.which("unshare")
    if exe is None:
        return [], "unshare not found"
    try:
        res = subprocess.run([exe, "-rn", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"unshare failed ({exc})"
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["exit code %d" % res.returncode])[-1]
        return [], f"unshare -rn is not permitted here ({why})"
    return [exe, "-rn"], "unshare -rn: own user and network namespace (no interfaces but a down loopback)"


def _launch(args: list[str], *, sandbox: bool, timeout: float = _SANDBOX_TIMEOUT) -> tuple[dict, dict]:
    """Run ``python -m lab_hardware.modelops.replay_sandbox ARGS`` (under ``unshare -rn`` when
    possible); returns (its JSON result, launch facts)."""
    prefix, why = _unshare() if sandbox else ([], "sandbox=False: plain subprocess")
    cmd = [*prefix, sys.executable, "-m", "lab_hardware.modelops.replay_sandbox", *args]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=_home.die_with_parent
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"replay sandbox did not finish within {timeout:.0f} s") from None
    wall = time.perf_counter() - t0
    if proc.returncode == 2:
        lines = proc.stderr.strip().splitlines()
        raise ReplayError(lines[-1].removeprefix("error: ") if lines else "replay sandbox refused the input")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise RuntimeError(f"replay sandbox failed: {tail}")
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError("replay sandbox printed no result") from None
    return result, {"wall_seconds": wall, "namespaced": bool(prefix), "isolation": why}


def run(
    replay: Path | str,
    model: Path | str,
    out: Path | str,
    *,
    sandbox: bool = True,
    threads: int = 1,
    cpu: int | None = None,
) -> dict:
    """Replay ``replay`` through ``model`` in a separate process with no network; write ``out``.

    ``out`` gets one JSON line per record (decision, label, intent, probs as hex
    of float32 little-endian bytes, recomputed signal digest, digest_ok) and a
    final summary line -- no timestamps, so its bytes are identical run after
    run.  ``cpu`` pins the sandbox process to one CPU (benchmarks).
    """
    t0 = time.perf_counter()
    replay = Path(replay)
    if not replay.is_file():
        raise ReplayError(f"replay not found: {replay}")
    model = check_model(model)
    if not _is_int(threads, 1):
        raise ReplayError(f"threads must be a positive integer, got {threads!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The sandbox reads and checks the replay itself (same cwd, so paths stay as the user gave
    # them in its one-line refusals) and writes nothing when it refuses.
    args = ["--replay", str(replay), "--model", str(model), "--out", str(out), "--threads", str(threads)]
    if cpu is not None:
        args += ["--cpu", str(cpu)]
    result, launch = _launch(args, sandbox=sandbox)
    n = result["records"]
    return {
        "records": n,
        "seconds": result["seconds"],
        "records_per_s": n / result["seconds"] if result["seconds"] > 0 else float("inf"),
        "wall_seconds": time.perf_counter() - t0,
        "output": str(out),
        "output_sha256": result["output_sha256"],
        "network_isolated": launch["namespaced"] and result["netns_isolated"],
        "network_guard": result["network_guard"],
        "isolation": launch["isolation"],
        "digest_matches": result["digest_matches"],
        "digest_mismatches": n - result["digest_matches"],
        "same_model": result["same_model"],
        "model_digest": result["model_digest"],
        "capture_bundle": result["capture_bundle"],
        "labels_changed": result["labels_changed"],
        "threads": threads,
        "cpu": cpu,
        "model_load_seconds": result["model_load_seconds"],
    }


def probe_network(host: str, port: int, *, sandbox: bool = True) -> dict:
    """Try to reach ``host:port`` from inside the sandbox (first at the socket layer,
    then through the guard) and report what happened at each layer."""
    result, launch = _launch(["--probe-network", f"{host}:{int(port)}"], sandbox=sandbox, timeout=60)
    return {
        **result,
        "network_isolated": launch["namespaced"] and result["netns_isolated"],
        "isolation": launch["isolation"],
    }


def read_output(path: Path | str) -> tuple[list[dict], dict]:
    """(record lines, summary) of a :func:`run` output file."""
    lines = Path(path).read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise ReplayError(f"replay output {path} is empty")
    rows = json.loads(b"[" + b",".join(lines) + b"]")
    summary = rows.pop()
    if summary.get("schema") != SCHEMA_OUTPUT:
        raise ReplayError(f"{path} is not a replay output (no {SCHEMA_OUTPUT} summary line)")
    return rows, summary


def _side(res: dict, rows: list[dict], replay: Replay, defect_intent: str, model: Path) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        key = r["intent"] if r["intent"] is not None else str(r["label"])
        counts[key] = counts.get(key, 0) + 1
    defect_label = {r["intent"]: r["label"] for r in rows if r["intent"] is not None}.get(defect_intent)
    recs = replay.records
    undone_defect = (
        [i for i, rec in enumerate(recs) if rec["undo"] and rec["label"] == defect_label]
        if defect_label is not None
        else []
    )
    fp = sum(1 for i in undone_defect if rows[i]["intent"] == defect_intent)
    return {
        "model": str(model),
        "digest": res["model_digest"],
        "same_model": res["same_model"],
        "counts": dict(sorted(counts.items())),
        "defect_decisions": counts.get(defect_intent, 0),
        "defect_false_positives": fp,
        "digest_matches": res["digest_matches"],
        "output_sha256": res["output_sha256"],
        "network_isolated": res["network_isolated"],
        "seconds": res["seconds"],
    }


def diff(
    replay: Path | str,
    model_a: Path | str,
    model_b: Path | str,
    *,
    defect_intent: str = "call",
    sandbox: bool = True,
    threads: int = 1,
    examples: int = 10,
) -> dict:
    """Replay one file through two models (each sandboxed) and compare their decisions.

    ``defect_false_positives`` is the false-positive proxy for ``defect_intent``:
    decisions the device made as ``defect_intent`` that the user undid, and that
    this model would make again.  A defective candidate repeats them; a fixed
    model does not.
    """
    rp = read(replay)
    with tempfile.TemporaryDirectory(prefix="livelab-replay-diff-") as tmp:
        sides = []
        for tag, model in (("a", model_a), ("b", model_b)):
            res = run(replay, model, Path(tmp) / f"{tag}.jsonl", sandbox=sandbox, threads=threads)
            rows, _ = read_output(Path(tmp) / f"{tag}.jsonl")
            sides.append((res, rows, Path(model)))
    (ra, rows_a, ma), (rb, rows_b, mb) = sides
    transitions: dict[str, int] = {}
    changed: list[dict] = []
    for rec, a, b in zip(rp.records, rows_a, rows_b):
        if a["label"] != b["label"]:
            key = f"{a['intent'] or a['label']} -> {b['intent'] or b['label']}"
            transitions[key] = transitions.get(key, 0) + 1
            if len(changed) < examples:
                changed.append(
                    {
                        "decision": rec["decision"],
                        "text": rec["text"],
                        "undo": rec["undo"],
                        "a": a["intent"] or a["label"],
                        "b": b["intent"] or b["label"],
                    }
                )
    sa = _side(ra, rows_a, rp, defect_intent, ma)
    sb = _side(rb, rows_b, rp, defect_intent, mb)
    return {
        "replay": str(replay),
        "records": len(rp),
        "defect_intent": defect_intent,
        "undone": sum(1 for r in rp.records if r["undo"]),
        "a": sa,
        "b": sb,
        "changed": sum(transitions.values()),
        "transitions": dict(sorted(transitions.items(), key=lambda kv: (-kv[1], kv[0]))),
        "examples": changed,
    }
