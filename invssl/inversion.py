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
from typing import Any, Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

Weighting = Literal["logits", "softmax", "bias_free"]
Distance = Literal["mse", "cosine"]
EntropyForm = Literal["per_input", "balanced"]
WEIGHTINGS: tuple[str, ...] = ("logits", "softmax", "bias_free")
DISTANCES: tuple[str, ...] = ("mse", "cosine")

# Name under which ``layer_weights`` refers to the network's output (the logits) itself.
OUTPUT = "output"


class LossTerms(NamedTuple):
    total: Tensor  # ()  the loss to minimise
    ce: Tensor  # ()  cross-entropy on the labeled inputs
    recon: Tensor  # ()  reconstruction distance L_R (eq. 8, or the per-layer sum eq. 12)
    entropy: Tensor  # ()  mean prediction entropy on the unlabeled inputs (eq. 9)
    logits: Tensor  # (B_l + B_u, K)  labeled rows first


def _check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")


def _backward_to_input(out: Tensor, x: Tensor, w: Tensor, create_graph: bool) -> Tensor:
    # grad(out, x, w) is the vector-Jacobian product J^T w; only the path to x is computed,
    # weight gradients of this first backward are pruned by autograd.
    (x_hat,) = torch.autograd.grad(out, x, grad_outputs=w, create_graph=create_graph)
    return x_hat


def _input_leaf(x: Tensor) -> Tensor:
    # A fresh leaf keeps the caller's tensor untouched and makes grad_x well defined even
    # when x itself is the output of some other graph.
    return x.detach().requires_grad_(True)


# ------------------------------------------------------------- convolutions, differentiated twice
# Training through ``x_hat = A[x]^T f`` differentiates each convolution's input gradient a second
# time. Autograd's generic rule for that (``_convolution_double_backward``) computes the weight
# gradient as a convolution of batch-transposed tensors, which on CPU costs 2-3x oneDNN's own
# weight-gradient kernel, and the last backward also computes a gradient for the internal input
# leaf that nobody reads. While ``reconstruct`` records the forward pass, convolutions therefore
# go through the autograd Functions below: the same kernels as autograd's for the forward and
# the first backward (so ``x_hat`` and the loss are bit for bit those of plain autograd), and
# ``convolution_backward`` for the weight gradient of the second. Gradients agree with plain
# autograd to float rounding (float64: ~1e-16 relative; tests/test_inversion.py checks them).
#
# Devices where this path is used; elsewhere plain autograd. CUDA is left out until measured:
# ``python bench/step_cost.py --device cuda`` times both paths (columns "ssl autograd" / "ssl").
FAST_CONV_DEVICES: set[str] = {"cpu"}

_conv_backward = torch.ops.aten.convolution_backward.default


class _ConvParams(NamedTuple):
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    def backward(self, grad_out: Tensor, x: Tensor, weight: Tensor,
                 mask: tuple[bool, bool]) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``(grad wrt x, grad wrt weight)`` of ``conv(x, weight)``: oneDNN/cuDNN's kernels."""
        g_x, g_w, _ = _conv_backward(grad_out, x, weight, None, self.stride, self.padding,
                                     self.dilation, False, [0] * len(self.stride), self.groups,
                                     [mask[0], mask[1], False])
        return g_x, g_w

    def forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        conv = F.conv2d if weight.dim() == 4 else F.conv1d
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class _Recording:
    """Shared by the convolutions of one ``reconstruct`` call.

    ``leaf`` is the internal input leaf while the forward pass records; ``inverted`` turns true
    once ``x_hat`` has been computed. Before that, a backward pass is the one to the input
    (weight gradients are not wanted); after it, the leaf's gradient is never read.
    """

    def __init__(self, leaf: Tensor) -> None:
        self.leaf: Optional[Tensor] = leaf
        self.inverted = False


def _no_autocast(t: Tensor) -> Any:
    return torch.autocast(t.device.type, enabled=False)


class _ConvInputGrad(torch.autograd.Function):
    """``grad_x = conv^T(grad_out, W)``; its own backward: ``conv(g, W)`` and oneDNN's ``dW``.

    The two Functions' backwards are written with each other and the builtin convolution, so
    derivatives of any order stay available (``x`` only supplies the input's shape)."""

    @staticmethod
    def forward(ctx: Any, grad_out: Tensor, weight: Tensor, x: Tensor, params: _ConvParams) -> Tensor:
        ctx.save_for_backward(grad_out, weight, x)
        ctx.params = params
        with _no_autocast(x):
            return params.backward(grad_out, x, weight, (True, False))[0]  # type: ignore[return-value]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Optional[Tensor], ...]:
        grad_out, weight, x = ctx.saved_tensors
        params: _ConvParams = ctx.params
        g_out = g_w = None
        with _no_autocast(g):
            if ctx.needs_input_grad[0]:
                g_out = params.forward(g, weight)
            if ctx.needs_input_grad[1]:
                g_w = _ConvWeightGrad.apply(grad_out, g, weight, params)
        return g_out, g_w, None, None


