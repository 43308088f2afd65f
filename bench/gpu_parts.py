"""The measurements of bench/gpu.py, one ``part_*`` function per part (``PART_FUNCS``), and the
worker that the jobs part starts as ``python bench/gpu.py --_worker SPEC``."""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import epoch_time
import step_cost
import torch
from gpu_report import guarded, say, within

from invssl import data as datasets
from invssl import estimate, fastconv
from invssl.config import JobConfig, load_experiment
from invssl.train import train

PARTS = ("step", "jobs", "estimate", "precision", "epoch")
STEP_ARMS = ["sup", "sup L", "ssl", "ssl autograd"]
N_LABELED = 100
WIN = 1.02  # the native path must beat autograd by more than timing noise to be switched on
GRAD_GAP = 1e-4  # float32 rounding and cuDNN's choice of kernel, not a wrong gradient
NEAR_BEST = 0.95  # fewer workers within 5% of the best throughput: the same speed for less memory
DEFAULT_TF32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


@contextmanager
def precision(mode: str) -> Iterator[bool]:
    """TF32 flags for ``mode`` while inside; yields whether to autocast to bf16."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    flags = {"fp32": (False, False), "tf32": (True, True)}.get(mode, DEFAULT_TF32)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    try:
        yield mode == "bf16"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def measure_args(run: argparse.Namespace, steps: int) -> dict[str, Any]:
    return dict(  # what epoch_time.measure reads from its command line
        batch=run.batch,
        n_labeled=N_LABELED,
        data_dir=run.root,
        device=str(run.dev),
        bf16=False,
        no_cudnn_benchmark=False,
        channels_last=False,
        steps=steps,
        warmup=run.warmup,
    )


def part_step(run: argparse.Namespace, deadline: float) -> dict[str, Any]:
    shipped = set(fastconv.FAST_CONV_DEVICES)
    fastconv.FAST_CONV_DEVICES.add(run.dev.type)  # arm "ssl": native; "ssl autograd" clears the set
    rows, skipped = {}, []
    for name in within(run.topologies, deadline, skipped):

        def one(name: str = name) -> dict[str, Any]:
            bench = step_cost.Bench(name, run.dev, run.b_l, run.b_u)
            t = step_cost.time_arms(bench, STEP_ARMS, run.repeats)
            row: dict[str, Any] = {f"{arm.replace(' ', '_')}_ms": 1e3 * t[arm][0] for arm in STEP_ARMS}
            row["phases_ms"] = {arm: [1e3 * v for v in t[arm][1:]] for arm in STEP_ARMS}
            for arm in ("sup", "ssl", "ssl autograd") if run.dev.type == "cuda" else ():
                row[f"{arm.replace(' ', '_')}_peak_mb"] = step_cost.cuda_peak_mb(bench, arm)
            grads = []  # the native path may only be switched on where it computes the same gradients
            with precision("fp32"):
                for arm in ("ssl", "ssl autograd"):  # each picks its path in the forward pass
                    bench.opt.zero_grad(set_to_none=True)
                    bench.loss(arm).backward()
                    grads.append(torch.cat([p.grad.flatten() for p in bench.model.parameters() if p.grad is not None]))
            return {
                **row,
                "ssl_over_sup": row["ssl_ms"] / row["sup_ms"],
                "native_grad_gap": ((grads[0] - grads[1]).norm() / grads[1].norm()).item(),
                "native_speedup": row["ssl_autograd_ms"] / row["ssl_ms"],
            }

        rows[name] = r = guarded(one)
        say(
            f"  {name}: "
            + (
                r.get("error")
                or f"sup {r['sup_ms']:.2f} ms, ssl native {r['ssl_ms']:.2f} ms, "
                f"autograd {r['ssl_autograd_ms']:.2f} ms ({r['native_speedup']:.2f}x)"
            )
        )
    speedups = [r["native_speedup"] for r in rows.values() if "native_speedup" in r]
    geo = math.exp(statistics.fmean(math.log(s) for s in speedups)) if speedups else None
    gap = max((r.get("native_grad_gap", math.inf) for r in rows.values()), default=math.inf)  # failed: inf
    wins = geo is not None and geo > WIN and gap < GRAD_GAP
    fastconv.FAST_CONV_DEVICES.clear()
    fastconv.FAST_CONV_DEVICES.update(shipped)
    if run.fast_conv_devices is None and geo is not None:  # a --fast-conv-devices choice stands
        (fastconv.FAST_CONV_DEVICES.add if wins else fastconv.FAST_CONV_DEVICES.discard)(run.dev.type)
        say(
            f"native conv double backward on {run.dev.type}: {geo:.2f}x autograd's speed (geometric mean, "
            f"{min(speedups):.2f}-{max(speedups):.2f}), gradients within {gap:.0e}: {'enable' if wins else 'leave off'}"
        )
    return {
        "topologies": rows,
        "skipped": skipped,
        "native_speedup_geomean": geo,
        "native_wins": wins,
        "native_grad_gap_max": gap if gap < math.inf else None,
    }


def concurrent(run: argparse.Namespace, k: int, deadline: float) -> dict[str, Any]:
    """K workers released together; throughput over the slowest one's time, as all ran at once."""
    spec = json.dumps({**measure_args(run, run.jobs_steps), "topology": run.jobs_topology})
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("gpu.py")),  # the entry point runs worker() for --_worker
        "--_worker",
        spec,
        "--threads",
        str(max(1, (os.cpu_count() or 1) // k)),
        "--fast-conv-devices",
        ",".join(fastconv.FAST_CONV_DEVICES),
    ]
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # stderr: into the log
        for _ in range(k)
    ]
    try:
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            if p.stdout.readline() != "ready\n":  # said once warm
                raise RuntimeError(f"a worker died before its timed steps (exit {p.poll()}; its stderr is above)")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:  # a worker's last line is its result; a hung one must not hold the whole run
            stdout = p.communicate(timeout=max(60.0, deadline - time.monotonic() + 60))[0]
            if p.returncode:
                raise RuntimeError(f"a worker failed (exit {p.returncode}; its traceback is above)")
            outs.append(json.loads(stdout.splitlines()[-1]))
    except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return {"k": k, "error": " ".join(str(exc).split())[:300]}
    finally:
        for p in procs:  # no-ops for the workers that exited
            p.kill()
            p.wait()
    used = [o["device_used_mb"] for o in outs if o["device_used_mb"] is not None]
    return {
        "k": k,
        "steps_per_s": sum(o["steps"] for o in outs) / max(o["seconds"] for o in outs),
        "ms_per_step_slowest": 1e3 * max(o["s_per_step"] for o in outs),
        "peak_mb_per_job": max(o["peak_mb"] for o in outs),
        "device_used_mb": max(used, default=None),
    }


