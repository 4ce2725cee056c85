"""``livelab learners add|list|remove``: a team on one lab (library: ``labs.learners``)."""

from __future__ import annotations

import json

from rich.table import Table

from livelab.common import EXIT_OK, UsageError, console
from livelab.common import home_of as _home


def cmd_add(args) -> int:
    from labs import learners
    from livelab import hub

    home = _home(args)
    account = not args.no_account
    try:
        e = learners.add(
            home, args.name, args.team, account=account, learners_root=args.learners_dir, devices=args.devices
        )
    except learners.LearnerError as exc:
        raise UsageError(str(exc)) from None
    locked = hub.protect_content() if e["unix_user"] else []
    if args.json:
        print(json.dumps({**e, "protected": locked}, indent=2, sort_keys=True))
        return EXIT_OK
    who = f"Unix account {e['unix_user']}" if e["unix_user"] else "no Unix account (nothing hidden from it)"
    console.print(
        f"learner {e['name']} added: namespace {e['namespace']}, devices {', '.join(e['devices'])}, "
        f"{who}, team {e['team'] or '-'}"
    )
    console.print(f"descriptor: {e['descriptor']}  (kernels of that account find it as ~/.livelab/lab.json)")
    return EXIT_OK


def cmd_list(args) -> int:
    from labs import learners

    rows = learners.list_learners(_home(args))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return EXIT_OK
    if not rows:
        console.print("no learners yet: add one with 'livelab learners add NAME'")
        return EXIT_OK
    t = Table("learner", "team", "namespace", "Unix account", "home", "active")
    for e in rows:
        t.add_row(
            e["name"],
            e["team"] or "-",
            e["namespace"],
            e["unix_user"] or "-",
            e["home_dir"],
            "yes" if e["active"] else "no (lab restarted: add again)",
        )
    console.print(t)
    return EXIT_OK


def cmd_remove(args) -> int:
    from labs import learners

    try:
        e = learners.remove(_home(args), args.name)
    except learners.LearnerError as exc:
        raise UsageError(str(exc)) from None
    console.print(f"learner {e['name']} removed: its devices stopped and its broker identity is gone")
    if e.get("unix_user"):
        console.print(
            f"Unix account {e['unix_user']} and {e['home_dir']} kept (the learner's work): "
            f"'userdel -r {e['unix_user']}' removes them"
        )
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "learners",
        help="a team on one lab: add, list, remove learners",
        description="Each learner gets a namespace of the running lab (own devices and "
        "broker identity, named after the learner), a Unix account when run "
        "as root, and a private home holding only its own lab.json.",
    )
    ls = p.add_subparsers(dest="learners_command", metavar="ACTION")
    ls.required = True
    s = ls.add_parser("add", help="register and provision a learner on the running lab")
    s.add_argument("name", help="the learner's name (login, Unix account, broker user, namespace)")
    s.add_argument("--team", help="the learner's team (for per-team reports)")
    s.add_argument("--devices", type=int, default=3, help="devices in the learner's namespace (default 3)")
    s.add_argument("--learners-dir", help="where learners' homes go (default: /home for accounts)")
    s.add_argument(
        "--no-account",
        action="store_true",
        help="no Unix account (a trusted single-user machine or a benchmark): nothing is hidden",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_add)
    s = ls.add_parser("list", help="registered learners")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_list)
    s = ls.add_parser("remove", help="stop a learner's devices and remove its identity (its work stays)")
    s.add_argument("name")
    s.set_defaults(fn=cmd_remove)
