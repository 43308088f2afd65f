"""Scores of a network trained without labels (alpha = 0): its outputs are clusters, not classes.

A cluster has no class name, so accuracy is taken under the best one-to-one matching of
clusters to classes (Hungarian algorithm on the contingency table), and normalised mutual
information (arithmetic-mean normalisation) scores the partition itself, matching-free.

Training without labels also needs an entropy term that a single cluster does not minimise:
``balanced`` subtracts the entropy of the batch's mean prediction (docs/method.md, section 7).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from torch import Tensor

EntropyForm = Literal["per_input", "balanced"]


def marginal_entropy(logits: Tensor) -> Tensor:
    """() entropy of the batch's mean prediction: high when the rows spread over the classes."""
    p = logits.softmax(dim=-1).mean(dim=0)  # (K,)
    return -(p * p.clamp_min(1e-12).log()).sum()


def balance(logits: Tensor, form: EntropyForm) -> Tensor | float:
    """What ``form`` subtracts from the mean per-input entropy of ``logits`` (B, K)."""
    return marginal_entropy(logits) if form == "balanced" else 0.0


def contingency(pred: Tensor, y: Tensor, num_classes: int) -> np.ndarray:
    """(K clusters, K classes) counts; ``pred`` and ``y``: (N,) integer tensors."""
    flat = pred.cpu().long() * num_classes + y.cpu().long()
    return np.bincount(flat.numpy(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def matching(table: np.ndarray) -> np.ndarray:
    """cluster -> class, the one-to-one assignment that agrees with the most examples."""
    from scipy.optimize import linear_sum_assignment  # 0.8 s to import: only when clustering

    clusters, classes = linear_sum_assignment(table, maximize=True)
    mapping = np.empty(len(table), dtype=np.int64)
    mapping[clusters] = classes
    return mapping


def matched_accuracy(pred: Tensor, y: Tensor, mapping: np.ndarray) -> float:
    """Accuracy once each cluster is renamed to its matched class."""
    renamed = mapping[pred.cpu().long().numpy()]
    return float((renamed == y.cpu().long().numpy()).mean())


def nmi(table: np.ndarray) -> float:
    """I(clusters; classes) / mean(H(clusters), H(classes)); 1 when one labelling is a renaming of
    the other, 0 when they are independent (so 0 when every example falls in one cluster)."""
    p = table / table.sum()
    pc, pk = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pc, pk)[nz])).sum())
    h_c = -float((pc[pc > 0] * np.log(pc[pc > 0])).sum())
    h_k = -float((pk[pk > 0] * np.log(pk[pk > 0])).sum())
    denom = (h_c + h_k) / 2
    # Clipped at 0: independent labellings give a rounding error's worth of negative MI.
    return max(0.0, mi / denom) if denom > 0 else 1.0  # both labellings constant: identical