def worker(spec: dict[str, Any]) -> None:
    dev = torch.device(spec["device"])
    used: dict[str, float] = {}

    def go() -> None:
        print("ready", flush=True)
        sys.stdin.readline()
        if dev.type == "cuda":  # every worker is warm now: the device holds all K at full size
            free, total = torch.cuda.mem_get_info(dev)
            used["mb"] = (total - free) / 2**20

    r = epoch_time.measure(argparse.Namespace(**spec), spec["topology"], "ssl", go)
    peak = (
        torch.cuda.max_memory_allocated(dev)
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )  # Linux: KiB
    print(json.dumps({**r, "peak_mb": peak / 2**20, "device_used_mb": used.get("mb")}), flush=True)


def part_jobs(run: argparse.Namespace, deadline: float) -> dict[str, Any]:
    rows, skipped = [], []
    torch.cuda.empty_cache()  # blocks this process keeps cached would count against the workers
    for k in within((int(v) for v in run.jobs_k.split(",")), deadline, skipped):
        rows.append(r := concurrent(run, k, deadline))
        say(f"  K={k}: " + (r.get("error") or f"{r['steps_per_s']:.1f} steps/s, {r['peak_mb_per_job']:.0f} MB per job"))
    out: dict[str, Any] = {"topology": run.jobs_topology, "steps": run.jobs_steps, "rows": rows, "skipped": skipped}
    if ok := [r for r in rows if "error" not in r]:
        best = max(ok, key=lambda r: r["steps_per_s"])
        one = next((r for r in ok if r["k"] == 1), None)
        out.update(
            best_k=best["k"],
            speedup_at_best=best["steps_per_s"] / one["steps_per_s"] if one else None,
            recommended_k=min(r["k"] for r in ok if r["steps_per_s"] >= NEAR_BEST * best["steps_per_s"]),
        )
        say(
            f"jobs per device: best K={best['k']} ({best['steps_per_s']:.1f} steps/s); "
            f"fewest within {NEAR_BEST:.0%} of it: K={out['recommended_k']}"
        )
    if time.monotonic() < deadline:
        out["default"] = guarded(lambda: tool_default(run))
    return out


