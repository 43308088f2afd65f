"""Stopping a sweep of several workers: Ctrl-C, SIGTERM, a worker killed, the file deleted."""

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import text

from invssl.db.session import open_engine
from tests.conftest import jobs_and_epochs

GRID = """
name: stop
data: {dataset: chirps, val_size: 20, params: {n_train: 100, n_test: 20, sample_rate: 1000, duration_ms: 50}}
train: {epochs: EPOCHS, steps_per_epoch: 40, batch_labeled: 10, batch_unlabeled: 40,
        collapse_patience: 0}  # this tiny MLP predicts one class: it must run on anyway
grid: {topology: [MLP], n_labeled: [10], alpha: [0.5], seed: SEEDS}
"""


def start_sweep(tmp_path, url, seeds, epochs=6, *args):
    # Tests that stop a sweep run long jobs, so that a fast machine cannot finish them first.
    (tmp_path / "grid.yaml").write_text(GRID.replace("SEEDS", str(list(seeds))).replace("EPOCHS", str(epochs)))
    env = dict(os.environ, OMP_NUM_THREADS="1", INVSSL_DB=url)
    # A session of its own: the test signals the sweep's process group as a terminal would.
    return subprocess.Popen(
        [sys.executable, "-m", "invssl", "sweep", "grid.yaml", "--quiet", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_until(check, proc, timeout=180):
    start = time.time()
    while time.time() - start < timeout:
        assert proc.poll() is None, proc.communicate()
        try:
            if check():
                return
        except Exception:  # the database is still being created
            pass
        time.sleep(0.1)
    raise AssertionError("the sweep did not get there in time")


def both_running_with_an_epoch(url):
    jobs, epochs = jobs_and_epochs(url)
    running = [j for j in jobs if j.status == "running"]
    return len(running) == 2 and {e.job_id for e in epochs} >= {j.id for j in running}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def invssl(*args, url, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", INVSSL_DB=url)
    return subprocess.run(
        [sys.executable, "-m", "invssl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_ctrl_c_to_a_sweep_of_two_workers_hands_every_job_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    sweep = start_sweep(tmp_path, url, [0, 1], 12, "--workers", "2")
    wait_until(lambda: both_running_with_an_epoch(url), sweep)
    os.killpg(sweep.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "Traceback" not in err, (out, err)
    jobs, epochs = jobs_and_epochs(url)
    assert [j.status for j in jobs] == ["pending", "pending"], [j.error for j in jobs]
    before = {(e.job_id, e.epoch): e.attempt for e in epochs}
    done = invssl("resume", "--quiet", url=url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    jobs, epochs = jobs_and_epochs(url)
    assert [j.status for j in jobs] == ["done", "done"]
    assert sorted((e.job_id, e.epoch) for e in epochs) == [(j.id, k) for j in jobs for k in range(1, 13)]
    # No epoch finished before Ctrl-C was computed again.
    assert all(e.attempt == before[e.job_id, e.epoch] for e in epochs if (e.job_id, e.epoch) in before)


def test_ctrl_c_to_a_sweep_of_one_worker_exits_130(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    sweep = start_sweep(tmp_path, url, [0], 60)
    wait_until(lambda: jobs_and_epochs(url)[1], sweep)
    os.killpg(sweep.pid, signal.SIGINT)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "Traceback" not in err, (out, err)
    assert [j.status for j in jobs_and_epochs(url)[0]] == ["pending"]


def test_sigterm_to_the_sweep_alone_stops_its_workers(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    sweep = start_sweep(tmp_path, url, [0, 1], 60, "--workers", "2")
    wait_until(lambda: both_running_with_an_epoch(url), sweep)
    pids = [j.pid for j in jobs_and_epochs(url)[0]]
    sweep.send_signal(signal.SIGTERM)  # the parent only, as `kill PID` or a scheduler does
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 0 and "Traceback" not in err, (out, err)
    assert not any(alive(pid) for pid in pids)  # no orphan goes on training
    assert [j.status for j in jobs_and_epochs(url)[0]] == ["pending", "pending"]


def test_a_worker_killed_is_reported_and_its_job_taken_over(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    sweep = start_sweep(tmp_path, url, [0, 1], 8, "--workers", "2")
    wait_until(lambda: both_running_with_an_epoch(url), sweep)
    victim = jobs_and_epochs(url)[0][0]
    os.kill(victim.pid, signal.SIGKILL)
    out, err = sweep.communicate(timeout=300)
    assert f"(pid {victim.pid}) was killed by SIGKILL" in err, (out, err)
    jobs, epochs = jobs_and_epochs(url)
    assert [j.status for j in jobs] == ["done", "done"] and sweep.returncode == 0, (out, err)
    assert [j.attempts for j in jobs] == [2, 1]  # the other worker resumed it
    assert sorted((e.job_id, e.epoch) for e in epochs) == [(j.id, k) for j in jobs for k in range(1, 9)]


def test_deleting_the_sqlite_file_mid_sweep_stops_it_with_an_error(tmp_path):
    db = tmp_path / "r.db"
    sweep = start_sweep(tmp_path, f"sqlite:///{db}", [0, 1], 60, "--workers", "2")
    wait_until(lambda: both_running_with_an_epoch(f"sqlite:///{db}"), sweep)
    db.unlink()
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 2 and "Traceback" not in err, (out, err)
    assert f"the SQLite file {db} was deleted while in use" in err
    assert not db.exists()  # no new empty database in its place
    assert "no jobs" not in out


def test_a_sweep_of_two_workers_holds_a_bounded_number_of_connections(tmp_path, pg_server):
    db_url = pg_server.createdb("conn")
    sweep = start_sweep(tmp_path, db_url, [0, 1], 16, "--workers", "2")
    engine = open_engine(db_url)
    name = db_url.rsplit("/", 1)[1]
    counts = []
    try:
        while sweep.poll() is None:
            with engine.connect() as conn:
                counts.append(
                    conn.scalar(
                        text("SELECT count(*) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"),
                        {"n": name},
                    )
                )
            time.sleep(0.2)
    finally:
        engine.dispose()
    assert sweep.returncode == 0, sweep.communicate()
    assert len(counts) > 15, counts  # the sweep ran long enough for a leak to show
    # The parent's one engine and, per worker, its main thread and heartbeat thread.
    assert max(counts) <= 5, counts


def test_a_killed_worker_not_yet_reaped_counts_as_dead():
    # Until its parent polls it a killed worker is a zombie, which os.kill(pid, 0) still
    # reaches; its job must be taken over all the same.
    from invssl.runner import _pid_alive

    proc = subprocess.Popen(["sleep", "30"])
    assert _pid_alive(proc.pid)
    proc.kill()
    deadline = time.time() + 5
    while _pid_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(proc.pid)  # still unreaped here
    proc.wait()
