"""The general pivot: any job fields as rows and columns, a metric in the cells.

A cell pools the seeds of one configuration and nothing else: where the rows, columns and
``--where`` leave another field varying within a cell (a sweep whose spec changed, say epochs
2 then 3), the pivot is refused with a message naming the field and its values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

from invssl.errors import ConfigError
from invssl.frames import NoResultsError, filter_where, fmt_weight, order_key, require, varying_fields
from invssl.selection import MISSING, PM, collapsed_count, finished, fmt_acc, is_fraction, stats


def _same(series: pd.Series, value: Any) -> pd.Series:
    return series.map(lambda x: x == value or (pd.isna(x) and pd.isna(value)))


def _label(v: Any) -> str:
    return fmt_weight(v) if isinstance(v, float) else str(v)


@dataclass
class _Pivot:
    rows: list[str]
    cols: list[str]
    row_keys: list[tuple]
    col_keys: list[tuple]
    cells: dict[tuple[tuple, tuple], pd.DataFrame]


def _pivot_cells(jobs: pd.DataFrame, rows: list[str], cols: list[str], value: str, where: Mapping[str, Any]) -> _Pivot:
    require(jobs, [*rows, *cols, value, *where], "pivot")
    jobs = filter_where(finished(jobs), where)
    if jobs.empty:
        shown = ", ".join(f"{k}={v}" for k, v in where.items())
        raise NoResultsError(f"no finished job matches {shown}")

    def keys(fields: list[str]) -> list[tuple]:
        found = {tuple(r) for r in jobs[fields].itertuples(index=False)} if fields else {()}
        return sorted(found, key=lambda t: [order_key(v) for v in t])

    out = _Pivot(rows, cols, keys(rows), keys(cols), {})
    for rk in out.row_keys:
        in_row = pd.Series(True, index=jobs.index)
        for f, v in zip(rows, rk):
            in_row &= _same(jobs[f], v)
        for ck in out.col_keys:
            mask = in_row.copy()
            for f, v in zip(cols, ck):
                mask &= _same(jobs[f], v)
            cell = jobs[mask]
            if not cell.empty:
                out.cells[(rk, ck)] = cell
    _refuse_mixed(out)
    return out


def _refuse_mixed(piv: _Pivot) -> None:
    """A cell pools repetitions only: jobs of one configuration that differ in their seed."""
    fields: dict[str, list[str]] = {}
    for cell in piv.cells.values():
        if cell["group"].nunique() > 1:
            for field, values in varying_fields(cell["group"]).items():
                fields[field] = list(dict.fromkeys([*fields.get(field, []), *values]))
    if not fields:
        return
    shown = "; ".join(f"{f} varies: {', '.join(v)}" for f, v in sorted(fields.items()))
    raise ConfigError(
        f"a cell would pool different configurations ({shown}): split the table by the field, or keep one value of it",
        option="fields",
    )


def _split(fields: str | Sequence[str] | None) -> list[str]:
    if fields is None:
        return []
    return [fields] if isinstance(fields, str) else list(fields)


def pivot(
    jobs: pd.DataFrame,
    rows: str | Sequence[str],
    cols: str | Sequence[str] | None = None,
    value: str = "test_acc",
    where: Optional[Mapping[str, Any]] = None,
) -> pd.DataFrame:
    """Any grid as a table: ``value`` mean ± std (n) over the finished jobs in each cell.

    ``rows`` and ``cols`` are job fields (one or several); ``where`` keeps jobs whose field
    equals the given value (strings are matched as numbers where they parse as one). Accuracies
    are shown in %. A cell pools the seeds of one configuration; when the rows, columns and
    ``where`` leave another field varying within a cell, ConfigError names it.
    """
    where = dict(where or {})
    piv = _pivot_cells(jobs, _split(rows), _split(cols), value, where)
    scale = 100.0 if is_fraction(value) else 1.0
    col_names = [" ".join(f"{f}={_label(v)}" for f, v in zip(piv.cols, k)) or value for k in piv.col_keys]
    records = []
    for rk in piv.row_keys:
        rec: dict[str, Any] = {f: _label(v) for f, v in zip(piv.rows, rk)}
        for ck, name in zip(piv.col_keys, col_names):
            cell = piv.cells.get((rk, ck))
            mean, std, n = stats(cell[value]) if cell is not None else (math.nan, math.nan, 0)
            if n == 0:
                rec[name] = MISSING
                continue
            if scale == 100.0:
                rec[name] = f"{fmt_acc(mean * scale, std * scale)} ({n})"
            else:
                rec[name] = (f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} {PM} {std:.2g}") + f" ({n})"
            dead = collapsed_count(cell) if cell is not None else 0
            rec[name] += f" COLLAPSED {dead}/{n}" if dead else ""
        records.append(rec)
    table = pd.DataFrame(records, columns=[*piv.rows, *col_names])
    unit = " (%)" if scale == 100.0 else ""
    cond = ("; " + ", ".join(f"{k}={v}" for k, v in where.items())) if where else ""
    table.attrs["title"] = (
        f"{value}{unit} by {', '.join(piv.rows)}"
        + (f" and {', '.join(piv.cols)}" if piv.cols else "")
        + f": mean {PM} std (jobs) over the seeds in each cell{cond}"
    )
    return table


def pivot_long(
    jobs: pd.DataFrame, rows: Sequence[str], cols: Sequence[str] | None, value: str, where: Mapping[str, Any]
) -> pd.DataFrame:
    piv = _pivot_cells(jobs, _split(rows), _split(cols), value, dict(where))
    fields = [*piv.rows, *[c for c in piv.cols if c not in piv.rows]]
    records = []
    for (rk, ck), cell in piv.cells.items():
        mean, std, n = stats(cell[value])
        if n:
            key = dict(zip(piv.rows, rk)) | dict(zip(piv.cols, ck))
            records.append(
                {
                    **key,
                    "metric": value,
                    "mean": mean,
                    "std": std,
                    "n": n,
                    "collapsed": collapsed_count(cell),
                    "job_ids": list(cell["id"]),
                }
            )
    return pd.DataFrame(records, columns=[*fields, "metric", "mean", "std", "n", "collapsed", "job_ids"])
