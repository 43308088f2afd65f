"""Fast by default: how many workers a sweep starts here, and the estimate's wall time."""

import os

import pytest

from invssl.devices import physical_cores, plan_workers
from invssl.estimate import Estimate


def test_physical_cores_count_hyperthread_siblings_once():
    cpus = sorted(os.sched_getaffinity(0))
    siblings = set()
    for cpu in cpus:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
            siblings.add(f.read().strip())
    assert physical_cores() == len(siblings) <= len(cpus)


def test_the_cpu_default_is_one_single_thread_worker_per_core_and_no_more_than_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = physical_cores()
    plan = plan_workers([], jobs=50)
    assert (plan.n, plan.threads) == (cores, 1)
    assert f"{cores} physical cores" in plan.why
    one = plan_workers([], jobs=1)
    assert (one.n, one.threads) == (1, cores)  # a lone job gets every core's thread
    assert (plan_workers([], jobs=50, workers=3, threads=2).n, plan_workers([], 50, 3, 2).threads) == (3, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert plan_workers([], jobs=1).threads == 1  # the user's thread setting is kept


def test_gpu_workers_per_device_multiply_the_gpus():
    plan = plan_workers(["cuda:0", "cuda:1"], jobs=50, per_device=3)
    assert (plan.n, plan.devices) == (6, ["cuda:0", "cuda:1"])
    assert plan_workers(["cuda:0", "cuda:1"], jobs=50).n == 2
    assert plan_workers(["cuda:0", "cuda:1"], jobs=1, per_device=3).n == 1


@pytest.mark.parametrize(
    "jobs,workers,startup,wall",
    [
        ([3.0, 1.0, 1.0, 1.0], 2, 0.5, 3.5),  # the long job first: the other worker takes the rest
        ([1.0, 1.0, 1.0, 3.0], 2, 0.5, 4.5),  # the long job last, on the worker free at 1.5
        ([1.0, 1.0, 1.0, 3.0], 1, 0.5, 6.5),
        ([2.0], 4, 1.0, 3.0),
    ],
)
def test_wall_time_follows_the_queue_order_over_the_workers(jobs, workers, startup, wall):
    est = Estimate("cpu", [], job_s=jobs, workers=workers, startup_s=startup)
    assert est.wall_s == pytest.approx(wall)


def test_a_learned_weights_job_is_costed_as_its_own_kind_with_the_look_ahead():
    from invssl.config import JobConfig
    from invssl.estimate import calibrate, cost_key

    base = dict(topology="SmallCNNmax", dataset="mnist1d", n_labeled=100, batch_labeled=32, batch_unlabeled=128)
    fixed = JobConfig(**base)
    learned = JobConfig(**base, alpha={"kind": "learned", "init": 0.5}, beta={"kind": "learned", "init": 0.5})
    assert (cost_key(fixed).kind, cost_key(learned).kind) == ("ssl", "learned")
    import torch

    times = {}
    for name, job in (("ssl", fixed), ("learned", learned)):
        times[name] = min(calibrate(cost_key(job), job, (1, 40), 10, torch.device("cpu"))[0] for _ in range(3))
    assert times["learned"] > 1.2 * times["ssl"]  # measured 1.6-1.7 times (BENCHMARKS.md)
