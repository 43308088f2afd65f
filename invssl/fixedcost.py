"""What a job costs besides its training steps and evaluations: the sweep estimate's fixed costs.

A worker process pays once for its interpreter and imports and for the first load of a dataset
(later jobs of the process reuse it); every job pays for its split and the copies to the
device, its model and optimiser; every epoch for its checkpoint. All measured here, the same
way as the step time (invssl/estimate.py).
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from invssl.config import JobConfig


@dataclass(frozen=True)
class Fixed:
    """What a job costs besides its training steps and evaluations, measured on this device."""

    setup_s: float  # per job: its split and copies to the device, model and optimiser
    epoch_s: float  # per epoch: the checkpoint's serialisation
    load_s: float  # per worker: the first load of the dataset (later jobs reuse it)


def measure_fixed(job: JobConfig, device: torch.device) -> Fixed:
    """Time ``train.prepare`` twice (the first load, then a job's own split and copies), and
    the model, its optimiser with state and one checkpoint, as the trainer makes them."""
    from invssl import models
    from invssl.train import prepare

    t0 = time.perf_counter()
    prepare(job, device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = prepare(job, device)
    again = time.perf_counter() - t0
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
    return Fixed(again + built, time.perf_counter() - t0, max(0.0, first - again))


def measure_startup() -> float:
    """Seconds for a fresh interpreter to import what a worker process imports."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import invssl.pool, invssl.runner, invssl.train"], check=False)
    return time.perf_counter() - t0
