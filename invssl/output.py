"""What ``status``, ``show``, ``jobs`` and a dry run print: rich tables for people, JSON and CSV for
programs.

Output that is not a terminal gets a console as wide as its content, so a table piped to a
file or a log keeps every value whole instead of being cut to 80 columns.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # pandas costs a second at start-up; only listings need it
    import pandas as pd

FORMATS: tuple[str, ...] = ("terminal", "json")
LIST_FORMATS: tuple[str, ...] = ("terminal", "json", "csv")
# Wide enough for any table; rich sizes a table to its content below this.
_UNBOUNDED = 100_000
EPOCH_COLUMNS = (
    "epoch",
    "loss",
    "ce",
    "recon",
    "entropy",
    "val_acc",
    "test_acc",
    "recon_err",
    "pred_entropy",
    "dead_units",
    "collapsed",
    "lr",
    "wall_s",
)
# Shown when some epoch has them: clustering scores (no labels) and learned loss weights.
OPTIONAL_EPOCH_COLUMNS = ("val_nmi", "test_nmi", "alpha", "beta")


def console(stderr: bool = False) -> Console:
    """A terminal's own width; anything else unbounded and without soft line breaks."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=_UNBOUNDED, soft_wrap=True)


def check_format(fmt: str, valid: tuple[str, ...]) -> None:
    from invssl.errors import UnknownNameError

    if fmt not in valid:
        raise UnknownNameError(f"unknown format {fmt!r}; valid: {', '.join(valid)}")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict)):
        return value.item()
    return value


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_plain) + "\n"


# ------------------------------------------------------------------------ status
def status_data(db: Optional[str]) -> dict[str, Any]:
    from invssl.db import reads

    with reads.reading(db) as engine:
        return {
            "database": reads.where(db),
            "counts": reads.status_counts(engine),
            "running": reads.running_jobs(engine),
            "failed": reads.failed_jobs(engine),
            "collapsed": reads.collapsed_jobs(engine),
        }


def print_status(out: Console, data: dict[str, Any]) -> None:
    counts = data["counts"]
    out.print(
        f"{data['database']}: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "running", "done", "failed")),
        highlight=False,
    )
    if data["running"]:
        table = Table(title="running")
        for col in ("job", "label", "worker", "epochs", "heartbeat age (s)"):
            table.add_column(col)
        for job in data["running"]:
            age = job["heartbeat_age_s"]
            table.add_row(
                job["key"][:10],
                job["label"],
                job["worker"] or "",
                str(job["epochs_done"]),
                "" if age is None else f"{age:.0f}",
            )
        out.print(table)
    for job in data["failed"]:
        out.print(f"[red]failed[/] {job['key'][:10]} (attempts {job['attempts']}): {job['error']}", highlight=False)
    for job in data["collapsed"]:
        stopped = " (stopped early)" if job["result"].get("stopped_collapsed") else ""
        out.print(
            f"[yellow]collapsed[/] {job['key'][:10]} {job['label']}: predictions "
            f"entropy {job['result'].get('pred_entropy', 0):.2f} after epoch "
            f"{job['epochs_done']}{stopped}",
            highlight=False,
        )


# ------------------------------------------------------------------------ show
def show_data(db: Optional[str], ref: str) -> dict[str, Any]:
    from invssl.db import reads

    with reads.reading(db) as engine:
        info = reads.get_job(engine, ref)
        rows = reads.job_epochs(engine, info["id"])
    epochs = [{**{k: v for k, v in r.items() if k != "extra"}, **(r.get("extra") or {})} for r in rows]
    return {**info, "epochs": epochs}


def print_show(out: Console, info: dict[str, Any]) -> None:
    out.print(
        f"job {info['id']} [bold]{info['key']}[/]: {info['status']} (attempts {info['attempts']})", highlight=False
    )
    if info.get("error"):
        out.print(f"[red]error:[/] {info['error']}", highlight=False)
    out.print("config: " + json.dumps(info["config"], sort_keys=True), highlight=False, markup=False)
    out.print("environment: " + json.dumps(info.get("env") or {}, sort_keys=True), highlight=False, markup=False)
    if (info.get("result") or {}).get("collapsed"):
        out.print(
            "[yellow]collapsed:[/] the network predicts few classes or has a silent "
            "layer (its health columns are below)",
            highlight=False,
        )
    rows = info["epochs"]
    if rows:
        table = Table(title="epochs")
        columns = EPOCH_COLUMNS + tuple(c for c in OPTIONAL_EPOCH_COLUMNS if any(r.get(c) is not None for r in rows))
        for c in columns:
            table.add_column(c, justify="right")
        for r in rows:
            table.add_row(
                *("" if r.get(c) is None else (str(r[c]) if c == "epoch" else f"{r[c]:.4g}") for c in columns)
            )
        out.print(table)


# ------------------------------------------------------------------------ jobs
LIST_COLUMNS = (
    "id",
    "key",
    "status",
    "topology",
    "dataset",
    "n_labeled",
    "alpha",
    "beta",
    "seed",
    "epochs_done",
    "epochs",
    "val_acc",
    "test_acc",
)


