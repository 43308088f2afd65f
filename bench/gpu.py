"""Issue 15, part 4: the figures the GPU defaults need, measured in one run on one device.

Parts: step (cost per topology; native conv double backward against autograd), jobs (K trainers at
once on the device), estimate (Table 2 in device-hours), precision (fp32, TF32, bf16), epoch (an
MNIST epoch per topology). bench/GPU.md: how to run it on the device, and what every field means.

    python bench/gpu.py --device cuda --data-root .data --out "$OUT"
    python bench/gpu.py --smoke [--data-root DIR]     # CPU, tiny sizes: every code path
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import epoch_time
import numpy as np
import step_cost
import torch
from _common import add_runtime_options, apply_runtime_options

from invssl import data as datasets
from invssl import estimate, inversion
from invssl.config import JobConfig, load_experiment
from invssl.errors import InvsslError
from invssl.train import train

PARTS = ("step", "jobs", "estimate", "precision", "epoch")
BUDGETS = "step=90,jobs=100,estimate=40,precision=90,epoch=80"  # s; + start-up and overruns: ~8 min
MODES = ("fp32", "default", "tf32", "bf16")
STEP_ARMS = ["sup", "sup L", "ssl", "ssl autograd"]
N_LABELED = 100
WIN = 1.02  # the native path must beat autograd by more than timing noise to be switched on
GRAD_GAP = 1e-4  # float32 rounding and cuDNN's choice of kernel, not a wrong gradient
NEAR_BEST = 0.95  # fewer workers within 5% of the best throughput: the same speed for less memory
FULL = dict(
    device="cuda",
    batch="50,100",
    topologies=",".join(epoch_time.MNIST_TOPOLOGIES),
    repeats=10,
    precisions=",".join(MODES),
    precision_topologies="ConvSmallmax,LargeCNNmax,Resnet3-16max",
    acc_topology="ConvSmallmax",
    acc_epochs=4,
    acc_steps=300,
    acc_seeds=2,
    epoch_steps=100,
    epoch_arms="ssl,sup",
    warmup=5,
    jobs_topology="ConvSmallmax",
    jobs_k="1,2,4,8",
    jobs_steps=0,
    synthetic=(60000, 10000),
)
# A process pays ~4 s of CPU to import torch and torch._dynamo (Adam's constructor pulls it in), an
# evaluation forwards 1000 validation inputs: smoke keeps to cheap nets, one epoch arm (sup: 1000 labels).
SMOKE = dict(
    device="cpu",
    batch="4,8",
    topologies="SmallCNNmean,MLP",
    repeats=2,
    precisions=",".join(MODES),
    precision_topologies="SmallCNNmean",
    acc_topology="MLP",
    acc_epochs=1,
    acc_steps=2,
    acc_seeds=1,
    epoch_steps=2,
    epoch_arms="ssl",
    warmup=1,
    jobs_topology="MLP",
    jobs_k="1,2",
    jobs_steps=2,
    synthetic=(1200, 100),
)
DEFAULT_TF32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
STARTED = time.monotonic()


def say(msg: str) -> None:
    print(f"[gpu.py {time.monotonic() - STARTED:6.1f}s] {msg}", flush=True)


def within(items: Iterable[Any], deadline: float, skipped: list[Any]) -> Iterator[Any]:
    """The items while time is left; the rest go to ``skipped``."""
    for item in items:
        if time.monotonic() > deadline:
            skipped.append(item)
        else:
            yield item


def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One measurement: running out of memory, or a path that fails on this device (the native conv
    double backward is new on CUDA), loses this one and is reported, not the whole run."""
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        torch.cuda.empty_cache()  # a no-op where CUDA never started
        oom = isinstance(exc, torch.OutOfMemoryError)
        return {"error": "out of memory" if oom else " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}


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


def write_mnist_like(root: Path, n_train: int, n_test: int) -> None:
    """IDX files of MNIST's shapes: random pixels, labels cycling through the ten digits."""
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0x803, n, 28, 28], ">i4").tobytes() + rng.integers(0, 256, n * 784, np.uint8).tobytes()
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0x801, n], ">i4").tobytes() + (np.arange(n) % 10).astype(np.uint8).tobytes()
        )


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
    shipped = set(inversion.FAST_CONV_DEVICES)
    inversion.FAST_CONV_DEVICES.add(run.dev.type)  # arm "ssl": native; "ssl autograd" clears the set
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
    inversion.FAST_CONV_DEVICES.clear()
    inversion.FAST_CONV_DEVICES.update(shipped)
    if run.fast_conv_devices is None and geo is not None:  # a --fast-conv-devices choice stands
        (inversion.FAST_CONV_DEVICES.add if wins else inversion.FAST_CONV_DEVICES.discard)(run.dev.type)
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
        __file__,
        "--_worker",
        spec,
        "--threads",
        str(max(1, (os.cpu_count() or 1) // k)),
        "--fast-conv-devices",
        ",".join(inversion.FAST_CONV_DEVICES),
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
    return out


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


def markdown(res: dict[str, Any]) -> str:
    """Each part's per-item results as tables, the rest as a list; bench/GPU.md names the fields."""
    meta = res["meta"]
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)  # noqa: E731
    md = [
        f"# GPU benchmark: {meta['device_name']}, torch {meta['torch']}",
        "",
        f"`python bench/gpu.py {' '.join(meta['argv'])}`; data: {meta['data']}",
        "",
    ]
    for part in (p for p in PARTS if p in res):
        md += [f"## {part}", ""]
        for key, value in res[part].items():
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                value = [{"name": k, **v} for k, v in value.items()]
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                cols = sorted(
                    dict.fromkeys(k for r in value for k, v in r.items() if not isinstance(v, (dict, list))),
                    key=lambda c: c == "error",
                )  # stable: only moves the error column last
                table = step_cost.fmt_table(cols, [[cell(r.get(c)) for c in cols] for r in value], True)
                md += ["", f"{key}:", "", table, ""]
            elif isinstance(value, dict):
                md.append(f"- {key}: " + ", ".join(f"{k} {cell(v)}" for k, v in value.items()))
            else:
                md.append(f"- {key}: {cell(value)}")
        md.append("")
    return "\n".join(md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: every part in seconds")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--budgets", default=BUDGETS, help="seconds per part, checked between measurements")
    parser.add_argument("--data-root", help="folder holding MNIST/raw/*-ubyte (or *.gz)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "out-gpu"))
    parser.add_argument("--experiments", default=str(Path(__file__).resolve().parent.parent / "experiments.yaml"))
    for flag, kind in (
        ("precisions", str),
        ("device", str),
        ("batch", str),
        ("topologies", str),
        ("repeats", int),
        ("precision-topologies", str),
        ("acc-topology", str),
        ("acc-epochs", int),
        ("acc-steps", int),
        ("acc-seeds", int),
        ("epoch-steps", int),
        ("epoch-arms", str),
        ("warmup", int),
        ("jobs-topology", str),
        ("jobs-k", str),
        ("jobs-steps", int),
    ):
        key = flag.replace("-", "_")
        parser.add_argument(f"--{flag}", type=kind, help=f"default {FULL[key]} (--smoke: {SMOKE[key]})")
    parser.add_argument("--threads", type=int, default=None)
    add_runtime_options(parser)
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    run = parser.parse_args()
    apply_runtime_options(run)
    if run._worker:
        worker(json.loads(run._worker))
        return 0
    for key, value in (SMOKE if run.smoke else FULL).items():
        if getattr(run, key, None) is None:
            setattr(run, key, value)
    parts, run.modes, run.topologies = run.parts.split(","), run.precisions.split(","), run.topologies.split(",")
    budgets = {k: float(v) for k, v in (b.split("=") for b in run.budgets.split(","))}
    if unknown := set(parts) - set(PARTS) | set(run.modes) - set(MODES):
        parser.error(f"unknown parts or precisions: {', '.join(sorted(unknown))}")
    run.b_l, run.b_u = (int(v) for v in run.batch.split(","))
    run.dev = torch.device(run.device)
    if run.dev.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu.py: --device {run.device}, but CUDA is not available (torch {torch.__version__})", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True  # as step_cost.py and epoch_time.py time CUDA
    (out := Path(run.out)).mkdir(parents=True, exist_ok=True)
    try:
        datasets.ensure_files("mnist", root=run.data_root, fetch=False)
        run.real_data, run.root = True, run.data_root
    except InvsslError as exc:
        say(f"no MNIST files ({exc}): timing on synthetic MNIST-shaped files, no accuracy runs")
        run.tmp = tempfile.TemporaryDirectory(prefix="gpu-bench-")  # removed as the process exits
        write_mnist_like(Path(run.tmp.name), *run.synthetic)
        run.real_data, run.root = False, run.tmp.name
    run.results = {
        "meta": {
            "device": str(run.dev),
            "device_name": estimate.device_name(run.dev),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cpus": os.cpu_count(),
            "argv": sys.argv[1:],
            "batch": run.batch,
            "data": "MNIST files" if run.real_data else "synthetic (MNIST shapes, random pixels)",
            "budgets_s": budgets,
            "fast_conv_devices_at_start": sorted(inversion.FAST_CONV_DEVICES),
            "started": time.strftime("%F %T"),
        }
    }
    say(f"{run.results['meta']['device_name']}, torch {torch.__version__}; parts {','.join(parts)} -> {out}")
    failed = False
    for part in (p for p in PARTS if p in parts):
        say(f"== {part} (budget {budgets.get(part, 60):.0f} s)")
        t0 = time.monotonic()
        try:
            result = PART_FUNCS[part](run, t0 + budgets.get(part, 60))
        except Exception as exc:  # one broken part must not cost the others their device time
            traceback.print_exc()
            result, failed = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}, True
            torch.cuda.empty_cache()
        result.update(seconds=round(time.monotonic() - t0, 1), fast_conv_devices=sorted(inversion.FAST_CONV_DEVICES))
        run.results[part] = result
        (out / "gpu.json").write_text(json.dumps(run.results, indent=1))
        (out / "gpu.md").write_text(markdown(run.results))
    say(f"done: {out / 'gpu.json'}, {out / 'gpu.md'}" + (" (some parts failed)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
