"""Command-line interface: parse, build a config, call one library function.

The library raises ``InvsslError`` for anything a user can fix; this module alone turns those
into a one-line message and exit status 2.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from invssl import __version__, output
from invssl.defaults import HEARTBEAT_S, MAX_ATTEMPTS, STALE_AFTER_S
from invssl.errors import InvsslError, SchemaMismatch

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


def main() -> None:
    try:
        app()
    except InvsslError as exc:
        err_console.print(f"[bold red]error:[/] {exc}{_hint(exc)}", highlight=False, soft_wrap=True)
        sys.exit(2)


# The library says what to change in its own terms; here it becomes the option that changes it.
OPTION_HINTS = {"dataset": "--dataset", "fields": "--rows/--cols, or --where FIELD=VALUE"}


def _hint(exc: InvsslError) -> str:
    if isinstance(exc, SchemaMismatch):
        return f"; run `invssl db upgrade --db {exc.where}`"
    return f" ({OPTION_HINTS[exc.option]})" if exc.option in OPTION_HINTS else ""


# ---------------------------------------------------------------- shared options
DB_HELP = ("Results database URL (default: $INVSSL_DB, else sqlite:///invssl.db). SQLite is for "
           "one machine; several machines need PostgreSQL: postgresql+psycopg://user@host/db.")
DbOpt = typer.Option(None, "--db", help=DB_HELP, show_default=False)
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: auto).")
DataRootOpt = typer.Option(None, "--data-root", help="Override the data root of every job.")


# ---------------------------------------------------------------- sweep / worker / resume
def _say(text: str) -> None:
    console.print(text, highlight=False)


def _warn(text: str) -> None:
    err_console.print(f"[yellow]{text}[/]", highlight=False, soft_wrap=True)


@app.command()
def sweep(
    file: Path = typer.Argument(..., help="Experiment file (YAML): name, data, train, grid, overrides, extra."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY.PATH=VALUE]...", help="Overrides of the file, e.g. train.epochs=1 grid.seed=[0] (values read as YAML)."),
    db: Optional[str] = DbOpt,
    device: Optional[str] = DeviceOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the jobs and write nothing."),
    workers: int = typer.Option(0, "--workers", min=0, help="Worker processes (default: one per GPU, else 1)."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Comma-separated devices for the workers, e.g. cuda:0,cuda:1."),
    enqueue_only: bool = typer.Option(False, "--enqueue-only", help="Fill the queue for workers elsewhere and exit."),
    data_root: Optional[str] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help="With --dry-run: estimate from recorded epoch times only; time no training steps."),
) -> None:
    """Expand an experiment grid into jobs and run them; finished jobs are skipped.

    Exit status: 0 when every job is done (or SIGTERM stopped them, as a scheduler does), 1
    when some failed or a worker died with jobs left, 130 after Ctrl-C, 2 for bad input. Ctrl-C
    or SIGTERM: every worker checkpoints its job and hands it back.
    """
    from invssl import launch

    if dry_run:
        from invssl import estimate

        plan, est = launch.dry_run(file, db, overrides or [], device=device, devices=devices,
                                   data_root=data_root, calibrate=not no_calibrate)
        console.print(launch.plan_table(plan))
        console.print(estimate.render(est))
        for note in est.notes:
            console.print(f"note: {note}", highlight=False)
        return
    outcome = launch.sweep(file, db, overrides or [], console, _say, _warn, device=device,
                           devices=devices, workers=workers, data_root=data_root,
                           enqueue_only=enqueue_only, quiet=quiet)
    if outcome is not None:
        _finish(outcome)


def _finish(outcome: Any) -> None:
    counts = outcome.counts
    console.print(outcome.line(), highlight=False)
    for what in outcome.died:
        err_console.print(f"[red]worker died:[/] {what}", highlight=False)
    _exit_if_interrupted(outcome.stopped_by)
    if counts["failed"]:
        err_console.print("some jobs failed: `invssl status` shows why; "
                          "`invssl resume --retry-failed` runs them again")
        raise typer.Exit(1)
    if outcome.died and counts["pending"] + counts["running"]:
        err_console.print("jobs are left: `invssl resume` runs them")
        raise typer.Exit(1)


def _exit_if_interrupted(stopped_by: Optional[int]) -> None:
    """Ctrl-C exits 130 as shells expect; SIGTERM is an orderly stop (a scheduler's), exit 0."""
    if stopped_by == signal.SIGINT:
        err_console.print("interrupted: `invssl resume` continues from the last checkpoint")
        raise typer.Exit(130)


@app.command()
def worker(
    db: Optional[str] = DbOpt,
    device: Optional[str] = DeviceOpt,
    forever: bool = typer.Option(False, "--forever", help="Keep polling for new jobs instead of exiting when none is left."),
    data_root: Optional[str] = DataRootOpt,
    stale_after: float = typer.Option(STALE_AFTER_S, "--stale-after", min=1.0, help="Seconds without a heartbeat after which another worker's job is presumed dead and taken over."),
    heartbeat: float = typer.Option(HEARTBEAT_S, "--heartbeat", min=0.1, help="Seconds between heartbeats of the running job."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Claim pending jobs one at a time and run them until none is left.

    Point every machine's workers at one PostgreSQL URL to share a sweep (SQLite is for one
    machine). SIGTERM or Ctrl-C: the epoch in progress is checkpointed, the job handed back
    for resume; exit status 0 after SIGTERM, 130 after Ctrl-C.
    """
    from invssl import launch

    summary = launch.worker(db, console, device=device, data_root=data_root, quiet=quiet,
                            forever=forever, stale_after=stale_after, heartbeat=heartbeat)
    console.print(summary.line(), highlight=False)
    _exit_if_interrupted(summary.stopped_by)


@app.command()
def resume(
    db: Optional[str] = DbOpt,
    device: Optional[str] = DeviceOpt,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also rerun failed jobs."),
    max_attempts: int = typer.Option(MAX_ATTEMPTS, "--max-attempts", min=1, help="With --retry-failed: skip jobs already tried this often."),
    stale_after: float = typer.Option(STALE_AFTER_S, "--stale-after", min=1.0, help="Seconds without a heartbeat after which a running job is presumed dead."),
    data_root: Optional[str] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Finish what was interrupted: dead workers' jobs go back to work from their last checkpoint."""
    from invssl import launch

    stopped_by, failed = launch.resume(db, console, _say, device=device, data_root=data_root,
                                       retry_failed=retry_failed, max_attempts=max_attempts,
                                       stale_after=stale_after, quiet=quiet)
    _exit_if_interrupted(stopped_by)
    if failed and retry_failed:
        raise typer.Exit(1)


FormatOpt = typer.Option("terminal", "--format", help="terminal, or json for programs.")


@app.command()
def status(db: Optional[str] = DbOpt, fmt: str = FormatOpt) -> None:
    """Jobs by state, running jobs with their heartbeat age, and failures with their messages."""
    from invssl import output

    output.check_format(fmt, output.FORMATS)
    data = output.status_data(db)
    if fmt == "json":
        sys.stdout.write(output.to_json(data))
    else:
        output.print_status(console, data)


@app.command()
def show(job: str = typer.Argument(..., help="Job key (a unique prefix) or numeric id."),
         db: Optional[str] = DbOpt, fmt: str = FormatOpt) -> None:
    """A job's config, environment and per-epoch metrics."""
    from invssl import output

    output.check_format(fmt, output.FORMATS)
    info = output.show_data(db, job)
    if fmt == "json":
        sys.stdout.write(output.to_json(info))
    else:
        output.print_show(console, info)


@app.command("jobs")
def jobs_cmd(
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Only the jobs of this sweep."),
    status: Optional[str] = typer.Option(None, "--status", help="Only jobs in this state: pending, running, done or failed."),
    where: Optional[list[str]] = typer.Option(None, "--where", metavar="FIELD=VALUE", help="Keep jobs with FIELD=VALUE, e.g. alpha=0.5 (repeatable)."),
    fmt: str = typer.Option("terminal", "--format", help="terminal, json or csv (full keys, every field)."),
    db: Optional[str] = DbOpt,
) -> None:
    """List jobs with their keys, to pass to show, plot and reconstruct."""
    from invssl import output
    from invssl.frames import parse_where

    output.check_format(fmt, output.LIST_FORMATS)
    found = output.list_jobs(db, sweep, status, parse_where(where or []))
    if fmt == "json":
        sys.stdout.write(output.to_json(output.jobs_records(found)))
    elif fmt == "csv":
        sys.stdout.write(output.jobs_csv(found))
    else:
        output.print_jobs(console, found)


@app.command("models")
def models_cmd(
    input_shape: str = typer.Option("1,28,28", "--input-shape", help="Input shape without the batch, e.g. 1,28,28 or 3,32,32 or 1,16000."),
    classes: int = typer.Option(10, "--classes", min=2, help="Number of classes (the width of the last layer)."),
) -> None:
    """The model zoo: every topology with its parameter count for an input shape."""
    from rich.table import Table

    from invssl import models

    try:
        shape = tuple(int(s) for s in input_shape.split(","))
    except ValueError:
        raise InvsslError(f"--input-shape: expected integers separated by commas, got {input_shape!r}") from None
    table = Table(title=f"topologies for input {shape}, {classes} classes")
    table.add_column("name")
    table.add_column("parameters", justify="right")
    table.add_column("bias-free")
    for row in models.describe(shape, classes):
        params = "-" if row["params"] is None else f"{row['params']:,}"
        table.add_row(row["name"], params, "yes" if row["bias_free"] else "no")
    console.print(table)


db_app = typer.Typer(help="Results database maintenance.", no_args_is_help=True, context_settings=HELP)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(db: Optional[str] = DbOpt) -> None:
    """Create the schema or upgrade it to this version of invssl."""
    from invssl import launch

    console.print(f"{launch.upgrade(db)}: schema at head")


# ---------------------------------------------------------------- reports and figures
def _fields(text: str) -> list[str]:
    """A comma-separated list of fields."""
    return [f.strip() for f in text.split(",") if f.strip()]


def _write_text(text: str, output: Optional[Path]) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvsslError(f"cannot write {output}: {exc.strerror or exc}") from None
    console.print(f"wrote {output}", highlight=False)


@app.command()
def report(
    table: Optional[str] = typer.Option(None, "--table", help="mnist (the paper's Table 2) or bird10 (accuracy against alpha per dataset)."),
    compare: Optional[str] = typer.Option(None, "--compare", help="paper: add the published figures (mnist table)."),
    rows: Optional[str] = typer.Option(None, "--rows", help="General pivot: job field(s) for the rows, comma-separated."),
    cols: Optional[str] = typer.Option(None, "--cols", help="General pivot: job field(s) for the columns, comma-separated."),
    where: Optional[list[str]] = typer.Option(None, "--where", metavar="FIELD=VALUE", help="General pivot: keep jobs with FIELD=VALUE (repeatable)."),
    value: str = typer.Option("test_acc", "--value", help="General pivot: the metric in the cells."),
    fmt: str = typer.Option("terminal", "--format", help="terminal, markdown, latex; csv or json: one record per cell with numeric mean, std, n."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of the terminal."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Only the jobs of this sweep."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="The dataset of the table (mnist table: default mnist)."),
    last: int = typer.Option(5, "--last", min=1, help="bird10: each job's test accuracy at its best-validation epoch among its last N."),
    db: Optional[str] = DbOpt,
) -> None:
    """Tables from finished jobs: the paper's Table 2, the 1-D experiment, or any pivot."""
    from invssl import report as rep
    from invssl.errors import ConfigError, UnknownNameError

    if fmt not in rep.FORMATS:
        raise UnknownNameError(f"unknown format {fmt!r}; valid: {', '.join(rep.FORMATS)}")
    if table is not None and table not in rep.TABLES:
        raise UnknownNameError(f"unknown table {table!r}; valid: {', '.join(rep.TABLES)}")
    if table is None and rows is None:
        raise ConfigError("choose a table (--table mnist|bird10) or a pivot (--rows FIELD [--cols FIELD])")
    if table is not None and (rows or cols or where):
        raise ConfigError("--rows/--cols/--where make a general pivot; they do not combine with --table")
    conditions = rep.parse_where(where or [])
    built = rep.from_database(db, table, sweep=sweep, compare=compare, dataset=dataset, last=last,
                              rows=_fields(rows or ""), cols=_fields(cols) if cols else None, value=value,
                              where=conditions)
    if fmt == "terminal" and output is None and console.is_terminal:
        console.print(rep.rich_table(built.table))
        return
    _write_text(built.render(fmt), output)  # piped: the whole table, never cropped


FigureOpt = typer.Option(None, "--output", "-o", help="Figure file: PNG, PDF or SVG by its suffix.")


@app.command()
def plot(
    jobs: Optional[list[str]] = typer.Argument(None, help="Jobs (key prefixes or ids): their learning curves."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Plot a metric against a grid field over this sweep's finished jobs."),
    x: Optional[str] = typer.Option(None, "--x", help="Grid field on the x axis, e.g. alpha."),
    y: str = typer.Option("test_acc", "--y", help="Metric on the y axis."),
    by: Optional[str] = typer.Option(None, "--by", help="Fields that make one line, comma-separated (default: topology/dataset)."),
    output: Optional[Path] = FigureOpt,
    db: Optional[str] = DbOpt,
) -> None:
    """Learning curves of jobs, or a metric against a grid field (mean ± std over seeds)."""
    from invssl import plots
    from invssl.errors import ConfigError

    if jobs and (sweep or x):
        raise ConfigError("give jobs (learning curves) or --sweep/--x (metric against a field), not both")
    if not jobs and not x:
        raise ConfigError("give jobs for learning curves, or --x FIELD [--sweep NAME] for a metric against a field")
    if output is not None:
        plots.check_figure_path(output)
    if jobs:
        path = plots.job_curves(db, jobs, output)
    else:
        assert x is not None
        path = plots.sweep_metric(db, sweep, x, y, _fields(by) if by else None, output)
    console.print(f"wrote {path}", highlight=False)


@app.command("reconstruct")
def reconstruct_cmd(
    job: str = typer.Argument(..., help="Job key (a unique prefix) or numeric id."),
    n: int = typer.Option(8, "--n", min=1, max=64, help="How many test inputs."),
    output: Optional[Path] = FigureOpt,
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default), cuda, cuda:N or mps."),
    data_root: Optional[str] = DataRootOpt,
    db: Optional[str] = DbOpt,
) -> None:
    """Test inputs beside the trained network's reconstructions A[x]^T f(x), from its checkpoint."""
    from invssl import plots

    if output is not None:
        plots.check_figure_path(output)
    path = plots.job_reconstructions(db, job, n, output, device=device or "cpu",
                                     data_root=data_root)
    console.print(f"wrote {path}", highlight=False)
