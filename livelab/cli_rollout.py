"""``livelab rollout ...`` and ``livelab bundle revoke``: the control side of bundles."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from livelab.common import EXIT_FAIL, EXIT_OK, HEX64, UsageError, check_input, console, err, keyid_arg, trail


def _lab(args, *, control: bool = False):
    """The SDK on this lab: as its learner identity, or (``control``) with the control-plane
    credentials the lab's owner can read (revocations are a control-plane message)."""
    from lab_hardware.home import resolve
    from labs import Lab

    home = resolve(args.home)
    if control:
        from lab_hardware.runtime import lab as _labmod

        try:
            cred = _labmod.control_credentials(home)
        except (OSError, ValueError):
            raise UsageError(
                f"cannot read the control-plane credentials in {home / 'secrets'}: "
                "revoking for every device needs the lab owner's rights"
            ) from None
        return Lab.connect(home=home, username=cred["username"], password=cred["password"]), home
    return Lab.connect(home=home), home


def cmd_policy(args) -> int:
    """``livelab rollout policy``: show the lab's release checklist, or set it (``--require``,
    repeatable) or clear it (``--clear``).  Only the lab's files change: no lab needs to run."""
    from lab_hardware.home import resolve
    from labs import rollout

    home = resolve(args.home)
    if args.bundle or args.canary or args.shadow or args.forward or args.back:
        raise UsageError("rollout policy takes only --require MODULE@VERSION, --course C, --clear and --json")
    if args.require and args.clear:
        raise UsageError("say --require or --clear, not both")
    if args.course and not args.require:
        raise UsageError("--course qualifies a --require MODULE@VERSION")
    try:
        if args.require or args.clear:
            pol = rollout.set_policy(home, args.require or [], course=args.course or "")
        else:
            pol = rollout.policy(home)
    except rollout.RolloutError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(pol, indent=2, sort_keys=True))
    elif not pol["require"]:
        console.print("release checklist: none (any promoter may roll forward)", markup=False)
    else:
        for r in pol["require"]:
            course = f" of course {r['course']}" if r["course"] else ""
            console.print(
                f"release checklist: a promoter must have completed {r['module']} at version >= "
                f"{r['version']}{course} (signed by this lab's grader)",
                markup=False,
            )
    return EXIT_OK


def cmd_rollout(args) -> int:
    from labs import rollout

    if args.action == "policy":
        return cmd_policy(args)
    if args.require or args.course or args.clear:
        raise UsageError("--require, --course and --clear are for 'livelab rollout policy'")
    lab, home = _lab(args)
    before = len((rollout.current(home) or {}).get("steps", [])) if args.action == "finish" else 0
    try:
        if args.action == "start":
            if not args.bundle:
                raise UsageError("rollout start needs a BUNDLE file")
            check_input(args.bundle, "bundle")
            canary = [d for d in (args.canary or "").split(",") if d]
            try:
                st = rollout.start(lab, home, args.bundle, canary, shadow=args.shadow)
            except (rollout.RolloutError, OSError, ValueError) as exc:
                raise UsageError(str(exc).splitlines()[0]) from None
        elif args.action == "finish":
            if args.forward == args.back:
                raise UsageError("say --forward (install everywhere) or --back (return the canaries)")
            try:
                st = rollout.finish(lab, home, forward=args.forward)
            except rollout.ChecklistRefused as exc:
                # the thing checked (the release checklist) failed: exit 1, devices untouched
                err.print(f"livelab: {exc}", soft_wrap=True, markup=False)
                return EXIT_FAIL
            except rollout.RolloutError as exc:
                raise UsageError(str(exc)) from None
        st = rollout.status(lab, home)
    finally:
        lab.close()
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        r = st["rollout"]
        if r:
            console.print(
                f"rollout {r['name']} {r['version']} ({r['digest'][:12]} signed by {r.get('keyid')}), "
                f"mode {r['mode']}, state {r['state']}, canary {', '.join(r['canary'])}",
                markup=False,
            )
            for step in r["steps"]:
                mark = "[green]ok[/]" if step["ok"] else f"[red]refused[/] {escape(str(step.get('reason', '')))}"
                console.print(f"  {escape(step['device'])}: {escape(step['action'])} {mark}")
            for c in (r.get("checklist") or {}).get("completions", []):
                console.print(
                    f"  checklist: promoted by {c['learner']}, who completed {c['module']} {c['version']} "
                    f"(event {c['event'][:12]})",
                    markup=False,
                )
        else:
            console.print("no rollout yet")
        t = Table("device", "model", "bundle", "health check", "shadow")
        for d, v in st["devices"].items():
            h = v["health"]
            t.add_row(
                escape(d),
                escape(str(v["model"])),
                (v["bundle"] or "-")[:12],
                f"{h['seen']}/{h['needed']}" if h else "-",
                (v["shadow"] or {}).get("digest", "-")[:12],
            )
        console.print(t)
    # exit 1 when a step this command took was refused (status: any step of the rollout)
    steps = (st["rollout"] or {}).get("steps", [])
    failed = [s for s in steps[before if args.action == "finish" else 0 :] if not s["ok"]]
    return EXIT_FAIL if failed else EXIT_OK


