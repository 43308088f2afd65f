"""Training steps timed with other processes stepping beside them: what workers cost each other.

Worker processes on one machine share its memory bandwidth and caches (CPU) or its one device
(GPU), so a step timed alone says little about a sweep of several workers. Here ``k`` processes
take the same training step side by side on random inputs; one of them times its steps while
``k - 1`` run (the others are paused with SIGSTOP, resumed with SIGCONT). Two uses:

* the sweep estimate scales its CPU step times by the slow-down of the workers it would start
  (``invssl/estimate.py``);
* on a GPU the number of workers per device is chosen from the throughput measured with
  1, 2, 4, ... processes and the memory one of them takes (``choose_per_device``).

The processes are fresh interpreters (``python -m invssl.sidebyside``): they talk JSON lines over
stdin/stdout and end when their stdin closes or their parent dies.
"""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch

from invssl.config import JobConfig
from invssl.lookahead import Weights

TIME_S = 0.5  # seconds of steps behind one timing (at least MIN_TIMED steps)
ROUNDS = 3  # alone/together timings of the CPU slow-down
MIN_TIMED = 3
READY_S = 180.0  # a process that has not started stepping by then is given up
GAIN = 1.10  # another doubling of workers per GPU must add this much throughput
MEMORY_SHARE = 0.9  # of the device's free memory the workers may take


