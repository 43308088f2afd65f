"""The inverse of any classifier and the semi-supervised loss (docs/method.md, sections 1-2).

Pure functions over an ``nn.Module`` and tensors. A network built from affine layers and
piecewise-linear ops is locally ``f(x) = A[x] x + b[x]``, so its inverse is

    f^{-1}(x) = A[x]^T f(x) = grad_x 1/2 ||f(x)||^2,

one backward pass to the input that reuses the forward pass's ReLU masks and pooling switches.
The formula is defined for any differentiable model, piecewise linear or not.

Shapes: ``x`` is ``(B, *S)`` (images ``(B, C, H, W)``, signals ``(B, C, L)``, vectors ``(B, D)``),
logits are ``(B, K)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invssl.clustering import EntropyForm, balance
from invssl.fastconv import inverted, recording
from invssl.inversion_args import DISTANCES, Distance, Weighting, check_labels, check_loss_args, check_weighting

# Name under which ``layer_weights`` refers to the network's output (the logits) itself.
OUTPUT = "output"


class LossTerms(NamedTuple):
    total: Tensor  # ()  the loss to minimise
    ce: Tensor  # ()  cross-entropy on the labeled inputs
    recon: Tensor  # ()  reconstruction distance L_R (eq. 8, or the per-layer sum eq. 12)
    entropy: Tensor  # ()  mean prediction entropy on the unlabeled inputs (eq. 9)
    logits: Tensor  # (B_l + B_u, K)  labeled rows first


def _input_leaf(x: Tensor) -> Tensor:
    # A fresh leaf keeps the caller's tensor untouched and makes grad_x well defined even
    # when x itself is the output of some other graph.
    return x.detach().requires_grad_(True)


def reconstruct(model: nn.Module, x: Tensor, *, weighting: Weighting = "logits") -> tuple[Tensor, Tensor]:
    """Return ``(logits, x_hat)`` with ``x_hat = A[x]^T w``.

    ``w`` is the logits (default, ``grad_x 1/2 ||f(x)||^2``), their softmax, or for
    ``"bias_free"`` the bias-free output ``A[x] x`` (a forward-mode JVP in direction x), giving
    ``A[x]^T A[x] x``. With grad mode on, ``x_hat`` and ``logits`` stay differentiable with
    respect to the parameters (double backpropagation); under ``torch.no_grad()`` both come
    back detached and no graph is kept.
    """
    check_weighting(weighting)
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xl = _input_leaf(x)  # (B, *S)
        if weighting == "bias_free":
            # jvp's primal output keeps its ordinary autograd graph to xl and the weights.
            logits, w = torch.func.jvp(model, (xl,), (xl,))  # (B, K), A[x] x: (B, K)
            rec = None
        else:
            with recording(xl, keep_graph) as rec:
                logits = model(xl)  # (B, K)
            w = logits if weighting == "logits" else logits.softmax(dim=-1)
        # grad(logits, x, w) is the vector-Jacobian product J^T w; only the path to x is computed,
        # weight gradients of this first backward are pruned by autograd.
        (x_hat,) = torch.autograd.grad(logits, xl, grad_outputs=w, create_graph=keep_graph)  # (B, *S)
        inverted(rec)
    if not keep_graph:
        logits = logits.detach()
    return logits, x_hat


@contextmanager
def _capture(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the named submodules during forward passes in this block."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        valid = ", ".join(n for n in modules if n) or "(none)"
        raise ValueError(f"layers: no submodule named {', '.join(map(repr, missing))}; valid: {valid}")
    captured: dict[str, Tensor] = {}
    handles = []
    for name in layers:

        def hook(_module: nn.Module, _inputs: object, output: Tensor, name: str = name) -> None:
            captured[name] = output

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _multiscale(model: nn.Module, x: Tensor, layers: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward pass, then ``grad_x 1/2 ||z_l||^2`` for each layer l, as ``reconstruct`` does."""
    keep_graph = torch.is_grad_enabled()
    inner = [name for name in layers if name != OUTPUT]
    with torch.enable_grad():
        xl = _input_leaf(x)
        with _capture(model, inner) as captured, recording(xl, keep_graph) as rec:
            logits = model(xl)  # (B, K)
        outputs = {**captured, OUTPUT: logits}
        x_hats: dict[str, Tensor] = {}
        for i, name in enumerate(layers):
            z = outputs[name]  # (B, *) the representation z_l(x)
            # Later layers still need the forward graph, so keep it until the last one.
            retain = keep_graph or i < len(layers) - 1
            (x_hats[name],) = torch.autograd.grad(z, xl, grad_outputs=z, create_graph=keep_graph, retain_graph=retain)
        inverted(rec)
    if not keep_graph:
        logits, x_hats = logits.detach(), {k: v.detach() for k, v in x_hats.items()}
    return logits, x_hats


