"""The work of ``sweep`` (fail-fast checks, enqueue, then workers with a display), ``worker``
and ``resume``.

Everything that can be wrong with a sweep's environment is checked before a single job is
queued: every device named, every dataset's files (downloaded here, once, when the file says
``download: true``). Reusing a sweep name with a changed spec is reported, since its earlier
jobs stay in the sweep. The outcome says which signal stopped the run and which worker
processes died; ``cli.py`` turns it into the exit status. Each command opens one engine and
disposes of it at its end; the worker processes of a sweep open their own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rich.console import Console

from invssl import progress
from invssl.config import Experiment, JobConfig, load_experiment
from invssl.defaults import HEARTBEAT_S, STALE_AFTER_S

Say = Callable[[str], None]


@dataclass
class Outcome:
    name: str
    counts: Counter[str]
    # SIGINT or SIGTERM, if a signal stopped the run; the jobs in progress were handed back.
    stopped_by: Optional[int] = None
    died: list[str] = field(default_factory=list)  # one line per worker process that died

    def line(self) -> str:
        """The sweep's jobs by state, for the last line of its output."""
        c = self.counts
        states = ", ".join(f"{c[s]} {s}" for s in ("done", "failed", "pending", "running") if c[s])
        return f"sweep [bold]{self.name}[/]: {states or 'no jobs'}"


def check_data(jobs: Iterable[JobConfig], data_root: Optional[str], fetch: bool) -> None:
    """Every dataset's files present (DataError otherwise); downloads them when ``fetch`` and
    the job allows it. ``data_root`` (the ``--data-root`` option) replaces each job's root."""
    from invssl import data

    seen: set[str] = set()
    for job in jobs:
        root = data_root or job.data_root
        ident = json.dumps([job.dataset, root, job.download])
        if ident not in seen:
            seen.add(ident)
            data.ensure_files(job.dataset, root=root, download=job.download, fetch=fetch)


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two specs of one sweep, as ``path: old -> new``; where only the data
    is moved or a grid list grew (the way a grid is meant to grow), nothing."""
    a, b = _flat(old), _flat(new)
    out = []
    for path in sorted(set(a) | set(b)):
        before, after = a.get(path), b.get(path)
        if before == after or path in ("data.root", "data.download"):
            continue
        if (
            path.startswith("grid.")
            and isinstance(before, list)
            and isinstance(after, list)
            and all(v in after for v in before)
        ):
            continue
        out.append(f"{path}: {_show(before)} -> {_show(after)}")
    return out


def _flat(spec: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(spec, dict) and not (prefix.startswith("grid.") or "kind" in spec):
        out: dict[str, Any] = {}
        for k, v in spec.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: spec}


def _show(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, separators=(", ", ": "))


def _warn_if_changed(engine: Any, experiment: Experiment, warn: Say) -> None:
    from invssl.db import reads

    old = reads.sweep_spec(engine, experiment.name)
    changes = [] if old is None else spec_changes(old, experiment.model_dump(mode="json"))
    if changes:
        warn(
            f"warning: sweep {experiment.name!r} was enqueued before with another spec "
            f"({'; '.join(changes)}); its earlier jobs stay in it, and a report over the sweep "
            "refuses to pool them with the new ones: give the sweep a new name, or pick jobs "
            "by the fields that changed"
        )


def run_local(
    url: str,
    console: Console,
    device: Optional[str],
    data_root: Optional[str],
    quiet: bool,
    sweep_id: Optional[int] = None,
    total: int = 0,
    *,
    forever: bool = False,
    stale_after: float = STALE_AFTER_S,
    heartbeat: float = HEARTBEAT_S,
    engine: Any = None,
) -> Any:
    """One worker in this process (on ``engine`` if given); returns its summary, whose
    ``stopped_by`` names the signal that stopped it."""
    from invssl.runner import Worker

    show = progress.display(total, console, quiet)
    worker = Worker(
        url,
        device=device,
        data_root=data_root,
        stale_after_s=stale_after,
        heartbeat_s=heartbeat,
        events=show.events() if show else None,
        engine=engine,
    )
    try:
        with show or nullcontext():
            return worker.run(sweep_id=sweep_id, forever=forever)
    finally:
        if engine is None:  # its own: closed here, not left to the interpreter's exit
            worker.engine.dispose()


def worker(
    db: Optional[str],
    console: Console,
    device: Optional[str],
    data_root: Optional[str],
    quiet: bool,
    sweep_id: Optional[int] = None,
    *,
    forever: bool = False,
    stale_after: float = STALE_AFTER_S,
    heartbeat: float = HEARTBEAT_S,
) -> Any:
    """``invssl worker``, and each worker process of a sweep: jobs claimed one at a time until
    none is left (or, ``forever``, until a signal)."""
    from invssl.db.session import resolve_url
    from invssl.devices import check_devices

    check_devices([device])
    url = resolve_url(db)
    return run_local(
        url, console, device, data_root, quiet, sweep_id, forever=forever, stale_after=stale_after, heartbeat=heartbeat
    )


def upgrade(db: Optional[str]) -> str:
    """The schema created or brought to this version's head; returns where, as printed."""
    from invssl.db.session import mask_url, resolve_url
    from invssl.db.session import upgrade as upgrade_schema

    url = resolve_url(db)
    upgrade_schema(url)
    return mask_url(url)


