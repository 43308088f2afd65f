"""Several local worker processes for one sweep: started, watched, stopped, the dead named.

The workers stay in the sweep's process group, so a terminal's Ctrl-C reaches each of them.
The sweep itself, interrupted or terminated (Ctrl-C, ``kill``, a scheduler), forwards SIGTERM
to every worker and waits for all of them: each checkpoints its job and hands it back, and a
worker takes a repeated request for the same stop (see ``runner.StopFlag``). No worker is left
running as an orphan, and one that died on its own is reported, its job put back in the queue.

A worker process is this module run as a program (``python -m invssl.pool SPEC``): the library's
worker, whatever front end started the sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from invssl import runner

# Exit statuses of a worker that stopped as asked: done (0) or interrupted by Ctrl-C (130).
_ORDERLY = (0, 130)


@dataclass
class PoolOutcome:
    stopped_by: Optional[int] = None  # the signal that stopped the sweep, if one did
    died: list[str] = field(default_factory=list)  # one line per worker that died


def spawn_workers(
    db_url: str, n: int, devices: list[str], *, sweep_id: Optional[int], data_root: Optional[str], threads: int = 0
) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` worker processes, round-robin over ``devices``, ``threads`` intra-op threads
    each (0: the CPUs split among them)."""
    env = dict(os.environ, INVSSL_DB=db_url)
    env["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // n))
    procs = []
    # A worker inherits an ignored SIGINT until it installs its own handler: a Ctrl-C while it
    # still imports must not kill it with a traceback (the SIGTERM forwarded below stops it).
    with _ignoring(signal.SIGINT):
        for i in range(n):
            spec = {
                "device": devices[i % len(devices)] if devices else None,
                "sweep_id": sweep_id,
                "data_root": data_root,
            }
            procs.append(subprocess.Popen([sys.executable, "-m", "invssl.pool", json.dumps(spec)], env=env))
    return procs


@contextmanager
def _ignoring(signum: int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def run_pool(
    engine: Any,
    db_url: str,
    n: int,
    devices: list[str],
    *,
    sweep_id: Optional[int],
    data_root: Optional[str],
    threads: int = 0,
    on_poll: Callable[[], None] = lambda: None,
    poll_s: float = 1.0,
) -> PoolOutcome:
    """Run ``n`` workers until every one has exited; ``on_poll`` runs about every ``poll_s``."""
    outcome = PoolOutcome()
    procs = spawn_workers(db_url, n, devices, sweep_id=sweep_id, data_root=data_root, threads=threads)

    def forward(signum: int, _frame: Any) -> None:
        if outcome.stopped_by is None:
            outcome.stopped_by = signum
        _terminate(procs)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Poll every process, not any(): a dead worker is a zombie, alive to the other
        # workers' reaping, until it is waited for.
        while alive := [p for p in procs if p.poll() is None]:
            try:  # wakes as soon as a worker ends: the last one ends the sweep at once
                alive[0].wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                pass
            if outcome.stopped_by is None:
                on_poll()
    finally:
        # Also on an error here (the database gone): no worker outlives the sweep.
        _terminate(procs)
        for p in procs:
            p.wait()
        for s, h in previous.items():
            signal.signal(s, h)
    for i, p in enumerate(procs, start=1):
        stopped_as_asked = outcome.stopped_by is not None and p.returncode == -signal.SIGTERM
        if p.returncode not in _ORDERLY and not stopped_as_asked:
            outcome.died.append(f"worker {i} (pid {p.pid}) {_how(p.returncode)}")
    if outcome.died:
        runner.reap(engine)  # the dead workers' jobs go back to the queue now, not when stale
    return outcome


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _worker_process(spec: str) -> int:
    """One worker of a sweep: its jobs, a line on how it ended, and the exit status ``run_pool``
    reads (0 done, 130 after Ctrl-C, 2 after an error of the user's environment)."""
    from invssl import launch, output
    from invssl.errors import InvsslError

    try:
        summary = launch.worker(os.environ.get("INVSSL_DB"), output.console(), quiet=True, **json.loads(spec))
    except InvsslError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(summary.line(), flush=True)
    return 130 if summary.stopped_by == signal.SIGINT else 0


if __name__ == "__main__":
    code = _worker_process(sys.argv[1])
    # Everything is committed and printed; the interpreter's own teardown (torch's modules)
    # would take about a second more before the sweep could end (BENCHMARKS.md, "Fast by default").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
