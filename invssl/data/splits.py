"""Labeled / validation / unlabeled splits of a training set.

Splits are pure functions of (labels, n_labeled, seed, n_val): they draw from
``numpy.random.default_rng(seed)`` alone, whose streams numpy keeps identical on every machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from invssl.data.sources import int_param, seed_value
from invssl.errors import ConfigError, DataError


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
    seed = seed_value(seed)
    n = len(labels)
    if n == 0:
        raise DataError("split: no training examples")
    if labels.min() < 0:
        raise DataError("split: labels must be non-negative")
    num_classes = int(labels.max()) + 1
    n_val = int_param("split", "n_val", n_val, 0)
    if n_val > n:
        raise ConfigError(f"split: n_val={n_val} exceeds the {n} training examples")
    if n_labeled is not None:
        n_labeled = int_param("split", "n_labeled", n_labeled, 0)
        if n_labeled % num_classes:
            raise ConfigError(f"split: n_labeled={n_labeled} is not a multiple of the {num_classes} classes")
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
            raise DataError(f"split: class {c} has {len(rest)} examples outside validation, {want} labeled needed")
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
