"""Is a network still alive? Signs of a collapsed run, measured on the validation inputs.

A run that dies (every unit of a layer silent, or every input sent to one class) still finishes
with a number, about 1/K accuracy, that a table would show like any other. These measurements
make it visible: recorded per epoch, shown by ``show``, ``status`` and the reports, and a job
may stop early once it has stayed collapsed (``collapse_patience``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

# A healthy classifier on a balanced validation set predicts every class about equally often:
# normalised entropy of its predicted-class histogram near 1. Below this threshold (about three
# classes in use out of ten) the run has collapsed onto a few classes.
COLLAPSE_ENTROPY = 0.5


def prediction_entropy(predicted: Tensor, num_classes: int) -> float:
    """Entropy of the predicted-class histogram over ``log(num_classes)``: 1 when every class is
    predicted equally often, 0 when one class gets every input."""
    if num_classes < 2 or predicted.numel() == 0:
        return 1.0
    p = torch.bincount(predicted.flatten(), minlength=num_classes).double() / predicted.numel()
    p = p[p > 0]
    return max(0.0, float(-(p * p.log()).sum() / math.log(num_classes)))  # no -0.0


class DeadUnits:
    """Channels of the rectifying layers that output 0 for every input seen (``forward_hooks``).

    A unit is a channel: for a ``(B, C, *S)`` output, channel c is alive if any input at any
    position made it non-zero. Counts ``nn.ReLU`` and winner-take-all modules; a network that
    rectifies through functional calls has nothing to count (``share`` is then None).
    """

    def __init__(self) -> None:
        self.alive: dict[str, Tensor] = {}

    def hook(self, name: str):  # noqa: ANN201 - a torch hook
        def record(_module: nn.Module, _inputs: object, out: Tensor) -> None:
            # (C,): one reduction over batch and positions, no transposed copy (3x faster)
            active = (torch.count_nonzero(out.detach(), dim=[0, *range(2, out.dim())]) > 0).cpu()
            seen = self.alive.get(name)
            self.alive[name] = active if seen is None else seen | active

        return record

    @property
    def share(self) -> float | None:
        """Dead channels over all counted channels."""
        total = sum(a.numel() for a in self.alive.values())
        return None if total == 0 else sum(int((~a).sum()) for a in self.alive.values()) / total

    @property
    def dead_layer(self) -> bool:
        """Some layer has no live channel left: the logits no longer depend on the input."""
        return any(not bool(a.any()) for a in self.alive.values())


@contextmanager
def tracking_dead_units(model: nn.Module) -> Iterator[DeadUnits]:
    from invssl.models import WinnerTakeAll

    tracker = DeadUnits()
    handles = [
        m.register_forward_hook(tracker.hook(name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.ReLU, WinnerTakeAll))
    ]
    try:
        yield tracker
    finally:
        for h in handles:
            h.remove()


def health(predicted: Tensor, num_classes: int, tracker: DeadUnits) -> dict[str, float]:
    """``pred_entropy``, ``dead_units`` (when counted) and ``collapsed`` (1.0 or 0.0)."""
    out = {"pred_entropy": prediction_entropy(predicted, num_classes)}
    if tracker.share is not None:
        out["dead_units"] = tracker.share
    collapsed = out["pred_entropy"] < COLLAPSE_ENTROPY or tracker.dead_layer
    out["collapsed"] = float(collapsed)
    return out
