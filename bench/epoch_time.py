"""Wall time of one MNIST epoch per topology: the sweep's unit of work.

An epoch is what the trainer calls one: one pass over the unlabeled images (60,000 training
images minus the validation split and the labeled ones: 58,900 at N_L = 100), at the batch sizes of
experiments.yaml (50 labeled + 100 unlabeled per step, 589 steps). Each step is the trainer's
(``invssl.train``): the whole dataset already on the device, index streams drawn per epoch,
``train.train_step`` (``ssl_loss``, backward, Adam, the loss terms stacked for the NaN check),
the LR scheduler. The evaluation after the epoch (validation, test, reconstruction error) is timed separately.

Arms: ``ssl`` (alpha = beta = 0.5, N_L = --n-labeled) and ``sup`` (the Sup1000 column: N_L = 1000,
alpha = 1; the trainer skips the unlabeled batch, so a step carries the labeled batch alone, and
the epoch is still one pass over the 58,000 unlabeled images' worth of steps, 580).

On 2 CPU cores the large nets take many minutes per epoch; ``--steps N`` times N steps (after
``--warmup`` untimed ones) and extrapolates to the full epoch from their mean, which the output
states. ``--workers K`` runs K identical processes on the device at once, started together, and
reports their summed throughput: how many jobs one device should run side by side.

GPU options: ``--bf16`` (autocast, as ``precision: bf16`` in a job), ``--channels-last`` (2-D nets:
model and data in NHWC), ``--no-cudnn-benchmark`` (autotuning is on by default on CUDA).

    python bench/epoch_time.py --data-dir /work/shared/data [--device cpu] [--steps 30]
        [--topologies SmallCNNmean,...] [--arms ssl,sup] [--workers 1] [--threads N]
        [--bf16] [--channels-last] [--batch 50,100] [--n-labeled 100] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch
from _common import add_runtime_options, apply_runtime_options

from invssl import models
from invssl.config import JobConfig
from invssl.devices import device_name, resolve_device, tune_cpu_allocator
from invssl.train import _index_stream, evaluate, prepare, steps_per_epoch, train_step

MNIST_TOPOLOGIES = [n for n in models.names() if n not in ("Audio1D", "MLP")]


def job_config(args: argparse.Namespace, topology: str, arm: str) -> JobConfig:
    b_l, b_u = (int(v) for v in args.batch.split(","))
    alpha, beta = (1.0, 0.0) if arm == "sup" else (0.5, 0.5)
    n_labeled = 1000 if arm == "sup" else args.n_labeled  # sup: the Sup1000 column
    return JobConfig(
        topology=topology,
        dataset="mnist",
        n_labeled=n_labeled,
        alpha=alpha,
        beta=beta,
        batch_labeled=b_l,
        batch_unlabeled=b_u,
        data_root=args.data_dir,
        epochs=1,
        precision="bf16" if args.bf16 else "fp32",
        device=args.device,
    )


def measure(args: argparse.Namespace, topology: str, arm: str, go: Any = None) -> dict[str, Any]:
    """Time ``args.steps`` trainer steps (0: the whole epoch) and one evaluation."""
    config = job_config(args, topology, arm)
    dev = resolve_device(args.device)
    if dev.type == "cpu":
        tune_cpu_allocator()  # as the trainer does
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.manual_seed(0)
    prep = prepare(config, dev)
    memory_format = torch.channels_last if args.channels_last and len(prep.info.input_shape) == 3 else None
    if memory_format is not None:
        for field in ("x_lab", "x_unl", "x_val", "x_test"):
            setattr(prep, field, getattr(prep, field).contiguous(memory_format=memory_format))
    model = models.build(config.topology, prep.info.input_shape, prep.info.num_classes).to(dev)
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    n_full = steps_per_epoch(config, len(prep.x_unl))
    n = n_full if args.steps <= 0 else min(args.steps, n_full)
    bl, bu = min(config.batch_labeled, len(prep.x_lab)), config.batch_unlabeled
    gen = torch.Generator().manual_seed(1)
    total = args.warmup + n
    lab = _index_stream(len(prep.x_lab), total * bl, gen)
    unl = _index_stream(len(prep.x_unl), total * bu, gen)
    use_bf16 = config.precision == "bf16" and dev.type == "cuda"

    def autocast() -> Any:
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(s: int) -> torch.Tensor:
        li = lab[s * bl : (s + 1) * bl].to(dev)
        ui = unl[s * bu : (s + 1) * bu].to(dev)
        x_l, y_l, x_u = prep.x_lab[li], prep.y_lab[li], prep.x_unl[ui]
        values = train_step(
            model, opt, x_l, y_l, x_u, alpha=config.alpha, beta=config.beta, config=config, autocast=autocast
        )
        sched.step()
        return values

    model.train()
    for s in range(args.warmup):
        step(s)
    sync()
    if go is not None:
        go()
    history = []
    started = time.perf_counter()
    for s in range(args.warmup, total):
        history.append(step(s))
        if len(history) == 50:
            torch.stack(history).sum().item()  # the trainer's periodic NaN check synchronises here
            history = []
    sync()
    seconds = time.perf_counter() - started
    t0 = time.perf_counter()
    evaluate(model, prep, config.distance, autocast)
    sync()
    eval_s = time.perf_counter() - t0
    return {
        "topology": config.topology,
        "arm": arm,
        "steps": n,
        "steps_per_epoch": n_full,
        "seconds": seconds,
        "s_per_step": seconds / n,
        "epoch_s": seconds / n * n_full,
        "eval_s": eval_s,
        "inputs": n * (bl + (bu if config.alpha < 1 else 0)),
        "inputs_per_s": n * (bl + (bu if config.alpha < 1 else 0)) / seconds,
        "extrapolated": n < n_full,
    }


def run_workers(args: argparse.Namespace, topology: str, arm: str) -> dict[str, Any]:
    """K processes on the same device, released together after their warm-up; summed throughput."""
    base = [sys.executable, __file__, "--_worker", json.dumps([topology, arm])]
    passthrough = [a for a in sys.argv[1:] if a != "--_worker"]
    procs = [
        subprocess.Popen(base + passthrough, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(args.workers)
    ]
    for p in procs:  # wait until each is warm
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker failed to start: {line!r}")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate()
        results.append(json.loads(out.strip().splitlines()[-1]))
        if p.returncode:
            raise RuntimeError(f"worker exited with {p.returncode}")
    slowest = max(r["seconds"] for r in results)
    merged = dict(results[0])
    merged["s_per_step"] = max(r["s_per_step"] for r in results)
    merged["epoch_s"] = max(r["epoch_s"] for r in results)
    merged["inputs_per_s"] = sum(r["inputs"] for r in results) / slowest  # all ran at once
    merged["workers"] = args.workers
    return merged


def fmt(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("INVSSL_DATA", "data"),
        help="root holding MNIST/raw/... (torchvision layout)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--topologies", default=",".join(MNIST_TOPOLOGIES))
    parser.add_argument("--arms", default="ssl,sup")
    parser.add_argument("--steps", type=int, default=0, help="time N steps and extrapolate (0: the whole epoch)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", default="50,100", help="labeled,unlabeled per step (experiments.yaml: 50,100)")
    parser.add_argument("--n-labeled", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="processes on the device at once")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and data (2-D nets)")
    parser.add_argument("--no-cudnn-benchmark", action="store_true")
    add_runtime_options(parser)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_runtime_options(args)

    if args._worker:
        topology, arm = json.loads(args._worker)

        def go() -> None:
            print("ready", flush=True)
            sys.stdin.readline()

        print(json.dumps(measure(args, topology, arm, go)), flush=True)
        return

    dev = resolve_device(args.device)
    name = device_name(dev)
    print(
        f"# epoch time: device={dev} ({name}) torch={torch.__version__} threads={torch.get_num_threads()} "
        f"workers={args.workers} batch={args.batch} N_L={args.n_labeled} bf16={args.bf16} "
        f"channels_last={args.channels_last} steps={'epoch' if args.steps <= 0 else args.steps} "
        f"(+{args.warmup} warm-up)"
    )
    rows = []
    for topology in args.topologies.split(","):
        for arm in args.arms.split(","):
            r = run_workers(args, topology, arm) if args.workers > 1 else measure(args, topology, arm)
            rows.append(r)
            print(
                f"  {r['topology']} {arm}: {r['s_per_step'] * 1e3:.1f} ms/step, epoch {fmt(r['epoch_s'])}"
                f"{' (extrapolated)' if r['extrapolated'] else ''}",
                file=sys.stderr,
                flush=True,
            )
    header = ["topology", "arm", "ms/step", "steps/epoch", "epoch", "eval", "inputs/s", "measured"]
    if args.workers > 1:
        header[6] = f"inputs/s ({args.workers} workers)"
    table = []
    for r in rows:
        how = f"{r['steps']} steps, extrapolated" if r["extrapolated"] else "full epoch"
        table.append(
            [
                r["topology"],
                r["arm"],
                f"{r['s_per_step'] * 1e3:.1f}",
                str(r["steps_per_epoch"]),
                fmt(r["epoch_s"]),
                fmt(r["eval_s"]),
                f"{r['inputs_per_s']:.0f}",
                how,
            ]
        )
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i < 2 or i == 7 else "---:" for i in range(len(header))) + "|")
        for t in table:
            print("| " + " | ".join(t) + " |")
    else:
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
        for t in [header, *table]:
            print("  ".join(c.ljust(w) if i < 2 or i == 7 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths))))
    total = sum(r["epoch_s"] + r["eval_s"] for r in rows if r["arm"] == "ssl")
    if total:
        print(
            f"\none SSL epoch of every topology listed, evaluation included: {fmt(total)} "
            f"(a full epoch is {rows[0]['steps_per_epoch']} steps"
            f"{'; figures from ' + str(args.steps) + ' timed steps each, extrapolated' if args.steps > 0 else ''})"
        )


if __name__ == "__main__":
    main()
