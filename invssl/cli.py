"""Command-line interface: parse, build a config, call one library function.

The library raises ``InvsslError`` for anything a user can fix; this module alone turns those
into a one-line message and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

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


# ---------------------------------------------------------------- shared options
DB_HELP = ("Results database URL (default: $INVSSL_DB, else sqlite:///invssl.db). SQLite is for "
           "one machine; several machines need PostgreSQL: postgresql+psycopg://user@host/db.")
DbOpt = typer.Option(None, "--db", help=DB_HELP, show_default=False)
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: auto).")
DataRootOpt = typer.Option(None, "--data-root", help="Override the data root of every job.")


def _url(db: Optional[str]) -> str:
    from invssl.db.session import resolve_url

    return resolve_url(db)


def _masked(db: Optional[str]) -> str:
    from invssl.db.session import mask_url

    return mask_url(_url(db))


def _results_engine(db: Optional[str]) -> Any:
    """The results database for reading: never created, migrated or written by a report."""
    from invssl.db.session import open_existing

    return open_existing(_url(db))


# ---------------------------------------------------------------- sweep / worker / resume
def _run_local_worker(db: Optional[str], device: Optional[str], data_root: Optional[str],
                      sweep_id: Optional[int], total: int, quiet: bool, forever: bool = False,
                      stale_after: float = 120.0, heartbeat: float = 10.0, engine: Any = None) -> Any:
    from invssl.runner import Worker

    from invssl.progress import LiveProgress

    live = None if quiet else LiveProgress(console, total)
    worker = Worker(_url(db), device=device, data_root=data_root, stale_after_s=stale_after,
                    heartbeat_s=heartbeat, events=live.events() if live else None, engine=engine)
    if live is None:
        return worker.run(sweep_id=sweep_id, forever=forever)
    with live.progress:
        return worker.run(sweep_id=sweep_id, forever=forever)


def _run_spawned(engine: Any, db: Optional[str], n: int, devices: list[str], sweep_id: int,
                 sweep_name: str, data_root: Optional[str], total: int) -> Any:
    from invssl.pool import run_pool
    from invssl.progress import jobs_bar

    console.print(f"started {n} workers" + (f" on {', '.join(devices)}" if devices else ""))
    with jobs_bar(console, engine, sweep_name, total) as poll:
        return run_pool(engine, _url(db), n, devices, sweep_id=sweep_id, data_root=data_root,
                        on_poll=poll)


@app.command()
def sweep(
    file: Path = typer.Argument(..., help="Experiment file (YAML): name, data, train, grid, overrides, extra."),
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

    Ctrl-C or SIGTERM: every worker checkpoints its job and hands it back; exit status 130
    after Ctrl-C, 0 after SIGTERM.
    """
    from invssl import runner

    if dry_run:
        plan = runner.plan(file, db)
        _print_plan(plan, _masked(db))
        from invssl import estimate

        runner.check_device(device)
        jobs = [j.model_copy(update={"data_root": data_root}) for j in plan.jobs] if data_root else plan.jobs
        est = estimate.estimate(jobs, done=plan.done_keys, device=device, db_url=_url(db),
                                calibrate_missing=not no_calibrate)
        console.print(estimate.render(est))
        for note in est.notes:
            console.print(f"note: {note}", highlight=False)
        return
    runner.check_device(device)
    enq = runner.enqueue(file, db)
    console.print(f"sweep [bold]{enq.name}[/]: {len(enq.keys)} jobs ({enq.new} new, "
                  f"{enq.existing} already known) in {_masked(db)}", highlight=False)
    if enqueue_only:
        return
    from invssl.db.session import open_engine

    engine = open_engine(_url(db))
    try:
        runner.reap(engine)
        counts = runner.sweep_counts(engine, enq.name)
        todo = counts["pending"] + counts["running"]
        devs = devices.split(",") if devices else ([device] if device else runner.default_devices())
        n = workers or max(1, len(devs))
        stopped_by, died = None, []
        if todo == 0:
            console.print("nothing to do: every job of this sweep has finished")
        elif n == 1:
            stopped_by = _run_local_worker(db, devs[0] if devs else None, data_root, enq.sweep_id,
                                           todo, quiet, engine=engine).stopped_by
        else:
            pool = _run_spawned(engine, db, n, devs, enq.sweep_id, enq.name, data_root, todo)
            stopped_by, died = pool.stopped_by, pool.died
        _finish(runner.sweep_counts(engine, enq.name), enq.name, stopped_by, died)
    finally:
        engine.dispose()


