"""Accuracy of predictions, per example and per recording."""

from __future__ import annotations

import torch
from torch import Tensor


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of examples (windows, for recordings) whose argmax is the label."""
    if len(y) == 0:
        raise ValueError("accuracy of an empty set")
    return (logits.argmax(dim=1) == y).double().mean().item()


def per_group_accuracy(logits: Tensor, y: Tensor, groups: Tensor) -> float:
    """Recording-level accuracy: each group's prediction is the argmax of the mean softmax over
    its windows, compared with the group's label."""
    if not len(y) == len(groups) == len(logits) or len(y) == 0:
        raise ValueError("per_group_accuracy needs equally long, non-empty logits, y and groups")
    groups = groups.to(logits.device)
    y = y.to(logits.device)
    ids, inverse = torch.unique(groups, return_inverse=True)
    probs = logits.detach().double().softmax(dim=1)
    summed = torch.zeros(len(ids), probs.shape[1], dtype=probs.dtype, device=probs.device)
    summed.index_add_(0, inverse, probs)
    label = torch.empty(len(ids), dtype=y.dtype, device=y.device).scatter_(0, inverse, y)
    if (label[inverse] != y).any():
        raise ValueError("a group holds windows with different labels")
    return (summed.argmax(dim=1) == label).double().mean().item()
