"""Install the ``livelab`` kernelspec for the interpreter running this module.

The template in ``kernels/livelab/kernel.json`` says ``python``; jupyter_client would resolve
that to *its own* interpreter, which is wrong whenever the launcher (a system JupyterLab, Voila,
a grader) lives in another environment.  So the installed copy names this interpreter
(``sys.executable``) explicitly.

The state directory goes into the spec as ``LIVELAB_DEFAULT_HOME``, not ``LIVELAB_HOME``: a
kernelspec's ``env`` overrides the launching process's environment, and tests and graders start
kernels with their own ``LIVELAB_HOME`` that must win (``lab_hardware.home.resolve`` reads
``LIVELAB_HOME`` first, then ``LIVELAB_DEFAULT_HOME``).

    python -m kernels install [--user | --sys-prefix | --prefix DIR] [--home DIR]
    python -m kernels show
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "livelab"
TEMPLATE_DIR = Path(__file__).resolve().parent / KERNEL_NAME
DEFAULT_HOME = "~/.livelab"
PREFIX_MODES = ("sys-prefix", "user", "prefix")


def default_home(home: str | os.PathLike | None = None) -> str:
    """``home``, else ``$LIVELAB_HOME``, as an absolute path; else ``~/.livelab`` unexpanded.

    The fallback stays unexpanded on purpose: ``lab_hardware.home.resolve`` expands it for
    whoever runs the kernel, so one installed spec serves every user of a shared environment.
    """
    chosen = home if home is not None else (os.environ.get("LIVELAB_HOME") or None)
    if chosen is None:
        return DEFAULT_HOME
    return str(Path(chosen).expanduser().resolve())


def render_spec(home: str | os.PathLike | None = None) -> dict:
    """The template with this interpreter as ``argv[0]`` and the chosen default home."""
    spec = json.loads((TEMPLATE_DIR / "kernel.json").read_text())
    spec["argv"][0] = sys.executable
    # jupyter_client substitutes ${VAR} in env values from the launch environment: keep a
    # literal "$" in a path literal.
    spec.setdefault("env", {})["LIVELAB_DEFAULT_HOME"] = default_home(home).replace("$", "$$")
    return spec


def install(
    prefix_mode: str = "sys-prefix", home: str | os.PathLike | None = None, prefix: str | os.PathLike | None = None
) -> Path:
    """Install the kernelspec and return the directory it was installed to.

    ``prefix_mode``: ``"sys-prefix"`` (this environment; what ``make setup`` uses), ``"user"``
    (``~/.local/share/jupyter``) or ``"prefix"`` (under ``prefix``, which is then required).
    An existing ``livelab`` spec at the destination is replaced.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if prefix_mode not in PREFIX_MODES:
        raise ValueError(f"prefix_mode must be one of {', '.join(PREFIX_MODES)}, not {prefix_mode!r}")
    if prefix_mode == "prefix" and prefix is None:
        raise ValueError("prefix_mode='prefix' needs prefix=DIR")
    spec = render_spec(home)
    with tempfile.TemporaryDirectory(prefix="livelab-kernelspec-") as tmp:
        src = Path(tmp) / KERNEL_NAME
        shutil.copytree(TEMPLATE_DIR, src, ignore=shutil.ignore_patterns("__pycache__"))
        _copy_logos(src)
        (src / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        dest = KernelSpecManager().install_kernel_spec(
            str(src),
            kernel_name=KERNEL_NAME,
            user=prefix_mode == "user",
            prefix={"sys-prefix": sys.prefix, "prefix": None if prefix is None else str(prefix), "user": None}[
                prefix_mode
            ],
        )
    return Path(dest)


def spec_dir() -> Path | None:
    """Directory of the ``livelab`` spec Jupyter would use here (user, env, system paths), or None."""
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().find_kernel_specs().get(KERNEL_NAME)
    return Path(found) if found else None


def _copy_logos(dest: Path) -> None:
    """ipykernel's logos, so JupyterLab's launcher shows an icon (cosmetic; skipped if absent)."""
    try:
        from ipykernel.kernelspec import RESOURCES
    except ImportError:
        return
    for name in ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg"):
        path = Path(RESOURCES) / name
        if path.is_file() and not (dest / name).exists():
            shutil.copy(path, dest / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels",
        description="Install or show the 'livelab' Jupyter kernelspec. The installed spec runs "
        "this interpreter (%s) and sets LIVELAB_DEFAULT_HOME, the state directory a "
        "kernel uses when its launcher does not set LIVELAB_HOME." % sys.executable,
    )
    sub = parser.add_subparsers(dest="command", metavar="{install,show}")
    p = sub.add_parser(
        "install",
        help="install (or replace) the livelab kernelspec",
        description="Install (or replace) the livelab kernelspec.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--sys-prefix",
        dest="mode",
        action="store_const",
        const="sys-prefix",
        help=f"into this environment, {sys.prefix} (default)",
    )
    where.add_argument(
        "--user", dest="mode", action="store_const", const="user", help="into the user's Jupyter data directory"
    )
    where.add_argument("--prefix", metavar="DIR", help="under DIR (DIR/share/jupyter/kernels/livelab)")
    p.add_argument(
        "--home",
        metavar="DIR",
        help="default state directory for kernels (default: $LIVELAB_HOME, else ~/.livelab expanded per user)",
    )
    sub.add_parser(
        "show",
        help="print the installed spec's path and kernel.json",
        description="Print the path and kernel.json of the livelab spec Jupyter would use.",
    )
    args = parser.parse_args(argv)

    if args.command == "install":
        mode = "prefix" if args.prefix else (args.mode or "sys-prefix")
        try:
            dest = install(mode, home=args.home, prefix=args.prefix)
        except OSError as exc:
            print(
                f"livelab: cannot install the kernelspec ({exc.strerror or exc}): "
                "choose a writable location with --user or --prefix DIR",
                file=sys.stderr,
            )
            return 2
        print(f"installed kernelspec {KERNEL_NAME!r} in {dest}")
        return 0
    if args.command == "show":
        found = spec_dir()
        if found is None:
            print(
                f"livelab: the {KERNEL_NAME!r} kernelspec is not installed: "
                "run 'python -m kernels install' (or 'make setup')",
                file=sys.stderr,
            )
            return 1
        print(found)
        print((found / "kernel.json").read_text().rstrip())
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
