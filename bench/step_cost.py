"""What the inversion costs: one full training step, supervised against semi-supervised.

For every zoo topology on the MNIST shape (1, 28, 28), and Audio1D on a 1 s, 16 kHz signal
(1, 16000), the median wall time of one training step (``ssl_loss``, backward, Adam) for:

  sup           alpha = 1: cross-entropy alone. It is given the SAME inputs as the SSL step (the
                labeled and the unlabeled batch together, all treated as labeled, random labels),
                so both arms push the same number of inputs through the network and the ratio is
                the price of the inversion itself. (The trainer's real alpha = 1 step skips the
                unlabeled batch altogether; that one is the column "sup L".)
  ssl           alpha = beta = 0.5, weighting "logits": the default SSL step, as the trainer runs it
  ssl autograd  the same loss through plain autograd's double backward (the code before issue 7;
                see ``fastconv.FAST_CONV_DEVICES``): the "before" of the ratio, measured in the
                same run, interleaved with the others
  softmax       ssl with weighting "softmax"
  bias_free     ssl with weighting "bias_free" (a forward-mode JVP, then the backward to the input)
  layers        ssl with the per-layer loss (``layer_weights``): every top-level pooling output
                (activation when there is none) and the output, equal weights
  learned       ssl with learned alpha and beta (invssl/lookahead.py): the three terms'
                gradients taken one by one, then the look-ahead forward/backward of the labeled
                batch at the updated weights; its "backward" phase holds all of that

Every repeat runs each arm once, in turn (sup, ssl, ...), so background load hits all arms alike;
the figures are medians over repeats, after one warm-up step per arm. Each step is timed in three
phases (loss = forward [+ inversion] + loss terms; backward; Adam), which shows where the extra
time goes: ``ssl.loss - sup.loss`` is the inversion (one backward pass to the input), and
``ssl.backward / sup.backward`` is the double backward's multiple of a plain backward.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one step, minus what was allocated
before it (model, Adam state, batch). On CPU, torch's allocations are invisible to tracemalloc, so
each (topology, arm) runs in a fresh subprocess: a 2-input warm-up step (Adam state, kernel caches),
then one full step; the figure is the process's peak resident set during that step (Linux: VmHWM,
reset just before it through /proc/self/clear_refs) minus its resident set before it: activations,
saved tensors, gradients and allocator slack, i.e. what the step adds to the machine's memory.

    python bench/step_cost.py [--device cpu] [--batch 32,128] [--threads N] [--repeats 5]
                              [--topologies SmallCNNmean,LargeCNNmax] [--arms sup,ssl,...]
                              [--memory auto|off] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from _common import add_runtime_options, apply_runtime_options
from torch import nn

from invssl import fastconv, inversion, models
from invssl.devices import tune_cpu_allocator
from invssl.inversion import ssl_loss
from invssl.lookahead import Weights, learned_step

IMAGE_SHAPE = (1, 28, 28)
SIGNAL_SHAPES = {"Audio1D": (1, 16000)}
NUM_CLASSES = 10
ALPHA, BETA = 0.5, 0.5
ARMS = ("sup", "ssl", "ssl autograd", "softmax", "bias_free", "layers", "sup L", "learned")
PHASES = ("loss", "backward", "adam")


def shape_of(name: str) -> tuple[int, ...]:
    return SIGNAL_SHAPES.get(name, IMAGE_SHAPE)


def layer_weights(model: nn.Module) -> dict[str, float]:
    """Every top-level pooling output (activations for a net without pooling) and the output."""
    children = [name for name, _ in model.named_children()]
    picked = [n for n in children if n.startswith("pool")] or [n for n in children if n.startswith("act")]
    names = [*picked, inversion.OUTPUT]
    return {n: 1.0 / len(names) for n in names}


@contextmanager
def autograd_double_backward() -> Iterator[None]:
    """The plain-autograd path of ``ssl_loss``: the baseline of issue 7."""
    saved = set(fastconv.FAST_CONV_DEVICES)
    fastconv.FAST_CONV_DEVICES.clear()
    try:
        yield
    finally:
        fastconv.FAST_CONV_DEVICES.update(saved)


class Bench:
    """One topology's model, optimiser and batch, and a step function per arm."""

    def __init__(self, name: str, device: torch.device, b_l: int, b_u: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        shape = shape_of(name)
        self.name, self.device = name, device
        self.model = models.build(name, shape, NUM_CLASSES).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)  # small: weights stay sane
        self.x_l = torch.randn(b_l, *shape, device=device)
        self.y_l = torch.randint(NUM_CLASSES, (b_l,), device=device)
        self.x_u = torch.randn(b_u, *shape, device=device)
        self.x_all = torch.cat([self.x_l, self.x_u])
        self.y_all = torch.randint(NUM_CLASSES, (b_l + b_u,), device=device)
        self.layers = layer_weights(self.model)
        self.weights = Weights({"kind": "learned", "init": ALPHA}, {"kind": "learned", "init": BETA})

    def loss(self, arm: str) -> torch.Tensor:
        m, none = self.model, self.x_l[:0]
        if arm == "sup":
            return ssl_loss(m, self.x_all, self.y_all, none, alpha=1.0, beta=0.0).total
        if arm == "sup L":
            return ssl_loss(m, self.x_l, self.y_l, self.x_u, alpha=1.0, beta=0.0).total
        kwargs: dict[str, Any] = {}
        if arm in ("softmax", "bias_free"):
            kwargs["weighting"] = arm
        elif arm == "layers":
            kwargs["layer_weights"] = self.layers
        if arm == "ssl autograd":
            with autograd_double_backward():
                return ssl_loss(m, self.x_l, self.y_l, self.x_u, alpha=ALPHA, beta=BETA).total
        return ssl_loss(m, self.x_l, self.y_l, self.x_u, alpha=ALPHA, beta=BETA, **kwargs).total

    def step(self, arm: str, clock: Callable[[], float]) -> list[float]:
        """One full training step; returns the seconds of its three phases."""
        t0 = clock()
        if arm == "learned":  # the ssl step, with alpha and beta moved by the look-ahead
            alpha, beta = self.weights.at(0.0)
            terms = ssl_loss(self.model, self.x_l, self.y_l, self.x_u, alpha=alpha, beta=beta)
            t1 = clock()
            self.opt.zero_grad(set_to_none=True)
            learned_step(self.model, terms, self.weights, alpha, beta, 1e-4, self.x_l, self.y_l)
            t2 = clock()
            self.opt.step()
            return [t1 - t0, t2 - t1, clock() - t2]
        total = self.loss(arm)
        t1 = clock()
        self.opt.zero_grad(set_to_none=True)
        if arm == "ssl autograd":
            with autograd_double_backward():
                total.backward()
        else:
            total.backward()
        t2 = clock()
        self.opt.step()
        t3 = clock()
        return [t1 - t0, t2 - t1, t3 - t2]


