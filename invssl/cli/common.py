"""The application, its consoles and the options several commands share."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from invssl import __version__, output
from invssl.errors import InvsslError

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="invssl",
    help="Semi-supervised learning by deep-network inversion: sweeps, workers and reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=HELP,
)
console = output.console()
err_console = output.console(stderr=True)


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


# ---------------------------------------------------------------- shared options
DB_HELP = (
    "Results database URL (default: $INVSSL_DB, else sqlite:///invssl.db). SQLite is for "
    "one machine; several machines need PostgreSQL: postgresql+psycopg://user@host/db."
)
DbOpt = typer.Option(None, "--db", help=DB_HELP, show_default=False)
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: auto).")
DataRootOpt = typer.Option(None, "--data-root", help="Override the data root of every job.")


# ---------------------------------------------------------------- printing
def say(text: str) -> None:
    console.print(text, highlight=False)


def warn(text: str) -> None:
    err_console.print(f"[yellow]{text}[/]", highlight=False, soft_wrap=True)


FormatOpt = typer.Option("terminal", "--format", help="terminal, or json for programs.")
FigureOpt = typer.Option(None, "--output", "-o", help="Figure file: PNG, PDF or SVG by its suffix.")


def fields(text: str) -> list[str]:
    """A comma-separated list of fields."""
    return [f.strip() for f in text.split(",") if f.strip()]


def write_text(text: str, output: Optional[Path]) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvsslError(f"cannot write {output}: {exc.strerror or exc}") from None
    console.print(f"wrote {output}", highlight=False)
