"""Sweeps, workers, resume and status: the glue between configs, the trainer and the database.

A sweep expands its experiment file, enqueues every job (a job's key makes this idempotent, so
a grid can grow) and runs workers. A worker claims one pending job at a time, trains it,
heartbeats while it runs, records each epoch with its checkpoint in one transaction, and on
SIGTERM/SIGINT stores the epoch in progress and hands the job back.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import torch

from invssl import __version__
from invssl.config import Experiment, JobConfig, load_experiment
from invssl.db import queue, reads
from invssl.db.session import mask_url, open_engine, resolve_url
from invssl.defaults import HEARTBEAT_S, STALE_AFTER_S
from invssl.devices import device_name, resolve_device
from invssl.errors import DatabaseLost, InvsslError
from invssl.train import EpochReport, Prepared, train


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a result: versions, device, host and the invssl checkout's commit."""
    env: dict[str, Any] = {
        "invssl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }
    for pkg in ("torchvision", "numpy"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    if device.type == "cuda":
        env["cudnn"] = torch.backends.cudnn.version()
    env["git_commit"] = _git_commit()
    return env


def _git_commit() -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed worker stays a zombie until its parent polls it; signals still "reach" it, but
    # it will never finish its job, so it counts as dead (Linux; elsewhere kill is all we have).
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def reap(engine: Any, stale_after_s: float = STALE_AFTER_S) -> list[int]:
    """Return jobs of dead workers to the queue (stale heartbeat, or a dead pid on this host)."""
    return queue.reap(engine, stale_after_s=stale_after_s, host=socket.gethostname(), alive=_pid_alive)


@dataclass
class WorkerEvents:
    """Hooks a front end (a progress display) can set; all optional."""

    job_started: Callable[[queue.Claim, JobConfig], None] = lambda claim, cfg: None
    step: Callable[[int, int], None] = lambda step, total: None
    epoch: Callable[[JobConfig, EpochReport], None] = lambda cfg, rep: None
    job_ended: Callable[[queue.Claim, str, str], None] = lambda claim, status, msg: None


@dataclass
class WorkerSummary:
    done: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    failures: list[str] = field(default_factory=list)
    stopped_by: Optional[int] = None  # SIGINT or SIGTERM, if a signal ended the run

    def line(self) -> str:
        """How the worker ended, for the last line of its output."""
        return f"worker: {self.done} done, {self.failed} failed, {self.released} handed back"


class StopFlag:
    """Set by SIGTERM/SIGINT; the trainer checks it between steps.

    Further signals repeat the same request: a terminal's Ctrl-C reaches every worker of a
    sweep, which then forwards SIGTERM to them as well. Only SIGINT after SIGINT (Ctrl-C
    pressed twice) stops at once, and the job is handed back even then.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: Optional[int] = None  # the first signal received

    def __call__(self) -> bool:
        return self.event.is_set()

    @contextmanager
    def on_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, _frame: Any) -> None:
            if signum == self.signal == signal.SIGINT:
                raise KeyboardInterrupt
            if self.signal is None:
                self.signal = signum
            self.event.set()

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class _Heartbeat(threading.Thread):
    """Keeps the claim alive; notices when the job was taken from this worker."""

    def __init__(self, engine: Any, claim: queue.Claim, every: float) -> None:
        super().__init__(daemon=True)
        self.engine, self.claim, self.every = engine, claim, every
        self.done = threading.Event()
        self.lost = threading.Event()
        self.gone: Optional[DatabaseLost] = None  # the database went away for good

    def run(self) -> None:
        while not self.done.wait(self.every):
            try:
                queue.heartbeat(self.engine, self.claim.job_id, self.claim.attempt)
            except queue.StaleAttemptError:
                self.lost.set()
                return
            except DatabaseLost as exc:
                self.gone = exc
                return
            except Exception:  # a database hiccup: try again at the next beat
                continue


class Worker:
    def __init__(
        self,
        db_url: Optional[str] = None,
        *,
        device: Optional[str] = None,
        data_root: Optional[str] = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
        events: Optional[WorkerEvents] = None,
        engine: Any = None,
    ) -> None:
        self.engine = engine if engine is not None else open_engine(resolve_url(db_url), upgrade=True)
        self.device = device
        self.data_root = data_root
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.events = events or WorkerEvents()
        self.stop = StopFlag()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, *, sweep_id: Optional[int] = None, forever: bool = False, poll_s: float = 5.0) -> WorkerSummary:
        """Run jobs until none is left (or a signal); ``stopped_by`` says which signal."""
        summary = WorkerSummary()
        with self.stop.on_signals():
            try:
                self._loop(summary, sweep_id, forever, poll_s)
            except KeyboardInterrupt:  # Ctrl-C twice: run_claim has handed the job back
                pass
        summary.stopped_by = self.stop.signal
        return summary

    def _loop(self, summary: WorkerSummary, sweep_id: Optional[int], forever: bool, poll_s: float) -> None:
        # Jobs of workers that died (here or on another machine) are work too.
        reap(self.engine, self.stale_after_s)
        while not self.stop():
            claim = queue.claim(
                self.engine, worker=self.name, host=socket.gethostname(), pid=os.getpid(), sweep_id=sweep_id
            )
            if claim is None:
                # A worker of this sweep may have died meanwhile: its job is the work left.
                if reap(self.engine, self.stale_after_s):
                    continue
                if not forever:
                    break
                self.stop.event.wait(poll_s)
                continue
            status, message = self.run_claim(claim)
            setattr(summary, status, getattr(summary, status) + 1)
            if status == "failed":
                summary.failures.append(message)

    def run_claim(self, claim: queue.Claim) -> tuple[str, str]:
        """Train one claimed job; returns (done|failed|released|lost, message)."""
        config = JobConfig(**claim.config)
        if self.data_root:
            config = config.model_copy(update={"data_root": self.data_root})
        self.events.job_started(claim, config)
        beat = _Heartbeat(self.engine, claim, self.heartbeat_s)
        beat.start()
        job_id, attempt = claim.job_id, claim.attempt
        try:
            device = resolve_device(self.device or config.device)
            queue.set_job_info(self.engine, job_id, attempt, env=environment(device))
            stored = queue.load_checkpoint(self.engine, job_id)

            def on_prepared(prep: Prepared) -> None:
                queue.set_job_info(self.engine, job_id, attempt, split=prep.split.to_json())

            def on_epoch(rep: EpochReport) -> None:
                queue.record_epoch(self.engine, job_id, attempt, rep.epoch, rep.metrics, rep.checkpoint)
                self.events.epoch(config, rep)

            metrics, partial = train(
                config,
                device=device,
                checkpoint=stored[1] if stored else None,
                on_epoch=on_epoch,
                on_step=self.events.step,
                on_prepared=on_prepared,
                should_stop=lambda: self.stop() or beat.lost.is_set() or beat.gone is not None,
            )
            if beat.gone is not None:
                raise beat.gone
            if beat.lost.is_set():
                raise queue.StaleAttemptError("job was handed to another worker")
            if partial is not None:
                queue.save_checkpoint(self.engine, job_id, attempt, partial)
                queue.release(self.engine, job_id, attempt)
                outcome = ("released", "stopped; the job will resume from its checkpoint")
            else:
                queue.finish(self.engine, job_id, attempt, metrics)
                outcome = ("done", _summary_line(metrics))
        except queue.StaleAttemptError:
            outcome = ("lost", "job was handed to another worker; this attempt's results dropped")
        except DatabaseLost:
            raise  # nothing can be recorded: the job stays running until it is reclaimed
        except KeyboardInterrupt:
            self._hand_back(claim)
            raise
        except torch.cuda.OutOfMemoryError:
            outcome = self._fail(
                claim,
                f"{config.label()}: CUDA out of memory (try a smaller batch, bf16 precision, or fewer jobs per GPU)",
            )
        except (InvsslError, ValueError) as exc:
            outcome = self._fail(claim, f"{config.label()}: {exc}")
        except Exception as exc:  # a bug or a broken environment: the sweep goes on
            outcome = self._fail(claim, f"{config.label()}: {type(exc).__name__}: {exc}")
        finally:
            beat.done.set()
        self.events.job_ended(claim, *outcome)
        return outcome

    def _hand_back(self, claim: queue.Claim) -> None:
        """Release without a checkpoint of the epoch in progress: resume from the last epoch."""
        try:
            queue.release(self.engine, claim.job_id, claim.attempt)
        except InvsslError:  # lost or unreachable: reclaimed later as a dead worker's job
            pass

    def _fail(self, claim: queue.Claim, message: str) -> tuple[str, str]:
        try:
            queue.fail(self.engine, claim.job_id, claim.attempt, message)
        except queue.StaleAttemptError:
            return ("lost", message)
        return ("failed", message)


def _summary_line(metrics: dict[str, float]) -> str:
    parts = [f"{k}={metrics[k]:.4f}" for k in ("val_acc", "test_acc") if k in metrics]
    return " ".join(parts)


@dataclass
class Plan:
    """What a sweep would do: jobs per (topology, n_labeled), and how many are already done."""

    name: str
    total: int
    done: int
    by_group: dict[tuple[str, int], tuple[int, int]]  # (topology, n_labeled) -> (jobs, done)
    jobs: list[JobConfig]
    done_keys: set[str] = field(default_factory=set)  # keys of the jobs already done
    where: str = ""  # the database compared with, as printed


def plan(path: str | Path, db_url: Optional[str] = None, overrides: Sequence[str] = ()) -> Plan:
    """Expand the experiment and compare with the database without writing anything."""
    experiment, jobs = load_experiment(path, overrides)
    url = resolve_url(db_url)
    done_keys = reads.done_keys_readonly(url, [j.key for j in jobs])
    groups: dict[tuple[str, int], list[int]] = {}
    for job in jobs:
        g = groups.setdefault((job.topology, job.n_labeled), [0, 0])
        g[0] += 1
        g[1] += job.key in done_keys
    return Plan(
        experiment.name,
        len(jobs),
        sum(j.key in done_keys for j in jobs),
        {k: (v[0], v[1]) for k, v in groups.items()},
        jobs,
        set(done_keys),
        mask_url(url),
    )


@dataclass
class Enqueued:
    sweep_id: int
    name: str
    new: int
    existing: int
    keys: list[str]


def enqueue(path: str | Path, db_url: Optional[str] = None, overrides: Sequence[str] = ()) -> Enqueued:
    """Validate and expand the experiment (nothing is written if that fails), then enqueue it."""
    experiment, jobs = load_experiment(path, overrides)
    engine = open_engine(resolve_url(db_url), upgrade=True)
    try:
        return enqueue_jobs(engine, experiment, jobs)
    finally:
        engine.dispose()


def enqueue_jobs(engine: Any, experiment: Experiment, jobs: Sequence[JobConfig]) -> Enqueued:
    """The experiment's sweep, created or updated, with ``jobs`` (its expansion) in the queue."""
    from invssl.estimate import claim_order

    sweep_id = queue.ensure_sweep(engine, experiment.name, experiment.model_dump(mode="json"))
    # Enqueue order is claim order: the costliest jobs first, so the workers end together.
    new, existing = queue.enqueue(engine, sweep_id, [(j.key, j.model_dump(mode="json")) for j in claim_order(jobs)])
    return Enqueued(sweep_id, experiment.name, new, existing, [j.key for j in jobs])
