"""Experiment files and job configs.

An experiment file (YAML) holds a sweep ``name``, ``data`` and ``train`` defaults, a ``grid`` of
lists over any job field, ``overrides`` applied to jobs matching a pattern, and ``extra`` job
groups outside the product. It expands into frozen ``JobConfig``s; a job's identity is the hash
of its resolved config minus the fields that only say where or how it runs (data root,
download, device), so the same experiment run on another machine is the same job.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from invssl.errors import ConfigError, InvsslError
from invssl.labels import job_label, short
from invssl.schedules import Schedule, Step, make_schedule

InputScaling = Literal["unit", "standardize", "per_input"]
Init = Literal["glorot", "kaiming"]

# Fields that say where or how a job runs, not what it computes: excluded from its identity.
RUNTIME_FIELDS = frozenset({"data_root", "download", "device"})


class JobConfig(BaseModel):
    """One fully resolved training job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topology: str
    dataset: str
    data_params: dict[str, Any] = Field(default_factory=dict)
    val_size: int = Field(default=1000, ge=0)
    n_labeled: int = Field(ge=0)  # 0: no labels at all, which needs alpha = 0 (clustering)
    seed: int = Field(default=0, ge=0)
    alpha: Schedule = 0.5
    beta: Schedule = 0.5
    epochs: int = Field(default=10, ge=1)
    lr: float = Field(default=0.003, gt=0)
    # The training recipe (docs/method.md, "The recipe"): defaults are what won the MNIST probes.
    input_scaling: InputScaling = "standardize"
    init: Init = "glorot"
    lr_warmup: float = Field(default=0.0, ge=0)  # epochs of linear warm-up from 0 to lr
    lr_decay: Union[Literal["none", "cosine"], Step] = "cosine"  # Step: factors of lr by epoch
    collapse_patience: int = Field(default=2, ge=0)  # stop after this many collapsed epochs; 0: never
    batch_labeled: int = Field(default=32, ge=1)
    batch_unlabeled: int = Field(default=128, ge=0)
    steps_per_epoch: Optional[int] = Field(default=None, ge=1)
    schedule_per: Literal["step", "epoch"] = "step"
    weighting: Literal["logits", "softmax", "bias_free"] = "logits"
    distance: Literal["mse", "cosine"] = "mse"
    # "balanced": E minus the entropy of the batch's mean prediction (docs/method.md, section 6).
    entropy: Literal["per_input", "balanced"] = "per_input"
    layer_weights: Optional[dict[str, float]] = None
    precision: Literal["fp32", "bf16"] = "fp32"
    data_root: Optional[str] = None
    download: bool = False
    device: str = "auto"

    @model_validator(mode="before")
    @classmethod
    def _supervised_ignores_beta(cls, raw: Any) -> Any:
        # With alpha = 1 the loss is plain cross-entropy whatever beta is; fixing beta to 0
        # gives all such grid points one key, so they are trained once.
        if isinstance(raw, dict) and isinstance(raw.get("alpha"), (int, float)) and raw["alpha"] == 1:
            return {**raw, "beta": 0.0}
        return raw

    @model_validator(mode="after")
    def _no_labels_no_cross_entropy(self) -> JobConfig:
        if self.n_labeled == 0 and self.alpha != 0:
            raise ValueError(f"n_labeled: 0 trains without labels, so alpha must be 0 (got {_short(self.alpha)})")
        return self

    @field_validator("alpha", "beta", mode="before")
    @classmethod
    def _weight_in_unit_interval(cls, value: Any) -> Any:
        try:
            schedule = make_schedule(value)
        except ValidationError as exc:
            raise ValueError(_format_validation(exc)) from None
        if not all(0.0 <= v <= 1.0 for v in schedule.knots()):
            raise ValueError(f"must lie in [0, 1]; got {_short(value)}")
        return float(value) if isinstance(value, (int, float)) else schedule

    @field_validator("topology")
    @classmethod
    def _known_topology(cls, value: str) -> str:
        from invssl import models

        return models.canonical(value)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from invssl import data

        return data.canonical(value)

    def identity(self) -> dict[str, Any]:
        """The resolved config without the runtime fields, as plain JSON values."""
        return self.model_dump(mode="json", exclude=set(RUNTIME_FIELDS))

    @property
    def key(self) -> str:
        """sha256 of the canonical JSON of ``identity()``: the job's UNIQUE key."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def label(self) -> str:
        return job_label(self.model_dump(mode="json"))


JOB_FIELDS: tuple[str, ...] = tuple(JobConfig.model_fields)
# Keys of the file's ``data`` section and the job fields they fill.
_DATA_KEYS = {
    "dataset": "dataset",
    "root": "data_root",
    "download": "download",
    "val_size": "val_size",
    "params": "data_params",
}
# The ``train`` section holds defaults for everything but the data fields.
TRAIN_FIELDS: tuple[str, ...] = tuple(f for f in JOB_FIELDS if f not in _DATA_KEYS.values())


def _short(value: Any) -> str:
    return short(value.model_dump(mode="json") if isinstance(value, BaseModel) else value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Strict):
    dataset: str
    root: Optional[str] = None
    download: bool = False
    val_size: int = Field(default=1000, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


class Override(_Strict):
    """``set`` applies to every job whose fields match all of ``match``'s glob patterns."""

    match: dict[str, Any]
    set: dict[str, Any]


