"""How long a sweep will take on this device: ``invssl sweep FILE --dry-run``.

A job costs ``remaining epochs x (steps per epoch x seconds per step + evaluation)``. Seconds per
step come, per *cost class* (topology, dataset, loss kind, batch sizes, weighting, per-layer
weights, precision), from:

1. the results database: ``epochs.wall_s`` of jobs of the same class that ran on a device of the
   same kind and name (``wall_s`` times the training steps of an epoch, evaluation excluded),
   divided by that job's steps per epoch; the median over their epochs;
2. else a calibration on this device: trainer steps on random inputs of the dataset's shape (a
   warm-up step on 2 + 2 inputs and one at full size, then ``MIN_STEPS`` to ``CALIBRATE_STEPS``
   full-size ones, their lower quartile counting), and a no-grad forward pass. A few seconds on
   a GPU; on 2 CPU cores about 30 s for the twelve MNIST topologies (a LargeCNN step takes seconds);
3. else (``calibrate=False``) nothing: the class is reported as unknown and left out of the total.

The evaluation after each epoch (validation and test predictions, and the reconstruction error on
``evaluation.RECON_EVAL`` test inputs, whose forward pass also gives their predictions) is
estimated from the calibration's forward pass as ``(n_val + n_test + 2 x RECON_EVAL)`` forwards.
Each job also pays fixed costs (``invssl/fixedcost.py``), and the jobs are laid over the workers
in the order the queue hands them out; on a CPU the calibrated figures are scaled by the slow-down
measured with that many workers stepping side by side (``invssl/sidebyside.py``). Nothing is
written: the database is read only if it already exists, and calibration draws its random inputs
under a forked RNG.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from invssl.config import JobConfig
from invssl.fixedcost import Fixed, eval_units, measure_fixed, measure_startup
from invssl.schedules import Learned

MIN_STEPS = 3  # timed steps per cost class, at least
CALIBRATE_STEPS = 25  # and at most, stopping early once CALIBRATE_S seconds are spent
CALIBRATE_S = 0.3
EVAL_PROBE = 250  # inputs in the calibration's no-grad forward pass


@dataclass(frozen=True)
class CostKey:
    """What a training step's cost depends on."""

    topology: str
    dataset: str
    data_params: str  # canonical JSON
    kind: str  # "sup" (alpha = 1: labeled batch only), "ent" (beta = 0: no inversion), "ssl", "learned"
    batch_labeled: int
    batch_unlabeled: int
    weighting: str
    layer_weights: str  # canonical JSON, "null" without
    precision: str


def loss_kind(job: JobConfig) -> str:
    if isinstance(job.alpha, Learned) or isinstance(job.beta, Learned):
        return "learned"  # the step also takes the look-ahead: about 1.7 times an ssl step
    if isinstance(job.alpha, float) and job.alpha == 1.0:
        return "sup"
    if isinstance(job.beta, float) and job.beta == 0.0:
        return "ent"
    return "ssl"  # a schedule is costed as its most expensive phase


# Step cost relative to a supervised step, roughly (bench/step_cost.py: an inverting step costs
# 2-3 supervised ones, the look-ahead 1.7 inverting ones); only the order of jobs depends on it.
_KIND_COST = {"sup": 1.0, "ent": 2.0, "ssl": 3.0, "learned": 5.0}


def claim_order(jobs: Iterable[JobConfig]) -> list[JobConfig]:
    """The jobs, costliest first (stable otherwise): the order the queue hands them out in.

    Workers claim the oldest pending job, so when the cheap jobs come last the workers finish
    close together instead of one running a long job alone at the end (on the quick example
    the two workers ended 7 s apart in grid order). The cost is a proxy known without data or
    calibration: epochs x the kind of step x the inputs a step takes; the topology is not in it.
    """

    def cost(job: JobConfig) -> float:
        kind = loss_kind(job)
        inputs = job.batch_labeled + (0 if kind == "sup" else job.batch_unlabeled)
        return job.epochs * (job.steps_per_epoch or 1) * _KIND_COST[kind] * inputs

    return sorted(jobs, key=cost, reverse=True)


