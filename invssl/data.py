"""Datasets, one registry of loaders, and the labeled / validation / unlabeled splits.

Every loader returns whole tensors, inputs normalised per channel with statistics of its own
training set only, so nothing about the test set leaks into training. ``info`` answers shapes,
classes and sizes without decoding the data where that can be avoided.

Splits are pure functions of (labels, n_labeled, seed, n_val): they draw from
``numpy.random.default_rng(seed)`` alone, whose streams numpy keeps identical on every machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from torch import Tensor

from invssl import datafiles
from invssl.errors import ConfigError, DataError
from invssl.registry import Registry

__all__ = [
    "SCALINGS",
    "scale_inputs",
    "Dataset",
    "DatasetInfo",
    "Split",
    "accuracy",
    "canonical",
    "ensure_files",
    "info",
    "load",
    "make_split",
    "names",
    "per_group_accuracy",
]


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
class _Source:
    params: dict[str, Any]  # accepted parameters and their defaults
    info: Callable[..., DatasetInfo]  # (root, seed, **params)
    load: Callable[..., Dataset]  # (root, download, seed, **params)


_SOURCES: Registry[_Source] = Registry("dataset")


def names() -> list[str]:
    return _SOURCES.names()


def canonical(name: str) -> str:
    """The registered spelling of ``name``; UnknownNameError listing the valid ones if none."""
    return _SOURCES.canonical(name)


def info(name: str, *, root: str | Path | None = None, seed: int = 0, **params: Any) -> DatasetInfo:
    """Shapes, classes and sizes. ``seed`` matters only where it moves the train/test border
    (wav-folder splits recordings by seed, and windows per recording differ)."""
    source, params = _resolve(name, params)
    return source.info(_root(root), _seed(seed), **params)


def load(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    **params: Any,
) -> Dataset:
    source, params = _resolve(name, params)
    return source.load(_root(root), bool(download), _seed(seed), **params)


def _resolve(name: str, params: dict[str, Any]) -> tuple[_Source, dict[str, Any]]:
    source = _SOURCES.get(name)
    unknown = sorted(set(params) - set(source.params))
    if unknown:
        valid = ", ".join(source.params) or "none"
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for dataset {_SOURCES.canonical(name)!r}; "
            f"valid: {valid}"
        )
    return source, {**source.params, **params}


def _root(root: str | Path | None) -> Path | None:
    return None if root is None else Path(root).expanduser()


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def _need_root(dataset: str, root: Path | None) -> Path:
    if root is None:
        raise ConfigError(f"dataset {dataset!r} needs a root folder for its files")
    return root


def _int_param(dataset: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{dataset}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float_param(
    dataset: str, key: str, value: Any, low: float, high: float, *, high_open: bool = False
) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and low <= value
        and (value < high if high_open else value <= high)
    )
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(
            f"{dataset}: {key} must be a number in [{low}, {high}{bracket}, got {value!r}"
        )
    return float(value)


def _normalised(
    x_train: Tensor, x_test: Tensor
) -> tuple[Tensor, Tensor, tuple[tuple[float, ...], tuple[float, ...]]]:
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


# ---------------------------------------------------------------------------------------------
# Image sets read by torchvision


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
_DIGITS = tuple(str(d) for d in range(10))


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
    "mnist": _idx_set("MNIST", _DIGITS),
    "fashion-mnist": _idx_set(
        "FashionMNIST",
        (
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
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
            "airplane", "automobile", "bird", "cat", "deer",
            "dog", "frog", "horse", "ship", "truck",
        ),  # fmt: skip
        n_train=50000,
        n_test=10000,
    ),
    "svhn": _Vision(
        title="SVHN",
        folder=".",
        files=("train_32x32.mat", "test_32x32.mat"),
        open=lambda cls, root, train, download: cls(
            root, split="train" if train else "test", download=download
        ),
        # torchvision already maps SVHN's label 10 to digit 0.
        arrays=lambda ds: (torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long()),
        input_shape=(3, 32, 32),
        class_names=_DIGITS,
        n_train=73257,
        n_test=26032,
    ),
}


def _vision_info(name: str, spec: _Vision) -> DatasetInfo:
    return DatasetInfo(
        name, spec.input_shape, len(spec.class_names), spec.class_names, spec.n_train, spec.n_test
    )


def _vision_load(name: str, spec: _Vision, root: Path | None, download: bool) -> Dataset:
    root = _need_root(name, root)
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
    x_train, x_test, norm = _normalised(_unit_float(x_train), _unit_float(x_test))
    return Dataset(
        _vision_info(name, spec), x_train, y_train, x_test, y_test, None, None, norm
    )


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
        raise DataError(f"{spec.title} files not found in {folder}: expected "
                        f"{', '.join(spec.files)} (pass download: true to fetch them)")


def ensure_files(name: str, *, root: str | Path | None = None, download: bool = False,
                 fetch: bool = True) -> None:
    """Fail fast when a dataset's files are absent (DataError naming the folder and files).

    With ``download`` and ``fetch`` the files are downloaded now, one process at a time per
    data root; with ``fetch`` False (a dry run) nothing is written. Generated datasets need
    no files; a wav-folder's are checked by ``info``.
    """
    canonical_name = _SOURCES.canonical(name)
    spec = _VISION.get(canonical_name)
    if spec is not None:
        _vision_files(canonical_name, spec, _need_root(canonical_name, _root(root)), download, fetch)


def _unit_float(x: Tensor) -> Tensor:
    return x.contiguous().float().div_(255)


for _name, _spec in _VISION.items():
    _SOURCES.add(
        _name,
        _Source(
            params={},
            info=lambda root, seed, _n=_name, _s=_spec: _vision_info(_n, _s),
            load=lambda root, download, seed, _n=_name, _s=_spec: _vision_load(
                _n, _s, root, download
            ),
        ),
    )


# ---------------------------------------------------------------------------------------------
# MNIST-1D, generated by the mnist1d package


def _mnist1d_sizes(num_samples: int) -> tuple[int, int]:
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    # make_dataset draws num_samples // 10 per class, then cuts at train_split.
    total = num_samples // 10 * 10
    n_train = int(total * args.train_split)
    return n_train, total - n_train


def _mnist1d_num_samples(num_samples: Any) -> int:
    return _int_param("mnist1d", "num_samples", num_samples, 10)


def _mnist1d_info(root: Path | None, seed: int, num_samples: int) -> DatasetInfo:
    n_train, n_test = _mnist1d_sizes(_mnist1d_num_samples(num_samples))
    return DatasetInfo("mnist1d", (1, 40), 10, _DIGITS, n_train, n_test)


def _mnist1d_load(root: Path | None, download: bool, seed: int, num_samples: int) -> Dataset:
    import mnist1d.data

    meta = _mnist1d_info(root, seed, num_samples)
    args = mnist1d.data.get_dataset_args()
    args.num_samples = meta.n_train + meta.n_test
    args.seed = seed
    # make_dataset reseeds the global numpy and python RNGs; callers must not see that.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_train, x_test, norm = _normalised(
        torch.from_numpy(raw["x"]).float().unsqueeze(1),
        torch.from_numpy(raw["x_test"]).float().unsqueeze(1),
    )
    return Dataset(
        meta,
        x_train,
        torch.from_numpy(raw["y"]).long(),
        x_test,
        torch.from_numpy(raw["y_test"]).long(),
        None,
        None,
        norm,
    )


_SOURCES.add(
    "mnist1d", _Source(params={"num_samples": 5000}, info=_mnist1d_info, load=_mnist1d_load)
)


# ---------------------------------------------------------------------------------------------
# Chirps: synthetic bird-call-like sounds

# Each call's instantaneous frequency over its normalised time u in [0, 1] is
#   f_start + (f_end - f_start) * u**power + bend * sin(pi u) + depth * sin(2 pi rate t + phi),
# then scaled by a per-call pitch factor. Classes come in confusable pairs that differ in one
# trait only (sweep curvature, trill rate, harmonic content), so few labels do not suffice.
_CHIRP_CLASSES = {
    #                  f_start f_end power   bend depth rate  h2   h3
    "rise":           (2000, 4000, 1.0,     0,   0,  0, 0.0, 0.0),
    "late-rise":      (2000, 4000, 2.5,     0,   0,  0, 0.0, 0.0),
    "fall":           (5000, 2500, 1.0,     0,   0,  0, 0.3, 0.0),
    "early-fall":     (5000, 2500, 0.4,     0,   0,  0, 0.3, 0.0),
    "slow-trill":     (3000, 3000, 1.0,     0, 250, 25, 0.2, 0.1),
    "fast-trill":     (3000, 3000, 1.0,     0, 250, 50, 0.2, 0.1),
    "arch":           (2500, 2500, 1.0,  1800,   0,  0, 0.2, 0.0),
    "dip":            (4300, 4300, 1.0, -1800,   0,  0, 0.2, 0.0),
    "rich-low-rise":  (1500, 3000, 1.0,     0,   0,  0, 0.6, 0.4),
    "pure-low-rise":  (1500, 3000, 1.0,     0,   0,  0, 0.0, 0.0),
}  # fmt: skip
_CHIRP_TABLE = np.array(list(_CHIRP_CLASSES.values()), dtype=np.float32)
_CHIRP_PITCH_SIGMA = 0.08  # log-normal spread of a call's pitch, about +-8 %
_CHIRP_CALL_FRACTION = (0.3, 0.7)  # call length as a fraction of the clip
# With these, a small 1-D CNN reaches ~50 % test accuracy from 20 labels and ~90 % from 2000.
_CHIRP_SNR_DB = (0.0, 15.0)
_CHIRP_CHUNK = 250  # rows per vectorised block: big arrays spend their time in page faults


def _chirp_params(
    n_train: Any, n_test: Any, sample_rate: Any, duration_ms: Any
) -> tuple[int, int, int, int]:
    n_train = _int_param("chirps", "n_train", n_train, 1)
    n_test = _int_param("chirps", "n_test", n_test, 1)
    sample_rate = _int_param("chirps", "sample_rate", sample_rate, 1000)
    duration_ms = _float_param("chirps", "duration_ms", duration_ms, 1.0, math.inf)
    return n_train, n_test, sample_rate, round(sample_rate * duration_ms / 1000)


def _chirps_info(root: Path | None, seed: int, **params: Any) -> DatasetInfo:
    n_train, n_test, _, samples = _chirp_params(**params)
    names_ = tuple(_CHIRP_CLASSES)
    return DatasetInfo("chirps", (1, samples), len(names_), names_, n_train, n_test)


def _chirps_load(root: Path | None, download: bool, seed: int, **params: Any) -> Dataset:
    meta = _chirps_info(root, seed, **params)
    n_train, n_test, sample_rate, samples = _chirp_params(**params)
    rng = np.random.default_rng(seed)
    k = meta.num_classes
    y = np.concatenate([rng.permutation(np.arange(n) % k) for n in (n_train, n_test)])
    x = _chirps(y, rng, sample_rate, samples)
    x_train, x_test, norm = _normalised(
        torch.from_numpy(x[:n_train]).unsqueeze(1), torch.from_numpy(x[n_train:]).unsqueeze(1)
    )
    y = torch.from_numpy(y).long()
    return Dataset(meta, x_train, y[:n_train], x_test, y[n_train:], None, None, norm)


def _chirps(y: np.ndarray, rng: np.random.Generator, sample_rate: int, samples: int) -> np.ndarray:
    n = len(y)
    table = _CHIRP_TABLE[y]
    f32 = np.float32
    pitch = np.exp(rng.normal(0.0, _CHIRP_PITCH_SIGMA, n)).astype(f32)
    length = (rng.uniform(*_CHIRP_CALL_FRACTION, n) * samples).astype(f32)
    onset = (rng.uniform(0.0, 1.0, n) * (samples - length)).astype(f32)
    trill_phase = rng.uniform(0.0, 2 * np.pi, n).astype(f32)
    gain = rng.uniform(0.2, 1.0, n).astype(f32)
    noise_rms = 10 ** (-rng.uniform(*_CHIRP_SNR_DB, n) / 20)

    t = np.arange(samples, dtype=f32)
    rad_per_sample = f32(2 * np.pi / sample_rate)
    nyquist = sample_rate / 2
    x = np.empty((n, samples), dtype=f32)
    for lo in range(0, n, _CHIRP_CHUNK):
        rows = slice(lo, lo + _CHIRP_CHUNK)
        f_start, f_end, power, bend, depth, rate, h2, h3 = (c[:, None] for c in table[rows].T)
        u = np.clip((t - onset[rows, None]) / length[rows, None], 0, 1)
        freq = (
            f_start
            + (f_end - f_start) * u**power
            + bend * np.sin(f32(np.pi) * u)
            + depth * np.sin(rad_per_sample * rate * t + trill_phase[rows, None])
        ) * pitch[rows, None]
        phase = np.cumsum(freq * rad_per_sample, axis=1)
        call = np.sin(phase)
        # Overtones above Nyquist are dropped, as an anti-aliasing filter would.
        call += h2 * np.sin(2 * phase) * (2 * freq < nyquist)
        call += h3 * np.sin(3 * phase) * (3 * freq < nyquist)
        call *= np.sin(f32(np.pi) * u) ** 2
        # Noise is set relative to the call's own power, so the SNR range means what it says.
        call_rms = np.sqrt((call**2).sum(axis=1) / length[rows])
        noise = rng.standard_normal(call.shape, dtype=f32)
        call += noise * (call_rms * noise_rms[rows])[:, None].astype(f32)
        x[rows] = call * gain[rows, None]
    return x


_SOURCES.add(
    "chirps",
    _Source(
        params={"n_train": 2000, "n_test": 1000, "sample_rate": 16000, "duration_ms": 500},
        info=_chirps_info,
        load=_chirps_load,
    ),
)


# ---------------------------------------------------------------------------------------------
# A folder of WAV recordings, one sub-folder per class


@dataclass(frozen=True)
class _Recording:
    path: Path
    label: int
    frames: int  # at the recording's own rate
    rate: int


@dataclass(frozen=True)
class _WavPlan:
    class_names: tuple[str, ...]
    recordings: tuple[_Recording, ...]  # sorted by (class, file name); index = group id
    is_test: np.ndarray  # bool per recording
    window: int
    hop: int
    sample_rate: int

    def windows(self, rec: _Recording) -> int:
        # Recordings shorter than one window are zero-padded to one window rather than
        # skipped, so no recording (and no rare class) silently disappears.
        return 1 + (max(self.resampled_length(rec), self.window) - self.window) // self.hop

    def resampled_length(self, rec: _Recording) -> int:
        up, down = self.ratio(rec)
        return -(-rec.frames * up // down)  # resample_poly's output length, ceil(n * up / down)

    def ratio(self, rec: _Recording) -> tuple[int, int]:
        g = math.gcd(self.sample_rate, rec.rate)
        return self.sample_rate // g, rec.rate // g

    def count(self, test: bool) -> int:
        return sum(self.windows(r) for r, t in zip(self.recordings, self.is_test) if t == test)


def _wav_plan(
    root: Path | None, seed: int, sample_rate: Any, window_ms: Any, overlap: Any, test_fraction: Any
) -> _WavPlan:
    root = _need_root("wav-folder", root)
    sample_rate = _int_param("wav-folder", "sample_rate", sample_rate, 1)
    window_ms = _float_param("wav-folder", "window_ms", window_ms, 0.0, math.inf)
    overlap = _float_param("wav-folder", "overlap", overlap, 0.0, 1.0, high_open=True)
    test_fraction = _float_param(
        "wav-folder", "test_fraction", test_fraction, 0.0, 1.0, high_open=True
    )
    window = round(sample_rate * window_ms / 1000)
    if window < 1:
        raise ConfigError(
            f"wav-folder: window_ms={window_ms} is under one sample at {sample_rate} Hz"
        )
    hop = max(1, round(window * (1 - overlap)))

    if not root.is_dir():
        raise DataError(f"wav-folder: {root} is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"wav-folder: no class sub-folders in {root}")
    recordings = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
        if not files:
            raise DataError(f"wav-folder: class folder {class_dir} holds no .wav files")
        for path in files:
            try:
                header = soundfile.info(str(path))
            except RuntimeError as exc:
                raise DataError(f"wav-folder: cannot read {path}: {exc}") from exc
            recordings.append(_Recording(path, label, header.frames, header.samplerate))

    labels = np.array([r.label for r in recordings])
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(recordings), dtype=bool)
    for label in range(len(class_dirs)):
        ids = rng.permutation(np.flatnonzero(labels == label))
        # At least one recording each side when the class has two; a single one trains.
        n_test = 0 if len(ids) < 2 else min(max(round(test_fraction * len(ids)), 1), len(ids) - 1)
        is_test[ids[:n_test]] = True
    if not is_test.any():
        raise DataError(
            f"wav-folder: no class in {root} has two recordings, so none is left for testing"
        )
    return _WavPlan(
        tuple(p.name for p in class_dirs), tuple(recordings), is_test, window, hop, sample_rate
    )


def _wav_info(root: Path | None, seed: int, **params: Any) -> DatasetInfo:
    plan = _wav_plan(root, seed, **params)
    return _plan_info(plan, plan.count(test=False), plan.count(test=True))


def _plan_info(plan: _WavPlan, n_train: int, n_test: int) -> DatasetInfo:
    return DatasetInfo(
        "wav-folder", (1, plan.window), len(plan.class_names), plan.class_names, n_train, n_test
    )


def _wav_load(root: Path | None, download: bool, seed: int, **params: Any) -> Dataset:
    plan = _wav_plan(root, seed, **params)
    parts: dict[bool, tuple[list[Tensor], list[int], list[int]]] = {
        False: ([], [], []),
        True: ([], [], []),
    }
    for group, (rec, test) in enumerate(zip(plan.recordings, plan.is_test)):
        windows = _wav_windows(plan, rec)
        xs, ys, gs = parts[bool(test)]
        xs.append(windows)
        ys += [rec.label] * len(windows)
        gs += [group] * len(windows)

    def stack(test: bool) -> tuple[Tensor, Tensor, Tensor]:
        xs, ys, gs = parts[test]
        return torch.cat(xs).unsqueeze(1), torch.tensor(ys), torch.tensor(gs)

    (x_train, y_train, g_train), (x_test, y_test, g_test) = stack(False), stack(True)
    x_train, x_test, norm = _normalised(x_train, x_test)
    # Sizes from the decoded audio, not the headers, in case a header misstates its length.
    meta = _plan_info(plan, len(x_train), len(x_test))
    return Dataset(meta, x_train, y_train, x_test, y_test, g_train, g_test, norm)


def _wav_windows(plan: _WavPlan, rec: _Recording) -> Tensor:
    try:
        audio, rate = soundfile.read(str(rec.path), dtype="float32", always_2d=True)
    except RuntimeError as exc:
        raise DataError(f"wav-folder: cannot read {rec.path}: {exc}") from exc
    mono = audio.mean(axis=1)
    if rate != plan.sample_rate:
        from scipy.signal import resample_poly  # its import costs ~0.5 s; only wav-folder pays

        mono = resample_poly(mono, *plan.ratio(rec))
    mono = np.pad(mono.astype(np.float32), (0, max(0, plan.window - len(mono))))
    return torch.from_numpy(mono).unfold(0, plan.window, plan.hop)


_SOURCES.add(
    "wav-folder",
    _Source(
        params={"sample_rate": 16000, "window_ms": 500, "overlap": 0.9, "test_fraction": 0.2},
        info=_wav_info,
        load=_wav_load,
    ),
)


# ---------------------------------------------------------------------------------------------
# Accuracy


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


# ---------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint, sorted int64 indices into a training set.

    JSON form: ``{"labeled": [...], "validation": [...], "unlabeled": [...]}`` where each list
    holds single indices and ``[start, stop)`` pairs for runs of three or more, which keeps the
    large, mostly contiguous unlabeled set to a few hundred bytes.
    """

    labeled: np.ndarray
    validation: np.ndarray
    unlabeled: np.ndarray = field(repr=False)

    _PARTS = ("labeled", "validation", "unlabeled")

    def __post_init__(self) -> None:
        for part in self._PARTS:
            a = np.sort(np.asarray(getattr(self, part), dtype=np.int64).reshape(-1))
            if len(a) and (a[0] < 0 or (np.diff(a) == 0).any()):
                raise DataError(f"split: {part} indices must be distinct and non-negative")
            object.__setattr__(self, part, a)
        everything = np.concatenate([getattr(self, p) for p in self._PARTS])
        if len(np.unique(everything)) != len(everything):
            raise DataError("split: labeled, validation and unlabeled indices overlap")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return all(np.array_equal(getattr(self, p), getattr(other, p)) for p in self._PARTS)

    def __hash__(self) -> int:
        return hash(self.digest())

    def digest(self) -> str:
        """12 hex digits of SHA-256 over the indices; equal splits have equal digests."""
        h = hashlib.sha256()
        for part in self._PARTS:
            a = getattr(self, part)
            h.update(f"{part}:{len(a)}:".encode())
            h.update(a.astype("<i8").tobytes())
        return h.hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps({p: _runs(getattr(self, p)) for p in self._PARTS}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Split:
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict) or set(obj) != set(cls._PARTS):
                raise ValueError(f"expected exactly the keys {', '.join(cls._PARTS)}")
            return cls(**{p: _unruns(obj[p]) for p in cls._PARTS})
        except (ValueError, TypeError) as exc:
            raise DataError(f"split: malformed JSON: {exc}") from exc


