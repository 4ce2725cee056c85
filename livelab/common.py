"""What every ``livelab`` subcommand shares: exit codes, the usage error, the consoles and
``--home`` resolution.  Every ``cli_*`` module imports this; ``cli`` imports them all and
registers their subcommands, so imports flow one way (no module imports ``cli``).

Exit codes (stable, for scripts and CI): 0 ok, 1 the thing checked failed (a check, a
verify, a lab that would not start), 2 bad usage or bad input.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def home_of(args) -> Path:
    """The state directory a command works on: ``--home``, else ``$LIVELAB_HOME``, else ~/.livelab."""
    from lab_hardware.home import resolve
    return resolve(getattr(args, "home", None))