class _ConvWeightGrad(torch.autograd.Function):
    """``dW = corr(x, grad_out)`` by oneDNN/cuDNN's weight-gradient kernel."""

    @staticmethod
    def forward(ctx: Any, grad_out: Tensor, x: Tensor, weight: Tensor, params: _ConvParams) -> Tensor:
        ctx.save_for_backward(grad_out, x, weight)
        ctx.params = params
        with _no_autocast(x):
            return params.backward(grad_out, x, weight, (False, True))[1]  # type: ignore[return-value]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Optional[Tensor], ...]:
        grad_out, x, weight = ctx.saved_tensors
        params: _ConvParams = ctx.params
        g_out = g_x = None
        with _no_autocast(g):
            if ctx.needs_input_grad[0]:
                g_out = params.forward(x, g)
            if ctx.needs_input_grad[1]:
                g_x = _ConvInputGrad.apply(grad_out, g, x, params)
        return g_out, g_x, None, None


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], params: _ConvParams,
                rec: _Recording, reads_leaf: bool) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.params, ctx.rec, ctx.reads_leaf = params, rec, reads_leaf
        with _no_autocast(x):
            return params.forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        x, weight = ctx.saved_tensors
        params: _ConvParams = ctx.params
        inverted = ctx.rec.inverted
        need_x = ctx.needs_input_grad[0] and not (inverted and ctx.reads_leaf)
        need_w = ctx.needs_input_grad[1] and inverted
        need_b = ctx.needs_input_grad[2] and inverted
        g_x = g_w = g_b = None
        if torch.is_grad_enabled():  # create_graph: the inversion itself, or a caller's
            if need_x:
                g_x = _ConvInputGrad.apply(grad_out, weight, x, params)
            if need_w:
                g_w = _ConvWeightGrad.apply(grad_out, x, weight, params)
        elif need_x or need_w:
            with _no_autocast(x):
                g_x, g_w = params.backward(grad_out, x, weight, (need_x, need_w))
        if need_b:
            g_b = grad_out.sum([0, *range(2, grad_out.dim())])
        return g_x, g_w, g_b, None, None, None


