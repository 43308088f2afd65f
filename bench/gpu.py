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
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import epoch_time
import numpy as np
import torch
from _common import add_runtime_options, apply_runtime_options
from gpu_parts import PART_FUNCS, PARTS, worker
from gpu_report import markdown, say

from invssl import data as datasets
from invssl import fastconv
from invssl.devices import device_name
from invssl.errors import InvsslError

BUDGETS = "step=90,jobs=100,estimate=40,precision=90,epoch=80"  # s; + start-up and overruns: ~8 min
MODES = ("fp32", "default", "tf32", "bf16")
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
            "device_name": device_name(run.dev),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cpus": os.cpu_count(),
            "argv": sys.argv[1:],
            "batch": run.batch,
            "data": "MNIST files" if run.real_data else "synthetic (MNIST shapes, random pixels)",
            "budgets_s": budgets,
            "fast_conv_devices_at_start": sorted(fastconv.FAST_CONV_DEVICES),
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
        result.update(seconds=round(time.monotonic() - t0, 1), fast_conv_devices=sorted(fastconv.FAST_CONV_DEVICES))
        run.results[part] = result
        (out / "gpu.json").write_text(json.dumps(run.results, indent=1))
        (out / "gpu.md").write_text(markdown(run.results))
    say(f"done: {out / 'gpu.json'}, {out / 'gpu.md'}" + (" (some parts failed)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