def reconstruct_layers(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Per-layer (multiscale) reconstructions ``grad_x 1/2 ||z_l(x)||^2`` (docs/method.md, section 1).

    ``layers`` are names from ``model.named_modules()``; ``"output"`` names the logits. Each
    value has x's shape. Hooks are removed before returning.
    """
    if not layers:
        raise ValueError("layers: give at least one layer name")
    return _multiscale(model, x, list(layers))[1]


def distance_per_input(x: Tensor, x_hat: Tensor, distance: Distance = "mse") -> Tensor:
    """(B,) reconstruction distance of each input: ``||x - x_hat||^2 / dim(x)`` or ``1 - cos``."""
    flat, flat_hat = x.flatten(1), x_hat.flatten(1)  # (B, D)
    if distance == "mse":
        return (flat - flat_hat).pow(2).mean(dim=1)
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(flat, flat_hat, dim=1)
    raise ValueError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")


def entropy(logits: Tensor) -> Tensor:
    """(B,) entropy ``-sum_c p_c log p_c`` of the softmax of each row, computed stably."""
    log_p = logits.log_softmax(dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def ssl_loss(
    model: nn.Module,
    x_labeled: Tensor,
    y_labeled: Tensor,
    x_unlabeled: Tensor,
    *,
    alpha: float,
    beta: float,
    layer_weights: Mapping[str, float] | None = None,
    distance: Distance = "mse",
    weighting: Weighting = "logits",
    entropy_form: EntropyForm = "per_input",
) -> LossTerms:
    """``alpha*CE + (1-alpha)*(beta*R + (1-beta)*E)`` (docs/method.md, section 2).

    One forward over the labeled and unlabeled inputs together. R is taken over all inputs,
    E over the unlabeled ones. With ``layer_weights`` ({layer name or "output": gamma}) R is
    ``sum_l gamma_l * distance(x, f_l^{-1}(x))``. Terms that carry zero weight are not
    computed (alpha=1 costs no reconstruction, beta=0 no backward to the input); they are
    reported as 0. ``entropy_form="balanced"``: E minus the entropy of the mean prediction.
    """
    alpha, beta = check_loss_args(x_labeled, y_labeled, x_unlabeled, alpha, beta, layer_weights, distance, weighting)
    n_l, n_u = x_labeled.shape[0], x_unlabeled.shape[0]

    zero = x_labeled.new_zeros(())
    if alpha == 1.0:
        # Plain supervised learning: the unlabeled batch does not even go through the net.
        logits = model(x_labeled)  # (B_l, K)
        check_labels(y_labeled, logits.shape[-1])
        ce = F.cross_entropy(logits, y_labeled)
        return LossTerms(ce, ce, zero, zero, logits)

    x = torch.cat([x_labeled, x_unlabeled]) if n_u else x_labeled  # (B_l + B_u, *S)
    recon = zero
    if beta > 0:
        if layer_weights is None:
            logits, x_hat = reconstruct(model, x, weighting=weighting)
            recon = distance_per_input(x, x_hat, distance).mean()
        else:
            logits, x_hats = _multiscale(model, x, list(layer_weights))
            recon = sum(
                (gamma * distance_per_input(x, x_hats[name], distance).mean() for name, gamma in layer_weights.items()),
                start=zero,
            )
    else:
        logits = model(x)  # (B_l + B_u, K)
    check_labels(y_labeled, logits.shape[-1])

    ce = F.cross_entropy(logits[:n_l], y_labeled) if n_l else zero
    ent = entropy(logits[n_l:]).mean() - balance(logits[n_l:], entropy_form) if n_u and beta < 1 else zero
    total = alpha * ce + (1 - alpha) * (beta * recon + (1 - beta) * ent)
    return LossTerms(total, ce, recon, ent, logits)