_CONV_DIMS = {torch.conv1d: 1, F.conv1d: 1, torch.conv2d: 2, F.conv2d: 2}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _per_dim(value: Any, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * n


class _RecordConvs(TorchFunctionMode):
    """Routes ``conv1d``/``conv2d`` calls through ``_Conv`` (string paddings stay as they are)."""

    def __init__(self, rec: _Recording) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        n = _CONV_DIMS.get(func)
        if n is None:
            return func(*args, **kwargs)
        a = {**dict(zip(_CONV_ARGS, args)), **kwargs}
        x, weight, bias = a["input"], a["weight"], a.get("bias")
        if isinstance(a.get("padding", 0), str) or x.dim() != n + 2:
            return func(*args, **kwargs)
        params = _ConvParams(_per_dim(a.get("stride", 1), n), _per_dim(a.get("padding", 0), n),
                             _per_dim(a.get("dilation", 1), n), int(a.get("groups", 1)))
        reads_leaf = x is self.rec.leaf
        device = x.device.type
        if torch.is_autocast_enabled(device) and x.is_floating_point():
            # What autocast would do to conv's arguments, done before the Function sees them.
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return _Conv.apply(x, weight, bias, params, self.rec, reads_leaf)


@contextmanager
def _recording(leaf: Tensor, enabled: bool) -> Iterator[Optional[_Recording]]:
    """Record the forward pass through ``_Conv`` when a second backward will follow."""
    if not (enabled and leaf.device.type in FAST_CONV_DEVICES
            and not torch._C._are_functorch_transforms_active()):
        yield None
        return
    rec = _Recording(leaf)
    with _RecordConvs(rec):
        yield rec
    rec.leaf = None


def _inverted(rec: Optional[_Recording]) -> None:
    if rec is not None:
        rec.inverted = True


def reconstruct(model: nn.Module, x: Tensor, *, weighting: Weighting = "logits") -> tuple[Tensor, Tensor]:
    """Return ``(logits, x_hat)`` with ``x_hat = A[x]^T w``.

    ``w`` is the logits (default, ``grad_x 1/2 ||f(x)||^2``), their softmax, or for
    ``"bias_free"`` the bias-free output ``A[x] x`` (a forward-mode JVP in direction x), giving
    ``A[x]^T A[x] x``. With grad mode on, ``x_hat`` and ``logits`` stay differentiable with
    respect to the parameters (double backpropagation); under ``torch.no_grad()`` both come
    back detached and no graph is kept.
    """
    _check_weighting(weighting)
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xl = _input_leaf(x)  # (B, *S)
        if weighting == "bias_free":
            # jvp's primal output keeps its ordinary autograd graph to xl and the weights.
            logits, w = torch.func.jvp(model, (xl,), (xl,))  # (B, K), A[x] x: (B, K)
            rec = None
        else:
            with _recording(xl, keep_graph) as rec:
                logits = model(xl)  # (B, K)
            w = logits if weighting == "logits" else logits.softmax(dim=-1)
        x_hat = _backward_to_input(logits, xl, w, keep_graph)  # (B, *S)
        _inverted(rec)
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


def _layer_reconstructions(
    model: nn.Module, xl: Tensor, layers: Sequence[str], keep_graph: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward over the leaf ``xl``, then ``grad_x 1/2 ||z_l||^2`` for each layer l."""
    inner = [name for name in layers if name != OUTPUT]
    with _capture(model, inner) as captured, _recording(xl, keep_graph) as rec:
        logits = model(xl)  # (B, K)
    outputs = {**captured, OUTPUT: logits}
    x_hats: dict[str, Tensor] = {}
    for i, name in enumerate(layers):
        z = outputs[name]  # (B, *) the representation z_l(x)
        # Later layers still need the forward graph, so keep it until the last one.
        retain = keep_graph or i < len(layers) - 1
        (x_hats[name],) = torch.autograd.grad(
            z, xl, grad_outputs=z, create_graph=keep_graph, retain_graph=retain
        )
    _inverted(rec)
    return logits, x_hats


def _multiscale(model: nn.Module, x: Tensor, layers: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        logits, x_hats = _layer_reconstructions(model, _input_leaf(x), list(layers), keep_graph)
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
    return _multiscale(model, x, layers)[1]


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


def marginal_entropy(logits: Tensor) -> Tensor:
    """() entropy of the batch's mean prediction: high when the rows spread over the classes."""
    p = logits.softmax(dim=-1).mean(dim=0)  # (K,)
    return -(p * p.clamp_min(1e-12).log()).sum()


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
            f"y_labeled: shape {tuple(y_labeled.shape)} does not match x_labeled's batch "
            f"of {x_labeled.shape[0]}"
        )
    if y_labeled.is_floating_point():
        raise ValueError("y_labeled must hold integer class indices")


def _check_labels(y_labeled: Tensor, num_classes: int) -> None:
    if y_labeled.numel() and (int(y_labeled.min()) < 0 or int(y_labeled.max()) >= num_classes):
        raise ValueError(
            f"y_labeled: labels must lie in [0, {num_classes - 1}]; got range "
            f"[{int(y_labeled.min())}, {int(y_labeled.max())}]"
        )


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
    reported as 0. ``entropy_form="balanced"`` subtracts the entropy of the unlabeled batch's
    mean prediction from E, so that putting every input in one class no longer minimises it.
    """
    alpha = _check_weight("alpha", alpha)
    beta = _check_weight("beta", beta)
    _check_weighting(weighting)
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

    zero = x_labeled.new_zeros(())
    if alpha == 1.0:
        # Plain supervised learning: the unlabeled batch does not even go through the net.
        logits = model(x_labeled)  # (B_l, K)
        _check_labels(y_labeled, logits.shape[-1])
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
                (gamma * distance_per_input(x, x_hats[name], distance).mean()
                 for name, gamma in layer_weights.items()),
                start=zero,
            )
    else:
        logits = model(x)  # (B_l + B_u, K)
    _check_labels(y_labeled, logits.shape[-1])

    ce = F.cross_entropy(logits[:n_l], y_labeled) if n_l else zero
    ent = entropy(logits[n_l:]).mean() if n_u and beta < 1 else zero
    if entropy_form == "balanced" and n_u and beta < 1:
        ent = ent - marginal_entropy(logits[n_l:])
    total = alpha * ce + (1 - alpha) * (beta * recon + (1 - beta) * ent)
    return LossTerms(total, ce, recon, ent, logits)