def _runs(a: np.ndarray) -> list[int | list[int]]:
    out: list[int | list[int]] = []
    breaks = np.flatnonzero(np.diff(a) != 1) + 1
    for run in np.split(a, breaks):
        if len(run) >= 3:
            out.append([int(run[0]), int(run[-1]) + 1])
        else:
            out.extend(int(i) for i in run)
    return out


def _unruns(items: Any) -> np.ndarray:
    if not isinstance(items, list):
        raise TypeError("each part must be a list")
    pieces = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            pieces.append(np.array([item]))
        elif (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            and item[0] < item[1]
        ):
            pieces.append(np.arange(item[0], item[1]))
        else:
            raise ValueError(f"bad index entry {item!r}")
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)


def make_split(
    labels: Any,
    n_labeled: int | None,
    seed: int,
    n_val: int = 0,
    groups: Any = None,
) -> Split:
    """Hold out ``n_val`` validation examples, class-stratified, then draw ``n_labeled``
    examples, the same number per class, from the rest; everything else is unlabeled.

    ``n_labeled=None`` labels every example outside validation (fully supervised). The number
    of classes is ``max(labels) + 1``. Per class, one permutation supplies validation first and
    labeled next, so for a fixed seed the validation set does not depend on ``n_labeled`` and
    smaller labeled sets are subsets of larger ones. With ``groups`` (recording ids),
    validation takes whole recordings, so its per-class size is rounded up to whole recordings
    and no recording is shared between validation and training.
    """
    labels = _as_numpy(labels, "labels")
    seed = _seed(seed)
    n = len(labels)
    if n == 0:
        raise DataError("split: no training examples")
    if labels.min() < 0:
        raise DataError("split: labels must be non-negative")
    num_classes = int(labels.max()) + 1
    n_val = _int_param("split", "n_val", n_val, 0)
    if n_val > n:
        raise ConfigError(f"split: n_val={n_val} exceeds the {n} training examples")
    if n_labeled is not None:
        n_labeled = _int_param("split", "n_labeled", n_labeled, 0)
        if n_labeled % num_classes:
            raise ConfigError(
                f"split: n_labeled={n_labeled} is not a multiple of the {num_classes} classes"
            )
    if groups is not None:
        groups = _as_numpy(groups, "groups")
        if len(groups) != n:
            raise DataError(f"split: {len(groups)} groups for {n} labels")
        group_label_pairs = np.unique(np.stack([groups, labels]), axis=1)
        if len(np.unique(group_label_pairs[0])) != group_label_pairs.shape[1]:
            raise DataError("split: a group holds examples of more than one class")

    val_quota = _stratified(n_val, np.bincount(labels, minlength=num_classes))
    rng = np.random.default_rng(seed)
    validation, labeled = [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if groups is None:
            order = rng.permutation(members)
            val, rest = order[: val_quota[c]], order[val_quota[c] :]
        else:
            val, rest = _take_groups(members, groups, val_quota[c], rng)
            rest = rng.permutation(rest)
        want = len(rest) if n_labeled is None else n_labeled // num_classes
        if len(rest) < want:
            raise DataError(
                f"split: class {c} has {len(rest)} examples outside validation, "
                f"{want} labeled needed"
            )
        validation.append(val)
        labeled.append(rest[:want])
    validation_ = np.concatenate(validation)
    labeled_ = np.concatenate(labeled)
    unlabeled = np.setdiff1d(np.arange(n), np.concatenate([validation_, labeled_]))
    return Split(labeled_, validation_, unlabeled)


def _as_numpy(a: Any, what: str) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"split: {what} must be a 1-D integer array")
    return a.astype(np.int64)


def _stratified(total: int, counts: np.ndarray) -> np.ndarray:
    """``total`` shared in proportion to ``counts`` by largest remainder, in integers so that no
    rounding can differ between machines; ties go to lower classes."""
    quota, remainder = np.divmod(total * counts, counts.sum())
    short = total - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:short]] += 1
    return quota


def _take_groups(
    members: np.ndarray, groups: np.ndarray, quota: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    member_groups = groups[members]
    chosen: list[int] = []
    taken = 0
    for g in rng.permutation(np.unique(member_groups)):
        if taken >= quota:
            break
        chosen.append(g)
        taken += int((member_groups == g).sum())
    in_val = np.isin(member_groups, chosen)
    return members[in_val], members[~in_val]
