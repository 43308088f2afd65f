"""What a job costs besides its training steps and evaluations: the sweep estimate's fixed costs.

A sweep pays once for its own process's start and each worker process for its interpreter and
imports and for the first load of a dataset (later jobs of the process reuse it); every job pays
for its split and the copies to the device, its model and optimiser; every epoch for its
evaluation and its checkpoint. All measured here, the same way as the step time
(invssl/estimate.py).
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch

from invssl.config import JobConfig

# Validation and test inputs the evaluation is timed on: as many as the reconstructed test inputs,
# so that the mix of forward passes and reconstructions is close to a whole evaluation's.
EVAL_PROBE = 1000


@dataclass(frozen=True)
class Fixed:
    """What a job costs besides its training steps and evaluations, measured on this device."""

    setup_s: float  # per job: its split and copies to the device, model and optimiser
    epoch_s: float  # per epoch: the checkpoint's serialisation
    load_s: float  # per worker: the first load of the dataset (later jobs reuse it)
    eval_unit_s: float = 0.0  # per epoch: the evaluation, per unit of ``eval_units``


def eval_units(n_val: int, n_test: int) -> int:
    """What an evaluation costs, in forward passes: every validation and test input once, and
    the ``RECON_EVAL`` reconstructed test inputs' backward pass about twice more."""
    from invssl.evaluation import RECON_EVAL

    return n_val + n_test + 2 * min(RECON_EVAL, n_test)


def measure_fixed(job: JobConfig, device: torch.device) -> Fixed:
    """Time ``train.prepare`` twice (the first load, then a job's own split and copies), the
    model, its optimiser with state and one checkpoint, as the trainer makes them, and the
    trainer's evaluation on the first ``EVAL_PROBE`` validation and test inputs."""
    from invssl import models
    from invssl.devices import tune_cpu_allocator
    from invssl.evaluation import evaluate
    from invssl.train import prepare

    if device.type == "cpu":
        tune_cpu_allocator()  # as the trainer does
    job = job.model_copy(update={"download": False})  # an estimate writes nothing: files absent here fail

    t0 = time.perf_counter()
    prepare(job, device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = prepare(job, device)
    again = time.perf_counter() - t0
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its lazy imports: in the worker's start
    with torch.random.fork_rng(devices=[]):
        t0 = time.perf_counter()
        model = models.build(job.topology, prep.info.input_shape, prep.info.num_classes, init=job.init).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=job.lr)
        built = time.perf_counter() - t0
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    opt.step()  # Adam's moments exist from the first step on, and every checkpoint holds them
    t0 = time.perf_counter()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, io.BytesIO())
    saved = time.perf_counter() - t0
    head = _head(prep, EVAL_PROBE)
    times = []
    for _ in range(2):  # the first also pays for fresh memory
        t0 = time.perf_counter()
        evaluate(model, head, job.distance, nullcontext)
        times.append(time.perf_counter() - t0)
    unit = times[-1] / max(1, eval_units(len(head.x_val), len(head.x_test)))
    return Fixed(again + built, saved, max(0.0, first - again), unit)


def _head(prep: Any, n: int) -> Any:
    """``prep`` with its first ``n`` validation and test inputs only."""
    groups = None if prep.groups_test is None else prep.groups_test[:n]
    head = {k: getattr(prep, k)[:n] for k in ("x_val", "y_val", "x_test", "y_test")}
    return replace(prep, groups_test=groups, **head)


def measure_startup() -> float:
    """Seconds before a sweep's first job starts: its own process importing what it needs to
    enqueue, then a worker's fresh interpreter importing what it runs jobs with (torch's
    optimisers import ``torch._dynamo`` at their first use: a second or two)."""
    t0 = time.perf_counter()
    for imports in ("invssl.launch, invssl.runner", "invssl.pool, invssl.runner, invssl.train, torch._dynamo"):
        # os._exit: the interpreter's teardown is not part of a start (invssl/pool.py skips it too)
        subprocess.run([sys.executable, "-c", f"import os, {imports}; os._exit(0)"], check=False)
    return time.perf_counter() - t0