def cost_key(job: JobConfig) -> CostKey:
    kind = loss_kind(job)
    inverts = kind in ("ssl", "learned")
    return CostKey(
        job.topology,
        job.dataset,
        json.dumps(job.data_params, sort_keys=True),
        kind,
        job.batch_labeled,
        0 if kind == "sup" else job.batch_unlabeled,  # the alpha = 1 step skips the unlabeled batch
        job.weighting if inverts else "logits",
        json.dumps(job.layer_weights, sort_keys=True) if inverts else "null",
        job.precision,
    )


def job_steps(job: JobConfig, n_train: int) -> int:
    """Training steps per epoch, as the trainer counts them (``train.steps_per_epoch``)."""
    from invssl.train import steps_per_epoch

    n_val = min(job.val_size, n_train)
    return steps_per_epoch(job, max(0, n_train - n_val - job.n_labeled))


@dataclass
class Row:
    """One cost class of the sweep."""

    topology: str
    dataset: str
    kind: str
    jobs: int  # jobs not done
    epochs: int  # epochs left over those jobs
    steps: int  # training steps left over those jobs
    steps_per_epoch: tuple[int, int]  # (fewest, most) among the jobs: N_L moves the unlabeled count
    step_s: Optional[float]
    eval_s: Optional[float]  # per epoch
    source: str  # "database", "calibrated", "given", "unknown"

    @property
    def seconds(self) -> Optional[float]:
        if self.step_s is None:
            return None
        return self.steps * self.step_s + self.epochs * (self.eval_s or 0.0)


