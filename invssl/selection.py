"""Model selection and cell statistics shared by the tables and the figures.

Selection never looks at the test set: where a cell has several candidate configurations
(an (alpha, beta) grid, a learning-rate grid...), the one with the best mean validation
accuracy over its seeds is chosen, and its test accuracy is what the cell shows.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pandas as pd

from invssl.errors import ConfigError
from invssl.frames import fmt_weight, order_key

MISSING = "-"
PM = "±"


def stats(values: pd.Series) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; NaN for one value), count) of the non-missing values."""
    v = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    n = int(len(v))
    if n == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if n > 1 else math.nan, n


def collapsed_count(jobs: pd.DataFrame) -> int:
    if "collapsed" not in jobs:
        return 0
    return int(pd.to_numeric(jobs["collapsed"], errors="coerce").fillna(0).astype(bool).sum())


def select(candidates: pd.DataFrame, select_by: str, value: str, scale: float = 100.0) -> Optional[dict[str, Any]]:
    """The configuration group with the best mean ``select_by`` over its seeds.

    Returns its statistics: mean/std/n of ``value`` (times ``scale``: fractions in %), the mean of
    ``select_by``, its alpha and beta, and how many groups competed. Ties go to more seeds,
    then to the group listed first in (alpha, beta) order, so the result never depends on
    ``value``. Groups without any ``select_by`` value are skipped when others have one; if
    several groups compete and none has one, nothing is selected (``None`` with a reason).
    """
    if candidates.empty:
        return None
    groups = []
    for gid, g in candidates.groupby("group", sort=False):
        sel_mean, _, sel_n = stats(g[select_by]) if select_by in g else (math.nan, math.nan, 0)
        mean, std, n = stats(g[value])
        groups.append(
            {
                "group": gid,
                "alpha": g["alpha"].iloc[0] if "alpha" in g else None,
                "beta": g["beta"].iloc[0] if "beta" in g else None,
                "lr": g["lr"].iloc[0] if "lr" in g else None,
                "collapsed": collapsed_count(g),
                "select": sel_mean,
                "select_n": sel_n,
                "mean": mean * scale,
                "std": std * scale,
                "n": n,
                "job_ids": list(g["id"]),
            }
        )
    scored = [g for g in groups if not math.isnan(g["select"])]
    if not scored:
        if len(groups) > 1:
            return {"unselected": True, "candidates": len(groups)}
        scored = groups
    scored.sort(
        key=lambda g: (
            -(g["select"] if not math.isnan(g["select"]) else 0.0),
            -g["n"],
            order_key(g["alpha"]),
            order_key(g["beta"]),
            g["group"],
        )
    )
    best = dict(scored[0])
    best["candidates"] = len(groups)
    # The rate is named only where the cell chose among several (a tuned baseline says so).
    best["lr_varied"] = len({g["lr"] for g in groups}) > 1
    return best


def usable(sel: Optional[dict[str, Any]]) -> bool:
    return sel is not None and not sel.get("unselected") and bool(sel["n"])


def fmt_acc(mean: float, std: float) -> str:
    if math.isnan(mean):
        return MISSING
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} {PM} {std:.2f}"


def cell_text(sel: Optional[dict[str, Any]], with_weights: bool) -> str:
    if sel is None:
        return MISSING
    if sel.get("unselected"):
        return f"no validation split to choose among {sel['candidates']}"
    if sel["n"] == 0:
        return MISSING
    text = fmt_acc(sel["mean"], sel["std"])
    chosen = [fmt_weight(sel["alpha"]), fmt_weight(sel["beta"])] if with_weights else []
    if sel.get("lr_varied"):
        chosen.append(f"lr {sel['lr']:g}")
    if chosen:
        text += f" ({', '.join(chosen)})"
    text += f" n={sel['n']}"
    if sel.get("collapsed"):
        text += f" COLLAPSED {sel['collapsed']}/{sel['n']}"
    return text


def finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "done"] if "status" in df.columns else df


def is_fraction(metric: str) -> bool:
    return metric.endswith("_acc") or metric.endswith("_acc_recording")


def at_best_validation(epochs: pd.DataFrame, metric: str, last: int) -> pd.DataFrame:
    """Per job_id: ``metric`` and ``val_acc`` at the epoch with the best validation accuracy
    among that job's last ``last`` epochs (ties: the later epoch); a job without validation
    scores its last epoch. Columns ``score`` and ``val``, indexed by job_id."""
    if last < 1:
        raise ConfigError(f"last must be at least 1, got {last}")
    if epochs.empty or metric not in epochs.columns:
        return pd.DataFrame({"score": [], "val": []}, dtype=float)
    ep = epochs.dropna(subset=[metric]).copy()
    if "val_acc" not in ep.columns:
        ep["val_acc"] = math.nan
    top = ep.groupby("job_id")["epoch"].transform("max")
    ep = ep[ep["epoch"] > top - last]
    ep["_rank"] = ep["val_acc"].fillna(-math.inf)
    best = ep.sort_values(["job_id", "_rank", "epoch"]).groupby("job_id").tail(1).set_index("job_id")
    return pd.DataFrame({"score": best[metric], "val": best["val_acc"]})
