"""What every ``livelab`` subcommand shares: exit codes, the usage error, the consoles and
``--home`` resolution.  Every ``cli_*`` module imports this; ``cli`` imports them all and
registers their subcommands, so imports flow one way (no module imports ``cli``).

Exit codes (stable, for scripts and CI): 0 ok, 1 the thing checked failed (a check, a
verify, a lab that would not start), 2 bad usage or bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

if TYPE_CHECKING:
    from rich.console import Console

    console: Console
    err: Console


def __getattr__(name: str):
    """``console`` and ``err`` (rich consoles on stdout and stderr), made on first use:
    importing rich is about 0.05 s of CPU, a fifth of a command such as ``livelab grade``
    through the warm service, which prints JSON or one line."""
    if name in ("console", "err"):
        g = globals()
        if name not in g:
            from rich.console import Console

            g["console"] = Console(highlight=False)
            g["err"] = Console(stderr=True, highlight=False)
        return g[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def home_of(args) -> Path:
    """The state directory a command works on: ``--home``, else ``$LIVELAB_HOME``, else ~/.livelab."""
    from lab_hardware.home import resolve

    return resolve(getattr(args, "home", None))


# ---- bad input, refused before any work starts --------------------------------------------
import argparse as _argparse  # noqa: E402
import math as _math  # noqa: E402
import os as _os  # noqa: E402
import re as _re  # noqa: E402


class Parser(_argparse.ArgumentParser):
    """argparse with livelab's usage errors: one line on stderr, exit 2 (argparse's default
    prints the whole usage block first, which buries the one thing that is wrong)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, rest = super().parse_known_args(args, namespace)
        # Python 3.11's argparse turns a lone '--' value ('--port=--') into [] without calling
        # the option's type: refuse it here like any other bad value
        for action in self._actions:
            if (
                action.nargs is None
                and action.option_strings
                and action.type is not None
                and isinstance(getattr(ns, action.dest, None), list)
            ):
                self.error(f"argument {'/'.join(action.option_strings)}: expected one value")
        return ns, rest

    def error(self, message: str):  # type: ignore[override]
        text = " ".join(str(message).split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {text} (see '{self.prog} --help')\n")


def _number(kind, text: str, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise _argparse.ArgumentTypeError(
            f"{text[:40]!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None
    if isinstance(value, float) and not _math.isfinite(value):
        raise _argparse.ArgumentTypeError(f"{text[:40]!r} is not a finite number")
    return value


def int_range(lo: int | None = None, hi: int | None = None, *, what: str = "value"):
    """An argparse ``type`` for an integer within [lo, hi] (one-line error otherwise)."""

    def parse(text: str) -> int:
        v = _number(int, text, what)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _argparse.ArgumentTypeError(f"must be {_bounds(lo, hi)}, not {v}")
        return v

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, what: str = "value"):
    """An argparse ``type`` for a finite number in [lo, hi] (or (lo, hi] with ``lo_open``)."""

    def parse(text: str) -> float:
        v = _number(float, text, what)
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            raise _argparse.ArgumentTypeError(f"must be {_bounds(lo, hi, lo_open)}, not {text[:40]}")
        return v

    parse.__name__ = "number"
    return parse


def _bounds(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"more than {lo:g} and at most {hi:g}" if lo_open else f"between {lo:g} and {hi:g}"
    if lo is not None:
        return f"more than {lo:g}" if lo_open else f"at least {lo:g}"
    return f"at most {hi:g}"


HEX64 = _re.compile(r"^[0-9a-f]{64}$")
KEYID = _re.compile(r"^[0-9a-f]{16}$")


def digest_arg(text: str) -> str:
    """A bundle digest: 64 lower-case hex characters."""
    if not HEX64.match(text or ""):
        raise _argparse.ArgumentTypeError(
            f"{text[:80]!r} is not a bundle digest (64 lower-case hex characters, see 'livelab bundle inspect')"
        )
    return text


def keyid_arg(text: str) -> str:
    if not KEYID.match(text or ""):
        raise _argparse.ArgumentTypeError(
            f"{text[:80]!r} is not a key id (16 lower-case hex characters, see 'livelab keys list')"
        )
    return text


def check_home(path: Path) -> Path:
    """The state directory must be a directory (or not exist yet, under a directory)."""
    try:
        path.exists()
    except PermissionError:  # a team lab's state directory is the lab's alone (0700)
        raise UsageError(
            f"state directory {path} is not accessible to you (permission denied): it belongs "
            "to the lab's owner (use sudo), or choose another with --home or LIVELAB_HOME"
        ) from None
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"state directory {path} is not writable: it is not a directory; choose another with --home or LIVELAB_HOME"
        )
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(
            f"state directory {path} is not writable: {parent} is not a directory; "
            "choose another with --home or LIVELAB_HOME"
        )
    return path


def check_output(path: str | Path, what: str = "output") -> Path:
    """An output file we are about to write: not a directory, in an existing writable
    directory.  Checked before any work so that a bad path costs nothing and leaves nothing."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{what} {p} is a directory: give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {p}: directory {parent} does not exist")
    if p.exists() and not _os.access(p, _os.W_OK):
        raise UsageError(f"cannot write {what} {p}: permission denied")
    import tempfile

    try:  # the real test (read-only mounts, ACLs, root): create and remove a probe file
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".livelab-probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {what} {p}: {exc.strerror or exc}") from None
    return p


def check_input(path: str | Path, what: str = "input") -> Path:
    """An input file that must exist, be a regular file and be readable."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"no {what} file at {p}" + (" (it is a directory)" if p.is_dir() else ""))
    if not _os.access(p, _os.R_OK):
        raise UsageError(f"cannot read {what} {p}: permission denied")
    return p


# ---- the metadata trail --------------------------------------------------------------------
def trail(args, kind: str, name: str, **kw):
    """Emit the lineage run event of an artifact a command just made (docs/lineage.md): never
    fails the command; a transport that failed prints one warning line on stderr."""
    from lab_hardware.modelops import lineage

    emitted = lineage.safe_emit(home_of(args), kind, name, **kw)
    lineage.warn_failures(emitted, lambda line: __getattr__("err").print(line, markup=False, soft_wrap=True))
    return emitted


def bundle_trail(args, kind: str, info: dict, **kw):
    """:func:`trail` for a bundle (``bundle.inspect`` output): its privacy declaration and identity."""
    from lab_hardware.modelops import lineage

    ident = info["identity"] or info["digest"]
    details = {k: info[k] for k in ("name", "version", "digest", "keyid", "size")}
    return trail(
        args,
        kind,
        info["digest"] if kind == "bundle.build" else ident,
        privacy=lineage.bundle_privacy(info),
        details={**details, **kw.pop("details", {})},
        **kw,
    )
