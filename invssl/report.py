"""Tables from the results database: rows -> pandas DataFrame -> text.

Three layers, so that everything but the first is a pure function a test can check by hand:

* ``load_jobs`` / ``load_epochs`` read finished jobs (and their per-epoch metrics) from an
  engine and return DataFrames: one row per job with its config flattened into columns
  (topology, dataset, n_labeled, alpha, beta, seed, lr, ``data.<param>``...) beside its final
  metrics (val_acc, test_acc, recon_err, loss terms...). ``jobs_frame`` does the flattening.
* ``mnist_table`` (the paper's Table 2), ``bird10_table`` (the 1-D experiment) and ``pivot``
  turn those frames into display tables whose cells are strings; ``mnist_cells`` is the same
  selection as numbers.
* ``render`` writes a table as terminal text, markdown, LaTeX or CSV.

Model selection never looks at the test set: where a cell has several candidate configurations
(an (alpha, beta) grid, a learning-rate grid...), the one with the best mean validation
accuracy over its seeds is chosen, and its test accuracy is what the cell shows.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import pandas as pd

from invssl.config import RUNTIME_FIELDS
from invssl.errors import ConfigError, InvsslError, UnknownNameError

TABLES: tuple[str, ...] = ("mnist", "bird10")
FORMATS: tuple[str, ...] = ("terminal", "markdown", "latex", "csv")
MISSING = "-"
PM = "±"

# The paper's Table 2 rows, in its order.
PAPER_TOPOLOGIES: tuple[str, ...] = (
    "SmallCNNmean", "SmallCNNmax", "SmallUCNN",
    "LargeCNNmean", "LargeCNNmax", "LargeUCNN",
    "Resnet2-32mean", "Resnet2-32max", "UResnet2-32",
    "Resnet3-16mean", "Resnet3-16max", "UResnet3-16",
)
SSL_LABELS: tuple[int, ...] = (50, 100)
SUP_LABELS: tuple[int, ...] = (1000,)

# Published MNIST test accuracies (%) known from the paper (docs/method.md, "The experiments"): (row, N_L, acc).
# The paper's own text keeps only its headline figure; the rest are its comparison rows.
PUBLISHED: tuple[tuple[str, int, float], ...] = (
    ("Resnet2-32max (paper)", 50, 99.14),
    ("Ladder network", 100, 98.94),
    ("Improved GAN", 100, 99.07),
    ("ADGM", 100, 99.04),
    ("SDGM", 100, 98.68),
    ("VAT", 100, 98.64),
    ("CatGAN", 100, 98.09),
)
PUBLISHED_MARK = "[published]"

_CONFIG_FIRST = ("topology", "dataset", "n_labeled", "alpha", "beta", "seed")
_SCHEDULE_FIELDS = ("alpha", "beta")


class NoResultsError(InvsslError, LookupError):
    """The database (or the chosen sweep) holds no finished job to report on."""


# ------------------------------------------------------------------------ schedule labels
def _num(value: float) -> str:
    return f"{float(value):g}"


def weight_label(spec: Any) -> Any:
    """A loss weight for display and grouping: constants as floats, schedules as short text.

    ``{"kind": "ramp", "start": 0, "end": 0.5, "until": 10}`` -> ``"ramp(0>0.5@10)"``;
    ``since`` shows as ``@2-10``; a step schedule as ``"step(0.1>0.5>1@5,10)"``.
    """
    if spec is None:
        return None
    if isinstance(spec, bool):
        return float(spec)
    if isinstance(spec, (int, float)):
        return float(spec)
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        kind = spec.get("kind", "constant")
        if kind == "constant":
            return float(spec["value"])
        if kind in ("ramp", "cosine"):
            since = float(spec.get("since", 0.0) or 0.0)
            span = f"{_num(since)}-{_num(spec['until'])}" if since else _num(spec["until"])
            name = "cos" if kind == "cosine" else "ramp"
            return f"{name}({_num(spec['start'])}>{_num(spec['end'])}@{span})"
        if kind == "step":
            values = ">".join(_num(v) for v in spec["values"])
            at = ",".join(_num(a) for a in spec["at"])
            return f"step({values}@{at})"
        return json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))
    return str(spec)


def _fmt_weight(value: Any) -> str:
    return _num(value) if isinstance(value, float) else str(value)


def _is_supervised(alpha: Any) -> bool:
    return isinstance(alpha, float) and alpha == 1.0


# ------------------------------------------------------------------------ database -> rows
def sweep_names(engine: Any) -> list[str]:
    from sqlalchemy import select

    from invssl.db.models import Sweep
    from invssl.db.session import read_connection

    with read_connection(engine) as conn:
        return [r[0] for r in conn.execute(select(Sweep.name).order_by(Sweep.id))]


def load_jobs(engine: Any, sweep: Optional[str] = None, *, status: str = "done") -> pd.DataFrame:
    """Jobs with ``status`` (finished ones by default), of one sweep or all, as ``jobs_frame``.

    Raises UnknownNameError for an unknown sweep and NoResultsError when nothing matches.
    """
    from sqlalchemy import select

    from invssl.db.models import Job, Sweep, SweepJob
    from invssl.db.session import read_connection

    cols = (Job.id, Job.key, Job.status, Job.config, Job.result, Job.attempts, Job.epochs_done,
            Job.finished_at)
    with read_connection(engine) as conn:
        query = select(*cols).where(Job.status == status).order_by(Job.id)
        if sweep is not None:
            sweep_id = conn.execute(select(Sweep.id).where(Sweep.name == sweep)).scalar()
            if sweep_id is None:
                known = [r[0] for r in conn.execute(select(Sweep.name).order_by(Sweep.id))]
                raise UnknownNameError(f"unknown sweep {sweep!r}; known: {', '.join(known) or 'none'}")
            query = query.join(SweepJob, SweepJob.job_id == Job.id).where(SweepJob.sweep_id == sweep_id)
        rows = [dict(r._mapping) for r in conn.execute(query)]
    if not rows:
        where = f"sweep {sweep!r}" if sweep is not None else "the database"
        raise NoResultsError(f"no {status} jobs in {where} yet: nothing to report")
    return jobs_frame(rows)


def load_epochs(engine: Any, job_ids: Iterable[int]) -> pd.DataFrame:
    """Per-epoch metrics of the given jobs: one row per (job_id, epoch), ``extra`` flattened."""
    from sqlalchemy import select

    from invssl.db.models import EPOCH_METRICS, Epoch
    from invssl.db.session import read_connection

    ids = sorted({int(i) for i in job_ids})
    rows: list[dict[str, Any]] = []
    with read_connection(engine) as conn:
        for lo in range(0, len(ids), 500):
            chunk = ids[lo:lo + 500]
            query = (select(Epoch.job_id, Epoch.epoch, Epoch.attempt,
                            *(getattr(Epoch, m) for m in EPOCH_METRICS), Epoch.extra)
                     .where(Epoch.job_id.in_(chunk)).order_by(Epoch.job_id, Epoch.epoch))
            rows.extend(dict(r._mapping) for r in conn.execute(query))
    return epochs_frame(rows)


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
        for k in ("attempts", "epochs_done", "finished_at"):
            if k in row:
                flat[k] = row[k]
        for k, v in config.items():
            if k in RUNTIME_FIELDS:
                continue
            if k in _SCHEDULE_FIELDS:
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
    df = pd.DataFrame(out)
    first = [c for c in ("id", "key", "status", *_CONFIG_FIRST) if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


# ------------------------------------------------------------------------ statistics
def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(f"{what}: no column {', '.join(missing)} in the results; "
                          f"available: {', '.join(map(str, df.columns))}")


def _stats(values: pd.Series) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; NaN for one value), count) of the non-missing values."""
    v = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    n = int(len(v))
    if n == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if n > 1 else math.nan, n


