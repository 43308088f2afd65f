"""Convolutions differentiated twice, fast on CPU: the path ``inversion.reconstruct`` records through.

Training through ``x_hat = A[x]^T f`` differentiates each convolution's input gradient a second
time. Autograd's generic rule for that (``_convolution_double_backward``) computes the weight
gradient as a convolution of batch-transposed tensors, which on CPU costs 2-3x oneDNN's own
weight-gradient kernel, and the last backward also computes a gradient for the internal input
leaf that nobody reads. While ``reconstruct`` records the forward pass, convolutions therefore
go through the autograd Functions below: the same kernels as autograd's for the forward and
the first backward (so ``x_hat`` and the loss are bit for bit those of plain autograd), and
``convolution_backward`` for the weight gradient of the second. Gradients agree with plain
autograd to float rounding (float64: ~1e-16 relative; tests/test_inversion.py checks them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

# Devices where this path is used; elsewhere plain autograd. CUDA is left out until measured:
# ``python bench/step_cost.py --device cuda`` times both paths (columns "ssl autograd" / "ssl").
FAST_CONV_DEVICES: set[str] = {"cpu"}

_conv_backward = torch.ops.aten.convolution_backward.default


class _ConvParams(NamedTuple):
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    def backward(
        self, grad_out: Tensor, x: Tensor, weight: Tensor, mask: tuple[bool, bool]
    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``(grad wrt x, grad wrt weight)`` of ``conv(x, weight)``: oneDNN/cuDNN's kernels."""
        g_x, g_w, _ = _conv_backward(
            grad_out,
            x,
            weight,
            None,
            self.stride,
            self.padding,
            self.dilation,
            False,
            [0] * len(self.stride),
            self.groups,
            [mask[0], mask[1], False],
        )
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
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        params: _ConvParams,
        rec: _Recording,
        reads_leaf: bool,
    ) -> Tensor:
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
        params = _ConvParams(
            _per_dim(a.get("stride", 1), n),
            _per_dim(a.get("padding", 0), n),
            _per_dim(a.get("dilation", 1), n),
            int(a.get("groups", 1)),
        )
        reads_leaf = x is self.rec.leaf
        device = x.device.type
        if torch.is_autocast_enabled(device) and x.is_floating_point():
            # What autocast would do to conv's arguments, done before the Function sees them.
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return _Conv.apply(x, weight, bias, params, self.rec, reads_leaf)


@contextmanager
def recording(leaf: Tensor, enabled: bool) -> Iterator[Optional[_Recording]]:
    """Record the forward pass through ``_Conv`` when a second backward will follow."""
    if not (enabled and leaf.device.type in FAST_CONV_DEVICES and not torch._C._are_functorch_transforms_active()):
        yield None
        return
    rec = _Recording(leaf)
    with _RecordConvs(rec):
        yield rec
    rec.leaf = None


def inverted(rec: Optional[_Recording]) -> None:
    """``x_hat`` exists: from now on a backward is the training one (weights, not the leaf)."""
    if rec is not None:
        rec.inverted = True