def make_step(
    kind: str, job: JobConfig, input_shape: tuple[int, ...], num_classes: int, device: torch.device
) -> tuple[Callable[[bool], None], torch.nn.Module]:
    """``(step, model)``: ``step(small)`` takes one training step of ``job`` as the trainer takes it, with the weights
    of loss ``kind`` ("sup", "ent", "ssl", "learned"), on random inputs of full batch size, or
    of 2 + 2 inputs with ``small`` (a warm-up: Adam state, lazy initialisation). It waits for the
    device. Built under a forked RNG: the caller's random state is left alone."""
    from invssl import models
    from invssl.devices import tune_cpu_allocator
    from invssl.train import train_step

    if device.type == "cpu":
        tune_cpu_allocator()  # as the trainer does
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.build(job.topology, input_shape, num_classes, init=job.init).to(device).train()
        x_l = torch.randn(job.batch_labeled, *input_shape, device=device)
        y_l = torch.randint(num_classes, (job.batch_labeled,), device=device)
        x_u = torch.randn(0 if kind == "sup" else job.batch_unlabeled, *input_shape, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    alpha, beta = {"sup": (1.0, 0.0), "ent": (0.5, 0.0), "ssl": (0.5, 0.5), "learned": (0.5, 0.5)}[kind]
    weights = Weights(job.alpha, job.beta) if kind == "learned" else None
    bf16 = job.precision == "bf16" and device.type == "cuda"

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step(small: bool = False) -> None:
        xl, yl, xu = (x_l[:2], y_l[:2], x_u[:2]) if small else (x_l, y_l, x_u)
        kwargs = {"alpha": alpha, "beta": beta, "config": job, "autocast": autocast, "weights": weights}
        train_step(model, opt, xl, yl, xu, ahead=(xl, yl), **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step, model


def time_steps(step: Callable[[bool], None], seconds: float = TIME_S) -> float:
    """Median seconds of full-size steps over about ``seconds`` (at least ``MIN_TIMED`` steps)."""
    times: list[float] = []
    while len(times) < MIN_TIMED or sum(times) < seconds:
        t0 = time.perf_counter()
        step(False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------- the child processes
def _serve(spec: dict[str, Any]) -> None:
    """Step until stdin closes; a line on stdin asks for a timing, answered as a JSON line."""
    from invssl.estimate import loss_kind

    torch.set_num_threads(int(spec["threads"]))
    job = JobConfig(**spec["job"])
    device = torch.device(spec["device"])
    step, _ = make_step(loss_kind(job), job, tuple(spec["input_shape"]), int(spec["num_classes"]), device)
    step(True)
    step(False)
    _say(ready=True, **_memory(device))
    parent = os.getppid()
    while os.getppid() == parent:  # an orphan stops: nobody will read it or close its stdin
        if select.select([sys.stdin], [], [], 0)[0]:
            if not sys.stdin.readline():
                return
            _say(step_s=time_steps(step, float(spec.get("seconds", TIME_S))), **_memory(device))
        else:
            step(False)


def _memory(device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"free": free, "total": total}


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


@dataclass
class _Child:
    proc: subprocess.Popen[str]

    def ask(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("time\n")
        self.proc.stdin.flush()
        return self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError("a timing process ended or hung before it answered")
        return json.loads(line)

    def pause(self, paused: bool) -> None:
        self.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)


class SideBySide:
    """``k`` processes taking ``job``'s training step on ``device``, ``threads`` threads each."""

    def __init__(
        self, job: JobConfig, input_shape: tuple[int, ...], num_classes: int, device: str, threads: int = 1
    ) -> None:
        self.spec = {
            "job": job.model_dump(mode="json"),
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "device": device,
            "threads": threads,
        }
        self.children: list[_Child] = []

    def __enter__(self) -> SideBySide:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            child.pause(False)  # a stopped process would not see its stdin close
            if child.proc.stdin:
                child.proc.stdin.close()
        for child in self.children:
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    def start(self, n: int) -> list[dict[str, Any]]:
        """Start ``n`` more processes and wait until each steps; their first reports."""
        env = dict(os.environ, OMP_NUM_THREADS=str(self.spec["threads"]))
        new = []
        for _ in range(n):
            proc = subprocess.Popen(
                [sys.executable, "-m", "invssl.sidebyside", json.dumps(self.spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            new.append(_Child(proc))
        self.children += new
        return [child.read() for child in new]

    def step_s(self, active: int) -> dict[str, Any]:
        """The first process's seconds per step with ``active`` processes stepping (itself
        included), and its view of the device's memory."""
        for i, child in enumerate(self.children[1:], start=1):
            child.pause(i >= active)
        return self.children[0].ask()


def slowdown(job: JobConfig, input_shape: tuple[int, ...], num_classes: int, workers: int, threads: int) -> float:
    """How much slower ``job``'s CPU step is with ``workers`` processes stepping side by side
    than alone (1.0: not at all)."""
    if workers < 2:
        return 1.0
    ratios = []
    with SideBySide(job, input_shape, num_classes, "cpu", threads) as run:
        run.start(workers)
        # Alone and together in turns, ROUNDS times: on a shared machine one window can catch
        # someone else's burst of load, the median of the rounds' ratios does not follow it.
        for _ in range(ROUNDS):
            alone = run.step_s(1)["step_s"]
            ratios.append(run.step_s(workers)["step_s"] / alone)
    return max(1.0, statistics.median(ratios))


@dataclass(frozen=True)
class PerDevice:
    """Workers per GPU and what decided it."""

    k: int
    step_s: Mapping[int, float]  # processes side by side -> seconds per step of one of them
    process_bytes: Optional[int]  # device memory one process takes (context included)
    why: str


def pick_per_device(
    step_s: Mapping[int, float], process_bytes: Optional[int], free_bytes: Optional[int], jobs: int
) -> int:
    """Workers per GPU: going up the counts that fit (at most ``jobs``, all processes within
    ``MEMORY_SHARE`` of ``free_bytes``), a larger count is taken only if its throughput
    (``k / step_s[k]``) is ``GAIN`` times the count taken so far."""
    fits = [k for k in sorted(step_s) if k <= max(1, jobs)]
    if process_bytes and free_bytes is not None:
        fits = [k for k in fits if k == 1 or k * process_bytes <= MEMORY_SHARE * free_bytes]
    chosen = fits[0] if fits else 1
    for k in fits[1:]:
        if k / step_s[k] >= GAIN * chosen / step_s[chosen]:
            chosen = k
    return chosen


def choose_per_device(
    job: JobConfig, input_shape: tuple[int, ...], num_classes: int, device: str, jobs: int, most: int = 8
) -> PerDevice:
    """Measure ``job``'s step with 1, 2, 4, ... processes on ``device`` (up to ``most`` and
    ``jobs``) and the memory a process takes; pick with ``pick_per_device``."""
    counts = [k for k in (1, 2, 4, 8, 16, 32) if k <= min(most, max(1, jobs))]
    t0 = time.perf_counter()
    with SideBySide(job, input_shape, num_classes, device) as run:
        first = run.start(1)[0]
        free_one = first.get("free")
        step_s: dict[int, float] = {1: run.step_s(1)["step_s"]}
        process_bytes = None
        if counts[-1] > 1:
            run.start(counts[-1] - 1)
            free_all = run.step_s(1).get("free")
            if free_one is not None and free_all is not None:
                process_bytes = max(1, (free_one - free_all) // (counts[-1] - 1))
            for k in counts[1:]:
                step_s[k] = run.step_s(k)["step_s"]
    # The free memory the sweep's workers will share: this probe's processes have ended by then.
    free = None if free_one is None or process_bytes is None else free_one + process_bytes
    k = pick_per_device(step_s, process_bytes, free, jobs)
    rates = ", ".join(f"{n}: {n / s:.0f}" for n, s in step_s.items())
    memory = f", {process_bytes / 2**20:.0f} MiB per process" if process_bytes else ""
    why = f"steps/s with k processes {{{rates}}}{memory}; measured in {time.perf_counter() - t0:.0f} s"
    return PerDevice(k, step_s, process_bytes, why)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which closes stdin
    _serve(json.loads(sys.argv[1]))