def list_jobs(db: Optional[str], sweep: Optional[str], status: Optional[str], where: dict[str, str]) -> pd.DataFrame:
    """Jobs of a sweep (or all) with a status (or any), filtered by ``--where``, in id order:
    one row per job with its full key, config fields and final metrics."""
    from invssl.db import reads
    from invssl.db.models import STATUSES
    from invssl.errors import UnknownNameError
    from invssl.frames import filter_where, load_jobs

    if status is not None and status not in STATUSES:
        raise UnknownNameError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
    with reads.reading(db) as engine:
        jobs = load_jobs(engine, sweep, status=status, allow_empty=True)
    return filter_where(jobs, where)


def jobs_records(jobs: pd.DataFrame) -> list[dict[str, Any]]:
    keep = [c for c in jobs.columns if c != "group"]
    return [
        {k: _plain(v) for k, v in rec.items() if not (isinstance(v, float) and math.isnan(v))}
        for rec in jobs[keep].to_dict("records")
    ]


def jobs_csv(jobs: pd.DataFrame) -> str:
    return jobs[[c for c in jobs.columns if c != "group"]].to_csv(index=False)


def print_jobs(out: Console, jobs: pd.DataFrame) -> None:
    if jobs.empty:
        out.print("no jobs match")
        return
    cols = [c for c in LIST_COLUMNS if c in jobs.columns]
    table = Table(title=f"{len(jobs)} jobs (keys: give a prefix to show, plot or reconstruct)")
    for c in cols:
        table.add_column(c, justify="left" if c in ("key", "status", "topology", "dataset") else "right")
    for rec in jobs[cols].to_dict("records"):
        table.add_row(*(_cell(c, rec[c]) for c in cols))
    out.print(table)


_INTEGERS = ("id", "n_labeled", "seed", "epochs", "epochs_done")


def _cell(col: str, value: Any) -> str:
    from invssl.frames import field_text

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if col == "key":
        return str(value)[:12]
    if col.endswith("_acc"):
        return f"{value:.2%}"
    if col in _INTEGERS:  # a column with a gap reads back as floats
        return str(int(value))
    return field_text(col, value)


# ------------------------------------------------------------------------ dry run
def plan_table(plan: Any) -> Any:
    """The dry run's table: jobs and finished jobs per (topology, N_L)."""
    table = Table(title=f"{plan.name}: {plan.total} jobs, {plan.done} already done ({plan.where})")
    table.add_column("topology")
    for col in ("N_L", "jobs", "done"):
        table.add_column(col, justify="right")
    for (topology, n_l), (jobs, done) in sorted(plan.by_group.items()):
        table.add_row(topology, str(n_l), str(jobs), str(done))
    return table


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def estimate_table(est: Any) -> Any:
    """The estimate (``estimate.estimate``) as a table: one row per cost class, a subtotal per
    topology, and the total."""
    title = f"estimated time on {est.device}, jobs one after another"
    if est.calibration_s:
        title += f" (calibrated in {est.calibration_s:.1f} s)"
    table = Table(title=title)
    for name, justify in (
        ("topology", "left"),
        ("loss", "left"),
        ("jobs", "right"),
        ("epochs", "right"),
        ("steps/epoch", "right"),
        ("s/step", "right"),
        ("eval s/epoch", "right"),
        ("time", "right"),
        ("from", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    per_topology = est.by_topology()

    def subtotal(rows: list[Any], seconds: float) -> str:
        known = [r for r in rows if r.seconds is not None]
        if not known:
            return "?"
        return fmt_duration(seconds) + ("" if len(known) == len(rows) else " + ?")

    def of(topology: str) -> str:
        return subtotal([r for r in est.rows if r.topology == topology], per_topology[topology])

    last = None
    for r in est.rows:
        if last is not None and r.topology != last:
            table.add_row(f"  {last} total", "", "", "", "", "", "", of(last), "", style="dim")
        last = r.topology
        lo, hi = r.steps_per_epoch
        table.add_row(
            r.topology,
            r.kind,
            str(r.jobs),
            str(r.epochs),
            str(lo) if lo == hi else f"{lo}-{hi}",
            "?" if r.step_s is None else f"{r.step_s:.4f}",
            "" if r.eval_s is None else f"{r.eval_s:.1f}",
            fmt_duration(r.seconds),
            r.source,
        )
    if last is not None:
        table.add_row(f"  {last} total", "", "", "", "", "", "", of(last), "", style="dim")
    total = subtotal(est.rows, est.total_s)
    table.add_row(
        "total",
        "",
        str(sum(r.jobs for r in est.rows)),
        str(sum(r.epochs for r in est.rows)),
        "",
        "",
        "",
        total,
        "",
        style="bold",
    )
    if est.job_s:
        table.add_row(
            f"wall time, {est.workers} worker{'s' * (est.workers > 1)}",
            "",
            "",
            "",
            "",
            "",
            "",
            fmt_duration(est.wall_s),
            "with fixed costs",
            style="bold",
        )
    return table
