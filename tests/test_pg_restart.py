"""A PostgreSQL restart under running workers, a server that stays away, a wrong password."""

import os
import subprocess
import sys
import time

from invssl.runner import enqueue
from tests.conftest import jobs_and_epochs

GRID = """
name: restart
data: {dataset: chirps, val_size: 20, params: {n_train: 100, n_test: 20, sample_rate: 1000, duration_ms: 50}}
train: {epochs: 4, steps_per_epoch: 40, batch_labeled: 10, batch_unlabeled: 40,
        collapse_patience: 0}  # this tiny MLP predicts one class: it must run on anyway
grid: {topology: [MLP], n_labeled: [10], alpha: [0.5], seed: SEEDS}
"""


def run_cli(*args, env=None, cwd=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "invssl", *args],
        cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_for_epochs(url, n, procs, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        for p in procs:
            assert p.poll() is None, p.communicate()
        if len(jobs_and_epochs(url)[1]) >= n:
            return
        time.sleep(0.1)
    raise AssertionError("no epoch recorded in time")


def setup_grid(tmp_path, url, seeds):
    (tmp_path / "grid.yaml").write_text(GRID.replace("SEEDS", str(list(seeds))))
    enqueue(tmp_path / "grid.yaml", url)


def test_two_workers_ride_out_a_five_second_restart(tmp_path, own_pg_server):
    url = own_pg_server.createdb("restart")
    setup_grid(tmp_path, url, range(4))
    workers = [run_cli("worker", "--quiet", env={"INVSSL_DB": url}) for _ in range(2)]
    wait_for_epochs(url, 2, workers)
    own_pg_server.halt()
    time.sleep(5)
    own_pg_server.resume()
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0 and "Traceback" not in err, err
    jobs, epochs = jobs_and_epochs(url)
    assert [(j.status, j.attempts) for j in jobs] == [("done", 1)] * 4  # each job run once
    assert all(j.result and j.result["test_acc"] >= 0 for j in jobs)
    assert sorted((e.job_id, e.epoch) for e in epochs) == sorted(
        (j.id, k) for j in jobs for k in range(1, 5)
    )  # no epoch lost or duplicated


def test_a_database_that_stays_away_stops_the_worker_in_one_line(tmp_path, own_pg_server):
    url = own_pg_server.createdb("away")
    setup_grid(tmp_path, url, [0])
    worker = run_cli("worker", "--quiet", "--heartbeat", "0.5", env={"INVSSL_DB": url, "INVSSL_DB_RETRY_S": "3"})
    wait_for_epochs(url, 1, [worker])
    own_pg_server.halt()
    try:
        _, err = worker.communicate(timeout=120)
    finally:
        own_pg_server.resume()
    assert worker.returncode == 2
    assert len(err.strip().splitlines()) == 1 and "lost the results database" in err, err
    assert own_pg_server.password not in err
    (job,), epochs = jobs_and_epochs(url)
    assert job.status == "running"  # left for reclaiming: its worker is gone
    done_before = {e.epoch for e in epochs}
    resume = run_cli("resume", "--quiet", env={"INVSSL_DB": url})
    out, err = resume.communicate(timeout=300)
    assert resume.returncode == 0 and "1 interrupted" in out, err
    (job,), epochs = jobs_and_epochs(url)
    assert job.status == "done" and sorted(e.epoch for e in epochs) == [1, 2, 3, 4]
    assert all(e.attempt == 1 for e in epochs if e.epoch in done_before)


def test_a_wrong_password_or_a_bad_port_is_one_line_without_the_password(tmp_path, own_pg_server):
    good = own_pg_server.createdb("pw")
    (tmp_path / "grid.yaml").write_text(GRID.replace("SEEDS", "[0]"))
    bad_password = own_pg_server.url("pw0", password="wrong-pw-123")
    bad_port = good.replace(f":{own_pg_server.port}/", ":notaport/")
    for db, fragment in ((bad_password, "password authentication failed"), (bad_port, "port")):
        for args in (["sweep", "grid.yaml", "--dry-run", "--no-calibrate"], ["status"], ["worker"]):
            proc = run_cli(*args, "--db", db, cwd=tmp_path)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 2, (args, out, err)
            assert len(err.strip().splitlines()) == 1 and fragment in err, (args, err)
            assert "wrong-pw-123" not in out + err and own_pg_server.password not in out + err
