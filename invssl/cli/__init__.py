"""Command-line interface: parse, build a request, call one library function, print.

The library raises ``InvsslError`` for anything a user can fix; this package alone turns those
into a one-line message, with the option that fixes it, and exit status 2. ``common`` holds the
application and its shared options, ``run`` the commands that run jobs, ``reports`` those that
read results. The CLI never touches the database layer itself.
"""

from __future__ import annotations

import os
import sys

from invssl.cli.common import app, err_console
from invssl.errors import InvsslError, SchemaMismatch

# Each registers its commands on the app; help lists them in this order, running jobs first.
# isort: off
from invssl.cli import run, reports  # noqa: F401
# isort: on

__all__ = ["app", "entry", "main"]


def main() -> None:
    try:
        app()
    except InvsslError as exc:
        err_console.print(f"[bold red]error:[/] {exc}{_hint(exc)}", highlight=False, soft_wrap=True)
        sys.exit(2)


def entry() -> None:
    """The ``invssl`` command: ``main``, then exit without the interpreter's teardown of torch's
    modules, which adds most of a second to every command (BENCHMARKS.md, "Fast by default").
    Everything is written and every database closed by then."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# The library says what to change in its own terms; here it becomes the option that changes it.
OPTION_HINTS = {"dataset": "--dataset", "fields": "--rows/--cols, or --where FIELD=VALUE"}


def _hint(exc: InvsslError) -> str:
    if isinstance(exc, SchemaMismatch):
        return f"; run `invssl db upgrade --db {exc.where}`"
    return f" ({OPTION_HINTS[exc.option]})" if exc.option in OPTION_HINTS else ""
