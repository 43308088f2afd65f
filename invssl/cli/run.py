"""The commands that run jobs: sweep, worker, resume, and the schema upgrade."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Optional

import typer

from invssl.cli.common import HELP, DataRootOpt, DbOpt, DeviceOpt, app, console, err_console, say, warn
from invssl.defaults import HEARTBEAT_S, MAX_ATTEMPTS, STALE_AFTER_S


@app.command()
def sweep(
    file: Path = typer.Argument(..., help="Experiment file (YAML): name, data, train, grid, overrides, extra."),
    overrides: Optional[list[str]] = typer.Argument(
        None,
        metavar="[KEY.PATH=VALUE]...",
        help="Overrides of the file, e.g. train.epochs=1 grid.seed=[0] (values read as YAML).",
    ),
    db: Optional[str] = DbOpt,
    device: Optional[str] = DeviceOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the jobs and write nothing."),
    workers: int = typer.Option(
        0, "--workers", min=0, help="Worker processes (default: one per physical CPU core; on GPUs see below)."
    ),
    threads: int = typer.Option(0, "--threads", min=0, help="Intra-op threads per worker (default: cores / workers)."),
    workers_per_device: int = typer.Option(
        0,
        "--workers-per-device",
        min=0,
        help="Workers per GPU (default: measured at the start, as many as add 10% throughput each and fit in memory).",
    ),
    devices: Optional[str] = typer.Option(
        None, "--devices", help="Comma-separated devices for the workers, e.g. cuda:0,cuda:1."
    ),
    enqueue_only: bool = typer.Option(False, "--enqueue-only", help="Fill the queue for workers elsewhere and exit."),
    data_root: Optional[str] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    no_calibrate: bool = typer.Option(
        False, "--no-calibrate", help="With --dry-run: estimate from recorded epoch times only; time no training steps."
    ),
) -> None:
    """Expand an experiment grid into jobs and run them; finished jobs are skipped.

    Exit status: 0 when every job is done (or SIGTERM stopped them, as a scheduler does), 1
    when some failed or a worker died with jobs left, 130 after Ctrl-C, 2 for bad input. Ctrl-C
    or SIGTERM: every worker checkpoints its job and hands it back.
    """
    from invssl import launch

    request = launch.SweepRequest(
        file, overrides or [], db, device, devices, workers, threads, workers_per_device, data_root, enqueue_only, quiet
    )
    if dry_run:
        from invssl import output

        plan, est = launch.dry_run(request, calibrate=not no_calibrate)
        console.print(output.plan_table(plan))
        console.print(output.estimate_table(est))
        for note in est.notes:
            console.print(f"note: {note}", highlight=False)
        return
    outcome = launch.sweep(request, console, say, warn)
    if outcome is not None:
        _finish(outcome)


def _finish(outcome: Any) -> None:
    counts = outcome.counts
    console.print(outcome.line(), highlight=False)
    for what in outcome.died:
        err_console.print(f"[red]worker died:[/] {what}", highlight=False)
    _exit_if_interrupted(outcome.stopped_by)
    if counts["failed"]:
        err_console.print("some jobs failed: `invssl status` shows why; `invssl resume --retry-failed` runs them again")
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
    forever: bool = typer.Option(
        False, "--forever", help="Keep polling for new jobs instead of exiting when none is left."
    ),
    data_root: Optional[str] = DataRootOpt,
    stale_after: float = typer.Option(
        STALE_AFTER_S,
        "--stale-after",
        min=1.0,
        help="Seconds without a heartbeat after which another worker's job is presumed dead and taken over.",
    ),
    heartbeat: float = typer.Option(
        HEARTBEAT_S, "--heartbeat", min=0.1, help="Seconds between heartbeats of the running job."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Claim pending jobs one at a time and run them until none is left.

    Point every machine's workers at one PostgreSQL URL to share a sweep (SQLite is for one
    machine). SIGTERM or Ctrl-C: the epoch in progress is checkpointed, the job handed back
    for resume; exit status 0 after SIGTERM, 130 after Ctrl-C.
    """
    from invssl import launch

    summary = launch.worker(
        db, console, device, data_root, quiet, forever=forever, stale_after=stale_after, heartbeat=heartbeat
    )
    console.print(summary.line(), highlight=False)
    _exit_if_interrupted(summary.stopped_by)


@app.command()
def resume(
    db: Optional[str] = DbOpt,
    device: Optional[str] = DeviceOpt,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also rerun failed jobs."),
    max_attempts: int = typer.Option(
        MAX_ATTEMPTS, "--max-attempts", min=1, help="With --retry-failed: skip jobs already tried this often."
    ),
    stale_after: float = typer.Option(
        STALE_AFTER_S,
        "--stale-after",
        min=1.0,
        help="Seconds without a heartbeat after which a running job is presumed dead.",
    ),
    data_root: Optional[str] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Finish what was interrupted: dead workers' jobs go back to work from their last checkpoint."""
    from invssl import launch

    retry = max_attempts if retry_failed else None
    stopped_by, failed = launch.resume(db, console, say, device, data_root, quiet, stale_after, retry)
    _exit_if_interrupted(stopped_by)
    if failed and retry_failed:
        raise typer.Exit(1)


db_app = typer.Typer(help="Results database maintenance.", no_args_is_help=True, context_settings=HELP)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(db: Optional[str] = DbOpt) -> None:
    """Create the schema or upgrade it to this version of invssl."""
    from invssl import launch

    console.print(f"{launch.upgrade(db)}: schema at head")
