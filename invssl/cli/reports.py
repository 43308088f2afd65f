"""The commands that read results: status, show, jobs, report, plot, reconstruct, and models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from invssl.cli.common import DataRootOpt, DbOpt, FigureOpt, FormatOpt, app, console, fields, write_text
from invssl.errors import InvsslError


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
def show(
    job: str = typer.Argument(..., help="Job key (a unique prefix) or numeric id."),
    db: Optional[str] = DbOpt,
    fmt: str = FormatOpt,
) -> None:
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
    status: Optional[str] = typer.Option(
        None, "--status", help="Only jobs in this state: pending, running, done or failed."
    ),
    where: Optional[list[str]] = typer.Option(
        None, "--where", metavar="FIELD=VALUE", help="Keep jobs with FIELD=VALUE, e.g. alpha=0.5 (repeatable)."
    ),
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
    input_shape: str = typer.Option(
        "1,28,28", "--input-shape", help="Input shape without the batch, e.g. 1,28,28 or 3,32,32 or 1,16000."
    ),
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


@app.command()
def report(
    table: Optional[str] = typer.Option(
        None, "--table", help="mnist (the paper's Table 2) or bird10 (accuracy against alpha per dataset)."
    ),
    compare: Optional[str] = typer.Option(None, "--compare", help="paper: add the published figures (mnist table)."),
    rows: Optional[str] = typer.Option(
        None, "--rows", help="General pivot: job field(s) for the rows, comma-separated."
    ),
    cols: Optional[str] = typer.Option(
        None, "--cols", help="General pivot: job field(s) for the columns, comma-separated."
    ),
    where: Optional[list[str]] = typer.Option(
        None, "--where", metavar="FIELD=VALUE", help="General pivot: keep jobs with FIELD=VALUE (repeatable)."
    ),
    value: str = typer.Option("test_acc", "--value", help="General pivot: the metric in the cells."),
    fmt: str = typer.Option(
        "terminal",
        "--format",
        help="terminal, markdown, latex; csv or json: one record per cell with numeric mean, std, n.",
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of the terminal."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Only the jobs of this sweep."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="The dataset of the table (mnist table: default mnist)."
    ),
    last: int = typer.Option(
        5, "--last", min=1, help="bird10: each job's test accuracy at its best-validation epoch among its last N."
    ),
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
    built = rep.from_database(
        db,
        table,
        sweep=sweep,
        compare=compare,
        dataset=dataset,
        last=last,
        rows=fields(rows or ""),
        cols=fields(cols) if cols else None,
        value=value,
        where=conditions,
    )
    if fmt == "terminal" and output is None and console.is_terminal:
        console.print(rep.rich_table(built.table))
        return
    write_text(built.render(fmt), output)  # piped: the whole table, never cropped


@app.command()
def plot(
    jobs: Optional[list[str]] = typer.Argument(None, help="Jobs (key prefixes or ids): their learning curves."),
    sweep: Optional[str] = typer.Option(
        None, "--sweep", help="Plot a metric against a grid field over this sweep's finished jobs."
    ),
    x: Optional[str] = typer.Option(None, "--x", help="Grid field on the x axis, e.g. alpha."),
    y: str = typer.Option("test_acc", "--y", help="Metric on the y axis."),
    by: Optional[str] = typer.Option(
        None, "--by", help="Fields that make one line, comma-separated (default: topology/dataset)."
    ),
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
        path = plots.sweep_metric(db, sweep, x, y, fields(by) if by else None, output)
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
    path = plots.job_reconstructions(db, job, n, output, device=device or "cpu", data_root=data_root)
    console.print(f"wrote {path}", highlight=False)
