"""Progress displays of the command line: a worker's jobs and epochs, a sweep's jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console


class LiveProgress:
    """Overall jobs and the current job's epoch, with its latest accuracy."""

    def __init__(self, console: Console, total_jobs: int) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, transient=False)
        self.jobs = self.progress.add_task("jobs", total=total_jobs)
        self.job = self.progress.add_task("", total=1, visible=False)
        self.label = ""

    def events(self) -> Any:
        from invssl.runner import WorkerEvents

        return WorkerEvents(job_started=self._started, step=self._step, epoch=self._epoch,
                            job_ended=self._ended)

    def _started(self, claim: Any, cfg: Any) -> None:
        self.label = cfg.label()
        self.progress.reset(self.job, total=None, visible=True,
                            description=f"  {cfg.label()} epoch {claim.epochs_done + 1}/{cfg.epochs}")

    def _step(self, step: int, total: int) -> None:
        self.progress.update(self.job, completed=step, total=total)

    def _epoch(self, cfg: Any, rep: Any) -> None:
        acc = " ".join(f"{k}={rep.metrics[k]:.2%}" for k in ("val_acc", "test_acc") if k in rep.metrics)
        nxt = min(rep.epoch + 1, cfg.epochs)
        self.progress.update(self.job, description=f"  {cfg.label()} epoch {nxt}/{cfg.epochs} ({acc})")

    def _ended(self, claim: Any, status: str, message: str) -> None:
        self.progress.advance(self.jobs)
        style = {"done": "green", "failed": "red"}.get(status, "yellow")
        # A failure's message already names the job.
        what = message if status == "failed" else f"{self.label}: {message}"
        self.progress.console.print(f"[{style}]{status}[/] {claim.key[:10]} {what}", highlight=False)


@contextmanager
def jobs_bar(console: Console, engine: Any, sweep: str, total: int) -> Iterator[Callable[[], None]]:
    """A bar of the sweep's finished jobs; yields the function that refreshes it from the database."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from invssl.runner import sweep_counts

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("jobs", total=total)
        start = sweep_counts(engine, sweep)

        def refresh() -> None:
            now = sweep_counts(engine, sweep)
            progress.update(task, completed=(now["done"] + now["failed"])
                            - (start["done"] + start["failed"]))

        yield refresh
