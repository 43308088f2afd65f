"""The job queue on SQLite and PostgreSQL: enqueue, concurrent claims, attempts, reaping."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from invssl.db import queue, reads
from invssl.db.models import Checkpoint, Job
from invssl.db.session import open_engine
from invssl.errors import InvsslError


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def job(name: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    config = {"topology": "SmallCNN", "dataset": "mnist", "n_labeled": 100, "seed": 0, "name": name, **extra}
    return key(name), config


@pytest.fixture
def engine(db_url: str) -> Any:
    eng = open_engine(db_url)
    yield eng
    eng.dispose()


def claim(engine: Engine, worker: str = "w", host: str = "h", pid: int = 1, **kw: Any) -> queue.Claim:
    got = queue.claim(engine, worker=worker, host=host, pid=pid, **kw)
    assert got is not None
    return got


def job_row(engine: Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Job).where(Job.id == job_id)).one()


def epoch_numbers(engine: Engine, job_id: int) -> list[int]:
    return [r["epoch"] for r in reads.job_epochs(engine, job_id)]


# ---------------------------------------------------------------------------- enqueue
def test_enqueue_is_idempotent_and_grows(engine: Engine) -> None:
    sweep = queue.ensure_sweep(engine, "grid", {"grid": {"seed": [0, 1, 2]}})
    assert queue.ensure_sweep(engine, "grid", {"grid": {"seed": [0, 1, 2, 3, 4]}}) == sweep
    first = [job(f"j{i}", seed=i) for i in range(3)]
    assert queue.enqueue(engine, sweep, first) == (3, 0)
    assert queue.enqueue(engine, sweep, first) == (0, 3)
    grown = first + [job(f"j{i}", seed=i) for i in range(3, 5)]
    assert queue.enqueue(engine, sweep, grown) == (2, 3)
    assert reads.status_counts(engine, sweep="grid") == {"pending": 5, "running": 0, "done": 0, "failed": 0}

    # A job identical across sweeps is stored once and belongs to both.
    other = queue.ensure_sweep(engine, "other", {})
    assert other != sweep
    assert queue.enqueue(engine, other, [first[0], job("solo")]) == (1, 1)
    assert reads.status_counts(engine)["pending"] == 6
    assert reads.status_counts(engine, sweep="other")["pending"] == 2
    info = reads.get_job(engine, first[0][0])
    assert info["sweeps"] == ["grid", "other"]
    assert (info["topology"], info["dataset"], info["n_labeled"], info["seed"]) == ("SmallCNN", "mnist", 100, 0)
    assert info["config"] == first[0][1] and info["status"] == "pending" and info["attempts"] == 0
    assert info["created_at"].tzinfo is not None and info["created_at"].utcoffset() == timedelta(0)
    assert abs(info["created_at"] - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert reads.status_counts(engine, sweep="no such sweep") == dict.fromkeys(reads.STATUSES, 0)


def _enqueue_at_once(url: str, barrier: Any, results: Any) -> None:
    engine = open_engine(url)
    sweep = queue.ensure_sweep(engine, "shared", {})
    barrier.wait()
    results.put(queue.enqueue(engine, sweep, [job(f"j{i}") for i in range(100)]))
    engine.dispose()


def test_concurrent_enqueues_store_each_job_once(db_url: str) -> None:
    open_engine(db_url).dispose()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_enqueue_at_once, args=(db_url, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(new for new, _ in outcomes) == 100
    assert all(new + old == 100 for new, old in outcomes)
    engine = open_engine(db_url)
    assert reads.status_counts(engine, sweep="shared")["pending"] == 100
    engine.dispose()


# ------------------------------------------------------------------------------ claim
def _claim_until_empty(url: str, barrier: Any, results: Any) -> None:
    import os

    engine = open_engine(url)
    done: list[tuple[int, int]] = []
    errors: list[str] = []
    barrier.wait()
    while True:
        try:
            got = queue.claim(engine, worker=f"w{os.getpid()}", host="h", pid=os.getpid())
            if got is None:
                break
            queue.finish(engine, got.job_id, got.attempt, {"val_acc": 1.0})
            done.append((got.job_id, got.attempt))
        except Exception as exc:  # e.g. "database is locked": reported, the test fails
            errors.append(f"{type(exc).__name__}: {exc}")
            break
    results.put((done, errors, time.perf_counter()))
    engine.dispose()


def test_eight_workers_claim_every_job_exactly_once(
    db_url: str, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    engine = open_engine(db_url)
    sweep = queue.ensure_sweep(engine, "load", {})
    assert queue.enqueue(engine, sweep, [job(f"load{i}") for i in range(200)]) == (200, 0)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(9), ctx.Queue()
    procs = [ctx.Process(target=_claim_until_empty, args=(db_url, barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    elapsed = max(end for _, _, end in outcomes) - start
    errors = [e for _, errs, _ in outcomes for e in errs]
    assert errors == []
    claimed = [c for done, _, _ in outcomes for c in done]
    assert len(claimed) == 200 and len({job_id for job_id, _ in claimed}) == 200
    assert {attempt for _, attempt in claimed} == {1}
    assert sum(1 for done, _, _ in outcomes if done) > 1  # the work was actually shared
    assert reads.status_counts(engine) == {"pending": 0, "running": 0, "done": 200, "failed": 0}
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(Job.attempts))) == 1
    rate = 200 / elapsed
    record_property("claims_per_second", round(rate, 1))
    backend = engine.dialect.name
    with capsys.disabled():
        print(f"\n[{backend}] 8 processes claimed+finished 200 jobs in {elapsed:.2f} s: {rate:.0f} claims/s")
    engine.dispose()


def test_claim_takes_jobs_in_order_and_of_the_sweep_asked_for(engine: Engine) -> None:
    a = queue.ensure_sweep(engine, "a", {})
    b = queue.ensure_sweep(engine, "b", {})
    queue.enqueue(engine, a, [job("a1"), job("a2")])
    queue.enqueue(engine, b, [job("b1")])
    got = claim(engine, sweep_id=b, worker="w1", host="h1", pid=42)
    assert (got.key, got.attempt, got.epochs_done) == (key("b1"), 1, 0)
    assert got.config["name"] == "b1"
    assert queue.claim(engine, worker="w", host="h", pid=1, sweep_id=b) is None
    assert claim(engine).key == key("a1")
    assert claim(engine).key == key("a2")
    assert queue.claim(engine, worker="w", host="h", pid=1) is None
    row = job_row(engine, got.job_id)
    assert (row.status, row.worker, row.host, row.pid) == ("running", "w1", "h1", 42)
    assert row.started_at is not None and row.heartbeat_at is not None


# ------------------------------------------------------------------- attempts, reaping
def test_a_stale_attempt_cannot_write(engine: Engine) -> None:
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(engine, sweep, [job("slow")])
    old = claim(engine, worker="slow-worker")
    queue.record_epoch(engine, old.job_id, old.attempt, 1, {"loss": 2.0}, b"ckpt-1")
    time.sleep(0.01)
    assert queue.reap(engine, stale_after_s=0) == [old.job_id]
    new = claim(engine, worker="retry-worker")
    assert (new.job_id, new.attempt, new.epochs_done) == (old.job_id, 2, 1)

    before = job_row(engine, old.job_id)
    stale = [
        lambda: queue.record_epoch(engine, old.job_id, old.attempt, 2, {"loss": 1.0}, b"stale"),
        lambda: queue.heartbeat(engine, old.job_id, old.attempt),
        lambda: queue.set_job_info(engine, old.job_id, old.attempt, env={"x": 1}, split="[]"),
        lambda: queue.save_checkpoint(engine, old.job_id, old.attempt, b"stale-partial"),
        lambda: queue.release(engine, old.job_id, old.attempt),
        lambda: queue.fail(engine, old.job_id, old.attempt, "late"),
        lambda: queue.finish(engine, old.job_id, old.attempt, {"val_acc": 0.0}),
    ]
    for write in stale:
        with pytest.raises(queue.StaleAttemptError):
            write()
    assert job_row(engine, old.job_id) == before
    assert epoch_numbers(engine, old.job_id) == [1]
    assert queue.load_checkpoint(engine, old.job_id) == (1, b"ckpt-1")

    queue.record_epoch(engine, new.job_id, new.attempt, 2, {"loss": 1.5}, b"ckpt-2")
    queue.finish(engine, new.job_id, new.attempt, {"val_acc": 0.9})
    with pytest.raises(queue.StaleAttemptError):  # finished: no attempt may write any more
        queue.heartbeat(engine, new.job_id, new.attempt)
    info = reads.get_job(engine, new.job_id)
    assert (info["status"], info["attempts"], info["epochs_done"], info["result"]) == ("done", 2, 2, {"val_acc": 0.9})
    assert [r["attempt"] for r in reads.job_epochs(engine, new.job_id)] == [1, 2]


def test_reap_by_heartbeat_age(engine: Engine) -> None:
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(engine, sweep, [job("quiet"), job("beating")])
    quiet, beating = claim(engine), claim(engine)
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == quiet.job_id)
            .values(heartbeat_at=datetime.now(timezone.utc) - timedelta(minutes=10))
        )
    queue.heartbeat(engine, beating.job_id, beating.attempt)
    assert queue.reap(engine, stale_after_s=60) == [quiet.job_id]
    assert job_row(engine, quiet.job_id).status == "pending"
    assert job_row(engine, beating.job_id).status == "running"
    assert queue.reap(engine, stale_after_s=60) == []


def test_reap_by_dead_pid_on_the_same_host(engine: Engine) -> None:
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(engine, sweep, [job("dead"), job("alive"), job("elsewhere")])
    dead = claim(engine, host="here", pid=111)
    alive = claim(engine, host="here", pid=222)
    elsewhere = claim(engine, host="there", pid=111)
    assert queue.reap(engine, stale_after_s=3600, host="here", alive=lambda pid: pid != 111) == [dead.job_id]
    statuses = {j: job_row(engine, j).status for j in (dead.job_id, alive.job_id, elsewhere.job_id)}
    assert statuses == {dead.job_id: "pending", alive.job_id: "running", elsewhere.job_id: "running"}
    # Without a liveness check only the heartbeat counts.
    assert queue.reap(engine, stale_after_s=3600, host="here") == []


# ------------------------------------------------------------- epochs and checkpoints
def test_checkpoint_is_replaced_with_its_epoch_in_one_transaction(engine: Engine) -> None:
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(engine, sweep, [job("ckpt")])
    c = claim(engine)
    assert queue.load_checkpoint(engine, c.job_id) is None
    metrics = {"loss": 1.0, "ce": 0.5, "val_acc": 0.7, "lr": 1e-3, "test_acc_recording": {"a": 0.5}}
    queue.record_epoch(engine, c.job_id, c.attempt, 1, metrics, b"one")
    assert queue.load_checkpoint(engine, c.job_id) == (1, b"one")
    queue.record_epoch(engine, c.job_id, c.attempt, 2, {"loss": 0.8}, b"two" * 1000)
    assert queue.load_checkpoint(engine, c.job_id) == (2, b"two" * 1000)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Checkpoint)) == 1

    # A write that fails halfway (an unstorable checkpoint) leaves neither the epoch's row
    # nor its checkpoint behind, and the job's progress unchanged.
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises for it
        queue.record_epoch(engine, c.job_id, c.attempt, 3, {"loss": 0.6}, object())  # type: ignore[arg-type]
    assert epoch_numbers(engine, c.job_id) == [1, 2]
    assert queue.load_checkpoint(engine, c.job_id) == (2, b"two" * 1000)
    assert job_row(engine, c.job_id).epochs_done == 2

    rows = reads.job_epochs(engine, c.job_id)
    assert rows[0]["val_acc"] == 0.7 and rows[0]["extra"] == {"test_acc_recording": {"a": 0.5}}
    assert rows[1]["extra"] is None and rows[1]["ce"] is None

    # An attempt that restarted from an older point replaces the rows from there on.
    queue.record_epoch(engine, c.job_id, c.attempt, 1, {"loss": 0.9}, None)
    assert epoch_numbers(engine, c.job_id) == [1]
    assert queue.load_checkpoint(engine, c.job_id) == (2, b"two" * 1000)


def test_release_hands_the_job_back_with_its_checkpoint(engine: Engine) -> None:
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(engine, sweep, [job("interrupted")])
    c = claim(engine)
    queue.set_job_info(engine, c.job_id, c.attempt, env={"torch": "2.x"}, split='{"labeled":[]}')
    queue.record_epoch(engine, c.job_id, c.attempt, 1, {"loss": 1.0}, b"epoch-1")
    queue.save_checkpoint(engine, c.job_id, c.attempt, b"mid-epoch-2")
    queue.release(engine, c.job_id, c.attempt)
    assert job_row(engine, c.job_id).status == "pending"
    again = claim(engine)
    assert (again.job_id, again.attempt, again.epochs_done) == (c.job_id, 2, 1)
    assert queue.load_checkpoint(engine, c.job_id) == (1, b"mid-epoch-2")
    info = reads.get_job(engine, c.job_id)
    assert info["env"] == {"torch": "2.x"} and info["split"] == '{"labeled":[]}'


def test_retry_failed_respects_max_attempts(engine: Engine) -> None:
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(engine, sweep, [job("thrice")])
    for attempt in (1, 2, 3):
        thrice = claim(engine)
        assert thrice.attempt == attempt
        queue.fail(engine, thrice.job_id, thrice.attempt, f"diverged in attempt {attempt}")
        if attempt < 3:
            assert queue.retry_failed(engine, max_attempts=3) == 1
    queue.enqueue(engine, sweep, [job("once")])
    once = claim(engine)
    queue.fail(engine, once.job_id, once.attempt, "out of memory")
    failed = reads.failed_jobs(engine)
    assert [(f["id"], f["attempts"], f["error"]) for f in failed] == [
        (thrice.job_id, 3, "diverged in attempt 3"),
        (once.job_id, 1, "out of memory"),
    ]
    assert queue.retry_failed(engine, max_attempts=3) == 1
    info = reads.get_job(engine, once.job_id)
    assert (info["status"], info["error"]) == ("pending", None)
    assert job_row(engine, thrice.job_id).status == "failed"
    assert claim(engine).attempt == 2


# ------------------------------------------------------------------------------ reports
def test_reports(engine: Engine) -> None:
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(
        engine,
        sweep,
        [
            ("ab" + "0" * 62, {"topology": "MLP", "dataset": "mnist1d", "n_labeled": 50, "seed": 3}),
            ("ab" + "1" * 62, {}),
            ("cd" + "2" * 62, {}),
        ],
    )
    r = claim(engine, worker="host:7", pid=7)
    running = reads.running_jobs(engine)
    assert [(j["id"], j["worker"], j["epochs_done"]) for j in running] == [(r.job_id, "host:7", 0)]
    assert 0 <= running[0]["heartbeat_age_s"] < 60
    assert running[0]["label"] == "MLP mnist1d N_L=50 seed=3"

    assert reads.get_job(engine, r.job_id)["key"] == "ab" + "0" * 62
    assert reads.get_job(engine, str(r.job_id))["id"] == r.job_id
    assert reads.get_job(engine, "CD")["key"] == "cd" + "2" * 62
    assert reads.get_job(engine, "ab0")["id"] == r.job_id
    for ref, why in (("ab", "more than one"), ("ef", "no job"), ("zz!", "hex key prefix"), ("999", "no job")):
        with pytest.raises(InvsslError, match=why):
            reads.get_job(engine, ref)


def test_done_keys_readonly_writes_nothing(tmp_path: Path, db_url: str) -> None:
    missing = tmp_path / "nothing-here.db"
    assert reads.done_keys_readonly(f"sqlite:///{missing}", [key("x")]) == set()
    assert not missing.exists()
    engine = open_engine(db_url)
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(engine, sweep, [job("x"), job("y")])
    c = claim(engine)
    queue.finish(engine, c.job_id, c.attempt, {"val_acc": 1.0})
    assert reads.done_keys_readonly(db_url, [key("x"), key("y"), key("z")]) == {key("x")}
    engine.dispose()