def _finish(counts: Any, name: str, stopped_by: Optional[int], died: list[str]) -> None:
    line = ", ".join(f"{counts[s]} {s}" for s in ("done", "failed", "pending", "running") if counts[s])
    console.print(f"sweep [bold]{name}[/]: {line or 'no jobs'}", highlight=False)
    for what in died:
        err_console.print(f"[red]worker died:[/] {what}", highlight=False)
    _exit_if_interrupted(stopped_by)
    if counts["failed"]:
        err_console.print("some jobs failed: `invssl status` shows why; "
                          "`invssl resume --retry-failed` runs them again")
        raise typer.Exit(1)
    if died and counts["pending"] + counts["running"]:
        err_console.print("jobs are left: `invssl resume` runs them")
        raise typer.Exit(1)


def _exit_if_interrupted(stopped_by: Optional[int]) -> None:
    """Ctrl-C exits 130 as shells expect; SIGTERM is an orderly stop (a scheduler's), exit 0."""
    import signal

    if stopped_by == signal.SIGINT:
        raise typer.Exit(130)


def _print_plan(plan: Any, where: str) -> None:
    from rich.table import Table

    table = Table(title=f"{plan.name}: {plan.total} jobs, {plan.done} already done ({where})")
    table.add_column("topology")
    table.add_column("N_L", justify="right")
    table.add_column("jobs", justify="right")
    table.add_column("done", justify="right")
    for (topology, n_l), (jobs, done) in sorted(plan.by_group.items()):
        table.add_row(topology, str(n_l), str(jobs), str(done))
    console.print(table)


