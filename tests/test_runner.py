"""The runner end to end through the real CLI, on real SQLite files and real processes."""

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from invssl.db.models import Epoch, Job
from invssl.db.session import open_engine

TINY = """
name: tiny
data: {dataset: chirps, val_size: 50, params: {n_train: 300, n_test: 100, sample_rate: 2000, duration_ms: 250}}
train: {epochs: 2, lr: 0.003, batch_labeled: 10, batch_unlabeled: 40}
grid:
  topology: [MLP]
  n_labeled: [20]
  alpha: [0.5, 1.0]
  seed: [0, 1]
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


def rows(url, model):
    engine = open_engine(url)
    try:
        with Session(engine) as s:
            return list(s.scalars(select(model)))
    finally:
        engine.dispose()


def test_sweep_end_to_end_then_grow(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    plan = invssl("sweep", "tiny.yaml", "--dry-run", cwd=tmp_path).stdout
    assert "4 jobs, 0 already done" in plan
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # dry-run wrote nothing
    out = invssl("sweep", "tiny.yaml", "--quiet", cwd=tmp_path).stdout
    assert "4 jobs (4 new, 0 already known)" in out and "4 done" in out
    url = f"sqlite:///{tmp_path / 'invssl.db'}"
    jobs = rows(url, Job)
    assert len(jobs) == 4 and {j.status for j in jobs} == {"done"}
    assert all(j.attempts == 1 and j.result["test_acc"] >= 0 and j.env["torch"] for j in jobs)
    assert all(j.split and j.config["epochs"] == 2 for j in jobs)
    epochs = rows(url, Epoch)
    assert sorted((e.job_id, e.epoch) for e in epochs) == sorted((j.id, k) for j in jobs for k in (1, 2))
    # growing the grid runs only the new points
    (tmp_path / "tiny.yaml").write_text(TINY.replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    plan = invssl("sweep", "tiny.yaml", "--dry-run", cwd=tmp_path).stdout
    assert "6 jobs, 4 already done" in plan
    out = invssl("sweep", "tiny.yaml", "--quiet", cwd=tmp_path).stdout
    assert "(2 new, 4 already known)" in out and "6 done" in out
    assert len(rows(url, Epoch)) == 12


@pytest.mark.parametrize(
    "patch,message",
    [
        (("alpha: [0.5, 1.0]", "alpah: [0.5]"), "grid.alpah: unknown field"),
        (("alpha: [0.5, 1.0]", "alpha: [2]"), "alpha: must lie in [0, 1]"),
        (("[MLP]", "[Nope]"), "unknown topology 'Nope'; valid:"),
        (("dataset: chirps", "dataset: nope"), "unknown dataset 'nope'; valid:"),
        (("n_labeled: [20]", "n_labeled: [21]"), "not divisible by the 10 classes"),
        (("n_labeled: [20]", "n_labeled: [1000]"), "exceeds the 300 training examples"),
        (("seed: [0, 1]", "seed: []"), "grid.seed: empty list"),
        (("grid:", "grid: ["), "YAML syntax error at line"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, patch, message):
    (tmp_path / "bad.yaml").write_text(TINY.replace(*patch))
    proc = invssl("sweep", "bad.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_missing_file_exits_2(tmp_path):
    proc = invssl("sweep", "nope.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "nope.yaml: no such file" in proc.stderr
    assert list(tmp_path.iterdir()) == []


SLOW = """
name: slow
data: {dataset: chirps, val_size: 50, params: {n_train: 300, n_test: 100, sample_rate: 2000, duration_ms: 250}}
train: {epochs: 6, lr: 0.003, batch_labeled: 10, batch_unlabeled: 40, steps_per_epoch: 40,
        collapse_patience: 0}  # this tiny MLP predicts one class: a collapse that must run on
grid: {topology: [MLP], n_labeled: [20], alpha: [0.5], seed: [0]}
"""


def _wait_for_epochs(url, n, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        if os.path.exists(url.removeprefix("sqlite:///")):
            try:
                if len(rows(url, Epoch)) >= n:
                    return
            except Exception:
                pass
        time.sleep(0.05)
    raise AssertionError("no epoch recorded in time")


def _start_sweep(tmp_path):
    (tmp_path / "slow.yaml").write_text(SLOW)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("INVSSL_DB", None)
    return subprocess.Popen(
        [sys.executable, "-m", "invssl", "sweep", "slow.yaml", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_kill_9_mid_job_then_resume(tmp_path):
    url = f"sqlite:///{tmp_path / 'invssl.db'}"
    proc = _start_sweep(tmp_path)
    _wait_for_epochs(url, 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {e.epoch: e.attempt for e in rows(url, Epoch)}
    assert 2 <= len(before) < 6 and set(before.values()) == {1}
    assert rows(url, Job)[0].status == "running"  # left behind by the dead process
    out = invssl("resume", "--quiet", cwd=tmp_path).stdout
    assert "1 interrupted" in out
    job = rows(url, Job)[0]
    assert job.status == "done" and job.attempts == 2
    epochs = rows(url, Epoch)
    assert sorted(e.epoch for e in epochs) == [1, 2, 3, 4, 5, 6]  # no duplicates, none missing
    # epochs finished before the kill were kept, not recomputed by the second attempt
    assert all(e.attempt == 1 for e in epochs if e.epoch in before)
    assert all(e.attempt == 2 for e in epochs if e.epoch not in before)


def test_sigterm_checkpoints_and_hands_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'invssl.db'}"
    proc = _start_sweep(tmp_path)
    _wait_for_epochs(url, 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    job = rows(url, Job)[0]
    assert job.status == "pending" and job.epochs_done < 6
    done_before = job.epochs_done
    invssl("resume", "--quiet", cwd=tmp_path)
    job = rows(url, Job)[0]
    assert job.status == "done" and sorted(e.epoch for e in rows(url, Epoch)) == [1, 2, 3, 4, 5, 6]
    assert all(e.attempt == 1 for e in rows(url, Epoch) if e.epoch <= done_before)