def tool_default(run: argparse.Namespace) -> dict[str, Any]:
    """What ``invssl sweep`` itself picks on this device: ``sidebyside.choose_per_device``."""
    from invssl.sidebyside import choose_per_device

    job = JobConfig(
        topology=run.jobs_topology, dataset="mnist", n_labeled=100, batch_labeled=run.b_l, batch_unlabeled=run.b_u
    )
    most = max(int(v) for v in run.jobs_k.split(","))
    chosen = choose_per_device(job, (1, 28, 28), 10, str(run.dev), jobs=most, most=most)
    say(f"  invssl's default: {chosen.k} workers per device ({chosen.why})")
    mib = chosen.process_bytes / 2**20 if chosen.process_bytes else None
    return {"k": chosen.k, "process_mib": mib, "why": chosen.why}


def part_estimate(run: argparse.Namespace, deadline: float) -> dict[str, Any]:
    _, table2 = load_experiment(run.experiments)
    jobs = [j for j in table2 if j.topology in run.topologies]
    if run.smoke:  # the smoke batch keeps the estimate's calibration steps as quick as the rest
        jobs = [j.model_copy(update={"batch_labeled": run.b_l, "batch_unlabeled": run.b_u}) for j in jobs]
    est = estimate.estimate(jobs, device=str(run.dev))
    out: dict[str, Any] = {
        "jobs": len(jobs),
        "jobs_left_out": len(table2) - len(jobs),
        "notes": est.notes,
        "dry_run_hours": est.total_s / 3600,
        "dry_run_complete": est.complete,
        "calibration_s": est.calibration_s,
        "dry_run_by_topology_hours": {t: s / 3600 for t, s in est.by_topology().items()},
    }
    steps = run.results.get("step", {})
    seconds, unmeasured = 0.0, set()
    for job, kind in ((j, estimate.loss_kind(j)) for j in jobs):
        field = "sup_L_ms" if kind == "sup" else ("ssl_ms" if steps.get("native_wins") else "ssl_autograd_ms")
        if kind == "ent" or field not in steps.get("topologies", {}).get(job.topology, {}):
            unmeasured.add(job.topology)
            continue
        n = estimate.job_steps(job, datasets.info(job.dataset).n_train) * job.epochs
        seconds += n * steps["topologies"][job.topology][field] / 1e3
    out.update(measured_steps_hours=seconds / 3600, unmeasured_topologies=sorted(unmeasured))
    if speedup := run.results.get("jobs", {}).get("speedup_at_best"):
        out["measured_steps_hours_at_best_k"] = seconds / 3600 / speedup
    say(
        f"  {len(jobs)} jobs, one at a time: {est.total_s / 3600:.2f} device-hours by invssl's estimate, "
        f"{seconds / 3600:.2f} by measured steps"
        + (f", {seconds / 3600 / speedup:.2f} at the best K" if speedup else "")
    )
    return out


