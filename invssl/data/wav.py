"""A folder of WAV recordings, one sub-folder per class, cut into overlapping windows.

Windows of one recording never straddle train and test: recordings are split, not windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from torch import Tensor

from invssl.data.sources import (
    SOURCES,
    Dataset,
    DatasetInfo,
    Source,
    float_param,
    int_param,
    need_root,
    normalised,
)
from invssl.errors import ConfigError, DataError


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
    root = need_root("wav-folder", root)
    sample_rate = int_param("wav-folder", "sample_rate", sample_rate, 1)
    window_ms = float_param("wav-folder", "window_ms", window_ms, 0.0, math.inf)
    overlap = float_param("wav-folder", "overlap", overlap, 0.0, 1.0, high_open=True)
    test_fraction = float_param("wav-folder", "test_fraction", test_fraction, 0.0, 1.0, high_open=True)
    window = round(sample_rate * window_ms / 1000)
    if window < 1:
        raise ConfigError(f"wav-folder: window_ms={window_ms} is under one sample at {sample_rate} Hz")
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
        raise DataError(f"wav-folder: no class in {root} has two recordings, so none is left for testing")
    return _WavPlan(tuple(p.name for p in class_dirs), tuple(recordings), is_test, window, hop, sample_rate)


def _wav_info(root: Path | None, seed: int, **params: Any) -> DatasetInfo:
    plan = _wav_plan(root, seed, **params)
    return _plan_info(plan, plan.count(test=False), plan.count(test=True))


def _plan_info(plan: _WavPlan, n_train: int, n_test: int) -> DatasetInfo:
    return DatasetInfo("wav-folder", (1, plan.window), len(plan.class_names), plan.class_names, n_train, n_test)


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
    x_train, x_test, norm = normalised(x_train, x_test)
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


_DEFAULTS = {"sample_rate": 16000, "window_ms": 500, "overlap": 0.9, "test_fraction": 0.2}


def register() -> None:
    SOURCES.add("wav-folder", Source(params=_DEFAULTS, info=_wav_info, load=_wav_load))