def make_clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":

        def clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return clock
    return time.perf_counter


def time_arms(bench: Bench, arms: list[str], repeats: int) -> dict[str, list[float]]:
    """Median seconds per phase of each arm, the arms interleaved within every repeat."""
    clock = make_clock(bench.device)
    for arm in arms:  # warm-up: Adam state, kernel selection, allocator
        bench.step(arm, clock)
    samples: dict[str, list[list[float]]] = {arm: [] for arm in arms}
    for _ in range(repeats):
        for arm in arms:
            samples[arm].append(bench.step(arm, clock))
    out = {}
    for arm, rows in samples.items():
        totals = [sum(r) for r in rows]
        out[arm] = [statistics.median(totals)] + [statistics.median(c) for c in zip(*rows)]
    return out  # arm -> [total, loss, backward, adam]


# --------------------------------------------------------------------------- peak memory
def cuda_peak_mb(bench: Bench, arm: str) -> float:
    clock = make_clock(bench.device)
    bench.step(arm, clock)
    torch.cuda.synchronize(bench.device)
    before = torch.cuda.memory_allocated(bench.device)
    torch.cuda.reset_peak_memory_stats(bench.device)
    bench.step(arm, clock)
    return (torch.cuda.max_memory_allocated(bench.device) - before) / 2**20


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_probe(name: str, arm: str, b_l: int, b_u: int) -> float:
    """In a fresh process: peak resident set during one full step minus the resident set before it.

    A 2-input warm-up step first allocates Adam's state and initialises libraries. Linux: VmHWM,
    reset before the step; elsewhere ``ru_maxrss`` growth (which misses a peak below an earlier one).
    """
    bench = Bench(name, torch.device("cpu"), b_l, b_u)
    fields = ("x_l", "y_l", "x_u", "x_all", "y_all")
    full = {f: getattr(bench, f) for f in fields}
    for f in fields:
        setattr(bench, f, full[f][:1])
    bench.step(arm, time.perf_counter)
    for f in fields:
        setattr(bench, f, full[f])
    if _reset_peak_rss() and (rss := _status_mb("VmRSS")) is not None:
        bench.step(arm, time.perf_counter)
        return (_status_mb("VmHWM") or rss) - rss
    scale = 2**20 if platform.system() == "Darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    bench.step(arm, time.perf_counter)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale - before


def cpu_peak_mb(name: str, arm: str, b_l: int, b_u: int, threads: int, malloc: str) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--_probe",
        json.dumps([name, arm, b_l, b_u]),
        "--threads",
        str(threads),
        "--malloc",
        malloc,
        "--fast-conv-devices",
        ",".join(sorted(fastconv.FAST_CONV_DEVICES)),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- output
