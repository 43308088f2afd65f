"""Devices: what ``auto`` means, checks before anything is written, names results record, and
the CPU allocator setting training relies on.

Every place that turns a device name into a ``torch.device`` or describes one goes through here,
so a job's ``env`` (written by a worker) and a dry run's estimate (matched against it) agree.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from invssl.errors import InvsslError, JobError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else Apple MPS, else CPU."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise JobError(f"unknown device {name!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise JobError(f"device {name!r} requested but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_devices(names: Iterable[Optional[str]]) -> None:
    """Fail before anything is written when a requested device cannot be used here."""
    for name in names:
        if name:
            try:
                resolve_device(name)
            except JobError as exc:  # here it is the request that is wrong, not a job
                raise InvsslError(str(exc)) from None


def default_devices() -> list[str]:
    """One worker per GPU on a multi-GPU machine; otherwise the one auto-chosen device."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return []


def device_name(device: torch.device) -> str:
    """The hardware's name, as each job's ``env`` records it and the estimator matches it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the OS (CPU training).

    By default glibc serves large blocks (a batch's activation maps: megabytes) by ``mmap`` and
    unmaps them on free, and trims the heap whenever its free top grows past a threshold, so
    every training step receives fresh pages from the kernel and pays a page fault per 4 KiB on
    first touch. The semi-supervised step allocates about twice what a supervised one does (the
    backward's own graph), so it pays twice. Serving every block from the heap and never trimming
    it makes a step reuse the previous step's pages (bench/step_cost.py, --malloc). The process
    keeps its peak footprint, which a training process reaches every step anyway.

    Process-wide, idempotent; a no-op off Linux/glibc or with ``INVSSL_MALLOC=default``.
    Returns whether the setting is in force.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("INVSSL_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc: leave it alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # No mmap at all: activation maps of the large nets exceed glibc's largest mmap threshold
    # (32 MiB), so raising the threshold would leave exactly the biggest blocks page-faulting.
    _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _allocator_tuned


@dataclass(frozen=True)
class WorkerPlan:
    """How a sweep runs here: ``n`` worker processes over ``devices``, ``threads`` each."""

    n: int
    threads: int  # intra-op threads per worker (torch.set_num_threads / OMP_NUM_THREADS)
    devices: list[str]  # empty: the auto-chosen device
    why: str  # one line for the user: the choice and what decided it


def physical_cores() -> int:
    """Cores this process may run on, hyperthread siblings counted once (Linux sysfs; else
    every CPU): intra-op threads on two siblings of one core mostly wait for each other."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return len(cores)


def plan_workers(
    devices: list[str],
    jobs: int,
    workers: int = 0,
    threads: int = 0,
    per_device: int = 0,
    probe: Optional[Callable[[str, int], Any]] = None,
) -> WorkerPlan:
    """Workers and threads for ``jobs`` jobs; 0 means choose.

    CPU: one worker per physical core (at most one per job), one intra-op thread each: the zoo's
    networks are too small for threads to scale, while workers do not share anything
    (BENCHMARKS.md, "Fast by default"). GPU: ``per_device`` workers per GPU; else, with several
    jobs per GPU, ``probe(gpu, jobs per GPU)`` measures how many to run side by side
    (``sidebyside.choose_per_device``: its ``k`` and ``why``); else one.
    """
    jobs = max(1, jobs)
    gpus = [d for d in devices if d.startswith("cuda")] or (
        default_devices() if not devices and torch.cuda.is_available() else []
    )
    env_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if gpus:
        why = ""
        if not (workers or per_device) and probe is not None and jobs > len(gpus):
            measured = probe(gpus[0], -(-jobs // len(gpus)))
            per_device, why = measured.k, f": {measured.k} per GPU, chosen from {measured.why}"
        n = workers or min(jobs, len(gpus) * max(1, per_device))
        return WorkerPlan(n, threads or env_threads or 1, gpus, f"{n} worker(s) on {len(gpus)} GPU(s){why}")
    cores = physical_cores()
    n = workers or min(cores, jobs)
    per = threads or env_threads or max(1, cores // n)
    chosen = "" if workers else f" ({cores} physical cores, {jobs} jobs)"
    why = f"{n} worker{'s' * (n > 1)} x {per} thread{'s' * (per > 1)} on the CPU{chosen}"
    return WorkerPlan(n, per, [d for d in devices if d], why)
