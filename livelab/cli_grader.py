"""``livelab grader serve | status | stop``: the warm grading service (see grading.service)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from livelab import common
from livelab.common import EXIT_FAIL, EXIT_OK, UsageError
from livelab.common import home_of as _home

SERVICE_NAME = "grader"


def register(sub) -> None:
    g = sub.add_parser(
        "grader",
        help="the warm grading service behind lab.check(), lab.submit() and livelab grade",
        description="A grading service kept warm beside the lab: Dask workers with their "
        "imports done and kernels started ahead, the course's references built "
        "once, and an observer on every learner namespace. Learners reach it "
        "from their notebooks (lab.check(), lab.submit()); 'livelab grade' uses "
        "it when it runs.",
    )
    gs = g.add_subparsers(dest="grader_cmd", required=True)
    s = gs.add_parser("serve", help="start the service (supervised with the lab, or in the foreground)")
    s.add_argument(
        "--course",
        action="append",
        help="a course whose modules it grades (repeat for several; default edge-ml-foundations)",
    )
    s.add_argument("--workers", type=int, default=2, help="local Dask worker processes (default 2)")
    s.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="use an existing Dask cluster (runs in the foreground)"
    )
    s.add_argument(
        "--exchange",
        metavar="DIR",
        help="nbgrader's exchange root (its Exchange.root, e.g. /srv/nbgrader/exchange): publish the "
        "course's current release there and grade every 'nbgrader submit' at once; learners get "
        "their feedback with 'nbgrader fetch_feedback'",
    )
    s.add_argument(
        "--foreground",
        action="store_true",
        help="run in this terminal instead of under the lab's supervisor (Ctrl-C stops it)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds to wait for it to be ready (its first start builds every module's reference)",
    )
    s.set_defaults(fn=cmd_serve)
    s = gs.add_parser("status", help="is the service running, and how fast it answers")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)
    s = gs.add_parser("stop", help="stop the supervised service")
    s.set_defaults(fn=cmd_stop)


def cmd_serve(args) -> int:
    from grading import service
    from lab_hardware.runtime import lab

    home = _home(args)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.scheduler and not args.scheduler.startswith(("tcp://", "tls://")):
        raise UsageError(f"--scheduler must look like tcp://HOST:PORT, not {args.scheduler!r}")
    exchange = None
    if args.exchange:
        exchange = Path(args.exchange).expanduser().resolve()
        if exchange.exists() and not exchange.is_dir():
            raise UsageError(f"--exchange {args.exchange} is a file, not a directory")
    if not lab.is_running(home):
        raise UsageError(
            f"no lab running in {home}: the service grades against a live lab; start one with "
            "'livelab up' (or pass --home)"
        )
    if service.running(home):
        common.console.print(f"the grading service already runs in {home} (pid {service.running(home)['pid']})")
        return EXIT_OK
    if args.foreground or args.scheduler:
        svc = service.GraderService(
            home,
            course=args.course or service.DEFAULT_COURSE,
            scheduler=args.scheduler,
            workers=args.workers,
            exchange=exchange,
        )
        from lab_hardware import signals

        signals.route({signal.SIGTERM: svc.stopping.set, signal.SIGINT: svc.stopping.set})
        try:
            svc.start()
            common.console.print(f"grading service ready (pid {os.getpid()}); Ctrl-C stops it")
            svc.stopping.wait()
        finally:
            svc.stop()
        return EXIT_OK
    argv = ["{python}", "-P", "-m", "grading.service", "--home", "{home}", "--workers", str(args.workers)]
    for c in args.course or [service.DEFAULT_COURSE]:  # a course directory: absolute (the service's cwd is the lab)
        argv += ["--course", str(Path(c).expanduser().resolve()) if Path(c).expanduser().is_dir() else c]
    if exchange is not None:
        argv += ["--exchange", str(exchange)]
    t0 = time.monotonic()
    lab.set_service(home, SERVICE_NAME, {"argv": argv, "ready_file": "run/" + service.RUNFILE})
    with common.console.status("starting the grading service (workers, references, observer) ..."):
        while not service.running(home):
            if time.monotonic() - t0 > args.timeout:
                common.console.print(
                    f"the grading service did not become ready within {args.timeout:.0f} s: "
                    f"see {home / 'logs' / 'service-grader.log'}"
                )
                return EXIT_FAIL
            time.sleep(0.1)
    info = service.running(home)
    common.console.print(
        f"grading service ready in {time.monotonic() - t0:.1f} s (pid {info['pid']}), supervised "
        "with the lab; 'livelab grader stop' stops it"
    )
    return EXIT_OK


def cmd_status(args) -> int:
    from grading import service

    home = _home(args)
    info = service.running(home)
    if info is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            common.console.print(f"no grading service running in {home} (start one with 'livelab grader serve')")
        return EXIT_FAIL
    st = service.call(home, {"op": "status"}, timeout=10)
    out = {"running": True, **info, **{k: v for k, v in st.items() if k != "ok"}}
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True, default=str))
    else:
        common.console.print(
            f"grading service pid {info['pid']}, course {info.get('course')}, watching "
            f"{len(st.get('namespaces', []))} namespace(s)"
        )
        for ex in st.get("exchange") or []:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(ex["submissions"].items())) or "no submission yet"
            common.console.print(f"  nbgrader exchange {ex['root']} ({ex['course']}): {counts}")
        for op, s in sorted((st.get("stats") or {}).items()):
            if s.get("median") is not None:
                common.console.print(f"  {op}: {s['n']} request(s), median {s['median']:.3f} s")
    return EXIT_OK


def cmd_stop(args) -> int:
    from grading import service
    from lab_hardware.runtime import lab

    home = _home(args)
    if lab.is_running(home):
        lab.set_service(home, SERVICE_NAME, None)
    elif service.running(home):
        service.call(home, {"op": "stop"}, timeout=10)
    deadline = time.monotonic() + 30
    while service.running(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    if service.running(home):
        common.console.print("the grading service is still running")
        return EXIT_FAIL
    common.console.print("grading service stopped")
    return EXIT_OK


def use_service(home, config: dict, *, progress: bool) -> dict | None:
    """``livelab grade`` through the running service: its summary, or None when none runs."""
    from grading import service

    if service.running(home) is None:
        return None
    cfg = dict(config)
    cfg["progress_lines"] = progress
    reply = service.call(
        home,
        {"op": "grade", "config": cfg},
        progress=(lambda line: print(line, file=sys.stderr, flush=True)) if progress else None,
    )
    if not reply.get("ok"):
        if reply.get("usage"):
            raise UsageError(reply.get("error"))
        raise RuntimeError(reply.get("error") or "the grading service failed")
    return reply["summary"]
