"""Command-line interface: parse, build a config, call one library function.

The library raises ``InvsslError`` for anything a user can fix; this module alone turns those
into a one-line message and exit status 2.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

from invssl import __version__
from invssl.errors import InvsslError

app = typer.Typer(
    name="invssl",
    help="Semi-supervised learning by deep-network inversion: sweeps, workers and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"invssl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Semi-supervised learning by deep-network inversion: sweeps, workers and reports."""


def main() -> None:
    try:
        app()
    except InvsslError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
