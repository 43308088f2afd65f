"""The classifiers of the paper's experiments, built by name (docs/method.md, section 3).

Every network here is a composition of affine layers and piecewise-linear ops (ReLU, channel
winner-take-all, max/mean pooling, residual sums) with no batch normalisation, so it is a spline,
``f(x) = A[x] x + b[x]``, and ``inversion.reconstruct`` is its exact inverse (docs/method.md, section 1).

Image topologies (SmallCNN, LargeCNN, ResnetD-W) are dimension-agnostic: ``input_shape``
``(C, H, W)`` builds them with 2-D convolutions and pooling, ``(C, L)`` builds the same layer
sequence in 1-D (MNIST-1D). Convolutions are 'same'-padded and the last pooling is global, so one
topology takes any input of at least 4 per spatial axis (it halves twice) without edits.

Inhibitor ("U") variants have no bias anywhere and a winner-take-all over channel pairs in place of
ReLU, so they are positively homogeneous: ``b[x] = 0`` and ``f(x) = A[x] x`` exactly.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from invssl import networks
from invssl.errors import ConfigError, UnknownNameError
from invssl.registry import Registry

POOLS: tuple[str, ...] = ("mean", "max")
# Max pooling keeps the U nets homogeneous (max(c x) = c max(x) for c > 0) as mean pooling would,
# and it makes the whole U net select by competition: between channel pairs and within windows.
INHIBITOR_POOL = "max"
# conv2 (kernel 3, stride 2) needs 3 pooled frames, maxpool(4, 2) then 8 frames of conv1
# (kernel 1024, stride 512): 1024 + 7 * 512 samples.
AUDIO1D_MIN_LENGTH = 1024 + 7 * 512
MLP_WIDTHS = (256, 256)  # trains on MNIST in seconds on a CPU and still fits it to ~98%


class WinnerTakeAll(nn.Module):
    """Channels ``(2k, 2k+1)`` compete: the larger passes its value, the other outputs 0.

    Without biases a ReLU's threshold sits fixed at 0; competition gives every unit a
    data-dependent threshold (its partner) and stays positively homogeneous, since scaling the
    input by ``c > 0`` changes neither the winner nor the kept value's linearity. Ties go to the
    even channel so that exactly one unit of each pair is active.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ConfigError(f"winner-take-all pairs channels, so it needs an even count; got {channels}")
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.unflatten(1, (self.channels // 2, 2))  # (B, C/2, 2, *S)
        even_wins = pairs[:, :, 0] >= pairs[:, :, 1]  # (B, C/2, *S)
        return (pairs * torch.stack((even_wins, ~even_wins), dim=2)).flatten(1, 2)  # (B, C, *S)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


INITS: tuple[str, ...] = ("glorot", "kaiming")


def _init_(layer: nn.Conv1d | nn.Conv2d | nn.Linear, rectified_input: bool, init: str) -> None:
    """Zero biases and either Glorot-uniform or Kaiming-normal weights.

    ``glorot`` (Lasagne's default, and the paper's authors' code) balances fan-in and fan-out
    (docs/method.md, section 5). ``kaiming`` preserves the forward variance: ReLU and channel
    winner-take-all both keep half the second moment of a symmetric input, so gain sqrt(2) suits
    both; layers that read the raw
    input or the residual trunk (not rectified) get gain 1.
    """
    if init == "glorot":
        nn.init.xavier_uniform_(layer.weight)
    elif init == "kaiming":
        nonlinearity = "relu" if rectified_input else "linear"
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=nonlinearity)
    else:
        raise ConfigError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


@dataclass(frozen=True)
class _Layers:
    """Layer factory for one topology variant: 1-D or 2-D, mean or max pooling, plain or U."""

    ndim: int  # spatial axes: 1 (signals) or 2 (images)
    pool: str  # "mean" or "max"
    inhibitor: bool
    init: str = "glorot"

    def conv(self, cin: int, cout: int, kernel: int, *, rectified_input: bool = True) -> nn.Module:
        conv_cls = (nn.Conv1d, nn.Conv2d)[self.ndim - 1]
        conv = conv_cls(cin, cout, kernel, padding=kernel // 2, bias=not self.inhibitor)
        _init_(conv, rectified_input, self.init)
        return conv

    def dense(self, fan_in: int, fan_out: int) -> nn.Linear:
        dense = nn.Linear(fan_in, fan_out, bias=not self.inhibitor)
        _init_(dense, True, self.init)
        return dense

    def act(self, channels: int) -> nn.Module:
        return WinnerTakeAll(channels) if self.inhibitor else nn.ReLU()

    def downsample(self) -> nn.Module:
        pools = {"mean": (nn.AvgPool1d, nn.AvgPool2d), "max": (nn.MaxPool1d, nn.MaxPool2d)}
        return pools[self.pool][self.ndim - 1](2)

    def global_pool(self, pool: str | None = None) -> nn.Module:
        pools = {
            "mean": (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
            "max": (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d),
        }
        return nn.Sequential(pools[pool or self.pool][self.ndim - 1](1), nn.Flatten())


def _small_cnn(layers: _Layers, channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=layers.conv(channels, 32, 3, rectified_input=False), act1=layers.act(32), pool1=layers.downsample(),
        conv2=layers.conv(32, 64, 3), act2=layers.act(64), pool2=layers.downsample(),
        conv3=layers.conv(64, 128, 1), act3=layers.act(128), pool3=layers.global_pool(),
        fc=layers.dense(128, num_classes),
    ))  # fmt: skip


def _conv_small(layers: _Layers, channels: int, num_classes: int) -> nn.Sequential:
    """The authors' 2019 "ConvSmall": five convolutions, the last a 1x1 to the classes, then a
    global pool. Its receptive field (about 24 pixels before the global pool) covers a whole
    MNIST digit, against about 10 for SmallCNN; that is what lets it win (docs/method.md)."""
    return nn.Sequential(OrderedDict(
        conv1=layers.conv(channels, 32, 5, rectified_input=False), act1=layers.act(32), pool1=layers.downsample(),
        conv2=layers.conv(32, 64, 3), act2=layers.act(64),
        conv3=layers.conv(64, 64, 3), act3=layers.act(64), pool2=layers.downsample(),
        conv4=layers.conv(64, 128, 3), act4=layers.act(128),
        conv5=layers.conv(128, num_classes, 1), pool3=layers.global_pool("mean"),
    ))  # fmt: skip


def _large_cnn(layers: _Layers, channels: int, num_classes: int) -> nn.Sequential:
    seq: OrderedDict[str, nn.Module] = OrderedDict()
    plan = [(96, 3), (96, 3), (96, 3), "pool", (192, 3), (192, 3), (192, 3), "pool", (192, 3), (192, 1)]
    cin, n_conv, n_pool = channels, 0, 0
    for step in plan:
        if step == "pool":
            n_pool += 1
            seq[f"pool{n_pool}"] = layers.downsample()
            continue
        cout, kernel = step
        n_conv += 1
        seq[f"conv{n_conv}"] = layers.conv(cin, cout, kernel, rectified_input=n_conv > 1)
        seq[f"act{n_conv}"] = layers.act(cout)
        cin = cout
    seq[f"pool{n_pool + 1}"] = layers.global_pool()
    seq["fc"] = layers.dense(cin, num_classes)
    return nn.Sequential(seq)


class ResidualBlock(nn.Module):
    """Pre-activation block (no batch norm): ``shortcut(x) + conv2(act(conv1(act(x))))``.

    The shortcut is the identity, or a 1x1 convolution where the width changes. ``branch_scale``
    multiplies conv2's initial weights: without batch norm each block would otherwise add as much
    variance as its input carries, doubling it per block; with ``branch_scale = 1/sqrt(N)`` over
    the net's N blocks the trunk's variance grows by at most (1 + 1/N)^N < e in total. Unlike a
    zero init of conv2, every weight gets a gradient from the first step.
    """

    def __init__(self, layers: _Layers, cin: int, cout: int, branch_scale: float) -> None:
        super().__init__()
        self.act1 = layers.act(cin)
        self.conv1 = layers.conv(cin, cout, 3)
        self.act2 = layers.act(cout)
        self.conv2 = layers.conv(cout, cout, 3)
        with torch.no_grad():
            self.conv2.weight.mul_(branch_scale)
        self.shortcut = nn.Identity() if cin == cout else layers.conv(cin, cout, 1, rectified_input=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv2(self.act2(self.conv1(self.act1(x))))


def _resnet_topology(layers: _Layers, channels: int, num_classes: int, *, depth: int, width: int) -> nn.Sequential:
    widths = (width, 2 * width, 4 * width)
    scale = 1.0 / math.sqrt(depth * len(widths))
    seq: OrderedDict[str, nn.Module] = OrderedDict(stem=layers.conv(channels, width, 3, rectified_input=False))
    cin = width
    for i, w in enumerate(widths, start=1):
        if i > 1:
            seq[f"pool{i - 1}"] = layers.downsample()
        seq[f"stage{i}"] = nn.Sequential(*(ResidualBlock(layers, cin if b == 0 else w, w, scale) for b in range(depth)))
        cin = w
    seq["act"] = layers.act(cin)  # pre-activation blocks leave the trunk unrectified
    seq["pool3"] = layers.global_pool("mean")  # docs/method.md: global average pooling for every Resnet
    seq["fc"] = layers.dense(cin, num_classes)
    return nn.Sequential(seq)


def _image(
    topology: Callable[[_Layers, int, int], nn.Module],
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    pool: str,
    inhibitor: bool,
    init: str = "glorot",
) -> nn.Module:
    if len(input_shape) not in (2, 3):
        raise ConfigError(f"image topologies take (C, L) or (C, H, W) inputs; got input_shape {input_shape}")
    if min(input_shape[1:]) < 4:
        raise ConfigError(f"image topologies halve the input twice, so need >= 4 per spatial axis; got {input_shape}")
    layers = _Layers(ndim=len(input_shape) - 1, pool=pool, inhibitor=inhibitor, init=init)
    return topology(layers, input_shape[0], num_classes)


def _audio1d(input_shape: tuple[int, ...], num_classes: int, init: str = "glorot") -> nn.Sequential:
    """The Bird10 net (paper section 3.2): raw signal ``(C, L)`` -> logits; dropout makes it
    stochastic in training mode, which the paper accepts for this model."""
    if len(input_shape) != 2:
        raise ConfigError(f"Audio1D takes raw signals of shape (C, L); got input_shape {input_shape}")
    channels, length = input_shape
    if length < AUDIO1D_MIN_LENGTH:
        raise ConfigError(f"Audio1D needs signals of at least {AUDIO1D_MIN_LENGTH} samples; got {length}")
    frames = ((length - 1024) // 512 + 1 - 4) // 2 + 1  # after conv1 and the pool
    frames = (frames - 3) // 2 + 1  # after conv2
    seq = nn.Sequential(OrderedDict(
        conv1=nn.Conv1d(channels, 42, 1024, stride=512), act1=nn.ReLU(), pool1=nn.MaxPool1d(4, 2),
        conv2=nn.Conv1d(42, 42, 3, stride=2), act2=nn.ReLU(), flatten=nn.Flatten(),
        fc1=nn.Linear(42 * frames, 32), act3=nn.ReLU(), dropout=nn.Dropout(0.5),
        fc2=nn.Linear(32, num_classes),
    ))  # fmt: skip
    for name, layer in seq.named_children():
        if name.startswith(("conv", "fc")):
            _init_(layer, name != "conv1", init)
    return seq


def _mlp(input_shape: tuple[int, ...], num_classes: int, init: str = "glorot") -> nn.Sequential:
    seq: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    fan_in = math.prod(input_shape)
    for i, width in enumerate(MLP_WIDTHS, start=1):
        seq[f"fc{i}"] = nn.Linear(fan_in, width)
        _init_(seq[f"fc{i}"], i > 1, init)
        seq[f"act{i}"] = nn.ReLU()
        fan_in = width
    seq["out"] = nn.Linear(fan_in, num_classes)
    _init_(seq["out"], True, init)
    return nn.Sequential(seq)


class _Spec(NamedTuple):
    factory: Callable[..., nn.Module]  # (input_shape, num_classes, init=...)
    bias_free: bool


_TOPOLOGIES: Registry[_Spec] = Registry("topology")
_RESNET_NAME = re.compile(r"(u?)resnet(\d+)-(\d+)(mean|max)?", re.IGNORECASE)
_RESNET_PATTERN = "ResnetD-W{mean,max} / UResnetD-W (D blocks per stage, base width W)"


def _variant(topology: Callable[..., nn.Module], pool: str | None) -> _Spec:
    """``pool`` None is the inhibitor variant."""
    inhibitor = pool is None
    factory = partial(_image, topology, pool=INHIBITOR_POOL if inhibitor else pool, inhibitor=inhibitor)
    return _Spec(factory, bias_free=inhibitor)


def _resnet(depth: int, width: int, pool: str | None) -> tuple[str, _Spec]:
    """``(canonical name, spec)`` of ResnetD-W; ``pool`` None is UResnetD-W."""
    name = f"UResnet{depth}-{width}" if pool is None else f"Resnet{depth}-{width}{pool}"
    return name, _variant(partial(_resnet_topology, depth=depth, width=width), pool)


for _family, _topology in (("Small", _small_cnn), ("Large", _large_cnn)):
    for _pool in POOLS:
        _TOPOLOGIES.add(f"{_family}CNN{_pool}", _variant(_topology, _pool))
    _TOPOLOGIES.add(f"{_family}UCNN", _variant(_topology, None))
for _depth, _width in ((2, 32), (3, 16)):
    for _pool in (*POOLS, None):
        _TOPOLOGIES.add(*_resnet(_depth, _width, _pool))
for _pool in POOLS:
    _TOPOLOGIES.add(f"ConvSmall{_pool}", _variant(_conv_small, _pool))
_TOPOLOGIES.add("UConvSmall", _variant(_conv_small, None))
_TOPOLOGIES.add("Audio1D", _Spec(_audio1d, bias_free=False))
_TOPOLOGIES.add("MLP", _Spec(_mlp, bias_free=False))


def _parse_resnet(name: str) -> tuple[str, _Spec] | None:
    """``(canonical name, spec)`` for a well-formed ResnetD-W family name, else None."""
    match = _RESNET_NAME.fullmatch(name)
    if match is None or bool(match[1]) == (match[4] is not None):  # U takes no pooling suffix, plain needs one
        return None
    depth, width, pool = int(match[2]), int(match[3]), match[4] and match[4].lower()
    if depth < 1 or width < 1:
        raise UnknownNameError(f"topology {name!r}: ResnetD-W needs D >= 1 and W >= 1")
    if pool is None and width % 2:
        raise UnknownNameError(f"topology {name!r}: UResnetD-W needs an even W (winner-take-all pairs channels)")
    return _resnet(depth, width, pool)


def _lookup(name: str) -> tuple[str, _Spec]:
    if name in _TOPOLOGIES:
        return _TOPOLOGIES.canonical(name), _TOPOLOGIES.get(name)
    parsed = _parse_resnet(name)
    if parsed is None:
        raise UnknownNameError(f"unknown topology {name!r}; valid: {', '.join(names())}; or {_RESNET_PATTERN}")
    return parsed


def names() -> list[str]:
    """The paper's twelve topologies, then Audio1D and MLP (ResnetD-W takes any D, W besides)."""
    return _TOPOLOGIES.names()


def canonical(name: str) -> str:
    """The registered spelling of ``name`` (matched case-insensitively); UnknownNameError if none."""
    if networks.is_custom(name):
        return networks.canonical(name)
    return _lookup(name)[0]


def build(name: str, input_shape: Sequence[int], num_classes: int, init: str = "glorot") -> nn.Module:
    """A freshly initialised network mapping ``(B, *input_shape)`` to ``(B, num_classes)`` logits.

    Raises UnknownNameError for an unknown name and ConfigError (a ValueError) for an input
    shape the topology cannot take.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1; got {num_classes}")
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if networks.is_custom(name):
        return networks.build(name, input_shape, num_classes)
    return _lookup(name)[1].factory(tuple(input_shape), num_classes, init=init)


def is_bias_free(model: nn.Module) -> bool:
    """True when no parameter of ``model`` is a bias.

    For the networks built here (piecewise-linear, no normalisation) that means positively
    homogeneous, ``f(x) = A[x] x``: exactly the inhibitor variants.
    """
    return not any(name.rpartition(".")[2] == "bias" for name, _ in model.named_parameters())


def describe(input_shape: Sequence[int], num_classes: int) -> list[dict]:
    """One row per name in ``names()``: ``{"name", "params", "bias_free"}``.

    ``params`` is None for a topology that cannot take ``input_shape`` (Audio1D on images).
    """
    rows = []
    for name in names():
        spec = _TOPOLOGIES.get(name)
        try:
            params: int | None = sum(p.numel() for p in spec.factory(tuple(input_shape), num_classes).parameters())
        except ConfigError:
            params = None
        rows.append({"name": name, "params": params, "bias_free": spec.bias_free})
    return rows
