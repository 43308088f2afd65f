"""Failure paths through the real CLI on real SQLite files: results survive, errors are one line."""

import ctypes
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from invssl.db.models import Checkpoint, Job
from invssl.db.session import open_engine
from tests.conftest import jobs_and_epochs

TINY = """
name: tiny
data: {dataset: chirps, val_size: 50, params: {n_train: 300, n_test: 100, sample_rate: 2000, duration_ms: 250}}
train: {epochs: 2, lr: 0.003, batch_labeled: 10, batch_unlabeled: 40}
grid: {topology: [MLP], n_labeled: [20], alpha: [0.5], seed: [0]}
"""


def invssl(*args, cwd, check=True, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    env.pop("INVSSL_DB", None)
    proc = subprocess.run(
        [sys.executable, "-m", "invssl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc, *fragments):
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


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
        conn.execute(
            update(Job).values(
                status="running", result=None, finished_at=None, host=socket.gethostname(), pid=dead_pid()
            )
        )
    engine.dispose()
    out = invssl("resume", "--db", str(copy), "--quiet", cwd=tmp_path).stdout
    assert "1 interrupted" in out
    (job,), after = jobs_and_epochs(url)
    assert job.status == "done" and job.attempts == 2
    assert job.result == expected  # rebuilt from the recorded final epoch, not empty
    assert sorted((e.epoch, e.attempt) for e in after) == [(1, 1), (2, 1)]  # nothing recomputed


# --------------------------------------------------------------- one line, never a traceback
def _drop_root_overrides():
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, from the bounding set
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def permissions_apply():
    """subprocess arguments under which file modes bind: root loses what lets it ignore them."""
    return {"preexec_fn": _drop_root_overrides} if os.geteuid() == 0 else {}


@pytest.fixture
def restore_modes(tmp_path):
    yield
    for path in (tmp_path, *tmp_path.iterdir()):
        path.chmod(0o755)


def test_a_read_only_database_file_is_refused_by_writers_in_one_line(tmp_path, restore_modes):
    db = finished_database(tmp_path)
    db.chmod(0o444)
    for args in (["sweep", "tiny.yaml", "--quiet"], ["worker", "--quiet"], ["resume", "--quiet"]):
        proc = invssl(*args, cwd=tmp_path, check=False, **permissions_apply())
        one_line_error(proc, f"the SQLite file {db} is read-only")
    proc = invssl("status", cwd=tmp_path, check=False, **permissions_apply())
    assert proc.returncode == 0 and "1 done" in proc.stdout, proc.stderr


def test_a_database_in_a_read_only_directory_can_be_read(tmp_path, restore_modes):
    finished_database(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    tmp_path.chmod(0o555)
    run = permissions_apply()
    status = invssl("status", cwd=tmp_path, check=False, **run)
    assert status.returncode == 0 and "1 done" in status.stdout, status.stderr
    report = invssl("report", "--rows", "topology", "--format", "csv", cwd=tmp_path, check=False, **run)
    assert report.returncode == 0 and "MLP" in report.stdout, report.stderr
    plan = invssl("sweep", "tiny.yaml", "--dry-run", "--no-calibrate", cwd=tmp_path, check=False, **run)
    assert plan.returncode == 0 and "1 jobs, 1 already done" in plan.stdout, plan.stderr
    one_line_error(
        invssl("sweep", "tiny.yaml", "--quiet", cwd=tmp_path, check=False, **run),
        f"the directory {tmp_path} is read-only",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_reconstruct_from_a_damaged_checkpoint_is_one_line(tmp_path):
    db = finished_database(tmp_path)
    engine = open_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(update(Checkpoint).values(data=b"\x00\x11 not a checkpoint"))
    engine.dispose()
    one_line_error(invssl("reconstruct", "1", cwd=tmp_path, check=False), "checkpoint is damaged")


def test_dry_run_against_an_unreachable_server_is_one_line(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"postgresql+psycopg://alice:hunter2@127.0.0.1:{port}/results"
        proc = invssl("sweep", "tiny.yaml", "--dry-run", "--db", url, cwd=tmp_path, check=False)
    one_line_error(proc, f"alice:***@127.0.0.1:{port}/results")
    assert "hunter2" not in proc.stdout + proc.stderr