def fmt_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), *(fmt(r) for r in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch", default="32,128", help="labeled,unlabeled inputs per step (trainer defaults: 32,128)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--topologies", default=None, help="comma-separated (default: every zoo name)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of: {', '.join(ARMS)}")
    parser.add_argument("--memory", choices=("auto", "off"), default="auto")
    parser.add_argument(
        "--malloc",
        choices=("trainer", "default"),
        default="trainer",
        help="CPU: glibc malloc as the trainer sets it (keep freed memory), or untouched",
    )
    add_runtime_options(parser)
    parser.add_argument("--markdown", action="store_true", help="print tables in Markdown")
    parser.add_argument("--_probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_runtime_options(args)
    device = torch.device(args.device)
    if device.type == "cpu" and args.malloc == "trainer":
        tune_cpu_allocator()
    if args._probe:
        name, arm, b_l, b_u = json.loads(args._probe)
        print(f"{cpu_probe(name, arm, b_l, b_u):.1f}")
        return
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    b_l, b_u = (int(v) for v in args.batch.split(","))
    names = args.topologies.split(",") if args.topologies else models.names()
    arms = [a.strip() for a in args.arms.split(",")]
    if "sup" not in arms or "ssl" not in arms:
        parser.error("--arms must include sup and ssl")
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms: {', '.join(sorted(unknown))}")

    cpu = platform.processor() or platform.machine()
    if device.type == "cuda":
        cpu = torch.cuda.get_device_name(device)
    print(
        f"# step cost: device={device} ({cpu}) torch={torch.__version__} threads={torch.get_num_threads()} "
        f"batch={b_l}+{b_u} repeats={args.repeats} (medians, arms interleaved) malloc={args.malloc} "
        f"fast-conv devices={sorted(fastconv.FAST_CONV_DEVICES)}"
    )
    results: dict[str, dict[str, list[float]]] = {}
    memory: dict[str, dict[str, float]] = {}
    for name in names:
        canonical = models.canonical(name)
        bench = Bench(canonical, device, b_l, b_u)
        results[canonical] = time_arms(bench, arms, args.repeats)
        if args.memory == "auto":
            memory[canonical] = {}
            for arm in ("sup", "ssl"):
                if device.type == "cuda":
                    memory[canonical][arm] = cuda_peak_mb(bench, arm)
                elif device.type == "cpu":
                    memory[canonical][arm] = cpu_peak_mb(canonical, arm, b_l, b_u, torch.get_num_threads(), args.malloc)
        del bench
        r = results[canonical]
        line = " ".join(f"{a}={1e3 * r[a][0]:.1f}ms" for a in arms)
        print(f"  {canonical}: {line}", file=sys.stderr, flush=True)

    ms = lambda v: f"{1e3 * v:.1f}"  # noqa: E731
    header = ["topology", "input", "sup ms", "ssl ms", "ssl/sup"]
    if "ssl autograd" in arms:
        header += ["ssl autograd ms", "autograd/sup"]
    extra = [a for a in ("softmax", "bias_free", "layers") if a in arms]
    header += [f"{a} ms (/sup)" for a in extra]
    if "sup L" in arms:
        header += ["sup L ms"]
    if "learned" in arms:
        header += ["learned ms", "learned/ssl"]
    if memory:
        header += ["peak MB sup", "peak MB ssl"]
    rows = []
    for name, r in results.items():
        sup = r["sup"][0]
        row = [name, "x".join(map(str, shape_of(name))), ms(sup), ms(r["ssl"][0]), f"{r['ssl'][0] / sup:.2f}"]
        if "ssl autograd" in arms:
            row += [ms(r["ssl autograd"][0]), f"{r['ssl autograd'][0] / sup:.2f}"]
        row += [f"{ms(r[a][0])} ({r[a][0] / sup:.2f})" for a in extra]
        if "sup L" in arms:
            row += [ms(r["sup L"][0])]
        if "learned" in arms:
            row += [ms(r["learned"][0]), f"{r['learned'][0] / r['ssl'][0]:.2f}"]
        if memory:
            row += [f"{memory[name].get('sup', float('nan')):.0f}", f"{memory[name].get('ssl', float('nan')):.0f}"]
        rows.append(row)
    print("\n## step time (ms, median) and SSL/supervised ratio\n")
    print(fmt_table(header, rows, args.markdown))

    header = [
        "topology",
        "sup loss",
        "sup bwd",
        "ssl loss",
        "ssl bwd",
        "adam",
        "inversion (ssl loss - sup loss)",
        "ssl bwd / sup bwd",
    ]
    rows = []
    for name, r in results.items():
        s, q = r["sup"], r["ssl"]
        rows.append(
            [
                name,
                ms(s[1]),
                ms(s[2]),
                ms(q[1]),
                ms(q[2]),
                ms(s[3]),
                f"{ms(q[1] - s[1])} ({(q[1] - s[1]) / s[2]:.2f} sup bwd)",
                f"{q[2] / s[2]:.2f}",
            ]
        )
    print("\n## phases (ms, median): where the SSL step's extra time goes\n")
    print(fmt_table(header, rows, args.markdown))
    if "sup L" in arms:
        print("\nsup L: the trainer's own alpha = 1 step, labeled batch only (the unlabeled batch is skipped).")


if __name__ == "__main__":
    main()
