"""``livelab hub up|down|status|config``: JupyterHub in front of the lab (library: ``livelab.hub``)."""

from __future__ import annotations

import json

from livelab.common import EXIT_FAIL, EXIT_OK, UsageError, console
from livelab.common import home_of as _home


def cmd_up(args) -> int:
    from livelab import hub

    try:
        with console.status("starting JupyterHub ..."):
            st = hub.up(
                _home(args),
                port=args.port,
                auth=args.auth,
                password=args.password,
                course=args.course or None,
                timeout=args.timeout,
            )
    except hub.HubError as exc:
        raise UsageError(str(exc)) from None
    verb = "hub already running" if st.get("reused") else "hub up"
    how = "their Unix account and password" if st["auth"] == "pam" else "any name and the shared password"
    console.print(
        f"{verb}: {st['url']}  (learners log in with {how}; status: livelab hub status; stop: livelab hub down)"
    )
    return EXIT_OK


def cmd_down(args) -> int:
    from livelab import hub

    console.print(hub.down(_home(args))["message"])
    return EXIT_OK


def cmd_status(args) -> int:
    from livelab import hub

    st = hub.status(_home(args))
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    elif st["running"]:
        console.print(
            f"hub running: {st['url']} pid {st['pid']} authenticator {st['auth']}; "
            f"learners: {', '.join(st['learners']) or 'none yet'}"
        )
    else:
        console.print(f"no hub running for the lab in {st['home']} (start one with 'livelab hub up')")
    return EXIT_OK if st["running"] else EXIT_FAIL


def cmd_config(args) -> int:
    from livelab import hub

    try:
        print(hub.config_text(_home(args), port=args.port, auth=args.auth, course=args.course or None))
    except hub.HubError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "hub",
        help="JupyterHub for a team: learners log in, each runs as their own account",
        description="A real JupyterHub in front of the running lab: PAM logins, one Unix "
        "account per learner (LocalProcessSpawner), a pre-spawn hook that "
        "provisions the learner and opens the course's current release.",
    )
    hs = p.add_subparsers(dest="hub_command", metavar="ACTION")
    hs.required = True

    def common(s, port_default=None):
        s.add_argument("--port", type=int, default=port_default, help="the hub's port on 127.0.0.1")
        s.add_argument(
            "--auth",
            choices=["pam", "dummy"],
            default="pam",
            help="pam (Unix passwords; default) or dummy (one shared --password: tests, demos)",
        )
        s.add_argument(
            "--course", default="edge-ml-foundations", help="course whose current release learners open ('' for none)"
        )

    s = hs.add_parser("up", help="start the hub (needs root, node and configurable-http-proxy)")
    common(s)
    s.add_argument("--password", help="the shared password of --auth dummy")
    s.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the hub to answer")
    s.set_defaults(fn=cmd_up)
    s = hs.add_parser("down", help="stop the hub and every learner's server")
    s.set_defaults(fn=cmd_down)
    s = hs.add_parser("status", help="whether the hub runs, its URL and learners")
    s.add_argument("--json", action="store_true", help="machine-readable output (with 'url')")
    s.set_defaults(fn=cmd_status)
    s = hs.add_parser("config", help="print the equivalent jupyterhub_config.py for an existing hub")
    common(s, 8000)
    s.set_defaults(fn=cmd_config)