@app.command()
def worker(
    db: Optional[str] = DbOpt,
    device: Optional[str] = DeviceOpt,
    forever: bool = typer.Option(False, "--forever", help="Keep polling for new jobs instead of exiting when none is left."),
    sweep_id: Optional[int] = typer.Option(None, "--sweep-id", hidden=True),
    data_root: Optional[str] = DataRootOpt,
    stale_after: float = typer.Option(120.0, "--stale-after", min=1.0, help="Seconds without a heartbeat after which another worker's job is presumed dead and taken over."),
    heartbeat: float = typer.Option(10.0, "--heartbeat", min=0.1, help="Seconds between heartbeats of the running job."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Claim pending jobs one at a time and run them until none is left.

    Point every machine's workers at one PostgreSQL URL to share a sweep (SQLite is for one
    machine). SIGTERM or Ctrl-C: the epoch in progress is checkpointed, the job handed back
    for resume; exit status 0 after SIGTERM, 130 after Ctrl-C.
    """
    from invssl import runner

    runner.check_device(device)
    summary = _run_local_worker(db, device, data_root, sweep_id, 0, quiet, forever=forever,
                                stale_after=stale_after, heartbeat=heartbeat)
    console.print(f"worker: {summary.done} done, {summary.failed} failed, "
                  f"{summary.released} handed back", highlight=False)
    _exit_if_interrupted(summary.stopped_by)


@app.command()
def resume(
    db: Optional[str] = DbOpt,
    device: Optional[str] = DeviceOpt,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also rerun failed jobs."),
    max_attempts: int = typer.Option(3, "--max-attempts", min=1, help="With --retry-failed: skip jobs already tried this often."),
    stale_after: float = typer.Option(120.0, "--stale-after", help="Seconds without a heartbeat after which a running job is presumed dead."),
    data_root: Optional[str] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Finish what was interrupted: dead workers' jobs go back to work from their last checkpoint."""
    from invssl import runner
    from invssl.db import queue
    from invssl.db.session import open_engine

    runner.check_device(device)
    engine = open_engine(_url(db))
    reaped = runner.reap(engine, stale_after)
    retried = queue.retry_failed(engine, max_attempts=max_attempts) if retry_failed else 0
    counts = queue.status_counts(engine)
    console.print(f"resume: {len(reaped)} interrupted, {retried} failed requeued, "
                  f"{counts.get('pending', 0)} pending")
    if counts.get("pending", 0):
        summary = _run_local_worker(db, device, data_root, None, counts["pending"], quiet,
                                    engine=engine)
        _exit_if_interrupted(summary.stopped_by)
    counts = queue.status_counts(engine)
    if counts.get("failed", 0) and retry_failed:
        raise typer.Exit(1)


@app.command()
def status(db: Optional[str] = DbOpt) -> None:
    """Jobs by state, running jobs with their heartbeat age, and failures with their messages."""
    from rich.table import Table

    from invssl.db import queue

    engine = _results_engine(db)
    counts = queue.status_counts(engine)
    console.print(f"{_masked(db)}: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                                 ("pending", "running", "done", "failed")),
                  highlight=False)
    running = queue.running_jobs(engine)
    if running:
        table = Table(title="running")
        for col in ("job", "label", "worker", "epochs", "heartbeat age (s)"):
            table.add_column(col)
        for job in running:
            table.add_row(job["key"][:10], job["label"], job["worker"] or "",
                          str(job["epochs_done"]), f"{job['heartbeat_age_s']:.0f}")
        console.print(table)
    for job in queue.failed_jobs(engine):
        console.print(f"[red]failed[/] {job['key'][:10]} (attempts {job['attempts']}): {job['error']}",
                      highlight=False)
    for job in queue.collapsed_jobs(engine):
        stopped = " (stopped early)" if job["result"].get("stopped_collapsed") else ""
        console.print(f"[yellow]collapsed[/] {job['key'][:10]} {job['label']}: predictions "
                      f"entropy {job['result'].get('pred_entropy', 0):.2f} after epoch "
                      f"{job['epochs_done']}{stopped}", highlight=False)


@app.command()
def show(job: str = typer.Argument(..., help="Job key (a unique prefix) or numeric id."),
         db: Optional[str] = DbOpt) -> None:
    """A job's config, environment and per-epoch metrics."""
    import json

    from rich.table import Table

    from invssl.db import queue

    engine = _results_engine(db)
    info = queue.get_job(engine, job)
    console.print(f"job {info['id']} [bold]{info['key']}[/]: {info['status']} "
                  f"(attempts {info['attempts']})", highlight=False)
    if info.get("error"):
        console.print(f"[red]error:[/] {info['error']}", highlight=False)
    console.print("config: " + json.dumps(info["config"], sort_keys=True), highlight=False)
    console.print("environment: " + json.dumps(info.get("env") or {}, sort_keys=True), highlight=False)
    rows = [{**r, **(r.get("extra") or {})} for r in queue.job_epochs(engine, info["id"])]
    if (info.get("result") or {}).get("collapsed"):
        console.print("[yellow]collapsed:[/] the network predicts few classes or has a silent "
                      "layer (pred_entropy, dead_units below)", highlight=False)
    if rows:
        cols = ["epoch", "loss", "ce", "recon", "entropy", "val_acc", "test_acc", "recon_err",
                "pred_entropy", "dead_units", "collapsed", "lr", "wall_s"]
        table = Table(title="epochs")
        for c in cols:
            table.add_column(c, justify="right")
        for r in rows:
            table.add_row(*("" if r.get(c) is None else (str(r[c]) if c == "epoch" else f"{r[c]:.4g}")
                            for c in cols))
        console.print(table)


@app.command("models")
def models_cmd(
    input_shape: str = typer.Option("1,28,28", "--input-shape", help="Input shape without the batch, e.g. 1,28,28 or 3,32,32 or 1,16000."),
    classes: int = typer.Option(10, "--classes", min=2),
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


db_app = typer.Typer(help="Results database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(db: Optional[str] = DbOpt) -> None:
    """Create the schema or upgrade it to this version of invssl."""
    from invssl.db.session import upgrade

    upgrade(_url(db))
    console.print(f"{_masked(db)}: schema at head")


# ---------------------------------------------------------------- reports and figures
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


def _safe_name(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "all"


def _job_label(info: dict) -> str:
    from invssl.config import JobConfig

    try:
        return f"{info['key'][:10]} {JobConfig(**info['config']).label()}"
    except Exception:  # a config this version no longer accepts still gets a legend
        return info["key"][:10]


@app.command()
def report(
    table: Optional[str] = typer.Option(None, "--table", help="mnist (the paper's Table 2) or bird10 (accuracy against alpha per dataset)."),
    compare: Optional[str] = typer.Option(None, "--compare", help="paper: add the published figures (mnist table)."),
    rows: Optional[str] = typer.Option(None, "--rows", help="General pivot: job field(s) for the rows, comma-separated."),
    cols: Optional[str] = typer.Option(None, "--cols", help="General pivot: job field(s) for the columns, comma-separated."),
    where: Optional[list[str]] = typer.Option(None, "--where", metavar="FIELD=VALUE", help="General pivot: keep jobs with FIELD=VALUE (repeatable)."),
    value: str = typer.Option("test_acc", "--value", help="General pivot: the metric in the cells."),
    fmt: str = typer.Option("terminal", "--format", help="terminal, markdown, latex or csv."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of the terminal."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Only the jobs of this sweep."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="The dataset of the table (default: mnist if present, else the only one)."),
    last: int = typer.Option(5, "--last", min=1, help="bird10: best accuracy over each job's last N epochs."),
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
    engine = _results_engine(db)
    jobs = rep.load_jobs(engine, sweep)
    if table is None:
        split = lambda s: [f.strip() for f in s.split(",") if f.strip()]  # noqa: E731
        if dataset is not None:
            conditions.setdefault("dataset", dataset)
        df = rep.pivot(jobs, split(rows or ""), split(cols) if cols else None, value=value,
                       where=conditions)
    else:
        epochs = rep.load_epochs(engine, jobs["id"]) if table == "bird10" else None
        df = rep.table(table, jobs, epochs, compare=compare, dataset=dataset, last=last)
    if fmt == "terminal" and output is None and console.is_terminal:
        console.print(rep.rich_table(df))
        return
    _write_text(rep.render(df, fmt), output)  # piped: the whole table, never cropped


@app.command()
def plot(
    jobs: Optional[list[str]] = typer.Argument(None, help="Jobs (key prefixes or ids): their learning curves."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Plot a metric against a grid field over this sweep's finished jobs."),
    x: Optional[str] = typer.Option(None, "--x", help="Grid field on the x axis, e.g. alpha."),
    y: str = typer.Option("test_acc", "--y", help="Metric on the y axis."),
    by: Optional[str] = typer.Option(None, "--by", help="Fields that make one line, comma-separated (default: topology/dataset)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG file to write."),
    db: Optional[str] = DbOpt,
) -> None:
    """Learning curves of jobs, or a metric against a grid field (mean ± std over seeds)."""
    from invssl import plots
    from invssl import report as rep
    from invssl.db import queue
    from invssl.errors import ConfigError

    if jobs and (sweep or x):
        raise ConfigError("give jobs (learning curves) or --sweep/--x (metric against a field), not both")
    if not jobs and not x:
        raise ConfigError("give jobs for learning curves, or --x FIELD [--sweep NAME] for a metric against a field")
    engine = _results_engine(db)
    if jobs:
        infos = [queue.get_job(engine, ref) for ref in jobs]
        curves = {_job_label(i): rep.epochs_frame(queue.job_epochs(engine, i["id"])) for i in infos}
        more = f"-and-{len(infos) - 1}-more" if len(infos) > 1 else ""
        path = plots.learning_curves(curves, output or Path(f"curves-{infos[0]['key'][:10]}{more}.png"))
    else:
        assert x is not None
        frame = rep.load_jobs(engine, sweep)
        fields = [f.strip() for f in by.split(",") if f.strip()] if by else None
        default = Path(f"{_safe_name(sweep or 'all')}-{_safe_name(y)}-vs-{_safe_name(x)}.png")
        path = plots.metric_vs_field(frame, x, y, output or default, by=fields,
                                     title=f"{sweep + ': ' if sweep else ''}{y} against {x}, mean ± std over seeds")
    console.print(f"wrote {path}", highlight=False)


@app.command("reconstruct")
def reconstruct_cmd(
    job: str = typer.Argument(..., help="Job key (a unique prefix) or numeric id."),
    n: int = typer.Option(8, "--n", min=1, max=64, help="How many test inputs."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG file to write."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default), cuda, cuda:N or mps."),
    data_root: Optional[str] = DataRootOpt,
    db: Optional[str] = DbOpt,
) -> None:
    """Test inputs beside the trained network's reconstructions A[x]^T f(x), from its checkpoint."""
    from invssl import plots
    from invssl.config import JobConfig
    from invssl.db import queue
    from invssl.train import load_model, prepare, resolve_device

    engine = _results_engine(db)
    info = queue.get_job(engine, job)
    stored = queue.load_checkpoint(engine, info["id"])
    if stored is None:
        raise InvsslError(f"job {info['key'][:10]} ({info['status']}) has no checkpoint yet: "
                          "nothing to reconstruct with")
    config = JobConfig(**info["config"])
    if data_root:
        config = config.model_copy(update={"data_root": data_root})
    dev = resolve_device(device or "cpu")
    model = load_model(config, stored[1], dev)
    prep = prepare(config, dev)
    idx = plots.pick_examples(prep.y_test.cpu(), n)
    path = plots.reconstructions(
        model, prep.x_test[idx], output or Path(f"reconstruct-{info['key'][:10]}.png"), n=n,
        labels=prep.y_test[idx].cpu().tolist(), class_names=prep.info.class_names,
        title=f"{config.label()} (epoch {stored[0]}): inputs and reconstructions A[x]ᵀf(x)")
    console.print(f"wrote {path}", highlight=False)
