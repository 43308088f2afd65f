"""Your own network as a topology: ``topology: package.module:factory``.

The factory is called as ``factory(input_shape, num_classes)`` and must return an
``nn.Module`` mapping ``(B, *input_shape)`` to ``(B, num_classes)`` logits. The module is
imported from the working directory (or anywhere on ``PYTHONPATH``); spawned workers inherit
the working directory, so they find it too. The spec string is the topology recorded in the
job's config, hence part of its key; ``init`` does not apply (the factory initialises).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from invssl.errors import ConfigError

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def is_custom(name: str) -> bool:
    return ":" in name


def canonical(spec: str) -> str:
    """The spec itself once its factory imports and is callable; ConfigError otherwise."""
    factory(spec)
    return spec


def factory(spec: str) -> Callable[..., Any]:
    if not _SPEC.match(spec):
        raise ConfigError(f"{spec!r}: expected package.module:factory for your own network")
    module_name, attr = spec.split(":")
    # Console scripts do not put the working directory on sys.path; ``python -m`` does.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} for {spec!r} ({exc}); run from the "
            "folder that holds it or add that folder to PYTHONPATH"
        ) from None
    except Exception as exc:  # the user's module failed while importing: say how, in one line
        raise ConfigError(
            f"importing {module_name!r} for {spec!r} failed: {type(exc).__name__}: {_one_line(exc)}"
        ) from None
    made = getattr(module, attr, None)
    if not callable(made):
        raise ConfigError(f"{spec!r}: module {module_name} has no callable {attr!r}")
    return made


def build(spec: str, input_shape: Sequence[int], num_classes: int) -> Any:
    from torch import nn

    try:
        model = factory(spec)(tuple(input_shape), num_classes)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"topology {spec!r}: the factory raised {type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"topology {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check(spec: str, input_shape: Sequence[int], num_classes: int) -> None:
    """Build the network and run two zero inputs through it: the logits must be (2, classes)."""
    import torch

    model = build(spec, input_shape, num_classes)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise ConfigError(
            f"topology {spec!r} on inputs of shape {tuple(input_shape)}: {type(exc).__name__}: {_one_line(exc)}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"topology {spec!r}: expected logits of shape (batch, {num_classes}) "
            f"for inputs {tuple(input_shape)}, got {shape}"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
