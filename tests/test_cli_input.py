"""Bad CLI input is refused before any work starts: one line on stderr, exit 2, no traceback,
no stray file.  Each case is one the adversarial pass of issue 13 found (seen failing first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def livelab(*args: str, home: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "livelab"] + (["--home", str(home)] if home is not None else []) + list(args)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **(env or {})}
    )


def one_line_usage(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert err and "\n" not in err, f"usage error is not one line: {p.stderr!r}"
    for n in needles:
        assert n in err, (n, err)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["up", "--port", "70000"], "--port"),
        (["up", "--port", "0"], "--port"),
        (["up", "--rate", "-5"], "--rate"),
        (["up", "--window-seconds", "-1"], "--window-seconds"),
        (["up", "--window-seconds", "0"], "--window-seconds"),
        (["up", "--window-seconds", "inf"], "finite"),
        (["up", "--window-seconds", "nan"], "finite"),
        (["up", "--devices", "0"], "--devices"),
        (["up", "--timeout", "-3"], "--timeout"),
        (["logs", "-n", "-5"], "--lines"),
        (["logs", "-n", "lots"], "not an integer"),
        (["replay", "run", "x.lreplay", "--bundle", "m.onnx", "--threads", "0"], "--threads"),
        (
            [
                "bundle",
                "build",
                "m.onnx",
                "-o",
                "b.lbundle",
                "--name",
                "n",
                "--version",
                "1.0.0",
                "--max-error-rate",
                "2",
            ],
            "--max-error-rate",
        ),
        (
            [
                "bundle",
                "build",
                "m.onnx",
                "-o",
                "b.lbundle",
                "--name",
                "n",
                "--version",
                "1.0.0",
                "--health-decisions",
                "-1",
            ],
            "--health-decisions",
        ),
        (
            [
                "bundle",
                "build",
                "m.onnx",
                "-o",
                "b.lbundle",
                "--name",
                "n",
                "--version",
                "1.0.0",
                "--latency-budget-ms",
                "nan",
            ],
            "finite",
        ),
        (["bundle", "revoke", "not-hex-at-all"], "digest"),
        (["bundle", "revoke", "Z" * 64], "digest"),
        (["bundle", "revoke", "a" * 64, "--keyid", "xyz"], "key id"),
        (["bundle", "verify", "b.lbundle", "--revoked", "abc"], "DIGEST"),
        (["keys", "untrust", "not-a-keyid"], "key id"),
        (["report", "serve", "--port", "99999"], "--port"),
        (["grade", "c", "m", "p", "--workers", "0"], "--workers"),
        (["grader", "serve", "--workers", "0"], "--workers"),
        (["grader", "serve", "--exchange", __file__], "--exchange"),
        (["nosuch-command"], "invalid choice"),
        (["up", "--devices"], "expected one argument"),
        (["replay", "run"], "required"),
    ],
)
def test_nonsense_options_are_refused_in_one_line(tmp_path, capsys, args, needle):
    # in-process (the same main() as the console script; subprocess cases are below)
    from livelab.cli import main

    try:
        code = main(["--home", str(tmp_path / "home"), *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    one_line_usage(subprocess.CompletedProcess(args, code, out, err), needle)
    assert not (tmp_path / "home").exists()  # nothing was started or written


def test_revoke_by_digest_needs_a_signer_or_all_signers(tmp_path):
    one_line_usage(livelab("bundle", "revoke", "a" * 64, home=tmp_path), "--keyid", "--all-signers")


def test_home_pointing_at_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a directory")
    for args in (["status"], ["up"], ["logs"], ["down"], ["keys", "list"]):
        one_line_usage(livelab(*args, home=f), "not a directory")
        one_line_usage(livelab(*args, env={"LIVELAB_HOME": str(f)}), "not a directory")
    one_line_usage(livelab("status", home=f / "below"), "not a directory")
    assert f.read_text() == "not a directory"


def test_export_to_a_directory_or_unwritable_path_leaves_nothing(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    one_line_usage(livelab("report", "export", "-o", str(d), home=tmp_path / "home"), "is a directory")
    assert list(d.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    one_line_usage(
        livelab("report", "export", "-o", str(tmp_path / "nodir" / "r.html"), home=tmp_path / "home"), "does not exist"
    )
    ro = "/proc/livelab-report.html"  # a read-only place even for root
    one_line_usage(livelab("report", "export", "-o", ro, home=tmp_path / "home"), "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_outputs_checked_before_work(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    one_line_usage(
        livelab("bundle", "build", str(model), "-o", str(d), "--name", "n", "--version", "1.0.0"), "is a directory"
    )
    one_line_usage(livelab("replay", "build", "--device", "dev-0", "-o", str(d), home=tmp_path / "h"), "is a directory")
    one_line_usage(
        livelab("replay", "build", "--device", "Dev[/]", "-o", str(tmp_path / "r"), home=tmp_path / "h"),
        "invalid device name",
    )
    assert list(d.iterdir()) == []


def test_usage_errors_print_data_verbatim_not_as_markup(tmp_path):
    p = livelab("bundle", "inspect", str(tmp_path / "[bold]x[/]"))
    one_line_usage(p, "[bold]x[/]")


_STUB = """
import sys, livelab.cli_grade as g
from livelab import cli
HEAVY = ("lab_hardware.runtime.lab", "labs.sdk", "numpy", "onnxruntime", "sqlalchemy", "reports.render")
def stub(args):
    print(sorted(m for m in HEAVY if m in sys.modules))
    kind = sys.argv[1]
    if kind == "lab":
        from lab_hardware.runtime.lab import LabError
        raise LabError("the lab said no")
    if kind == "refused":
        from labs.sdk import CommandRefused
        raise CommandRefused("the device said no")
    if kind == "timeout":
        raise TimeoutError("no answer in 5 s")
    if kind == "topic":
        from lab_hardware.topics import TopicError
        raise TopicError("bad topic")
    return 0
