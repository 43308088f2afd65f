"""What a sweep, worker or resume shows while jobs run.

On a terminal: a rich progress display (jobs bar with ETA, the current job's epoch). Anywhere
else (a file, a Slurm log, a pipe): plain lines, one per finished epoch and one per finished
job, never wrapped or redrawn. Both say ``done``/``failed`` per job with the jobs left and the
ETA, whether one worker runs in this process or several run as child processes, and a job
handed back by Ctrl-C is reported as such, never counted as done.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Optional, TextIO

from rich.console import Console

from invssl.labels import job_label


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _accuracies(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={metrics[k]:.2%}" for k in ("val_acc", "test_acc") if k in metrics)


class _Counter:
    """Finished jobs out of ``total`` and the ETA from the mean time per finished job."""

    def __init__(self, total: int) -> None:
        self.total, self.ended, self.start = total, 0, time.monotonic()

    def advance(self) -> None:
        self.ended += 1

    def text(self) -> str:
        if not self.total:
            return f"{self.ended} jobs"
        left = max(0, self.total - self.ended)
        spent = time.monotonic() - self.start
        eta = f", ETA {_clock(spent / self.ended * left)}" if self.ended and left else ""
        return f"{self.ended}/{self.total} jobs{eta}"


class Lines:
    """Plain one-line records for output that is not a terminal."""

    def __init__(self, total: int, out: Optional[TextIO] = None) -> None:
        self.out = out or sys.stdout
        self.count = _Counter(total)
        self.key = self.label = ""

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def events(self) -> Any:
        from invssl.runner import WorkerEvents

        return WorkerEvents(job_started=self.started, epoch=self.epoch, job_ended=self.ended)

    def started(self, claim: Any, cfg: Any) -> None:
        self.key, self.label = claim.key[:10], cfg.label()

    def epoch(self, cfg: Any, rep: Any) -> None:
        self.epoch_line(self.key, self.label, rep.epoch, cfg.epochs, rep.metrics)

    def epoch_line(self, key: str, label: str, epoch: int, epochs: Any, metrics: dict[str, Any]) -> None:
        wall = metrics.get("wall_s")
        took = f" ({wall:.1f} s)" if wall is not None else ""
        self._say(f"{key[:10]} {label}: epoch {epoch}/{epochs} {_accuracies(metrics)}{took}")

    def ended(self, claim: Any, status: str, message: str) -> None:
        # A failure's message already names the job.
        self.job_line(status, claim.key, message if status == "failed" else f"{self.label}: {message}")

    def job_line(self, status: str, key: str, what: str) -> None:
        if status in ("done", "failed"):
            self.count.advance()
        status = "handed back" if status == "released" else status
        self._say(f"{status} {key[:10]} {what} [{self.count.text()}]")

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class Live:
    """A rich progress display: the jobs bar with its ETA, and the current job's epoch."""

    def __init__(self, total: int, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.jobs = self.progress.add_task("jobs", total=total or None)
        self.job = self.progress.add_task("", total=1, visible=False)
        self.label = ""

    def events(self) -> Any:
        from invssl.runner import WorkerEvents

        return WorkerEvents(job_started=self.started, step=self.step, epoch=self.epoch, job_ended=self.ended)

    def started(self, claim: Any, cfg: Any) -> None:
        self.label = cfg.label()
        self.progress.reset(
            self.job,
            total=None,
            visible=True,
            description=f"  {cfg.label()} epoch {claim.epochs_done + 1}/{cfg.epochs}",
        )

    def step(self, step: int, total: int) -> None:
        self.progress.update(self.job, completed=step, total=total)

    def epoch(self, cfg: Any, rep: Any) -> None:
        nxt = min(rep.epoch + 1, cfg.epochs)
        self.progress.update(
            self.job, description=f"  {cfg.label()} epoch {nxt}/{cfg.epochs} ({_accuracies(rep.metrics)})"
        )

    def ended(self, claim: Any, status: str, message: str) -> None:
        # A failure's message already names the job.
        self.job_line(status, claim.key, message if status == "failed" else f"{self.label}: {message}")

    def job_line(self, status: str, key: str, what: str) -> None:
        if status in ("done", "failed"):
            self.progress.advance(self.jobs)
        style = {"done": "green", "failed": "red"}.get(status, "yellow")
        shown = "handed back" if status == "released" else status
        self.progress.console.print(f"[{style}]{shown}[/] {key[:10]} {what}", highlight=False, markup=True)

    def __enter__(self) -> Live:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


def display(total: int, console: Console, quiet: bool) -> Optional[Any]:
    """The display that suits the output: None when quiet, Live on a terminal, else Lines."""
    if quiet:
        return None
    return Live(total, console) if console.is_terminal else Lines(total, console.file)


class ChildJobs:
    """Jobs ended by worker processes (see ``pool.run_pool``), each reported once to ``show``,
    and, in plain output, their epochs as they are recorded.

    ``poll`` returns the sweep's ended jobs (id, key, status, config, result, error), ``epochs``
    the sweep's epochs recorded after a given epoch id; what was recorded before this object was
    made is not reported. Call it after each poll of the pool and once more when the workers
    have exited.
    """

    def __init__(
        self,
        poll: Callable[[], list[dict[str, Any]]],
        show: Optional[Any],
        epochs: Callable[[int], list[dict[str, Any]]] = lambda after: [],
    ) -> None:
        self.poll, self.show, self.epochs = poll, show, epochs
        self.seen = {job["id"] for job in poll()}
        self.last_epoch = max((e["id"] for e in epochs(0)), default=0)

    def __call__(self) -> None:
        for row in self.epochs(self.last_epoch):
            self.last_epoch = row["id"]
            if isinstance(self.show, Lines):
                config = row["config"] or {}
                self.show.epoch_line(row["key"], job_label(config), row["epoch"], config.get("epochs", "?"), row)
        for job in self.poll():
            if job["id"] in self.seen:
                continue
            self.seen.add(job["id"])
            if self.show is None:
                continue
            if job["status"] == "failed":
                what = job["error"] or ""
            else:
                what = f"{job_label(job['config'] or {})}: {_accuracies(job['result'] or {})}"
            self.show.job_line(job["status"], job["key"], what)
