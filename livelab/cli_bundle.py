"""``livelab keys ...`` and ``livelab bundle ...``: thin commands over lab_hardware.modelops.keys/bundle.

Exit codes follow livelab.cli: 0 ok, 1 a verify that failed (one line on
stderr: ``livelab: verify failed: <reason>``), 2 bad usage or unreadable input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

import argparse

from livelab.common import bundle_trail, digest_arg, keyid_arg
from livelab.common import EXIT_FAIL, EXIT_OK, HEX64, KEYID, UsageError, check_output, console, float_range, int_range


def _bundle_ref(text: str) -> str:
    """``DIGEST`` (every signer's copy) or ``DIGEST:KEYID`` (one signer's)."""
    digest, _, keyid = text.partition(":")
    if not HEX64.match(digest) or (keyid and not KEYID.match(keyid)):
        raise argparse.ArgumentTypeError(f"{text[:90]!r} is not DIGEST (64 lower-case hex characters) or DIGEST:KEYID")
    return text


def _home(args) -> Path:
    from lab_hardware.home import resolve

    return resolve(args.home)


def _usage(exc: Exception | str) -> UsageError:
    # livelab.cli prints UsageError as plain text (markup=False): data prints as is.
    return UsageError(str(exc))


def _key_file(home: Path, arg: str, suffix: str) -> Path:
    """``NAME`` (a key in home/keys) or a path to a key file."""
    from lab_hardware.topics import NAME_RE

    p = Path(arg)
    if p.is_file() or not NAME_RE.match(arg):
        return p
    named = home / "keys" / f"{arg}{suffix}"
    if not named.is_file():
        raise _usage(
            f"no key named {arg!r} in {home / 'keys'} and no file {arg!r}; create one with 'livelab keys new {arg}'"
        )
    return named


def _input_file(arg: str, what: str) -> Path:
    """An input file that must exist and be readable (else exit 2, not a verify failure)."""
    p = Path(arg)
    if not p.is_file():
        raise _usage(f"no {what} file at {p}")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise _usage(f"cannot read {what} {p}: {exc.strerror}") from None
    return p


# ---- keys --------------------------------------------------------------------------------
def cmd_keys(args) -> int:
    from lab_hardware.modelops import keys

    home = _home(args)
    try:
        if args.keys_command == "new":
            rec = keys.new_key(home, args.name)
            console.print(f"key {rec['name']} created: keyid {rec['keyid']}", markup=False, soft_wrap=True)
            console.print(f"private {rec['key']} (keep it secret), public {rec['pub']}", markup=False, soft_wrap=True)
            console.print(f"trust it in this lab with: livelab keys trust {rec['name']}", markup=False, soft_wrap=True)
        elif args.keys_command == "list":
            rows = keys.list_keys(home)
            if args.json:
                print(json.dumps(rows, indent=2, sort_keys=True))
                return EXIT_OK
            if not rows:
                console.print(
                    f"no keys in {home} (create one with 'livelab keys new NAME')", markup=False, soft_wrap=True
                )
                return EXIT_OK
            t = Table("name", "keyid", "private key", "trusted")
            for r in rows:
                t.add_row(
                    escape(r["name"]),
                    r["keyid"],
                    "yes" if r["private"] else "-",
                    "[green]yes[/]" if r["trusted"] else "-",
                )
            console.print(t)
        elif args.keys_command == "trust":
            keyid = keys.trust(home, _key_file(home, args.key, ".pub"))
            console.print(f"trusted key {keyid} in {home}", markup=False, soft_wrap=True)
        elif args.keys_command == "untrust":
            keys.untrust(home, args.keyid)
            console.print(f"key {args.keyid} is no longer trusted in {home}", markup=False, soft_wrap=True)
    except keys.KeyringError as exc:
        raise _usage(exc) from None
    return EXIT_OK


# ---- bundle ------------------------------------------------------------------------------
def _slos_file(arg: str) -> list:
    """A JSON file holding the ``slos`` list (docs/slo.md); the manifest check judges its content."""
    path = _input_file(arg, "SLO")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _usage(f"cannot read SLOs from {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return data


def cmd_bundle_build(args) -> int:
    from lab_hardware.modelops import bundle

    compute = {
        k: v
        for k, v in {
            "min_cores": args.min_cores,
            "min_memory_mb": args.min_memory_mb,
            "max_inference_slowdown": args.max_inference_slowdown,
            "latency_budget_ms": args.latency_budget_ms,
            "health_decisions": args.health_decisions,
            "max_error_rate": args.max_error_rate,
        }.items()
        if v is not None
    }
    revocation = {k: v for k, v in {"topic": args.revocation_topic, "contact": args.contact}.items() if v is not None}
    provenance = {"parent_bundle": args.parent} if args.parent else None
    privacy = {"retention_days": args.retention_days} if args.retention_days is not None else {}
    if args.telemetry_fields is not None:  # the manifest check refuses a field telemetry may not hold
        privacy["telemetry_fields"] = sorted({f.strip() for f in args.telemetry_fields.split(",") if f.strip()})
    model = _input_file(args.model, "model")
    if args.adapter:
        _input_file(args.adapter, "adapter")
    slos = _slos_file(args.slos) if args.slos else None
    check_output(args.out, "bundle")
    try:
        out = bundle.build(
            model,
            Path(args.out),
            name=args.name,
            version=args.version,
            adapter=Path(args.adapter) if args.adapter else None,
            compute=compute or None,
            privacy=privacy or None,
            provenance=provenance,
            revocation=revocation or None,
            created=args.created,
            slos=slos,
        )
        info = bundle.inspect(out)
    except bundle.BundleError as exc:
        raise _usage(exc) from None
    bundle_trail(args, "bundle.build", info, details={"file": str(Path(out).resolve())})
    console.print(
        f"built {out} ({info['size']:,} bytes): {info['name']} {info['version']} "
        f"digest {info['digest'][:12]}, unsigned (sign with: livelab bundle sign {out} --key NAME)",
        markup=False,
        soft_wrap=True,
    )
    return EXIT_OK


def cmd_bundle_sign(args) -> int:
    from lab_hardware.modelops import bundle

    home = _home(args)
    src = _input_file(args.bundle, "bundle")
    key = _key_file(home, args.key, ".key")
    check_output(args.out or src, "bundle")
    try:
        out = bundle.sign(src, key, Path(args.out) if args.out else None)
        info = bundle.inspect(out)
    except bundle.BundleError as exc:
        raise _usage(exc) from None
    bundle_trail(
        args,
        "bundle.sign",
        info,
        inputs=[("livelab:bundles", info["digest"])],
        details={"file": str(Path(out).resolve())},
    )
    console.print(
        f"signed {out}: {info['name']} {info['version']} digest {info['digest'][:12]} by key {info['keyid']}",
        markup=False,
        soft_wrap=True,
    )
    return EXIT_OK


def cmd_bundle_verify(args) -> int:
    from lab_hardware.modelops import bundle, keys
    from lab_hardware import profiles

    home = _home(args)
    src = _input_file(args.bundle, "bundle")
    try:
        trusted = keys.trusted(home)
    except keys.KeyringError as exc:
        raise _usage(exc) from None
    if args.installed_version is not None:
        try:
            bundle.parse_version(args.installed_version)
        except bundle.BundleError as exc:
            raise _usage(f"--installed-version: {exc}") from None
    profile = profiles.load(args.profile) if args.profile else None  # ProfileError -> exit 2
    try:
        b = bundle.verify(
            src,
            trusted,
            revoked=set(args.revoked or ()),
            installed_version=args.installed_version,
            rollback_to=set(args.rollback_to or ()),
            profile=profile,
        )
    except bundle.BundleError as exc:
        print(f"livelab: verify failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    who = {r["keyid"]: r["name"] for r in keys.list_keys(home)}.get(b.keyid, "")
    console.print(
        f"ok: {b.name} {b.version} digest {b.digest[:12]} signed by {b.keyid}"
        f"{f' ({who})' if who else ''}" + (f", fits profile {profile.name}" if profile else ""),
        markup=False,
        soft_wrap=True,
    )
    return EXIT_OK


def _signature_status(home: Path, src: Path, keyid: str | None) -> str:
    from lab_hardware.modelops import bundle, keys

    if keyid is None:
        return "unsigned"
    try:
        bundle.verify(src, keys.trusted(home))
    except (bundle.BundleError, keys.KeyringError) as exc:
        return f"[red]{escape(str(exc))}[/]"
    return "[green]valid, trusted key[/]"


def cmd_bundle_inspect(args) -> int:
    from lab_hardware.modelops import bundle

    src = _input_file(args.bundle, "bundle")
    try:
        info = bundle.inspect(src)
    except bundle.BundleError as exc:
        raise _usage(exc) from None
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    t = Table(show_header=False)
    t.add_column("field", no_wrap=True)
    t.add_column("value", overflow="fold")

    def row(k: str, v, *, markup: bool = False) -> None:
        t.add_row(k, v if markup else escape(str(v)))

    row("name", info["name"])
    row("version", info["version"])
    row("digest", info["digest"])
    row("created", info["created"])
    row("signer", info["keyid"] or "-")
    row("signature", _signature_status(_home(args), src, info["keyid"]), markup=True)
    row(
        "size",
        f"{info['size']:,} bytes (model {info['model_size']:,}"
        + (f", adapter {info['adapter_size']:,})" if info["adapter_size"] is not None else ", no adapter)"),
    )
    if info["adapter"]:
        row("adapter bias", ", ".join(f"{k} {v:+g}" for k, v in info["adapter"]["logit_bias"].items()) or "none")
    row("intents", ", ".join(info["intents"]))
    for section in ("compute", "privacy", "revocation", "provenance"):
        for k, v in info[section].items():
            if isinstance(v, list):
                v = ", ".join(map(str, v))
            row(f"{section}.{k}", "-" if v is None or v == "" else v)
    console.print(t)
    return EXIT_OK


# ---- registration ------------------------------------------------------------------------
def register(sub) -> None:
    """Add ``keys`` and ``bundle`` to livelab's argparse subparsers."""
    k = sub.add_parser(
        "keys",
        help="signing keys and the lab's trust store",
        description="Ed25519 signing keys (home/keys, private keys mode 0600) and the "
        "trust store (home/trust) that 'bundle verify' and devices check.",
    )
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION")
    ks.required = True
    s = ks.add_parser("new", help="create a signing key pair")
    s.add_argument("name", help="key name (lower-case letters, digits, '-', '_')")
    s = ks.add_parser("list", help="own and trusted keys")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = ks.add_parser("trust", help="trust a public key in this lab")
    s.add_argument("key", metavar="PUBFILE|NAME", help="a .pub file, or the name of a key in home/keys")
    s = ks.add_parser("untrust", help="stop trusting a key")
    s.add_argument("keyid", type=keyid_arg, help="16 hex characters (see 'livelab keys list')")
    k.set_defaults(fn=cmd_keys)

    b = sub.add_parser(
        "bundle",
        help="build, sign, verify and inspect signed model bundles",
        description="A bundle is one file: model + optional adapter (<= 1 MB) + manifest "
        "(semver, hashes, I/O, compute, privacy, revocation, provenance) + "
        "Ed25519 signature. Exit codes: 0 ok, 1 verify failed, 2 bad input.",
    )
    bs = b.add_subparsers(dest="bundle_command", metavar="ACTION")
    bs.required = True

    s = bs.add_parser("build", help="package an ONNX model (and adapter) into an unsigned bundle")
    s.add_argument("model", help="ONNX model file")
    s.add_argument("-o", "--out", required=True, help="bundle file to write (*.lbundle)")
    s.add_argument("--name", required=True, help="bundle name")
    s.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    s.add_argument("--adapter", help="adapter.json (logit bias, <= 1,000,000 bytes)")
    s.add_argument("--min-cores", type=int_range(0, 1024, what="--min-cores"))
    s.add_argument("--min-memory-mb", type=int_range(0, 2**20, what="--min-memory-mb"))
    s.add_argument("--max-inference-slowdown", type=float_range(1, 1e6, what="--max-inference-slowdown"))
    s.add_argument(
        "--latency-budget-ms",
        type=float_range(0, 1e7, lo_open=True, what="--latency-budget-ms"),
        help="decision p99 budget of the health check",
    )
    s.add_argument(
        "--health-decisions",
        type=int_range(1, 10_000_000, what="--health-decisions"),
        help="decisions the health check watches",
    )
    s.add_argument("--max-error-rate", type=float_range(0, 1, what="--max-error-rate"))
    s.add_argument("--retention-days", type=int_range(0, 36_500, what="--retention-days"))
    s.add_argument(
        "--telemetry-fields",
        metavar="F1,F2,...",
        help="the telemetry fields a device running it may publish (its privacy declaration; default: "
        "every field telemetry may hold); the lab's privacy audit fails the bundle if it sends others",
    )
    s.add_argument("--revocation-topic", help="livelab/<namespace>/control/revocations")
    s.add_argument("--contact", help="who to contact about this bundle")
    s.add_argument("--parent", type=digest_arg, help="digest of the bundle this one supersedes")
    s.add_argument("--created", help="ISO-8601 UTC time (default now); fixing it makes builds reproducible")
    s.add_argument("--slos", metavar="FILE", help="JSON list of micro-SLOs to declare (see docs/slo.md)")
    s.set_defaults(fn=cmd_bundle_build)

    s = bs.add_parser("sign", help="sign a bundle (replaces any signature)")
    s.add_argument("bundle")
    s.add_argument("--key", required=True, metavar="NAME|PATH", help="a key name in home/keys or a .key file")
    s.add_argument("-o", "--out", help="signed bundle to write (default: sign in place)")
    s.set_defaults(fn=cmd_bundle_sign)

    s = bs.add_parser(
        "verify",
        help="verify a bundle against this lab's trust store",
        description="Integrity, trusted signature, not revoked, newer than the installed "
        "version (or an explicit rollback), fits the profile. Exit 0 ok, 1 failed.",
    )
    s.add_argument("bundle")
    s.add_argument("--installed-version", help="refuse versions not newer than this")
    s.add_argument(
        "--rollback-to",
        action="append",
        metavar="DIGEST[:KEYID]",
        type=_bundle_ref,
        help="allow this bundle despite its version (repeatable; without KEYID: any signer's copy)",
    )
    s.add_argument(
        "--revoked",
        action="append",
        metavar="DIGEST[:KEYID]",
        type=_bundle_ref,
        help="refuse this bundle (repeatable; without KEYID: every signer's copy)",
    )
    s.add_argument("--profile", help="hardware profile to check compute needs against, e.g. rpi4")
    s.set_defaults(fn=cmd_bundle_verify)

    s = bs.add_parser("inspect", help="show a bundle's manifest summary")
    s.add_argument("bundle")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_bundle_inspect)

    from livelab import cli_rollout

    cli_rollout.register_revoke(bs)
