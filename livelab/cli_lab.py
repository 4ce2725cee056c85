"""``livelab lab reset``: return a namespace of the running lab to its scenario's state.

A thin command over :func:`labs.reset.reset` (consent denied everywhere, every device back on
its scenario model, no shadow or open capture, revocations cleared), for after a course or an
experiment.  Exit codes: 0 done, 1 a device refused or did not answer, 2 no lab / bad input.
"""

from __future__ import annotations

import json

from livelab.common import EXIT_FAIL, EXIT_OK, UsageError, console, err
from livelab.common import home_of as _home


def cmd_reset(args) -> int:
    from labs import reset

    try:
        res = reset.reset(_home(args), args.namespace)
    except reset.ResetError as exc:
        msg = str(exc)
        if msg.startswith("no lab is running") or "has no namespace" in msg:
            raise UsageError(msg) from None
        err.print(f"livelab: {msg}", markup=False, soft_wrap=True)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(res, indent=2))
        return EXIT_OK
    for dev, acts in res["devices"].items():
        console.print(f"{dev}: {', '.join(acts) if acts else 'already in its scenario state'}", markup=False)
    console.print(f"namespace {res['namespace']} is back to its scenario's state (revocations cleared)", markup=False)
    return EXIT_OK


def register(sub) -> None:
    """Add ``livelab lab ...`` to the top-level subparsers."""
    p = sub.add_parser(
        "lab", help="the running lab's namespaces: reset", description="Operate on a namespace of the running lab."
    )
    ls = p.add_subparsers(dest="lab_command", metavar="ACTION")
    ls.required = True
    s = ls.add_parser(
        "reset",
        help="return a namespace to its scenario's state",
        description="Revokes every consent, stops shadows and open captures, puts every device "
        "back on the model its scenario gave it and clears the namespace's revocations, "
        "each through the device's own commands (so each change is in its audit chain).",
    )
    s.add_argument("--namespace", help="the namespace (default: the one in the lab's lab.json)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_reset)
