"""Failure paths through the real CLI on real SQLite files: results survive, errors are one line."""

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from invssl.db.models import Epoch, Job
from invssl.db.session import open_engine

TINY = """
name: tiny
data: {dataset: chirps, val_size: 50, params: {n_train: 300, n_test: 100, sample_rate: 2000, duration_ms: 250}}
train: {epochs: 2, lr: 0.003, batch_labeled: 10, batch_unlabeled: 40}
grid: {topology: [MLP], n_labeled: [20], alpha: [0.5], seed: [0]}
"""


def invssl(*args, cwd, check=True, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    env.pop("INVSSL_DB", None)
    proc = subprocess.run([sys.executable, "-m", "invssl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc, *fragments):
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def jobs_and_epochs(url):
    engine = open_engine(url)
    try:
        with Session(engine) as s:
            return list(s.scalars(select(Job).order_by(Job.id))), list(s.scalars(select(Epoch)))
    finally:
        engine.dispose()


def finished_database(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    invssl("sweep", "tiny.yaml", "--quiet", cwd=tmp_path)
    return tmp_path / "invssl.db"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_job_killed_between_its_last_epoch_and_finish_resumes_with_its_result(tmp_path):
    done = finished_database(tmp_path)
    copy = tmp_path / "copy.db"
    with sqlite3.connect(done) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    url = f"sqlite:///{copy}"
    (job,), epochs = jobs_and_epochs(url)
    expected = job.result
    assert expected["test_acc"] >= 0 and job.epochs_done == 2
    # As left by a worker killed after recording epoch 2 and before marking the job done.
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Job).values(status="running", result=None, finished_at=None,
                                        host=socket.gethostname(), pid=dead_pid()))
    engine.dispose()
    out = invssl("resume", "--db", str(copy), "--quiet", cwd=tmp_path).stdout
    assert "1 interrupted" in out
    (job,), after = jobs_and_epochs(url)
    assert job.status == "done" and job.attempts == 2
    assert job.result == expected  # rebuilt from the recorded final epoch, not empty
    assert sorted((e.epoch, e.attempt) for e in after) == [(1, 1), (2, 1)]  # nothing recomputed
