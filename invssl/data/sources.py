"""Dataset sources: one registry, what every loader returns, and the checks they share.

Every loader returns whole tensors, inputs normalised per channel with statistics of its own
training set only, so nothing about the test set leaks into training. ``info`` answers shapes,
classes and sizes without decoding the data where that can be avoided. Each family of sources
(``vision``, ``mnist1d``, ``chirps``, ``wav``) registers itself here when ``invssl.data`` is
imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from invssl.errors import ConfigError
from invssl.registry import Registry

DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    n_train: int
    n_test: int


@dataclass
class Dataset:
    """Inputs float32 of shape (N, *info.input_shape), labels int64; ``groups_*`` name the
    recording each window came from (None when every example stands alone); ``norm`` is the
    per-channel (mean, std) that was subtracted and divided, to undo it for display."""

    info: DatasetInfo
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    groups_train: Tensor | None
    groups_test: Tensor | None
    norm: tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class Source:
    params: dict[str, Any]  # accepted parameters and their defaults
    info: Callable[..., DatasetInfo]  # (root, seed, **params)
    load: Callable[..., Dataset]  # (root, download, seed, **params)
    # (root, download, fetch): checks (and with download and fetch, downloads) the source's
    # files; None for sources that need none or check them in ``info``
    files: Optional[Callable[[Optional[Path], bool, bool], None]] = None


SOURCES: Registry[Source] = Registry("dataset")


def names() -> list[str]:
    return SOURCES.names()


def canonical(name: str) -> str:
    """The registered spelling of ``name``; UnknownNameError listing the valid ones if none."""
    return SOURCES.canonical(name)


def info(name: str, *, root: str | Path | None = None, seed: int = 0, **params: Any) -> DatasetInfo:
    """Shapes, classes and sizes. ``seed`` matters only where it moves the train/test border
    (wav-folder splits recordings by seed, and windows per recording differ)."""
    source, params = _resolve(name, params)
    return source.info(_root(root), seed_value(seed), **params)


def load(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    **params: Any,
) -> Dataset:
    source, params = _resolve(name, params)
    return source.load(_root(root), bool(download), seed_value(seed), **params)


def _resolve(name: str, params: dict[str, Any]) -> tuple[Source, dict[str, Any]]:
    source = SOURCES.get(name)
    unknown = sorted(set(params) - set(source.params))
    if unknown:
        valid = ", ".join(source.params) or "none"
        raise ConfigError(f"unknown parameter {unknown[0]!r} for dataset {SOURCES.canonical(name)!r}; valid: {valid}")
    return source, {**source.params, **params}


def ensure_files(name: str, *, root: str | Path | None = None, download: bool = False, fetch: bool = True) -> None:
    """Fail fast when a dataset's files are absent (DataError naming the folder and files).

    With ``download`` and ``fetch`` the files are downloaded now, one process at a time per
    data root; with ``fetch`` False (a dry run) nothing is written. Generated datasets need
    no files; a wav-folder's are checked by ``info``.
    """
    source = SOURCES.get(name)
    if source.files is not None:
        source.files(_root(root), download, fetch)


def _root(root: str | Path | None) -> Path | None:
    return None if root is None else Path(root).expanduser()


def seed_value(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def need_root(dataset: str, root: Path | None) -> Path:
    if root is None:
        raise ConfigError(f"dataset {dataset!r} needs a root folder for its files")
    return root


def int_param(dataset: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{dataset}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def float_param(dataset: str, key: str, value: Any, low: float, high: float, *, high_open: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and low <= value
        and (value < high if high_open else value <= high)
    )
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{dataset}: {key} must be a number in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def normalised(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Normalise both sets in place with the training set's per-channel mean and std."""
    dims = [0, *range(2, x_train.dim())]
    std, mean = torch.std_mean(x_train, dim=dims, correction=0)
    # A constant channel would divide by zero; leaving it unscaled is harmless.
    std = torch.where(std > 0, std, torch.ones_like(std))
    shape = (1, -1) + (1,) * (x_train.dim() - 2)
    for x in (x_train, x_test):
        x.sub_(mean.view(shape)).div_(std.view(shape))
    return x_train, x_test, (tuple(mean.tolist()), tuple(std.tolist()))


SCALINGS: tuple[str, ...] = ("unit", "standardize", "per_input")


def scale_inputs(x: Tensor, norm: tuple[tuple[float, ...], tuple[float, ...]], how: str) -> Tensor:
    """Inputs as a job asks for them, from the loaders' per-channel standardised ones.

    ``standardize``: as loaded (training-set mean 0, std 1 per channel). ``unit``: the source's
    own scale, the standardisation undone (pixels in [0, 1]). ``per_input``: each input shifted
    and scaled to mean 0, std 1 over all its values. A new tensor; ``x`` is left as it is.
    """
    if how == "standardize":
        return x.clone()
    if how not in SCALINGS:
        raise ConfigError(f"unknown input_scaling {how!r}; valid: {', '.join(SCALINGS)}")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, std = (torch.tensor(v, dtype=x.dtype).view(shape) for v in norm)
    raw = x * std + mean  # (N, C, *S)
    if how == "unit":
        return raw
    dims = tuple(range(1, x.dim()))
    std_i, mean_i = torch.std_mean(raw, dim=dims, keepdim=True, correction=0)
    return (raw - mean_i) / torch.where(std_i > 0, std_i, torch.ones_like(std_i))