def _order_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not pd.isna(value):
        return (0, float(value))
    return (1, str(value))


def _select(candidates: pd.DataFrame, select_by: str, value: str,
            scale: float = 100.0) -> Optional[dict[str, Any]]:
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
        sel_mean, _, sel_n = _stats(g[select_by]) if select_by in g else (math.nan, math.nan, 0)
        mean, std, n = _stats(g[value])
        collapsed = int(pd.to_numeric(g["collapsed"], errors="coerce").fillna(0).astype(bool).sum()) \
            if "collapsed" in g else 0
        groups.append({"group": gid, "alpha": g["alpha"].iloc[0] if "alpha" in g else None,
                       "beta": g["beta"].iloc[0] if "beta" in g else None,
                       "lr": g["lr"].iloc[0] if "lr" in g else None, "collapsed": collapsed,
                       "select": sel_mean, "select_n": sel_n,
                       "mean": mean * scale, "std": std * scale, "n": n, "job_ids": list(g["id"])})
    scored = [g for g in groups if not math.isnan(g["select"])]
    if not scored:
        if len(groups) > 1:
            return {"unselected": True, "candidates": len(groups)}
        scored = groups
    scored.sort(key=lambda g: (-(g["select"] if not math.isnan(g["select"]) else 0.0), -g["n"],
                               _order_key(g["alpha"]), _order_key(g["beta"]), g["group"]))
    best = dict(scored[0])
    best["candidates"] = len(groups)
    # The rate is named only where the cell chose among several (a tuned baseline says so).
    best["lr_varied"] = len({g["lr"] for g in groups}) > 1
    return best