def cmd_revoke(args) -> int:
    """Revoke a bundle on every device of the namespace, as the control plane (the retained
    revocation list, which devices read at once and again when they reconnect).  A
    revocation names the signer: a bundle FILE carries it, a DIGEST needs ``--keyid`` or an
    explicit ``--all-signers``."""
    target, keyid = args.target, args.keyid
    if HEX64.match(target):
        digest = target
    elif not Path(target).exists():
        raise UsageError(f"{target[:80]!r} is neither a bundle digest (64 lower-case hex characters) nor a bundle file")
    else:
        from lab_hardware.modelops import bundle as _bundle

        try:
            b = _bundle.read(check_input(target, "bundle"))
        except _bundle.BundleError as exc:
            raise UsageError(str(exc)) from None
        if keyid is not None and keyid != b.keyid:
            raise UsageError(f"--keyid {keyid} is not the signer of {target} ({b.keyid})")
        digest, keyid = b.digest, (None if args.all_signers else b.keyid)
        if keyid is None and not args.all_signers:
            raise UsageError(f"{target} is not signed: say --all-signers to revoke its content for every signer")
    if keyid is None and not args.all_signers:
        raise UsageError(
            "name the signer whose copy is revoked with --keyid KEYID (see 'livelab bundle "
            "inspect'), or say --all-signers to revoke this content whoever signed it"
        )
    if keyid is not None and args.all_signers:
        raise UsageError("say --keyid or --all-signers, not both")
    lab, home = _lab(args, control=True)
    try:
        try:
            revoked = lab.revoke(digest, reason=args.reason or "", keyid=keyid, all_signers=args.all_signers)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    finally:
        lab.close()
    trail(
        args,
        "bundle.revoke",
        f"{digest}:{keyid or '*'}",
        privacy=None,
        inputs=[("livelab:bundles", f"{digest}:{keyid}" if keyid else digest)],
        details={"digest": digest, "keyid": keyid, "all_signers": bool(args.all_signers), "reason": args.reason or ""},
        lab_namespace=lab.namespace,
    )
    who = "every signer" if args.all_signers else f"key {keyid}"
    console.print(
        f"revoked {digest[:12]} signed by {who} on every device of namespace {lab.namespace} "
        f"({len(revoked)} revocations in all)",
        markup=False,
    )
    return EXIT_OK


def register(sub) -> None:
    s = sub.add_parser(
        "rollout",
        help="canary a bundle on some devices (optionally in shadow mode), then roll forward or back",
        description="start: send BUNDLE to the --canary devices (installed, or beside the "
        "active model with --shadow); status: where each device stands; "
        "finish --forward: install everywhere; finish --back: canaries return "
        "to what they ran before (never blocked); policy: the lab's release checklist "
        "(--require MODULE@VERSION: whoever rolls forward must have a completion of that course "
        "module at that version or later, signed by the lab's grader).",
    )
    s.add_argument("action", choices=["start", "status", "finish", "policy"])
    s.add_argument("bundle", nargs="?", help="signed bundle (*.lbundle), for start")
    s.add_argument("--canary", help="comma-separated devices, e.g. dev-1,dev-2")
    s.add_argument("--shadow", action="store_true", help="decide alongside the active bundle, not acted on")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--forward", action="store_true", help="finish: install on every device")
    g.add_argument("--back", action="store_true", help="finish: return the canaries")
    s.add_argument(
        "--require",
        action="append",
        metavar="MODULE@VERSION",
        help="policy: a course module a promoter must have completed (repeatable), e.g. m3-bundles@1.2.0",
    )
    s.add_argument("--course", help="policy: the course of the required modules (any course when omitted)")
    s.add_argument("--clear", action="store_true", help="policy: require nothing")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_rollout)


def register_revoke(bundle_sub) -> None:
    s = bundle_sub.add_parser(
        "revoke",
        help="revoke a bundle on every device at once",
        description="A revocation names content and signer: give the bundle FILE, or its "
        "DIGEST with --keyid (that signer's copy) or --all-signers (every copy "
        "of this content, whoever signed it).",
    )
    s.add_argument("target", metavar="DIGEST|BUNDLE", help="the bundle's digest (livelab bundle inspect) or file")
    s.add_argument("--keyid", type=keyid_arg, help="the signer whose copy is revoked (16 hex characters)")
    s.add_argument("--all-signers", action="store_true", help="revoke this content whoever signed it")
    s.add_argument("--reason", help="why, for the record (at most 512 characters)")
    s.set_defaults(fn=cmd_revoke)
