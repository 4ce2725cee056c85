"""Signing keys and the lab's trust store (Ed25519, via ``cryptography``).

A bundle is trusted because of who signed it, so the formats here are small
and strict: a private key is a PKCS8 PEM file only its owner can read
(``home/keys/<name>.key``, mode 0600 in a 0700 directory); a public key is a
tiny JSON file (``<name>.pub``) that can be mailed around; the trust store is
one such file per trusted key (``home/trust/<keyid>.pub``).  A key id is the
first 16 hex characters of the sha256 of the raw public key, so it can be
recomputed from the key and never has to be believed.  Devices do not read the
trust store: their configuration carries :func:`trusted_hex`, which
:func:`from_hex` turns back into keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lab_hardware.topics import NAME_RE

SCHEMA_PUBKEY = "livelab.pubkey/v1"
KEYID_RE = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: A public key file is ~200 bytes; anything much larger is not one.
_PUB_LIMIT = 4096
_KEY_LIMIT = 16384


class KeyringError(ValueError):
    """A key or trust-store problem, always a one-line message."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0]


def keyid_of(public: Ed25519PublicKey | bytes) -> str:
    """Key id: first 16 hex chars of sha256(raw 32-byte public key)."""
    raw = (
        public
        if isinstance(public, bytes)
        else public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def _raw_hex(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _pub_record(name: str, public: Ed25519PublicKey) -> dict:
    return {"schema": SCHEMA_PUBKEY, "name": name, "keyid": keyid_of(public), "public": _raw_hex(public)}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise KeyringError(f"invalid key name {name!r}: use 1-63 lower-case letters, digits, '-' or '_'")
    return name


def _check_keyid(keyid: str) -> str:
    if not isinstance(keyid, str) or not KEYID_RE.match(keyid):
        raise KeyringError(f"invalid key id {keyid!r}: a key id is 16 lower-case hex characters")
    return keyid


def _private_dir(home: Path) -> Path:
    d = Path(home) / "keys"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively (never overwrite a key) with ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _encode_pub(record: dict) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def new_key(home: Path, name: str) -> dict:
    """Create a signing key pair ``home/keys/<name>.key`` (0600) and ``<name>.pub``.

    Refuses to overwrite: losing a private key silently would orphan every
    bundle it signed.  Returns the public record plus ``key`` and ``pub`` paths.
    """
    _check_name(name)
    d = _private_dir(Path(home))
    key_path, pub_path = d / f"{name}.key", d / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise KeyringError(f"key {name!r} already exists ({p}); choose another name")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        _write_new(key_path, pem, 0o600)
    except FileExistsError:
        raise KeyringError(f"key {name!r} already exists ({key_path}); choose another name") from None
    record = _pub_record(name, private.public_key())
    _write_atomic(pub_path, _encode_pub(record), 0o644)
    return {**record, "key": str(key_path), "pub": str(pub_path)}


def load_private(path: Path | str) -> Ed25519PrivateKey:
    """A PKCS8 PEM Ed25519 private key (unencrypted), or a one-line KeyringError."""
    path = Path(path)
    try:
        if path.stat().st_size > _KEY_LIMIT:
            raise KeyringError(f"{path}: too large to be a private key")
        data = path.read_bytes()
    except OSError as exc:
        raise KeyringError(f"cannot read private key {path}: {exc.strerror or _first_line(exc)}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyringError(f"{path}: not a usable private key ({_first_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyringError(f"{path}: not an Ed25519 private key")
    return key


def _parse_pub(data: bytes, where: str) -> tuple[dict, Ed25519PublicKey]:
    try:
        rec = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyringError(f"{where}: not a public key file (invalid JSON: {exc.__class__.__name__})") from None
    if not isinstance(rec, dict):
        raise KeyringError(f"{where}: not a public key file (not a JSON object)")
    expected = {"schema", "name", "keyid", "public"}
    unknown = sorted(set(rec) - expected)
    if unknown:
        raise KeyringError(f"{where}: unknown key {unknown[0]!r}")
    missing = sorted(expected - set(rec))
    if missing:
        raise KeyringError(f"{where}: missing key {missing[0]!r}")
    if rec["schema"] != SCHEMA_PUBKEY:
        raise KeyringError(f"{where}: schema must be {SCHEMA_PUBKEY!r}, not {rec['schema']!r}")
    if not isinstance(rec["name"], str) or not NAME_RE.match(rec["name"]):
        raise KeyringError(f"{where}: invalid key name {rec['name']!r}")
    if not isinstance(rec["public"], str) or not _HEX64.match(rec["public"]):
        raise KeyringError(f"{where}: 'public' must be 64 lower-case hex characters (a raw Ed25519 key)")
    public = _public_from_hex(rec["public"], where)
    if rec["keyid"] != keyid_of(public):
        raise KeyringError(f"{where}: keyid {rec['keyid']!r} does not match its public key")
    return rec, public


def _public_from_hex(hexkey: str, where: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hexkey))
    except ValueError as exc:
        raise KeyringError(f"{where}: invalid Ed25519 public key ({_first_line(exc)})") from None


def _read_pub(path: Path) -> tuple[dict, Ed25519PublicKey]:
    try:
        if path.stat().st_size > _PUB_LIMIT:
            raise KeyringError(f"{path}: too large to be a public key file")
        data = path.read_bytes()
    except OSError as exc:
        raise KeyringError(f"cannot read public key {path}: {exc.strerror or _first_line(exc)}") from None
    return _parse_pub(data, str(path))


def load_public(path: Path | str) -> tuple[str, Ed25519PublicKey]:
    """``(keyid, key)`` from a ``.pub`` file; the key id is recomputed and checked."""
    rec, public = _read_pub(Path(path))
    return rec["keyid"], public


# ---- trust store -------------------------------------------------------------------------
def _trust_dir(home: Path) -> Path:
    return Path(home) / "trust"


def namespace_home(home: Path, namespace: str) -> Path:
    """Where one namespace's own trust store lives (``<that>/trust/``): keys trusted there
    verify bundles on that namespace's devices only, next to the lab-wide store.  A grading
    submission trusts its signer here, so nothing it trusts reaches another namespace, and
    removing the namespace (``lab.remove_namespace(purge=True)``) removes them."""
    from lab_hardware import topics

    return Path(home) / "namespaces" / topics.check_name("namespace", namespace)


def trust(home: Path, pub_path: Path | str) -> str:
    """Add a public key to the lab's trust store; returns its key id (idempotent)."""
    rec, _ = _read_pub(Path(pub_path))
    d = _trust_dir(Path(home))
    d.mkdir(parents=True, exist_ok=True)
    _write_atomic(d / f"{rec['keyid']}.pub", _encode_pub(rec), 0o644)
    return rec["keyid"]


def untrust(home: Path, keyid: str) -> None:
    """Remove a key from the trust store: bundles it signed stop verifying."""
    _check_keyid(keyid)
    path = _trust_dir(Path(home)) / f"{keyid}.pub"
    try:
        path.unlink()
    except FileNotFoundError:
        raise KeyringError(f"key {keyid} is not trusted in {Path(home)}") from None


def _trusted_records(home: Path) -> dict[str, tuple[dict, Ed25519PublicKey]]:
    """Every trusted key; a malformed entry is an error, never silently skipped."""
    d = _trust_dir(Path(home))
    out: dict[str, tuple[dict, Ed25519PublicKey]] = {}
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.pub")):
        rec, public = _read_pub(path)
        if path.stem != rec["keyid"]:
            raise KeyringError(f"{path}: file name does not match its key id {rec['keyid']}")
        out[rec["keyid"]] = (rec, public)
    return out


def trusted(home: Path, namespace: str | None = None) -> dict[str, Ed25519PublicKey]:
    """keyid -> public key for every key in the trust store (with ``namespace``: the lab-wide
    store and that namespace's own, see :func:`namespace_home`)."""
    out = {k: pub for k, (_, pub) in _trusted_records(home).items()}
    if namespace:
        out.update({k: pub for k, (_, pub) in _trusted_records(namespace_home(home, namespace)).items()})
    return out


def trusted_hex(home: Path) -> dict[str, str]:
    """keyid -> raw public key hex: the plain-data form device configs carry."""
    return {k: rec["public"] for k, (rec, _) in _trusted_records(home).items()}


def from_hex(d: dict[str, str]) -> dict[str, Ed25519PublicKey]:
    """Inverse of :func:`trusted_hex`; each key id is recomputed and must match."""
    if not isinstance(d, dict):
        raise KeyringError("trusted keys must be a mapping of key id to public key hex")
    out: dict[str, Ed25519PublicKey] = {}
    for keyid, hexkey in d.items():
        _check_keyid(keyid)
        if not isinstance(hexkey, str) or not _HEX64.match(hexkey):
            raise KeyringError(f"trusted key {keyid}: public key must be 64 lower-case hex characters")
        public = _public_from_hex(hexkey, f"trusted key {keyid}")
        if keyid_of(public) != keyid:
            raise KeyringError(f"trusted key {keyid}: key id does not match its public key")
        out[keyid] = public
    return out


def list_keys(home: Path) -> list[dict]:
    """Own keys (``home/keys``) and trusted keys, one row per key id.

    Rows: ``name``, ``keyid``, ``public``, ``private`` (a private key file is
    present), ``trusted``, ``pub`` (path of the public key file).
    """
    home = Path(home)
    rows: dict[str, dict] = {}
    kd = home / "keys"
    if kd.is_dir():
        for path in sorted(kd.glob("*.pub")):
            rec, _ = _read_pub(path)
            rows[rec["keyid"]] = {
                "name": rec["name"],
                "keyid": rec["keyid"],
                "public": rec["public"],
                "private": path.with_suffix(".key").is_file(),
                "trusted": False,
                "pub": str(path),
            }
    for keyid, (rec, _) in _trusted_records(home).items():
        row = rows.setdefault(
            keyid,
            {
                "name": rec["name"],
                "keyid": keyid,
                "public": rec["public"],
                "private": False,
                "trusted": False,
                "pub": str(_trust_dir(home) / f"{keyid}.pub"),
            },
        )
        row["trusted"] = True
    return sorted(rows.values(), key=lambda r: (r["name"], r["keyid"]))