def _fmt_acc(mean: float, std: float) -> str:
    if math.isnan(mean):
        return MISSING
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} {PM} {std:.2f}"


def _cell_text(sel: Optional[dict[str, Any]], with_weights: bool) -> str:
    if sel is None:
        return MISSING
    if sel.get("unselected"):
        return f"no validation split to choose among {sel['candidates']}"
    if sel["n"] == 0:
        return MISSING
    text = _fmt_acc(sel["mean"], sel["std"])
    chosen = [_fmt_weight(sel["alpha"]), _fmt_weight(sel["beta"])] if with_weights else []
    if sel.get("lr_varied"):
        chosen.append(f"lr {sel['lr']:g}")
    if chosen:
        text += f" ({', '.join(chosen)})"
    text += f" n={sel['n']}"
    if sel.get("collapsed"):
        text += f" COLLAPSED {sel['collapsed']}/{sel['n']}"
    return text


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "done"] if "status" in df.columns else df


# ------------------------------------------------------------------------ Table 2 (MNIST)
def _mnist_jobs(jobs: pd.DataFrame, dataset: Optional[str]) -> tuple[pd.DataFrame, Optional[str]]:
    _require(jobs, ("topology", "n_labeled", "alpha", "test_acc", "group", "id"), "mnist table")
    jobs = _finished(jobs)
    if "dataset" not in jobs.columns:
        return jobs, dataset
    present = list(dict.fromkeys(jobs["dataset"].dropna()))
    if dataset is None:
        if "mnist" in present:
            dataset = "mnist"
        elif len(present) == 1:
            dataset = present[0]
        elif present:
            raise ConfigError(f"the results hold several datasets ({', '.join(present)}): "
                              "choose one for the table (--dataset)")
    if dataset is not None:
        jobs = _of_dataset(jobs, dataset)
    return jobs, dataset


