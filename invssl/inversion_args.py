"""Argument checks of ``inversion``'s public functions: one-line ValueErrors, raised before any
tensor work, so that a wrong call fails with a message naming the argument."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from torch import Tensor

Weighting = Literal["logits", "softmax", "bias_free"]
Distance = Literal["mse", "cosine"]
WEIGHTINGS: tuple[str, ...] = ("logits", "softmax", "bias_free")
DISTANCES: tuple[str, ...] = ("mse", "cosine")


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1]; got {value}")
    return value


def _check_inputs(x_labeled: Tensor, y_labeled: Tensor, x_unlabeled: Tensor) -> None:
    if x_labeled.dim() < 2 or x_unlabeled.dim() < 2:
        raise ValueError("x_labeled and x_unlabeled must be batches: (B, *S)")
    if x_labeled.shape[1:] != x_unlabeled.shape[1:]:
        raise ValueError(
            f"x_unlabeled: example shape {tuple(x_unlabeled.shape[1:])} differs from "
            f"x_labeled's {tuple(x_labeled.shape[1:])}"
        )
    if y_labeled.shape != (x_labeled.shape[0],):
        raise ValueError(
            f"y_labeled: shape {tuple(y_labeled.shape)} does not match x_labeled's batch of {x_labeled.shape[0]}"
        )
    if y_labeled.is_floating_point():
        raise ValueError("y_labeled must hold integer class indices")


def check_labels(y_labeled: Tensor, num_classes: int) -> None:
    if y_labeled.numel() and (int(y_labeled.min()) < 0 or int(y_labeled.max()) >= num_classes):
        raise ValueError(
            f"y_labeled: labels must lie in [0, {num_classes - 1}]; got range "
            f"[{int(y_labeled.min())}, {int(y_labeled.max())}]"
        )


def check_loss_args(
    x_labeled: Tensor,
    y_labeled: Tensor,
    x_unlabeled: Tensor,
    alpha: float,
    beta: float,
    layer_weights: Mapping[str, float] | None,
    distance: str,
    weighting: str,
) -> tuple[float, float]:
    """What ``ssl_loss`` can check before its forward pass; returns ``(alpha, beta)`` as floats."""
    alpha = _check_weight("alpha", alpha)
    beta = _check_weight("beta", beta)
    check_weighting(weighting)
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")
    _check_inputs(x_labeled, y_labeled, x_unlabeled)
    if layer_weights is not None:
        if not layer_weights:
            raise ValueError("layer_weights: give at least one layer, or None")
        if weighting != "logits":
            raise ValueError("layer_weights: per-layer reconstruction uses weighting='logits'")
    n_l, n_u = x_labeled.shape[0], x_unlabeled.shape[0]
    if n_l == 0 and alpha > 0:
        raise ValueError("x_labeled: empty batch but alpha > 0 needs labels")
    if n_l + n_u == 0:
        raise ValueError("x_labeled, x_unlabeled: both batches are empty")
    return alpha, beta