def resume(
    db: Optional[str],
    console: Console,
    say: Say,
    device: Optional[str],
    data_root: Optional[str],
    quiet: bool,
    stale_after: float,
    retry: Optional[int] = None,
) -> tuple[Optional[int], int]:
    """Dead workers' jobs (and, with ``retry``, failed ones tried fewer than ``retry`` times) back
    to the queue, then run every pending job here; returns the signal that stopped the run, if
    one did, and how many jobs have failed."""
    from invssl import runner
    from invssl.db import queue, reads
    from invssl.db.session import open_engine, resolve_url
    from invssl.devices import check_devices

    check_devices([device])
    url = resolve_url(db)
    engine = open_engine(url)
    try:
        reaped = runner.reap(engine, stale_after)
        retried = queue.retry_failed(engine, max_attempts=retry) if retry is not None else 0
        pending = reads.status_counts(engine).get("pending", 0)
        say(f"resume: {len(reaped)} interrupted, {retried} failed requeued, {pending} pending")
        stopped_by = None
        if pending:
            stopped_by = run_local(url, console, device, data_root, quiet, total=pending, engine=engine).stopped_by
        return stopped_by, reads.status_counts(engine).get("failed", 0)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class SweepRequest:
    """What ``invssl sweep`` asks for: the experiment file, its overrides, and where to run it."""

    file: Path
    overrides: Sequence[str] = ()
    db: Optional[str] = None  # a URL; None: ``$INVSSL_DB`` or the default
    device: Optional[str] = None
    devices: Optional[str] = None  # comma-separated, one worker each (round-robin)
    workers: int = 0  # 0: choose (devices.plan_workers)
    threads: int = 0  # intra-op threads per worker; 0: choose
    workers_per_device: int = 0  # GPU workers per device; 0: choose
    data_root: Optional[str] = None  # replaces every job's data root
    enqueue_only: bool = False
    quiet: bool = False

    def device_list(self) -> list[str]:
        return self.devices.split(",") if self.devices else []


def dry_run(request: SweepRequest, *, calibrate: bool) -> tuple[Any, Any]:
    """The plan and its time estimate, after the same device and data checks as a real run
    (nothing downloaded); ``calibrate`` times a few steps of configurations never recorded."""
    import torch

    from invssl import estimate, runner
    from invssl.db.session import resolve_url
    from invssl.devices import check_devices, default_devices, plan_workers

    url, data_root = resolve_url(request.db), request.data_root
    plan = runner.plan(request.file, url, request.overrides)
    check_devices([request.device, *request.device_list()])
    check_data(plan.jobs, data_root, fetch=False)
    jobs = [j.model_copy(update={"data_root": data_root}) for j in plan.jobs] if data_root else plan.jobs
    todo = sum(j.key not in plan.done_keys for j in jobs)
    devs = request.device_list() or ([request.device] if request.device else default_devices())
    probe = _gpu_probe(jobs, data_root, lambda _: None)
    workers = plan_workers(devs, todo, request.workers, request.threads, request.workers_per_device, probe)
    threads = torch.get_num_threads()
    torch.set_num_threads(workers.threads)  # each worker's step time is what counts
    try:
        est = estimate.estimate(
            jobs,
            done=plan.done_keys,
            device=request.device,
            db_url=url,
            calibrate_missing=calibrate,
            workers=workers.n,
        )
    finally:
        torch.set_num_threads(threads)
    est.notes.append(f"the sweep would run {workers.why}")
    return plan, est