g.cmd_grade = stub
sys.exit(cli.main(["grade", "c", "m", "p"]))
"""


@pytest.mark.parametrize(
    "kind, code, line",
    [
        ("none", 0, None),
        ("lab", 2, "livelab: error: the lab said no"),
        ("topic", 2, "livelab: error: bad topic"),
        ("refused", 1, "livelab: the device said no"),
        ("timeout", 1, "livelab: no answer in 5 s"),
    ],
)
def test_the_front_door_loads_nothing_heavy_and_still_maps_each_error_to_its_exit_code(tmp_path, kind, code, line):
    """``livelab grade`` through the warm service needs no lab, SDK, numpy or events store in the
    calling process: the front door used to import them all (about 0.3 s of CPU per command) only
    to name the errors it maps to exit codes."""
    p = subprocess.run(
        [sys.executable, "-c", _STUB, kind],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "LIVELAB_HOME": str(tmp_path / "home")},
    )
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert p.stdout.splitlines()[0] == "[]", p.stdout
    if line is None:
        assert p.stderr == ""
    else:
        assert p.stderr.strip() == line and "Traceback" not in p.stderr


def test_a_command_builds_and_imports_only_its_own_part_of_the_front_door():
    """``livelab grade`` (through the warm service) started by building the parsers of every
    command and importing every ``livelab.cli_*`` module (0.15 s of a 0.25 s command).  Now
    the front door builds only the part of the command it runs; every command is mapped to
    the module that registers it, and a command's help is what the full parser gives."""
    import argparse
    import contextlib
    import io

    from livelab import cli

    full = cli.build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(cli.COMMANDS)
    for command in sub.choices:
        part = cli.build_parser(command)
        part_sub = next(a for a in part._actions if isinstance(a, argparse._SubParsersAction))
        assert command in part_sub.choices and len(part_sub.choices) < len(sub.choices), command
        for parser in (full, part):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
                parser.parse_args([command, "--help"])
            if parser is full:
                want = out.getvalue()
        assert out.getvalue() == want, command
    probe = (
        "import sys, contextlib, io\n"
        "from livelab.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--home', sys.argv[1], 'grade', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('livelab.cli_')))\n"
    )
    p = subprocess.run([sys.executable, "-c", probe, "/nonexistent"], capture_output=True, text=True, cwd=ROOT)
    assert p.stdout.strip() == "['livelab.cli_grade']", (p.stdout, p.stderr[-500:])