class ExtraGroup(_Strict):
    """A job group outside the product: its ``grid`` lists replace the main grid's."""

    name: Optional[str] = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)


class Experiment(_Strict):
    name: str = Field(min_length=1)
    data: DataSection
    train: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]]
    overrides: list[Override] = Field(default_factory=list)
    extra: list[ExtraGroup] = Field(default_factory=list)


def _check_fields(keys: Iterable[str], where: str, allowed: tuple[str, ...] = JOB_FIELDS) -> None:
    for key in keys:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown field; valid: {', '.join(allowed)}")


def _format_validation(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key missing"
    where = ".".join(p for p in (prefix, loc) if p)
    return f"{where}: {msg}" if where else msg


def _matches(job: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    for field, pattern in match.items():
        value = job.get(field)
        if isinstance(pattern, str):
            if not fnmatch.fnmatchcase(str(value).lower(), pattern.lower()):
                return False
        elif value != pattern:
            return False
    return True


def _product(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def expand(experiment: Experiment, base_dir: Optional[Path] = None) -> list[JobConfig]:
    """Every job of the experiment, in grid order, duplicates removed.

    A relative ``data_root`` is taken relative to ``base_dir`` (the experiment file's folder)
    when given, so a sweep finds its data wherever it is started from.
    """
    _check_fields(experiment.train, "train", TRAIN_FIELDS)
    _check_fields(experiment.grid, "grid")
    base: dict[str, Any] = {**experiment.train}
    for key, field in _DATA_KEYS.items():
        base[field] = getattr(experiment.data, key)
    for i, ov in enumerate(experiment.overrides):
        _check_fields(ov.match, f"overrides[{i}].match")
        _check_fields(ov.set, f"overrides[{i}].set")
    groups: list[tuple[str, dict[str, list[Any]], dict[str, Any]]] = [("grid", experiment.grid, {})]
    for i, group in enumerate(experiment.extra):
        _check_fields(group.grid, f"extra[{i}].grid")
        _check_fields(group.set, f"extra[{i}].set")
        groups.append((f"extra[{i}].grid", {**experiment.grid, **group.grid}, group.set))

    jobs: dict[str, JobConfig] = {}
    for where, grid, fixed in groups:
        for key, values in grid.items():
            if not values:
                raise ConfigError(f"{where}.{key}: empty list, so the grid has no jobs")
        for point in _product(grid):
            raw = {**base, **point, **fixed}
            for ov in experiment.overrides:
                if _matches(raw, ov.match):
                    raw.update(ov.set)
            raw["data_root"] = _resolve_root(raw.get("data_root"), base_dir)
            try:
                job = JobConfig(**raw)
            except ValidationError as exc:
                shown = ", ".join(f"{k}={_short(v)}" for k, v in point.items())
                raise ConfigError(f"{_format_validation(exc)} (in {where} point {shown})") from None
            except InvsslError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            jobs.setdefault(job.key, job)
    if not jobs:
        raise ConfigError("the grid has no jobs")
    _check_jobs(jobs.values())
    return list(jobs.values())


def _resolve_root(root: Any, base_dir: Optional[Path]) -> Any:
    if not isinstance(root, str) or base_dir is None:
        return root
    path = Path(root).expanduser()
    return root if path.is_absolute() else str((base_dir / path).resolve())


def _check_jobs(jobs: Iterable[JobConfig]) -> None:
    """Label counts against each dataset, and your own networks against its input shape."""
    from invssl import data, networks

    infos: dict[str, Any] = {}
    checked: set[tuple[str, str]] = set()
    for job in jobs:
        ident = json.dumps([job.dataset, job.data_root, job.data_params], sort_keys=True)
        if ident not in infos:
            infos[ident] = data.info(job.dataset, root=job.data_root, **job.data_params)
        info = infos[ident]
        if networks.is_custom(job.topology) and (job.topology, ident) not in checked:
            checked.add((job.topology, ident))
            networks.check(job.topology, info.input_shape, info.num_classes)
        if job.n_labeled % info.num_classes:
            raise ConfigError(
                f"n_labeled={job.n_labeled} is not divisible by the {info.num_classes} classes of "
                f"{job.dataset} (labels are balanced across classes)"
            )
        if job.n_labeled + job.val_size > info.n_train:
            raise ConfigError(
                f"n_labeled={job.n_labeled} plus val_size={job.val_size} exceeds the "
                f"{info.n_train} training examples of {job.dataset}"
            )


def parse_experiment(text: str, source: str = "<string>", overrides: Sequence[str] = ()) -> Experiment:
    """Validate the YAML ``text`` with ``overrides`` (``invssl.overrides``) applied first."""
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: YAML syntax error{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML syntax error: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with name, data, train and grid")
    if overrides:
        from invssl import overrides as ov

        raw = ov.apply(raw, overrides)
    try:
        return Experiment(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_validation(exc)}") from None


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Experiment, list[JobConfig]]:
    """Read, validate and expand an experiment file; raise ConfigError with one clear line.

    ``overrides`` (``train.epochs=1``...) apply before validation; a relative ``data.root`` is
    relative to the file's folder.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not an experiment file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    experiment = parse_experiment(text, str(path), overrides)
    try:
        return experiment, expand(experiment, path.parent.absolute())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
