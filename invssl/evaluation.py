"""Per-epoch evaluation of a job's network: accuracy, health and reconstruction error.

A job trained without labels (``n_labeled: 0``) is scored as a clustering: its validation
accuracy under the best matching of clusters to classes found on the validation labels, its
test accuracy under that same matching (test labels only score, never choose), and the
normalised mutual information of both (invssl/clustering.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from invssl import clustering
from invssl import data as datasets
from invssl.health import health, tracking_dead_units
from invssl.inversion import distance_per_input, reconstruct

if TYPE_CHECKING:
    from invssl.train import Prepared

# Inputs per forward pass. On a CPU a batch of 1,000 activation maps falls out of the caches:
# 250 predicts 40% faster (MNIST, SmallCNN and ConvSmall, one thread; BENCHMARKS.md, "Fast by
# default"); a GPU wants the larger batch.
EVAL_BATCH_CPU, EVAL_BATCH = 250, 1000
RECON_BATCH = 250  # the reconstruction keeps a backward graph: smaller chunks on every device
# Reconstruction error is reported on this many test inputs: enough for a stable mean, and it
# keeps the per-epoch evaluation cheap next to the epoch itself.
RECON_EVAL = 1000


def eval_batch(device: torch.device) -> int:
    return EVAL_BATCH_CPU if device.type == "cpu" else EVAL_BATCH


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor) -> Tensor:
    n = eval_batch(x.device)
    return torch.cat([model(x[i : i + n]).float() for i in range(0, len(x), n)])


def _predict_reconstructing(model: nn.Module, x: Tensor, distance: str) -> tuple[Tensor, list[Tensor]]:
    """Logits of every input of ``x`` (N, *S), and the reconstruction error of the first
    ``RECON_EVAL``: their logits come from the reconstruction's own forward pass, so no input
    runs through the network twice."""
    logits, errs = [], []
    n = min(RECON_EVAL, len(x))
    for i in range(0, n, RECON_BATCH):
        chunk = x[i : min(i + RECON_BATCH, n)]
        with torch.no_grad():
            out, x_hat = reconstruct(model, chunk)
        logits.append(out.float())
        errs.append(distance_per_input(chunk.float(), x_hat.float(), distance))  # type: ignore[arg-type]
    if n < len(x):
        logits.append(_predict(model, x[n:]))
    return torch.cat(logits), errs


def evaluate(model: nn.Module, prep: Prepared, distance: str, autocast: Any) -> dict[str, float]:
    """Validation and test accuracy, and the reconstruction error on test inputs."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    unsupervised = len(prep.x_lab) == 0
    mapping: np.ndarray | None = None
    k = prep.info.num_classes
    errs: list[Tensor] = []

    def predict(name: str, x: Tensor) -> Tensor:
        if name != "test_acc":
            return _predict(model, x)
        logits, recon = _predict_reconstructing(model, x, distance)
        errs.extend(recon)
        return logits

    with autocast():
        # Health is measured where selection looks: the validation inputs (the test inputs when
        # there is no validation split).
        health_on = "val_acc" if len(prep.x_val) else "test_acc"
        for name, x, y in (("val_acc", prep.x_val, prep.y_val), ("test_acc", prep.x_test, prep.y_test)):
            if len(x):
                if name == health_on:
                    with tracking_dead_units(model) as tracker:
                        logits = predict(name, x)
                    out.update(health(logits.argmax(1), k, tracker))
                else:
                    logits = predict(name, x)
                pred = logits.argmax(1)
                if unsupervised:
                    table = clustering.contingency(pred, y, k)
                    mapping = clustering.matching(table) if mapping is None else mapping
                    out[name] = clustering.matched_accuracy(pred, y, mapping)
                    out[name.replace("_acc", "_nmi")] = clustering.nmi(table)
                else:
                    out[name] = (pred == y).float().mean().item()
                if name == "test_acc" and prep.groups_test is not None and not unsupervised:
                    out["test_acc_recording"] = datasets.per_group_accuracy(logits.cpu(), y.cpu(), prep.groups_test)
        if errs:
            out["recon_err"] = torch.cat(errs).mean().item()
    model.train(was_training)
    return out
