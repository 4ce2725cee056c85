"""The ``livelab`` command line: a thin front door over the library functions.

Exit codes (stable, for scripts and CI): 0 ok, 1 the thing checked failed
(a check, a verify, a lab that would not start), 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from livelab import common
from livelab.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Parser, UsageError
from livelab.common import check_home, float_range, int_range
from livelab.common import home_of as _home

__all__ = ["main", "build_parser", "COMMANDS", "EXIT_OK", "EXIT_FAIL", "EXIT_USAGE", "UsageError"]

#: each command and the module that registers it ("" for this one's own): a command builds
#: and imports only its own part of the front door (tests/test_cli_input.py checks the map)
COMMANDS = {
    **dict.fromkeys(("up", "down", "status", "logs", "consent", "kernel", "demo"), ""),
    **dict.fromkeys(("keys", "bundle"), "cli_bundle"),
    "rollout": "cli_rollout",
    "replay": "cli_replay",
    "retrain": "cli_retrain",
    "federated": "cli_federated",
    "report": "cli_report",
    "grade": "cli_grade",
    "grader": "cli_grader",
    "course": "cli_course",
    "learners": "cli_learners",
    "hub": "cli_hub",
    "lab": "cli_lab",
    "lineage": "cli_lineage",
}


# ---- lab ---------------------------------------------------------------------------------
def cmd_up(args) -> int:
    from lab_hardware.runtime import lab
    from labs import recorder, scenarios

    home = _home(args)
    try:
        sc = scenarios.load(args.scenario)
    except scenarios.ScenarioError as exc:
        raise UsageError(str(exc)) from None
    opts = {}
    if args.window_seconds is not None:
        opts["window_seconds"] = args.window_seconds
    if args.rate is not None:
        opts["rate_hz"] = args.rate
    t0 = time.perf_counter()
    try:
        home.mkdir(parents=True, exist_ok=True)
        materialized = sc.materialize(home / "scenario")
    except OSError as exc:
        raise UsageError(
            f"state directory {home} is not writable ({exc.strerror}): choose another with --home or LIVELAB_HOME"
        ) from None
    with common.console.status(f"starting lab in {home} ..."):
        desc = lab.up(
            home,
            scenario=materialized,
            devices=args.devices,
            profile=args.profile,
            namespace=args.namespace,
            broker_url=args.broker_url,
            port=args.port,
            device_options=opts,
            timeout=args.timeout,
            services=[recorder.service()],
            oracle=args.oracle,
        )
    b = desc["broker"]
    verb = "reusing the lab already running" if desc.get("reused") else f"lab up in {time.perf_counter() - t0:.1f} s"
    common.console.print(
        f"{verb}: broker {b['host']}:{b['port']}{' (external)' if b['external'] else ''}, "
        f"namespace {desc['namespace']}, devices {', '.join(desc['devices'])}",
        markup=False,
    )
    common.console.print(f"descriptor: {home / 'lab.json'}  (status: livelab status; stop: livelab down)", markup=False)
    return EXIT_OK


def cmd_down(args) -> int:
    from lab_hardware.runtime import lab

    res = lab.down(_home(args))
    common.console.print(res["message"], markup=False)
    return EXIT_OK


def cmd_status(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    from lab_hardware.runtime import lab

    st = lab.status(_home(args))
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return EXIT_OK if st["running"] else EXIT_FAIL
    if not st["running"]:
        common.console.print(f"no lab running in {st['home']} (start one with 'livelab up')", markup=False)
        return EXIT_FAIL
    b = st["broker"]
    health = "[green]ok[/]" if b["alive"] and b["reachable"] else f"[red]down[/] {escape(str(b.get('error', '')))}"
    common.console.print(
        f"lab {st['home']}  scenario {st['scenario']}  profile {st['profile']}  namespace {st['namespace']}",
        markup=False,
    )
    common.console.print(f"broker {b['host']}:{b['port']} pid {b['pid']} {health} restarts {b['restarts']}")
    t = Table(
        "device", "health", "running", "consent", "last seq", "last window", "decisions", "health check", "restarts"
    )
    now = time.time()
    ok = b["reachable"]
    revoked: set[str] = set()
    for d in st["devices"]:
        healthy = d["alive"] and d["online"]
        ok &= healthy
        c = d["consent"]
        act = d.get("active") or {}
        running = f"{act.get('name', d['model'])}{' ' + act['version'] if act.get('version') else ''}"
        running += f" {(d['bundle'] or '-')[:12]}"
        consent = "/".join(s for s, k in (("telemetry", "telemetry"), ("replay", "replay-capture")) if c.get(k))
        last = f"{now - d['last_telemetry']:.1f} s ago" if d["last_telemetry"] else "-"
        hc = d.get("health_check")
        check = f"{hc['seen']}/{hc['needed']} decisions" if hc else "-"
        if d.get("shadow"):
            check += f", shadow {d['shadow']['digest'][:12]}"
        revoked |= set(d.get("revoked") or [])
        t.add_row(
            escape(d["name"]),
            "[green]online[/]" if healthy else "[red]offline[/]",
            escape(running),
            consent or "none",
            str(d["telemetry_seq"]),
            last,
            str(d["decisions"]),
            check,
            str(d["restarts"]),
        )
    common.console.print(t)
    for d in st["devices"]:  # micro-SLOs of the active bundle (docs/slo.md)
        for o in (d.get("slo") or {}).get("objectives") or []:
            burn = o["burn"]
            firing = [sev for sev in ("page", "ticket") if burn[sev]["firing"]]
            common.console.print(
                f"{d['name']} SLO {o['name']} ({o['indicator']}, {o['policy']}): budget "
                f"{o['budget_remaining'] * 100:.1f}% left over {o['windows']} windows, burn "
                f"{burn['page']['long']:g}x/{burn['page']['short']:g}x (page > {burn['page']['threshold']:g}), "
                f"{burn['ticket']['long']:g}x/{burn['ticket']['short']:g}x (ticket > {burn['ticket']['threshold']:g})"
                + (f", FIRING: {'/'.join(firing)}" if firing else ""),
                markup=False,
                soft_wrap=True,
            )
    o = st.get("oracle") or {}
    if o.get("enabled"):
        common.console.print(
            f"oracle pid {o.get('pid')} {'[green]ok[/]' if o.get('alive') else '[red]down[/]'} "
            f"restarts {o.get('restarts', 0)}  queue {o.get('queue_depth', '-')}/{o.get('queue_limit', '-')}  "
            f"served {o.get('served', '-')}  shed {o.get('shed', '-')}  refused {o.get('refused', '-')}"
        )
    if revoked:
        common.console.print(f"revoked bundles: {', '.join(sorted(r[:12] for r in revoked))}", markup=False)
    return EXIT_OK if ok else EXIT_FAIL


def cmd_logs(args) -> int:
    from lab_hardware.runtime import lab

    print(lab.logs(_home(args), source=args.source, lines=args.lines))
    return EXIT_OK


def cmd_consent(args) -> int:
    from labs import Lab

    with Lab.connect(home=_home(args), learner="cli") as lab:
        targets = lab.devices if args.device == "all" else [args.device]
        for dev in targets:
            fn = lab.grant_consent if args.action == "grant" else lab.revoke_consent
            try:
                rec = fn(dev, args.scope)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            common.console.print(
                f"{dev}: {args.scope} consent {'granted' if args.action == 'grant' else 'revoked'}"
                f" (audit record {rec['index']}, {rec['hash'][:12]})",
                markup=False,
            )
    return EXIT_OK


def cmd_kernel(args) -> int:
    import importlib

    kinstall = importlib.import_module("kernels.install")
    argv = [args.action]
    if args.action == "install" and args.home:
        argv += ["--home", args.home]
    return kinstall.main(argv)


def cmd_demo(args) -> int:
    from livelab.demo import run_demo

    return run_demo(_home(args) if args.home else None, console=common.console)


# ---- parser ------------------------------------------------------------------------------
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``command`` (one of :data:`COMMANDS`), only that
    command's part of it (about 0.1 s less of a command's start: building every command's
    parser and importing every ``livelab.cli_*`` module)."""
    own = COMMANDS.get(command) if command is not None else None
    p = Parser(
        prog="livelab",
        description="Learn and ship edge ML against a real one-node live edge lab "
        "(Mosquitto + simulated devices running ONNX models).",
        epilog="State lives in $LIVELAB_HOME (default ~/.livelab) or --home DIR. "
        "Exit codes: 0 ok, 1 the thing checked failed, 2 bad usage or bad input.",
    )
    p.add_argument("--home", help="lab state directory (default: $LIVELAB_HOME or ~/.livelab)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if own:  # a command of another module: that module's part alone
        import importlib

        importlib.import_module(f"livelab.{own}").register(sub)
        return p

    s = sub.add_parser(
        "up",
        help="start a lab: broker + devices (reuses a running one of the same shape)",
        description="Start a lab: a supervised Mosquitto on a free loopback port with "
        "per-identity passwords and ACLs, and N simulated devices. Writes the "
        "learner descriptor lab.json into the state directory.",
    )
    s.add_argument(
        "--devices", type=int_range(1, 64, what="--devices"), default=3, help="number of devices, 1-64 (default 3)"
    )
    s.add_argument("--profile", default="none", help="hardware profile: none, rpi4 (lab_hardware/profiles)")
    s.add_argument("--scenario", default="voice-intents", help="lab scenario (default voice-intents)")
    s.add_argument("--namespace", default="default", help="namespace of the devices and learner (default 'default')")
    s.add_argument("--broker-url", help="use an external MQTT broker, e.g. mqtt://user:pass@host:1883")
    s.add_argument("--port", type=int_range(1, 65535, what="--port"), help="broker port (default: a free port)")
    s.add_argument(
        "--window-seconds",
        type=float_range(0, 86400, lo_open=True, what="--window-seconds"),
        help="aggregation window length in seconds (default: the scenario's)",
    )
    s.add_argument(
        "--rate",
        type=float_range(0, 1_000_000, what="--rate"),
        help="utterances per second per device; 0 = as fast as possible",
    )
    s.add_argument(
        "--timeout",
        type=float_range(0, 86400, lo_open=True, what="--timeout"),
        default=30.0,
        help="seconds to wait for the lab to be ready",
    )
    s.add_argument(
        "--oracle",
        action="store_true",
        help="also run the lab oracle, the central model bundles with 'routing' ask (docs/oracle.md)",
    )
    s.set_defaults(fn=cmd_up)

    s = sub.add_parser("down", help="stop the lab and every process it started")
    s.set_defaults(fn=cmd_down)

    s = sub.add_parser(
        "status",
        help="health of the broker and each device",
        description="Broker and device health, installed model/bundle, consent and last "
        "telemetry. Exit 1 if the lab is not running or something is unhealthy.",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("logs", help="show the tail of the lab's logs")
    s.add_argument("source", nargs="?", help="supervisor, broker, devices or one device's log name")
    s.add_argument(
        "-n",
        "--lines",
        type=int_range(1, 100_000, what="--lines"),
        default=40,
        help="lines per log, 1-100000 (default 40)",
    )
    s.set_defaults(fn=cmd_logs)

    s = sub.add_parser(
        "consent",
        help="grant or revoke a device's consent for a scope",
        description="Consent is per device and scope, default deny; every change lands "
        "in the device's audit chain (the consent trail).",
    )
    s.add_argument("action", choices=["grant", "revoke"])
    s.add_argument("device", help="device name (e.g. dev-0) or 'all'")
    s.add_argument("--scope", default="telemetry", choices=["telemetry", "replay-capture"])
    s.set_defaults(fn=cmd_consent)

    s = sub.add_parser(
        "kernel",
        help="install or show the 'livelab' Jupyter kernelspec",
        description="The livelab kernelspec runs notebooks in this environment and points "
        "them at the lab in the state directory (LIVELAB_DEFAULT_HOME).",
    )
    s.add_argument("action", choices=["install", "show"])
    s.set_defaults(fn=cmd_kernel)

    s = sub.add_parser("demo", help="run the main job end to end (what 'make demo' runs)")
    s.set_defaults(fn=cmd_demo)
    if own == "":  # one of this module's own commands
        return p
    import importlib

    for module in dict.fromkeys(m for m in COMMANDS.values() if m):
        importlib.import_module(f"livelab.{module}").register(sub)
    return p


def _command_in(argv: list[str]) -> str | None:
    """The command ``argv`` runs, when it names one before any other option (else None: the
    whole parser, for ``--help`` and for the error that lists every command)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--home":
            i += 2
            continue
        if a.startswith("--home="):
            i += 1
            continue
        return a if a in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr (exit 2 for bad usage or input,
    1 for a failed check or an internal error), never a traceback (``LIVELAB_DEBUG=1``
    re-raises unexpected errors for developers)."""
    import os

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    try:
        from lab_hardware.home import resolve

        check_home(resolve(args.home))
    except UsageError as exc:
        common.err.print(f"livelab: error: {exc}", soft_wrap=True, markup=False)
        return EXIT_USAGE
    import signal

    def _terminate(signum, frame):  # SIGTERM cleans up like Ctrl-C (labs started by demo go down)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)

    def one_line(exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or exc.__class__.__name__
        return text if len(text) <= 2000 else text[:2000] + "..."

    try:
        return args.fn(args)
    except KeyboardInterrupt:
        common.err.print("livelab: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - every error ends in one line and a stable exit code
        if isinstance(exc, (UsageError, *_loaded(_USAGE_ERRORS))):
            # messages are text, never markup: data inside them ('[/]', names) prints as is
            common.err.print(f"livelab: error: {one_line(exc)}", soft_wrap=True, markup=False)
            return EXIT_USAGE
        if isinstance(exc, (TimeoutError, *_loaded(_REFUSALS))):
            common.err.print(f"livelab: {one_line(exc)}", soft_wrap=True, markup=False)
            return EXIT_FAIL
        if isinstance(exc, OSError):  # a path the user gave that turned out unusable mid-way
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            common.err.print(f"livelab: error: {exc.strerror or one_line(exc)}{where}", soft_wrap=True, markup=False)
            return EXIT_USAGE
        if os.environ.get("LIVELAB_DEBUG"):  # a bug: say so in one line, no traceback
            raise
        common.err.print(
            f"livelab: internal error ({exc.__class__.__name__}): {one_line(exc)} "
            "(set LIVELAB_DEBUG=1 for a traceback)",
            soft_wrap=True,
            markup=False,
        )
        return EXIT_FAIL


#: (module, class) of the errors that are the user's to fix (exit 2) ...
_USAGE_ERRORS = (
    ("lab_hardware.runtime.lab", "LabError"),
    ("lab_hardware.runtime.broker", "BrokerError"),
    ("lab_hardware.profiles", "ProfileError"),
    ("lab_hardware.topics", "TopicError"),
    ("labs.sdk", "LabConnectionError"),
)
#: ... and of a refusal by the lab (exit 1), with TimeoutError
_REFUSALS = (("labs.sdk", "CommandRefused"),)


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    """The classes named, from the modules of them already loaded: an error can only be an
    instance of a class whose module was imported, so the front door never imports the lab, the
    SDK and numpy (about 0.3 s of CPU) just to name them."""
    out = []
    for module, name in names:
        m = sys.modules.get(module)
        cls = getattr(m, name, None) if m is not None else None
        if isinstance(cls, type):
            out.append(cls)
    return tuple(out)


if __name__ == "__main__":
    sys.exit(main())