def precision_speed(run: argparse.Namespace, name: str) -> dict[str, Any]:
    bench = step_cost.Bench(name, run.dev, run.b_l, run.b_u)
    clock = step_cost.make_clock(run.dev)
    samples: dict[str, list[float]] = {m: [] for m in run.modes}
    for rep in range(1 + run.repeats):  # round 0 warms every mode up; modes interleave
        for mode in run.modes:
            with precision(mode) as bf16:
                t0 = clock()
                with torch.autocast(run.dev.type, dtype=torch.bfloat16, enabled=bf16):
                    total = bench.loss("ssl")
                bench.opt.zero_grad(set_to_none=True)
                total.backward()
                bench.opt.step()
                if rep:
                    samples[mode].append(clock() - t0)
    return {f"{m}_ms": 1e3 * statistics.median(v) for m, v in samples.items()}


def part_precision(run: argparse.Namespace, deadline: float) -> dict[str, Any]:
    speed, skipped, accuracy = {}, [], []
    for name in within(run.precision_topologies.split(","), deadline, skipped):
        speed[name] = r = guarded(lambda name=name: precision_speed(run, name))
        say(f"  {name}: " + (r.get("error") or ", ".join(f"{k} {v:.2f}" for k, v in r.items())))
    out: dict[str, Any] = {"speed": speed, "skipped": skipped, "tf32_default": list(DEFAULT_TF32)}
    if not run.real_data:
        return {**out, "accuracy_skipped": "no MNIST files under --data-root"}
    for seed, mode in within([(s, m) for s in range(run.acc_seeds) for m in run.modes], deadline, skipped):
        config = JobConfig(
            topology=run.acc_topology,
            dataset="mnist",
            n_labeled=N_LABELED,
            seed=seed,
            epochs=run.acc_epochs,
            steps_per_epoch=run.acc_steps,
            batch_labeled=run.b_l,
            batch_unlabeled=run.b_u,
            precision="bf16" if mode == "bf16" else "fp32",
            data_root=run.root,
            device=str(run.dev),
        )
        with precision(mode):
            t0 = time.perf_counter()
            r = guarded(lambda config=config: train(config)[0])
        accuracy.append(
            {
                "seed": seed,
                "mode": mode,
                "seconds": time.perf_counter() - t0,
                **{k: r[k] for k in ("test_acc", "val_acc", "wall_s", "error") if k in r},
            }
        )
        say(f"  accuracy, seed {seed}, {mode}: " + (r.get("error") or f"test {r['test_acc']:.4f}"))
    means = {
        m: statistics.fmean(v)
        for m in run.modes
        if (v := [r["test_acc"] for r in accuracy if r["mode"] == m and "test_acc" in r])
    }
    return {**out, "accuracy": accuracy, "mean_test_acc": means}


def part_epoch(run: argparse.Namespace, deadline: float) -> dict[str, Any]:
    rows, skipped = [], []
    for name, arm in within([(t, a) for t in run.topologies for a in run.epoch_arms.split(",")], deadline, skipped):
        r = guarded(
            lambda name=name, arm=arm: epoch_time.measure(
                argparse.Namespace(**measure_args(run, run.epoch_steps)), name, arm
            )
        )
        rows.append(
            {
                "topology": name,
                "arm": arm,
                **{
                    k: r[k]
                    for k in ("s_per_step", "steps", "steps_per_epoch", "epoch_s", "eval_s", "extrapolated", "error")
                    if k in r
                },
            }
        )
        say(f"  {name} {arm}: " + (r.get("error") or f"epoch {r['epoch_s']:.1f} s + eval {r['eval_s']:.2f} s"))
    return {"rows": rows, "skipped": skipped}


PART_FUNCS = {p: globals()[f"part_{p}"] for p in PARTS}
