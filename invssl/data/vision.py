"""Image sets read by torchvision (or, for the MNIST family, from their IDX files directly)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from invssl import datafiles
from invssl.data.sources import DIGITS, SOURCES, Dataset, DatasetInfo, Source, need_root, normalised
from invssl.errors import DataError


@dataclass(frozen=True)
class _Vision:
    title: str  # torchvision's class name, as users see it in folder names and errors
    folder: str  # where torchvision looks, relative to root
    files: tuple[str, ...]
    open: Callable[[type, str, bool, bool], Any]  # (class, root, train, download) -> dataset
    # torchvision's dataset -> (uint8 N,C,H,W, int64 labels); None: IDX files read by datafiles
    arrays: Callable[[Any], tuple[Tensor, Tensor]] | None
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    n_train: int
    n_test: int


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _train_flag(cls: type, root: str, train: bool, download: bool) -> Any:
    return cls(root, train=train, download=download)


def _idx_set(title: str, class_names: tuple[str, ...]) -> _Vision:
    return _Vision(
        title=title,
        folder=f"{title}/raw",
        files=_IDX_FILES,
        open=_train_flag,
        arrays=None,
        input_shape=(1, 28, 28),
        class_names=class_names,
        n_train=60000,
        n_test=10000,
    )


# File and class names are spelled out rather than read from torchvision's classes so that
# importing this module (and every ``info`` call) does not pay for importing torchvision.
_VISION = {
    "mnist": _idx_set("MNIST", DIGITS),
    "fashion-mnist": _idx_set(
        "FashionMNIST",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),  # fmt: skip
    ),
    "kmnist": _idx_set("KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    "cifar10": _Vision(
        title="CIFAR10",
        folder="cifar-10-batches-py",
        files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        open=_train_flag,
        arrays=lambda ds: (torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)),
        input_shape=(3, 32, 32),
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),  # fmt: skip
        n_train=50000,
        n_test=10000,
    ),
    "svhn": _Vision(
        title="SVHN",
        folder=".",
        files=("train_32x32.mat", "test_32x32.mat"),
        open=lambda cls, root, train, download: cls(root, split="train" if train else "test", download=download),
        # torchvision already maps SVHN's label 10 to digit 0.
        arrays=lambda ds: (torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long()),
        input_shape=(3, 32, 32),
        class_names=DIGITS,
        n_train=73257,
        n_test=26032,
    ),
}


def _vision_info(name: str, spec: _Vision) -> DatasetInfo:
    return DatasetInfo(name, spec.input_shape, len(spec.class_names), spec.class_names, spec.n_train, spec.n_test)


def _vision_load(name: str, spec: _Vision, root: Path | None, download: bool) -> Dataset:
    root = need_root(name, root)
    _vision_files(name, spec, root, download, fetch=download)
    folder = (root / spec.folder).absolute()
    if spec.arrays is None:
        try:
            x_train, y_train, x_test, y_test = _idx_arrays(folder)
        except DataError as exc:
            raise DataError(f"cannot read {spec.title} files in {folder}: {exc}") from None
    else:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, spec.title)
        try:
            train, test = (spec.open(cls, str(root), split, False) for split in (True, False))
        except Exception as exc:  # torchvision raises assorted types for format faults
            # Its messages span lines; ours are one line.
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise DataError(f"cannot read {spec.title} files in {folder}: {reason}") from exc
        (x_train, y_train), (x_test, y_test) = spec.arrays(train), spec.arrays(test)
    x_train, x_test, norm = normalised(_unit_float(x_train), _unit_float(x_test))
    return Dataset(_vision_info(name, spec), x_train, y_train, x_test, y_test, None, None, norm)


def _idx_arrays(folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    paths = [datafiles.find(folder, f, gz_too=True) or folder / f for f in _IDX_FILES]
    x_train, y_train, x_test, y_test = (torch.from_numpy(datafiles.read_idx(p).copy()) for p in paths)
    return x_train.unsqueeze(1), y_train.long(), x_test.unsqueeze(1), y_test.long()


def _vision_files(name: str, spec: _Vision, root: Path, download: bool, fetch: bool) -> None:
    # Checked here rather than left to torchvision, whose message names neither folder nor files.
    folder = (root / spec.folder).absolute()
    gz_too = spec.arrays is None
    if download and fetch:

        def get() -> None:
            import torchvision.datasets

            cls = getattr(torchvision.datasets, spec.title)
            for split in (True, False):
                spec.open(cls, str(root), split, True)

        datafiles.fetch(spec.title, root.absolute(), folder, spec.files, gz_too, get)
        return
    if datafiles.missing(folder, spec.files, gz_too) and not download:
        raise DataError(
            f"{spec.title} files not found in {folder}: expected "
            f"{', '.join(spec.files)} (pass download: true to fetch them)"
        )


def _unit_float(x: Tensor) -> Tensor:
    return x.contiguous().float().div_(255)


def register() -> None:
    for name, spec in _VISION.items():
        SOURCES.add(
            name,
            Source(
                params={},
                info=lambda root, seed, _n=name, _s=spec: _vision_info(_n, _s),
                load=lambda root, download, seed, _n=name, _s=spec: _vision_load(_n, _s, root, download),
                files=lambda root, download, fetch, _n=name, _s=spec: _vision_files(
                    _n, _s, need_root(_n, root), download, fetch
                ),
            ),
        )
