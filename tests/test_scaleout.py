"""Many workers, real processes, on SQLite and on a real PostgreSQL server."""

import os
import signal
import subprocess
import sys
import time

import pytest

from invssl.db import queue
from invssl.db.session import open_engine
from invssl.runner import enqueue
from tests.conftest import jobs_and_epochs

DATA = "{dataset: chirps, val_size: 20, params: {n_train: 100, n_test: 20, sample_rate: 1000, duration_ms: 50}}"
TRIVIAL = f"""
name: trivial
data: {DATA}
train: {{epochs: 1, steps_per_epoch: 1, batch_labeled: 10, batch_unlabeled: 10}}
grid: {{topology: [MLP], n_labeled: [10], alpha: [0.5], seed: {list(range(48))}}}
"""
SLOW = f"""
name: slow
data: {DATA}
train: {{epochs: 6, steps_per_epoch: 60, batch_labeled: 10, batch_unlabeled: 40,
        collapse_patience: 0}}  # this tiny MLP predicts one class: it must run on anyway
grid: {{topology: [MLP], n_labeled: [10], alpha: [0.5], seed: [0]}}
"""


def _env(url):
    env = dict(os.environ, OMP_NUM_THREADS="1", INVSSL_DB=url)
    return env


def _worker(url, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "invssl", "worker", "--quiet", *args],
        env=_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _enqueue(tmp_path, url, text):
    (tmp_path / "grid.yaml").write_text(text)
    return enqueue(tmp_path / "grid.yaml", url)


def test_eight_workers_run_every_job_exactly_once(tmp_path, db_url):
    assert _enqueue(tmp_path, db_url, TRIVIAL).new == 48
    start = time.perf_counter()
    procs = [_worker(db_url) for _ in range(8)]
    outputs = [p.communicate(timeout=300) for p in procs]
    seconds = time.perf_counter() - start
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "database is locked" not in err + out
    jobs, epochs = jobs_and_epochs(db_url)
    assert [j.status for j in jobs] == ["done"] * 48
    assert all(j.attempts == 1 for j in jobs)
    assert sorted(e.job_id for e in epochs) == sorted(j.id for j in jobs)  # one epoch row each
    assert len({j.worker for j in jobs}) > 1  # the work really was shared
    print(f"{db_url.split(':')[0]}: 48 jobs by 8 worker processes in {seconds:.1f}s")


def _wait_epochs(url, n, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        assert proc.poll() is None, proc.stderr.read()
        jobs, epochs = jobs_and_epochs(url)
        if len(epochs) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("no epoch recorded in time")


def test_sigkill_then_another_worker_takes_over_after_the_grace_period(tmp_path, db_url):
    _enqueue(tmp_path, db_url, SLOW)
    first = _worker(db_url, "--heartbeat", "0.5")
    _wait_epochs(db_url, 2, first)
    first.kill()
    first.wait()
    (job,), epochs = jobs_and_epochs(db_url)
    before = {e.epoch for e in epochs}
    assert job.status == "running" and 2 <= len(before) < 6
    # Another machine knows nothing of the dead pid: only the stale heartbeat frees the job.
    engine = open_engine(db_url)
    assert queue.reap(engine, stale_after_s=3600) == []
    time.sleep(2.0)
    assert queue.reap(engine, stale_after_s=1.0) == [job.id]
    second = _worker(db_url, "--stale-after", "1")
    assert second.wait(timeout=300) == 0, second.stderr.read()
    (job,), epochs = jobs_and_epochs(db_url)
    assert job.status == "done" and job.attempts == 2
    assert sorted(e.epoch for e in epochs) == [1, 2, 3, 4, 5, 6]
    assert all(e.attempt == (1 if e.epoch in before else 2) for e in epochs)
    # The dead worker's late writes, simulated, are rejected and change nothing.
    with pytest.raises(queue.StaleAttemptError):
        queue.record_epoch(engine, job.id, 1, 7, {"loss": 0.0}, b"late")
    with pytest.raises(queue.StaleAttemptError):
        queue.finish(engine, job.id, 1, {"test_acc": 0.0})
    (after,), epochs_after = jobs_and_epochs(db_url)
    assert after.result == job.result and len(epochs_after) == 6
    assert queue.load_checkpoint(engine, job.id)[1] != b"late"
    engine.dispose()


def test_sigterm_checkpoints_the_epoch_in_progress_and_exits_0(tmp_path, db_url):
    (tmp_path / "slow.yaml").write_text(SLOW)
    out = subprocess.run(
        [sys.executable, "-m", "invssl", "sweep", "slow.yaml", "--enqueue-only"],
        cwd=tmp_path,
        env=_env(db_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "1 jobs (1 new" in out.stdout, out.stderr
    assert [j.status for j in jobs_and_epochs(db_url)[0]] == ["pending"]
    proc = _worker(db_url)
    _wait_epochs(db_url, 1, proc)
    time.sleep(0.2)  # into the next epoch
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    (job,), epochs = jobs_and_epochs(db_url)
    assert job.status == "pending" and 1 <= job.epochs_done < 6
    engine = open_engine(db_url)
    stored = queue.load_checkpoint(engine, job.id)
    assert stored is not None
    engine.dispose()
    proc = _worker(db_url)
    assert proc.wait(timeout=300) == 0
    (job,), epochs = jobs_and_epochs(db_url)
    assert job.status == "done" and sorted(e.epoch for e in epochs) == [1, 2, 3, 4, 5, 6]


def test_sweep_with_two_local_workers(tmp_path, sqlite_url):
    (tmp_path / "grid.yaml").write_text(TRIVIAL.replace(str(list(range(48))), "[0, 1, 2, 3, 4, 5]"))
    proc = subprocess.run(
        [sys.executable, "-m", "invssl", "sweep", "grid.yaml", "--workers", "2"],
        cwd=tmp_path,
        env=_env(sqlite_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "started 2 workers" in proc.stdout and "6 done" in proc.stdout
    jobs, _ = jobs_and_epochs(sqlite_url)
    assert len(jobs) == 6 and {j.status for j in jobs} == {"done"}


def test_a_multi_worker_sweep_holds_one_engine_in_its_parent(tmp_path, sqlite_url, monkeypatch):
    """The sweep's own process opens one engine for the whole command: its display polls the
    database about once a second while the workers run, through that engine, not a new one."""
    from sqlalchemy import Engine, event
    from typer.testing import CliRunner

    from invssl.cli import app

    open_engine(sqlite_url).dispose()  # the schema exists: the migration's own engine is not counted
    (tmp_path / "grid.yaml").write_text(TRIVIAL.replace(str(list(range(48))), "[0, 1, 2, 3]"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    engines = []

    def connected(conn):
        if not any(conn.engine is e for e in engines):
            engines.append(conn.engine)

    event.listen(Engine, "engine_connect", connected)
    try:
        result = CliRunner().invoke(app, ["sweep", "grid.yaml", "--workers", "2", "--db", sqlite_url])
    finally:
        event.remove(Engine, "engine_connect", connected)
    assert len(engines) == 1, [str(e.url) for e in engines]
    assert result.exit_code == 0, result.output
    assert "started 2 workers" in result.output and "4 done" in result.output