def sweep(request: SweepRequest, console: Console, say: Say, warn: Say) -> Optional[Outcome]:
    """Check, enqueue and run a sweep; None with ``enqueue_only``."""
    from invssl import runner
    from invssl.db.session import mask_url, open_engine, resolve_url
    from invssl.devices import check_devices, default_devices

    url = resolve_url(request.db)
    experiment, jobs = load_experiment(request.file, request.overrides)
    devs = request.device_list() or ([request.device] if request.device else default_devices())
    check_devices([request.device, *devs])
    check_data(jobs, request.data_root, fetch=True)
    engine = open_engine(url)
    try:
        _warn_if_changed(engine, experiment, warn)
        enq = runner.enqueue_jobs(engine, experiment, jobs)
        say(
            f"sweep [bold]{enq.name}[/]: {len(enq.keys)} jobs ({enq.new} new, "
            f"{enq.existing} already known) in {mask_url(url)}"
        )
        if request.enqueue_only:
            return None
        return _run(engine, url, enq, console, say, devs, request, jobs)
    finally:
        engine.dispose()


def _gpu_probe(jobs: list[Any], data_root: Optional[str], say: Say) -> Any:
    """How many workers share a GPU, measured on the sweep's costliest job (its first claim)."""

    def probe(gpu: str, per_gpu: int) -> Any:
        from invssl import data as datasets
        from invssl.estimate import claim_order
        from invssl.sidebyside import choose_per_device

        job = claim_order(jobs)[0]
        info = datasets.info(job.dataset, root=data_root or job.data_root, seed=job.seed, **job.data_params)
        say(f"measuring how many workers share {gpu} (--workers-per-device K skips this)")
        return choose_per_device(job, tuple(info.input_shape), info.num_classes, gpu, per_gpu)

    return probe


def _run(
    engine: Any, url: str, enq: Any, console: Console, say: Say, devs: list[str], request: SweepRequest, jobs: list[Any]
) -> Outcome:
    import torch

    from invssl import pool, runner
    from invssl.db import reads
    from invssl.devices import plan_workers

    runner.reap(engine)
    counts = Counter(reads.status_counts(engine, sweep=enq.name))
    todo = counts["pending"] + counts["running"]
    probe = _gpu_probe(jobs, request.data_root, say)
    plan = plan_workers(devs, todo, request.workers, request.threads, request.workers_per_device, probe)
    n = plan.n
    outcome = Outcome(enq.name, counts)
    if todo == 0:
        say("nothing to do: every job of this sweep has finished")
    elif n == 1:
        say(f"running {plan.why}")
        torch.set_num_threads(plan.threads)
        device = devs[0] if devs else None
        ran_here = run_local(url, console, device, request.data_root, request.quiet, enq.sweep_id, todo, engine=engine)
        outcome.stopped_by = ran_here.stopped_by
    else:
        say(f"started {plan.why}" + (f" on {', '.join(devs)}" if devs else ""))
        show = progress.display(todo, console, request.quiet)
        ended = progress.ChildJobs(
            lambda: reads.ended_jobs(engine, enq.sweep_id),
            show,
            lambda after: reads.sweep_epochs_after(engine, enq.sweep_id, after),
        )
        with show or nullcontext():
            ran = pool.run_pool(
                engine,
                url,
                n,
                devs,
                sweep_id=enq.sweep_id,
                data_root=request.data_root,
                threads=plan.threads,
                on_poll=ended,
            )
            ended()
        outcome.stopped_by, outcome.died = ran.stopped_by, ran.died
    outcome.counts = Counter(reads.status_counts(engine, sweep=enq.name))
    return outcome