@dataclass
class Estimate:
    device: str
    rows: list[Row]
    calibration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    job_s: list[float] = field(default_factory=list)  # per job in queue order, fixed costs included
    workers: int = 1
    startup_s: float = 0.0  # a worker process's start: imports, first dataset load
    slowdown: float = 1.0  # calibrated steps with the workers side by side, over alone (CPU)

    @property
    def total_s(self) -> float:
        return sum(r.seconds or 0.0 for r in self.rows)

    @property
    def wall_s(self) -> float:
        """The sweep's wall time: workers start together, each claims the next job in queue
        order when it is free (as ``queue.claim`` does), the sweep ends with the last job."""
        free = [self.startup_s] * max(1, self.workers)
        for seconds in self.job_s:
            i = free.index(min(free))
            free[i] += seconds
        return max(free) if self.job_s else 0.0

    @property
    def complete(self) -> bool:
        return all(r.seconds is not None for r in self.rows)

    def by_topology(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for r in self.rows:
            out[r.topology] += r.seconds or 0.0
        return dict(out)


# ----------------------------------------------------------------------------- database (read only)
@dataclass
class _Recorded:
    epochs_done: dict[str, int] = field(default_factory=dict)  # job key -> epochs finished
    step_s: dict[CostKey, float] = field(default_factory=dict)


def read_database(
    url: str, keys: Iterable[str], device_kind: str, device_name: str, n_train: Callable[[JobConfig], Optional[int]]
) -> _Recorded:
    """Epochs already finished per job, and recorded seconds per step per cost class on a device
    like this one. Creates nothing: a missing SQLite file or schema reads as empty."""
    from invssl.db.reads import recorded_epochs

    epochs_done, rows = recorded_epochs(url, keys)
    per_key: dict[CostKey, list[float]] = defaultdict(list)
    for config, env, wall_s in rows:
        env = env or {}
        if str(env.get("device", "")).split(":")[0] != device_kind or env.get("device_name") != device_name:
            continue
        try:
            job = JobConfig(**config)
        except Exception:  # a config this version no longer accepts
            continue
        size = n_train(job)
        if size is None or wall_s <= 0:
            continue
        per_key[cost_key(job)].append(wall_s / job_steps(job, size))
    return _Recorded(epochs_done, {k: statistics.median(v) for k, v in per_key.items()})


# ------------------------------------------------------------------------------------ calibration
def calibrate(
    key: CostKey, job: JobConfig, input_shape: tuple[int, ...], num_classes: int, device: torch.device
) -> tuple[float, float]:
    """``(seconds per training step, seconds per forward input)`` of ``key`` on ``device``."""
    from invssl.sidebyside import make_step

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.random.fork_rng(devices=[]):
        step, model = make_step(key.kind, job, input_shape, num_classes, device)
        step(True)  # warm-up on 2 + 2 inputs: Adam state, lazy initialisation
        step(False)  # and at full size: the first one also pays for fresh memory
        times: list[float] = []
        while len(times) < MIN_STEPS or (len(times) < CALIBRATE_STEPS and sum(times) < CALIBRATE_S):
            t0 = time.perf_counter()
            step(False)
            times.append(time.perf_counter() - t0)
        model.eval()
        x = torch.randn(EVAL_PROBE, *input_shape, device=device)
        probes = []
        bf16 = key.precision == "bf16" and device.type == "cuda"
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(2):
                t0 = time.perf_counter()
                model(x)
                sync()
                probes.append((time.perf_counter() - t0) / EVAL_PROBE)
    # The lower quartile: the fastest step undercounts a sweep's steps by 10-15% (BENCHMARKS.md,
    # "Fast by default"), the median moves with a burst of someone else's load on a shared machine.
    return sorted(times)[(len(times) - 1) // 4], min(probes)


# -------------------------------------------------------------------------------------- estimate
def _fixed_key(job: JobConfig) -> tuple[str, str, str]:
    return (job.topology, job.dataset, json.dumps(job.data_params, sort_keys=True))


def estimate(
    jobs: list[JobConfig],
    *,
    done: Iterable[str] = (),
    device: Optional[str] = None,
    db_url: Optional[str] = None,
    calibrate_missing: bool = True,
    step_seconds: Optional[Mapping[CostKey, float]] = None,
    eval_seconds: Optional[Mapping[CostKey, float]] = None,
    epochs_done: Optional[Mapping[str, int]] = None,
    dataset_info: Optional[Callable[[JobConfig], Any]] = None,
    workers: int = 1,
) -> Estimate:
    """Estimated time of the jobs not in ``done`` on ``device``: one after another (``total_s``)
    and with ``workers`` worker processes (``wall_s``), fixed costs included when calibrating.

    ``step_seconds`` / ``eval_seconds`` (per cost class) and ``epochs_done`` (per job key) take
    precedence over the database and calibration; ``dataset_info(job)`` replaces
    ``data.info`` (tests).
    """
    from invssl import data as datasets
    from invssl.devices import device_name, resolve_device

    dev = resolve_device(device or "auto")
    done = set(done)
    todo = [j for j in jobs if j.key not in done]
    notes: list[str] = []

    info_cache: dict[tuple[str, str, Optional[str]], Any] = {}

    def info(job: JobConfig) -> Any:
        k = (job.dataset, json.dumps(job.data_params, sort_keys=True), job.data_root)
        if k not in info_cache:
            try:
                info_cache[k] = (
                    dataset_info or (lambda j: datasets.info(j.dataset, root=j.data_root, seed=j.seed, **j.data_params))
                )(job)
            except Exception as exc:  # e.g. a wav folder that is not on this machine
                notes.append(f"{job.dataset}: sizes unknown ({exc}); its jobs are left out")
                info_cache[k] = None
        return info_cache[k]

    recorded = _Recorded()
    if db_url is not None:
        recorded = read_database(
            db_url,
            [j.key for j in todo],
            dev.type,
            device_name(dev),
            lambda j: info(j).n_train if info(j) is not None else None,
        )
    left = dict(recorded.epochs_done)
    left.update(epochs_done or {})

    groups: dict[CostKey, list[tuple[JobConfig, int]]] = defaultdict(list)  # (job, steps per epoch)
    for job in todo:
        meta = info(job)
        if meta is None:
            continue
        groups[cost_key(job)].append((job, job_steps(job, meta.n_train)))

    calibration_s = 0.0
    fixed: dict[tuple[str, str, str], Fixed] = {}
    startup_s = 0.0
    if calibrate_missing and dataset_info is None and todo:
        t0 = time.perf_counter()
        startup_s = measure_startup()
        for job in todo:
            if (k := _fixed_key(job)) not in fixed:
                try:
                    fixed[k] = measure_fixed(job, dev)
                except Exception as exc:  # data missing here: the steps are still estimated
                    notes.append(f"{job.dataset}: fixed costs not measured ({exc})")
                    fixed[k] = Fixed(0.0, 0.0, 0.0)
        startup_s += max((f.load_s for f in fixed.values()), default=0.0)
        calibration_s += time.perf_counter() - t0

    measured: dict[CostKey, tuple[Optional[float], Optional[float], str]] = {}
    for key, members in groups.items():
        if step_seconds is not None and key in step_seconds:
            measured[key] = (step_seconds[key], (eval_seconds or {}).get(key), "given")
            continue
        job = members[0][0]
        meta = info(job)
        units = eval_units(min(job.val_size, meta.n_train), meta.n_test)
        # The trainer's evaluation as timed with the fixed costs; else from a forward pass.
        unit_s = fixed[_fixed_key(job)].eval_unit_s if _fixed_key(job) in fixed else 0.0
        eval_s: Optional[float] = unit_s * units if unit_s else None
        step_s: Optional[float] = recorded.step_s.get(key)
        source = "database" if step_s is not None else "unknown"
        if step_s is None and calibrate_missing:
            t0 = time.perf_counter()
            step_s, forward_s = calibrate(key, job, tuple(meta.input_shape), meta.num_classes, dev)
            calibration_s += time.perf_counter() - t0
            eval_s = eval_s or forward_s * units
            source = "calibrated"
        measured[key] = (step_s, eval_s, source)

    row_of: dict[CostKey, Row] = {}
    for key, members in groups.items():
        step_s, eval_s, source = measured[key]
        epochs = [max(0, j.epochs - left.get(j.key, 0)) for j, _ in members]
        steps = [n for _, n in members]
        row_of[key] = Row(
            key.topology,
            key.dataset,
            key.kind,
            len(members),
            sum(epochs),
            sum(e * n for e, n in zip(epochs, steps)),
            (min(steps), max(steps)),
            step_s,
            eval_s,
            source,
        )
    rows = sorted(row_of.values(), key=lambda r: (r.topology, r.kind))
    slow = 1.0
    calibrated = [k for k, r in row_of.items() if r.source == "calibrated"]
    if workers > 1 and dev.type == "cpu" and calibrated and dataset_info is None:
        # Workers side by side share memory bandwidth and caches: time the costliest class so.
        from invssl.sidebyside import slowdown

        key = max(calibrated, key=lambda k: row_of[k].seconds or 0.0)
        job = groups[key][0][0]
        meta = info(job)
        t0 = time.perf_counter()
        slow = slowdown(job, tuple(meta.input_shape), meta.num_classes, workers, torch.get_num_threads())
        calibration_s += time.perf_counter() - t0
        notes.append(f"{workers} workers side by side step {slow:.2f}x slower than one alone (measured)")
    job_s = []
    for key, members in groups.items():
        step_s, eval_s, source = measured[key]
        scale = slow if source == "calibrated" else 1.0  # recorded epochs already ran so
        for job, n in members:
            f = fixed.get(_fixed_key(job), Fixed(0, 0, 0))
            epochs = max(0, job.epochs - left.get(job.key, 0))
            job_s.append((job.key, scale * (epochs * (n * (step_s or 0.0) + (eval_s or 0.0) + f.epoch_s) + f.setup_s)))
    order = {job.key: i for i, job in enumerate(claim_order(todo))}
    job_s.sort(key=lambda kv: order[kv[0]])
    if any(r.source == "unknown" for r in rows):
        notes.append(
            "classes marked unknown have no recorded epochs on this device and were not "
            "calibrated (calibration was turned off); the total leaves them out"
        )
    if any(r.source == "database" and r.eval_s is None for r in rows):
        notes.append("database figures cover training steps only (epochs.wall_s); evaluation not included")
    return Estimate(
        f"{dev} ({device_name(dev)})", rows, calibration_s, notes, [v for _, v in job_s], workers, startup_s, slow
    )