def _of_dataset(jobs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    kept = jobs[jobs["dataset"].astype(str).str.lower() == dataset.lower()]
    if kept.empty and not jobs.empty:
        present = ", ".join(dict.fromkeys(jobs["dataset"].astype(str)))
        raise NoResultsError(f"no finished job on dataset {dataset!r}; the results hold: {present}")
    return kept


def _label_columns(jobs: pd.DataFrame) -> tuple[list[int], list[int]]:
    sup_mask = jobs["alpha"].map(_is_supervised).astype(bool)
    ssl = sorted(set(SSL_LABELS) | {int(n) for n in jobs.loc[~sup_mask, "n_labeled"]})
    sup = sorted(set(SUP_LABELS) | {int(n) for n in jobs.loc[sup_mask, "n_labeled"]})
    return ssl, sup


def _topology_rows(jobs: pd.DataFrame) -> list[str]:
    others = [t for t in dict.fromkeys(jobs["topology"]) if t not in PAPER_TOPOLOGIES]
    return [*PAPER_TOPOLOGIES, *others]


def _mnist_selections(jobs: pd.DataFrame) -> Iterable[tuple[str, str, int, bool, Optional[dict]]]:
    """(topology, column, n_labeled, supervised, selection) for every cell of Table 2."""
    sup_mask = jobs["alpha"].map(_is_supervised).astype(bool)
    ssl_cols, sup_cols = _label_columns(jobs)
    for topology in _topology_rows(jobs):
        of_topology = jobs["topology"] == topology
        for supervised, labels in ((False, ssl_cols), (True, sup_cols)):
            for n_l in labels:
                cand = jobs[of_topology & (jobs["n_labeled"] == n_l) & (sup_mask == supervised)]
                col = f"Sup{n_l}" if supervised else f"N_L={n_l}"
                yield topology, col, n_l, supervised, _select(cand, "val_acc", "test_acc")


def mnist_cells(jobs: pd.DataFrame, dataset: Optional[str] = None) -> pd.DataFrame:
    """Table 2 as numbers: one row per (topology, column) with a finished job.

    Columns: topology, column (``N_L=50``, ``Sup1000``...), n_labeled, supervised, alpha, beta
    (the selected configuration), mean, std, n (test accuracy in % over its seeds), val_mean
    (the selection criterion, %), candidates (configurations compared), job_ids.
    """
    jobs, _ = _mnist_jobs(jobs, dataset)
    columns = ["topology", "column", "n_labeled", "supervised", "alpha", "beta", "lr", "mean",
               "std", "n", "collapsed", "val_mean", "candidates", "job_ids"]
    records = []
    if not jobs.empty:
        for topology, col, n_l, supervised, sel in _mnist_selections(jobs):
            if sel is None or sel.get("unselected") or sel["n"] == 0:
                continue
            records.append({
                "topology": topology, "column": col, "n_labeled": n_l, "supervised": supervised,
                "alpha": sel["alpha"], "beta": sel["beta"], "lr": sel["lr"], "mean": sel["mean"],
                "std": sel["std"], "n": sel["n"], "collapsed": sel["collapsed"], "val_mean": sel["select"] * 100, "candidates": sel["candidates"],
                "job_ids": sel["job_ids"],
            })
    return pd.DataFrame(records, columns=columns)


def mnist_table(jobs: pd.DataFrame, compare: Optional[str] = None,
                dataset: Optional[str] = None) -> pd.DataFrame:
    """The paper's Table 2: topologies (rows, paper order) by label count (columns).

    Semi-supervised columns ``N_L=50``, ``N_L=100`` (and any other label count trained with
    alpha < 1 or an alpha schedule), then supervised-only columns ``Sup1000`` (and ``Sup{N}`` for
    any other label count trained with alpha = 1). A cell reads ``mean ± std (alpha, beta) n=K``:
    test accuracy in % over the K finished seeds of the (alpha, beta) with the best mean
    validation accuracy, ``-`` where nothing finished. ``compare="paper"`` appends the published
    figures as rows marked ``[published]``. The title is in ``.attrs["title"]``.
    """
    if compare not in (None, "paper"):
        raise UnknownNameError(f"unknown comparison {compare!r}; valid: paper")
    jobs, dataset = _mnist_jobs(jobs, dataset)
    ssl_cols, sup_cols = _label_columns(jobs) if not jobs.empty else (list(SSL_LABELS), list(SUP_LABELS))
    columns = [f"N_L={n}" for n in ssl_cols] + [f"Sup{n}" for n in sup_cols]
    rows = list(PAPER_TOPOLOGIES) if jobs.empty else _topology_rows(jobs)
    table = pd.DataFrame(MISSING, index=pd.Index(rows, name="topology"), columns=columns, dtype=object)
    if not jobs.empty:
        for topology, col, _, supervised, sel in _mnist_selections(jobs):
            table.loc[topology, col] = _cell_text(sel, with_weights=not supervised)
    if compare == "paper":
        for name, n_l, acc in PUBLISHED:
            row = f"{name} {PUBLISHED_MARK}"
            table.loc[row] = MISSING
            col = f"N_L={n_l}"
            if col not in table.columns:
                table[col] = MISSING
            table.loc[row, col] = f"{acc:.2f}"
    table = table.reset_index()
    what = f"{dataset} " if dataset else ""
    table.attrs["title"] = (
        f"Table 2: {what}test accuracy (%), mean {PM} std over seeds, (alpha, beta) chosen per "
        f"cell by mean validation accuracy, n = seeds finished; Sup = alpha 1 (supervised only)"
        + (f"; rows marked {PUBLISHED_MARK} are published figures" if compare == "paper" else ""))
    return table


# ------------------------------------------------------------------------ the 1-D experiment
def best_of_last(epochs: pd.DataFrame, metric: str, last: int) -> pd.Series:
    """Per job_id: the best ``metric`` over that job's last ``last`` epochs."""
    if last < 1:
        raise ConfigError(f"last must be at least 1, got {last}")
    if epochs.empty or metric not in epochs.columns:
        return pd.Series(dtype=float)
    ep = epochs.dropna(subset=[metric])
    top = ep.groupby("job_id")["epoch"].transform("max")
    return ep[ep["epoch"] > top - last].groupby("job_id")[metric].max()


def bird10_table(jobs: pd.DataFrame, epochs: pd.DataFrame, last: int = 5,
                 metric: str = "test_acc") -> pd.DataFrame:
    """The 1-D experiment's layout: alpha (rows) by dataset (columns).

    Each job scores the best ``metric`` over its last ``last`` epochs; a cell is the mean ± std
    of that over seeds (in %) with n. Where a cell has several configurations besides alpha and
    the seed (a beta or learning-rate grid), the one with the best validation score by the same
    rule is shown, marked ``[best of K configs by validation: beta B]``.
    """
    _require(jobs, ("alpha", "dataset", "group", "id"), "bird10 table")
    if metric not in ("test_acc", "val_acc"):
        raise UnknownNameError(f"unknown metric {metric!r} for the bird10 table; valid: test_acc, val_acc")
    jobs = _finished(jobs).copy()
    jobs["_score"] = jobs["id"].map(best_of_last(epochs, metric, last))
    jobs["_val"] = jobs["id"].map(best_of_last(epochs, "val_acc", last))
    alphas = sorted(dict.fromkeys(jobs["alpha"]), key=_order_key)
    datasets = list(dict.fromkeys(jobs["dataset"]))
    table = pd.DataFrame(MISSING, index=pd.Index([_fmt_weight(a) for a in alphas], name="alpha"),
                         columns=datasets, dtype=object)
    for alpha in alphas:
        for ds in datasets:
            cand = jobs[(jobs["alpha"] == alpha) & (jobs["dataset"] == ds)]
            sel = _select(cand, "_val", "_score")
            text = _cell_text(sel, with_weights=False)
            if sel is not None and not sel.get("unselected") and sel["n"] and sel["candidates"] > 1:
                text += (f" [best of {sel['candidates']} configs by validation: "
                         f"beta {_fmt_weight(sel['beta'])}]")
            table.loc[_fmt_weight(alpha), ds] = text
    table = table.reset_index()
    what = "validation" if metric == "val_acc" else "test"
    table.attrs["title"] = (f"Accuracy against alpha: best {what} accuracy (%) over each job's last "
                            f"{last} epochs, mean {PM} std over seeds, n = seeds finished")
    return table


# ------------------------------------------------------------------------ general pivot
def _matches(series: pd.Series, wanted: Any) -> pd.Series:
    if isinstance(wanted, str):
        try:
            number = float(wanted)
        except ValueError:
            number = None
        as_text = series.map(lambda v: _fmt_weight(v) if isinstance(v, float) else str(v))
        hit = as_text.str.lower() == wanted.lower()
        if number is not None:
            numeric = pd.to_numeric(series, errors="coerce")
            hit = hit | (numeric == number)
        return hit
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return pd.to_numeric(series, errors="coerce") == float(wanted)
    return series == wanted


def _is_fraction(metric: str) -> bool:
    return metric.endswith("_acc") or metric.endswith("_acc_recording")


def pivot(jobs: pd.DataFrame, rows: str | Sequence[str], cols: str | Sequence[str] | None = None,
          value: str = "test_acc", where: Optional[Mapping[str, Any]] = None) -> pd.DataFrame:
    """Any grid as a table: ``value`` mean ± std (n) over all finished jobs in each cell.

    ``rows`` and ``cols`` are job fields (one or several); ``where`` keeps jobs whose field
    equals the given value (strings are matched as numbers where they parse as one). Accuracies
    are shown in %. Unlike ``mnist_table`` nothing is selected: a cell pools every job in it.
    """
    rows = [rows] if isinstance(rows, str) else list(rows)
    cols = [] if cols is None else [cols] if isinstance(cols, str) else list(cols)
    where = dict(where or {})
    _require(jobs, [*rows, *cols, value, *where], "pivot")
    jobs = _finished(jobs)
    for field, wanted in where.items():
        jobs = jobs[_matches(jobs[field], wanted)]
    if jobs.empty:
        shown = ", ".join(f"{k}={v}" for k, v in where.items())
        raise NoResultsError(f"no finished job matches {shown}")
    scale = 100.0 if _is_fraction(value) else 1.0

    def label(v: Any) -> str:
        return _fmt_weight(v) if isinstance(v, float) else str(v)

    def keys(fields: list[str]) -> list[tuple]:
        found = {tuple(r) for r in jobs[fields].itertuples(index=False)} if fields else {()}
        return sorted(found, key=lambda t: [_order_key(v) for v in t])

    row_keys, col_keys = keys(rows), keys(cols)
    col_names = [" ".join(f"{f}={label(v)}" for f, v in zip(cols, k)) or value for k in col_keys]
    records = []
    for rk in row_keys:
        rec: dict[str, Any] = {f: label(v) for f, v in zip(rows, rk)}
        in_row = pd.Series(True, index=jobs.index)
        for f, v in zip(rows, rk):
            in_row &= jobs[f].map(lambda x, v=v: x == v or (pd.isna(x) and pd.isna(v)))
        for ck, name in zip(col_keys, col_names):
            mask = in_row.copy()
            for f, v in zip(cols, ck):
                mask &= jobs[f].map(lambda x, v=v: x == v or (pd.isna(x) and pd.isna(v)))
            mean, std, n = _stats(jobs.loc[mask, value])
            if n == 0:
                rec[name] = MISSING
            elif scale == 100.0:
                rec[name] = f"{_fmt_acc(mean * scale, std * scale)} ({n})"
            else:
                rec[name] = (f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} {PM} {std:.2g}") + f" ({n})"
            if n and "collapsed" in jobs:
                dead = int(pd.to_numeric(jobs.loc[mask, "collapsed"], errors="coerce").fillna(0).astype(bool).sum())
                rec[name] += f" COLLAPSED {dead}/{n}" if dead else ""
        records.append(rec)
    table = pd.DataFrame(records, columns=[*rows, *col_names])
    unit = " (%)" if scale == 100.0 else ""
    cond = ("; " + ", ".join(f"{k}={v}" for k, v in where.items())) if where else ""
    table.attrs["title"] = (f"{value}{unit} by {', '.join(rows)}"
                            + (f" and {', '.join(cols)}" if cols else "")
                            + f": mean {PM} std (jobs) over every finished job in the cell{cond}")
    return table


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """``["alpha=0.5", "dataset=mnist"]`` -> ``{"alpha": "0.5", "dataset": "mnist"}``."""
    out: dict[str, str] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise ConfigError(f"--where {item!r}: expected FIELD=VALUE")
        out[field.strip()] = value.strip()
    return out


# ------------------------------------------------------------------------ renderers
def _cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = [str(c) for c in df.columns]
    body = [["" if (not isinstance(v, str) and pd.isna(v)) else str(v) for v in row]
            for row in df.itertuples(index=False)]
    return header, body


def rich_table(df: pd.DataFrame) -> Any:
    """A rich Table of ``df`` (title from ``attrs``), first column left, the rest right."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    title = df.attrs.get("title")
    table = Table(title=Text(title) if title else None, title_justify="left")
    header, body = _cells(df)
    for i, name in enumerate(header):
        # The row names never wrap; a terminal too narrow for the cells wraps them at spaces.
        table.add_column(escape(name), justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in body:
        table.add_row(*(Text(c) for c in row))
    return table


def _markdown(df: pd.DataFrame) -> str:
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    header, body = _cells(df)
    lines = []
    if df.attrs.get("title"):
        lines += [f"**{esc(df.attrs['title'])}**", ""]
    lines.append("| " + " | ".join(esc(h) for h in header) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", PM: r"$\pm$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def _latex(df: pd.DataFrame) -> str:
    header, body = _cells(df)
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[ht]", r"\centering"]
    if df.attrs.get("title"):
        lines.append(r"\caption{" + latex_escape(df.attrs["title"]) + "}")
    lines.append(r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    published = [PUBLISHED_MARK in row[0] for row in body]
    for i, row in enumerate(body):
        if published[i] and (i == 0 or not published[i - 1]):
            lines.append(r"\midrule")
        lines.append(" & ".join(latex_escape(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render(df: pd.DataFrame, fmt: str = "terminal") -> str:
    """``df`` as text: ``terminal`` (a plain-text rich table), ``markdown``, ``latex`` or ``csv``.

    Markdown and LaTeX carry the title (``df.attrs["title"]``) as a bold line and a caption;
    CSV is the bare table, one header line, for pandas or a spreadsheet.
    """
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "markdown":
        return _markdown(df)
    if fmt == "latex":
        return _latex(df)
    if fmt == "terminal":
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=1000, color_system=None, force_terminal=False,
                highlight=False).print(rich_table(df))
        return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
    raise UnknownNameError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def table(name: str, jobs: pd.DataFrame, epochs: Optional[pd.DataFrame] = None, *,
          compare: Optional[str] = None, dataset: Optional[str] = None, last: int = 5) -> pd.DataFrame:
    """A named table: ``mnist`` or ``bird10`` (which needs the per-epoch frame)."""
    if name == "mnist":
        return mnist_table(jobs, compare=compare, dataset=dataset)
    if name == "bird10":
        if compare is not None:
            raise ConfigError("--compare applies to the mnist table only")
        if dataset is not None:
            jobs = _of_dataset(jobs, dataset)
        return bird10_table(jobs, epochs if epochs is not None else pd.DataFrame(), last=last)
    raise UnknownNameError(f"unknown table {name!r}; valid: {', '.join(TABLES)}")
