"""Parameter count and step time of every registered topology.

For each of ``models.names()`` on the MNIST shape (Audio1D on a 1 s signal at 16 kHz): the median
wall time of one supervised forward+backward of a batch, and of one SSL step (forward, inversion
``A[x]^T f(x)``, and the double backward of cross-entropy + reconstruction), which is what a
training step with alpha < 1 pays.

    python bench/model_cost.py [--device cpu] [--batch 64] [--threads N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from invssl import models
from invssl.inversion import reconstruct

IMAGE_SHAPE = (1, 28, 28)
SIGNAL_SHAPES = {"Audio1D": (1, 16000)}
NUM_CLASSES = 10


def median_seconds(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    def timed() -> float:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()  # warm-up: allocator, kernel selection
    return statistics.median(timed() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    print(f"device={device} batch={args.batch} threads={torch.get_num_threads()} repeats={args.repeats} (median)")
    print(f"{'topology':<16}{'input':>12}{'params':>12}{'fwd+bwd ms':>13}{'ssl step ms':>13}")
    for name in models.names():
        shape = SIGNAL_SHAPES.get(name, IMAGE_SHAPE)
        model = models.build(name, shape, NUM_CLASSES).to(device)
        x = torch.randn(args.batch, *shape, device=device)
        y = torch.randint(NUM_CLASSES, (args.batch,), device=device)

        # Bound as defaults: each step times this iteration's network and batch.
        def supervised(model: nn.Module = model, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

        def ssl(model: nn.Module = model, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            model.zero_grad(set_to_none=True)
            logits, x_hat = reconstruct(model, x)
            (F.cross_entropy(logits, y) + (x - x_hat).pow(2).mean()).backward()

        params = sum(p.numel() for p in model.parameters())
        sup_ms = 1e3 * median_seconds(supervised, args.repeats, device)
        ssl_ms = 1e3 * median_seconds(ssl, args.repeats, device)
        print(f"{name:<16}{'x'.join(map(str, shape)):>12}{params:>12,}{sup_ms:>13.1f}{ssl_ms:>13.1f}")


if __name__ == "__main__":
    main()
