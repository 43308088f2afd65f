"""Results as pandas frames: jobs with their config flattened, epochs, and ``--where`` filters.

``load_jobs`` / ``load_epochs`` read through ``invssl.db.results``; everything else is a pure
function of rows, so tables, listings and figures share one notion of a job's fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import pandas as pd

from invssl.config import RUNTIME_FIELDS
from invssl.errors import ConfigError, InvsslError
from invssl.labels import number_text, weight_label

CONFIG_FIRST = ("topology", "dataset", "n_labeled", "alpha", "beta", "seed")
SCHEDULE_FIELDS = ("alpha", "beta")


class NoResultsError(InvsslError, LookupError):
    """The database (or the chosen sweep) holds no finished job to report on."""


# ------------------------------------------------------------------------ schedule labels
def fmt_weight(value: Any) -> str:
    return number_text(value) if isinstance(value, float) else str(value)


def order_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not pd.isna(value):
        return (0, float(value))
    return (1, str(value))


def field_text(field: str, value: Any) -> str:
    """A config value as a person reads it (schedules shortened, JSON compact)."""
    if field in SCHEDULE_FIELDS:
        return fmt_weight(weight_label(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return fmt_weight(value) if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------ database -> frames
def load_jobs(
    engine: Any, sweep: Optional[str] = None, *, status: Optional[str] = "done", allow_empty: bool = False
) -> pd.DataFrame:
    """Jobs with ``status`` (finished ones by default; None: all), of one sweep or all.

    Raises UnknownNameError for an unknown sweep and, unless ``allow_empty``, NoResultsError
    when nothing matches.
    """
    from invssl.db import reads

    rows = reads.job_rows(engine, sweep, status=status)
    if not rows and not allow_empty:
        where = f"sweep {sweep!r}" if sweep is not None else "the database"
        what = f"{status} jobs" if status else "jobs"
        raise NoResultsError(f"no {what} in {where} yet: nothing to report")
    return jobs_frame(rows)


def load_epochs(engine: Any, job_ids: Iterable[int]) -> pd.DataFrame:
    """Per-epoch metrics of the given jobs: one row per (job_id, epoch), ``extra`` flattened."""
    from invssl.db import reads

    return epochs_frame(reads.epoch_rows(engine, job_ids))


def epochs_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    out = []
    for row in rows:
        flat = {k: v for k, v in row.items() if k != "extra"}
        for k, v in (row.get("extra") or {}).items():
            if k not in flat and isinstance(v, (int, float)):
                flat[k] = v
        out.append(flat)
    cols = ["job_id", "epoch"]
    return pd.DataFrame(out, columns=None if out else cols)


def jobs_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per job: id, key, status, the config flattened, the final metrics.

    ``alpha``/``beta`` are floats for constants and short labels for schedules (see
    ``weight_label``); ``data_params`` become ``data.<name>`` columns; a result key that clashes
    with a config field (``lr``: the final learning rate) becomes ``final_<key>``. ``group``
    identifies the configuration without its seed: the seeds of one group are repetitions.
    """
    out = []
    for row in rows:
        config = dict(row.get("config") or {})
        flat: dict[str, Any] = {"id": row.get("id"), "key": row.get("key"), "status": row.get("status")}
        for k in ("attempts", "epochs_done", "finished_at", "error"):
            if k in row:
                flat[k] = row[k]
        for k, v in config.items():
            if k in RUNTIME_FIELDS:
                continue
            if k in SCHEDULE_FIELDS:
                flat[k] = weight_label(v)
            elif k == "data_params":
                for pk, pv in (v or {}).items():
                    flat[f"data.{pk}"] = pv
            elif isinstance(v, (dict, list)):
                flat[k] = json.dumps(v, sort_keys=True, separators=(",", ":"))
            else:
                flat[k] = v
        ident = {k: v for k, v in config.items() if k not in RUNTIME_FIELDS and k != "seed"}
        flat["group"] = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
        for k, v in (row.get("result") or {}).items():
            if isinstance(v, (dict, list)):
                continue
            flat[f"final_{k}" if k in flat or k in config else k] = v
        out.append(flat)
    df = pd.DataFrame(out, columns=None if out else ["id", "key", "status", "group"])
    first = [c for c in ("id", "key", "status", *CONFIG_FIRST) if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def varying_fields(groups: Iterable[str]) -> dict[str, list[str]]:
    """Config fields (besides the seed) whose values differ among ``group`` identities,
    each with its distinct values as text, in sorted order."""
    configs = [json.loads(g) for g in dict.fromkeys(groups)]
    out: dict[str, list[str]] = {}
    for field in sorted({k for c in configs for k in c}):
        values = {json.dumps(c.get(field), sort_keys=True): c.get(field) for c in configs}
        if len(values) > 1:
            shown = sorted({field_text(field, v) for v in values.values()}, key=_text_order)
            out[field] = shown
    return out


def _text_order(text: str) -> tuple[int, Any]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


# ------------------------------------------------------------------------ --where
def parse_where(items: Iterable[str]) -> dict[str, str]:
    """``["alpha=0.5", "dataset=mnist"]`` -> ``{"alpha": "0.5", "dataset": "mnist"}``."""
    out: dict[str, str] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise ConfigError(f"condition {item!r}: expected FIELD=VALUE")
        out[field.strip()] = value.strip()
    return out


def matches(series: pd.Series, wanted: Any) -> pd.Series:
    """Which values equal ``wanted``; a string is also compared as a number where it is one."""
    if isinstance(wanted, str):
        try:
            number: Optional[float] = float(wanted)
        except ValueError:
            number = None
        as_text = series.map(lambda v: fmt_weight(v) if isinstance(v, float) else str(v))
        hit = as_text.str.lower() == wanted.lower()
        if number is not None:
            numeric = pd.to_numeric(series, errors="coerce")
            hit = hit | (numeric == number)
        return hit
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return pd.to_numeric(series, errors="coerce") == float(wanted)
    return series == wanted


def require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(
            f"{what}: no column {', '.join(missing)} in the results; available: {', '.join(map(str, df.columns))}"
        )


def filter_where(jobs: pd.DataFrame, where: Mapping[str, Any], what: str = "conditions") -> pd.DataFrame:
    if jobs.empty:
        return jobs
    require(jobs, where, what)
    for field, wanted in where.items():
        jobs = jobs[matches(jobs[field], wanted)]
    return jobs
