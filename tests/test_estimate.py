"""The sweep-time estimate: its arithmetic against a hand computation, and where its figures come from."""

import math
from types import SimpleNamespace

import pytest

from invssl import devices, estimate
from invssl.config import JobConfig

# A dataset of 1000 training and 200 test images: with val_size 100 and N_L = 50 the unlabeled set
# holds 850 images, i.e. ceil(850 / 64) = 14 steps per epoch; at N_L = 100 (Sup), ceil(800 / 64) = 13.
INFO = SimpleNamespace(n_train=1000, n_test=200, input_shape=(1, 28, 28), num_classes=10)


def job(**kw):
    base = dict(topology="SmallCNNmean", dataset="mnist", n_labeled=50, val_size=100, epochs=3,
                batch_labeled=16, batch_unlabeled=64, alpha=0.5, beta=0.5)  # fmt: skip
    return JobConfig(**{**base, **kw})


def test_estimate_matches_hand_computation():
    ssl = [job(seed=s) for s in range(3)]
    sup = [job(n_labeled=100, alpha=1.0, seed=0), job(n_labeled=100, alpha=1.0, seed=1)]
    large = [job(topology="LargeCNNmax", epochs=2)]
    k_ssl, k_sup, k_large = estimate.cost_key(ssl[0]), estimate.cost_key(sup[0]), estimate.cost_key(large[0])
    assert k_sup.kind == "sup" and k_sup.batch_unlabeled == 0 and k_ssl.kind == "ssl"
    assert len({estimate.cost_key(j) for j in ssl}) == 1  # seeds share a cost class
    est = estimate.estimate(
        ssl + sup + large,
        done={ssl[2].key},  # finished: left out
        epochs_done={ssl[1].key: 1},  # one epoch of three already recorded
        step_seconds={k_ssl: 0.5, k_sup: 0.1, k_large: 2.0},
        eval_seconds={k_ssl: 4.0, k_sup: 1.0},  # LargeCNN: no evaluation figure
        calibrate_missing=False,
        device="cpu",
        dataset_info=lambda j: INFO,
    )
    rows = {(r.topology, r.kind): r for r in est.rows}
    assert rows["SmallCNNmean", "ssl"].steps_per_epoch == (math.ceil(850 / 64),) * 2 == (14, 14)
    assert rows["SmallCNNmean", "sup"].steps_per_epoch == (math.ceil(800 / 64),) * 2 == (13, 13)
    assert rows["SmallCNNmean", "ssl"].epochs == 3 + 2 and rows["SmallCNNmean", "ssl"].jobs == 2
    # by hand: ssl 5 epochs x (14 x 0.5 + 4) = 55; sup 2 jobs x 3 epochs x (13 x 0.1 + 1) = 13.8;
    # LargeCNN 1 job x 2 epochs x (14 x 2.0) = 56
    assert rows["SmallCNNmean", "ssl"].seconds == pytest.approx(55.0)
    assert rows["SmallCNNmean", "sup"].seconds == pytest.approx(13.8)
    assert rows["LargeCNNmax", "ssl"].seconds == pytest.approx(56.0)
    assert est.total_s == pytest.approx(55.0 + 13.8 + 56.0)
    assert est.by_topology() == pytest.approx({"SmallCNNmean": 68.8, "LargeCNNmax": 56.0})
    assert est.complete and {r.source for r in est.rows} == {"given"} and est.calibration_s == 0


def test_without_figures_a_class_is_unknown_and_left_out_of_the_total(tmp_path):
    jobs = [job(), job(topology="SmallCNNmax")]
    known = estimate.cost_key(jobs[0])
    missing_db = tmp_path / "none.db"
    est = estimate.estimate(
        jobs,
        step_seconds={known: 1.0},
        calibrate_missing=False,
        device="cpu",
        db_url=f"sqlite:///{missing_db}",
        dataset_info=lambda j: INFO,
    )
    assert not missing_db.exists()  # reading a database that is not there creates nothing
    assert not est.complete and est.total_s == pytest.approx(3 * 14 * 1.0)
    assert [r.source for r in est.rows] == ["unknown", "given"]  # sorted: SmallCNNmax, SmallCNNmean
    assert any("unknown" in n for n in est.notes)


def test_recorded_epoch_times_are_used_for_the_same_class_on_the_same_device(tmp_path):
    from invssl.db import queue
    from invssl.db.session import open_engine

    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = open_engine(url, upgrade=True)
    ran, todo = job(seed=0, epochs=2), job(seed=1, epochs=2)
    sweep = queue.ensure_sweep(engine, "s", {})
    queue.enqueue(engine, sweep, [(ran.key, ran.model_dump(mode="json"))])
    claim = queue.claim(engine, worker="w", host="h", pid=1)
    env = {"device": "cpu", "device_name": devices.device_name(__import__("torch").device("cpu"))}
    queue.set_job_info(engine, claim.job_id, claim.attempt, env=env)
    for epoch, wall_s in ((1, 14 * 0.30), (2, 14 * 0.34)):
        queue.record_epoch(engine, claim.job_id, claim.attempt, epoch, {"wall_s": wall_s}, b"ckpt")
    engine.dispose()
    est = estimate.estimate(
        [ran, todo], done={ran.key}, calibrate_missing=False, device="cpu", db_url=url, dataset_info=lambda j: INFO
    )
    (row,) = est.rows
    assert row.source == "database" and row.step_s == pytest.approx(0.32)  # median of 0.30, 0.34
    assert row.seconds == pytest.approx(2 * 14 * 0.32)  # evaluation: not in the database's wall_s
    assert any("evaluation not included" in n for n in est.notes)


def test_calibration_times_real_steps_quickly():
    j = JobConfig(topology="MLP", dataset="mnist", n_labeled=10, batch_labeled=4, batch_unlabeled=8)
    step_s, forward_s = estimate.calibrate(estimate.cost_key(j), j, (1, 28, 28), 10, __import__("torch").device("cpu"))
    assert 0 < step_s < 5 and 0 < forward_s < 1


def test_label_counts_share_a_class_but_keep_their_own_step_counts():
    a, b = job(n_labeled=50), job(n_labeled=100, epochs=1)  # 14 and 13 steps per epoch
    key = estimate.cost_key(a)
    assert estimate.cost_key(b) == key
    est = estimate.estimate(
        [a, b], step_seconds={key: 1.0}, calibrate_missing=False, device="cpu", dataset_info=lambda j: INFO
    )
    (row,) = est.rows
    assert row.steps_per_epoch == (13, 14) and row.epochs == 4
    assert row.seconds == pytest.approx(3 * 14 + 1 * 13)
