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


GiB = 2**30


def test_more_workers_per_gpu_only_for_ten_percent_more_throughput_each_and_within_memory():
    from invssl.sidebyside import pick_per_device

    step_s = {1: 0.010, 2: 0.011, 4: 0.016, 8: 0.040}  # steps/s over all processes: 100, 182, 250, 200
    assert pick_per_device(step_s, None, None, jobs=50) == 4
    assert pick_per_device(step_s, 10 * GiB, 40 * GiB, jobs=50) == 2  # 4 x 10 GiB > 0.9 x 40 GiB
    assert pick_per_device(step_s, None, None, jobs=3) == 2  # never more processes than jobs
    assert pick_per_device({1: 0.010, 2: 0.0195}, None, None, jobs=50) == 1  # 2.6% more: not worth it
    assert pick_per_device({1: 0.010, 2: 0.011}, 50 * GiB, 40 * GiB, jobs=50) == 1  # even one does not fit


def test_without_a_count_the_gpu_plan_runs_the_measured_number_per_gpu():
    from invssl.sidebyside import PerDevice

    calls = []

    def probe(gpu, per_gpu):
        calls.append((gpu, per_gpu))
        return PerDevice(3, {1: 0.01, 2: 0.012, 4: 0.03}, None, "steps/s with k processes {...}")

    plan = plan_workers(["cuda:0", "cuda:1"], jobs=10, probe=probe)
    assert (plan.n, calls) == (6, [("cuda:0", 5)]) and "3 per GPU" in plan.why
    assert plan_workers(["cuda:0"], jobs=10, per_device=2, probe=probe).n == 2  # a given count is not measured
    assert plan_workers(["cuda:0"], jobs=1, probe=probe).n == 1  # one job: nothing to share
    assert len(calls) == 1


def _small_job():
    from invssl.config import JobConfig

    return JobConfig(topology="SmallCNNmax", dataset="mnist1d", n_labeled=100, batch_labeled=32, batch_unlabeled=128)


def test_side_by_side_processes_step_while_one_times_and_end_with_the_probe():
    from invssl.sidebyside import SideBySide

    with SideBySide(_small_job(), (1, 40), 10, "cpu") as run:
        ready = run.start(2)
        alone, together = run.step_s(1), run.step_s(2)
        procs = [c.proc for c in run.children]
        assert [p.poll() for p in procs] == [None, None]
    assert ready == [{"ready": True}] * 2
    assert 0 < alone["step_s"] < 5 and 0 < together["step_s"] < 5
    assert [p.returncode for p in procs] == [0, 0]  # stdin closed: both ended, paused one included


def test_the_per_device_choice_measures_each_count_it_may_pick():
    from invssl.sidebyside import choose_per_device

    got = choose_per_device(_small_job(), (1, 40), 10, "cpu", jobs=2)
    assert sorted(got.step_s) == [1, 2] and got.k in (1, 2) and got.process_bytes is None
    assert "steps/s with k processes" in got.why


def test_the_cpu_estimate_over_two_workers_measures_their_slowdown(tmp_path, monkeypatch):
    from invssl.estimate import estimate

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    job = _small_job().model_copy(update={"data_params": {"num_samples": 1000}, "epochs": 1})
    one = estimate([job], device="cpu", workers=1)
    two = estimate([job, job.model_copy(update={"seed": 1})], device="cpu", workers=2)
    assert one.slowdown == 1.0 and not any("side by side" in n for n in one.notes)
    assert two.slowdown >= 1.0 and any("2 workers side by side" in n for n in two.notes)


def test_the_queue_hands_out_the_costliest_jobs_first_in_grid_order_otherwise(tmp_path, sqlite_url):
    from conftest import jobs_and_epochs

    from invssl import runner

    (tmp_path / "grid.yaml").write_text(
        "name: order\ndata: {dataset: chirps, val_size: 10, params: {n_train: 60, n_test: 20}}\n"
        "train: {topology: MLP, epochs: 1, n_labeled: 10, batch_labeled: 4, batch_unlabeled: 8}\n"
        "grid: {alpha: [1.0, 0.5], beta: [0.0, 0.5], seed: [0, 1]}\n"
    )
    runner.enqueue(tmp_path / "grid.yaml", sqlite_url)
    jobs, _ = jobs_and_epochs(sqlite_url)
    order = [(j.config["alpha"], j.config["beta"], j.config["seed"]) for j in jobs]
    # ssl (inverting) steps first, then entropy only, then supervised: each in grid order
    assert order == [(0.5, 0.5, 0), (0.5, 0.5, 1), (0.5, 0.0, 0), (0.5, 0.0, 1), (1.0, 0.0, 0), (1.0, 0.0, 1)]


def test_an_estimate_neither_downloads_nor_writes_data(tmp_path):
    from invssl.config import JobConfig
    from invssl.estimate import estimate

    root = tmp_path / "data"
    job = JobConfig(topology="MLP", dataset="mnist", data_root=str(root), download=True, n_labeled=100, epochs=1)
    est = estimate([job], device="cpu")
    assert not root.exists()  # no folder, no lock file, no download attempt
    assert any("not measured" in n or "sizes unknown" in n for n in est.notes)
