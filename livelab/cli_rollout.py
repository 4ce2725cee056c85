"""``livelab rollout ...`` and ``livelab bundle revoke``: the control side of bundles."""

from __future__ import annotations

import json

from rich.table import Table

from livelab.common import EXIT_FAIL, EXIT_OK, UsageError, console


def _lab(args):
    from lab_hardware.home import resolve
    from labs import Lab
    return Lab.connect(home=resolve(args.home), learner="cli-rollout"), resolve(args.home)


def cmd_rollout(args) -> int:
    from labs import rollout
    lab, home = _lab(args)
    before = len((rollout.current(home) or {}).get("steps", [])) if args.action == "finish" else 0
    try:
        if args.action == "start":
            if not args.bundle:
                raise UsageError("rollout start needs a BUNDLE file")
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
            console.print(f"rollout {r['name']} {r['version']} ({r['digest'][:12]}), mode {r['mode']}, "
                          f"state {r['state']}, canary {', '.join(r['canary'])}")
            for step in r["steps"]:
                mark = "[green]ok[/]" if step["ok"] else f"[red]refused[/] {step.get('reason', '')}"
                console.print(f"  {step['device']}: {step['action']} {mark}")
        else:
            console.print("no rollout yet")
        t = Table("device", "model", "bundle", "health check", "shadow")
        for d, v in st["devices"].items():
            h = v["health"]
            t.add_row(d, str(v["model"]), (v["bundle"] or "-")[:12],
                      f"{h['seen']}/{h['needed']}" if h else "-", (v["shadow"] or {}).get("digest", "-")[:12])
        console.print(t)
    # exit 1 when a step this command took was refused (status: any step of the rollout)
    steps = (st["rollout"] or {}).get("steps", [])
    failed = [s for s in steps[before if args.action == "finish" else 0:] if not s["ok"]]
    return EXIT_FAIL if failed else EXIT_OK


def cmd_revoke(args) -> int:
    lab, home = _lab(args)
    try:
        try:
            revoked = lab.revoke(args.digest, reason=args.reason or "")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    finally:
        lab.close()
    console.print(f"revoked {args.digest[:12]} on every device of namespace {lab.namespace} "
                  f"({len(revoked)} revoked in all)")
    return EXIT_OK


def register(sub) -> None:
    s = sub.add_parser("rollout", help="canary a bundle on some devices (optionally in shadow mode), "
                                       "then roll forward or back",
                       description="start: send BUNDLE to the --canary devices (installed, or beside the "
                                   "active model with --shadow); status: where each device stands; "
                                   "finish --forward: install everywhere; finish --back: canaries return "
                                   "to what they ran before.")
    s.add_argument("action", choices=["start", "status", "finish"])
    s.add_argument("bundle", nargs="?", help="signed bundle (*.lbundle), for start")
    s.add_argument("--canary", help="comma-separated devices, e.g. dev-1,dev-2")
    s.add_argument("--shadow", action="store_true", help="decide alongside the active bundle, not acted on")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--forward", action="store_true", help="finish: install on every device")
    g.add_argument("--back", action="store_true", help="finish: return the canaries")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_rollout)


def register_revoke(bundle_sub) -> None:
    s = bundle_sub.add_parser("revoke", help="revoke a bundle by digest on every device at once")
    s.add_argument("digest", help="the bundle's digest (livelab bundle inspect)")
    s.add_argument("--reason", help="why, for the record")
    s.set_defaults(fn=cmd_revoke)
