"""Tables from finished jobs: the paper's Table 2, the 1-D experiment and any pivot.

Each table exists twice from one computation: as display text (cells like
``98.90 ± 0.36 (0.3, 0.5) n=3``, what ``mnist_table``, ``bird10_table`` and ``pivot`` return)
and in long form, one row per cell with numeric ``mean``, ``std`` and ``n`` in the metric's own
unit (fractions for accuracies), which ``build`` returns beside it for CSV and JSON.

Model selection never looks at the test set (``invssl.selection``). A cell only ever pools
jobs that differ in their seed: a pivot whose rows and columns leave another field varying is
refused, naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd

from invssl.errors import ConfigError, UnknownNameError
from invssl.frames import (
    NoResultsError,
    epochs_frame,
    fmt_weight,
    load_epochs,
    load_jobs,
    order_key,
    parse_where,
    require,
    weight_label,
)
from invssl.pivot import pivot, pivot_long
from invssl.report_render import FORMATS, PUBLISHED_MARK, render, render_report, rich_table
from invssl.selection import MISSING, PM, at_best_validation, cell_text, finished, select, usable

__all__ = [
    "NoResultsError",
    "load_jobs",
    "load_epochs",
    "epochs_frame",
    "parse_where",
    "weight_label",
    "render",
    "rich_table",
    "FORMATS",
    "PUBLISHED_MARK",
    "Report",
    "build",
    "mnist_table",
    "mnist_cells",
    "bird10_table",
    "pivot",
    "table",
]

TABLES: tuple[str, ...] = ("mnist", "bird10")

# The paper's Table 2 rows, in its order.
PAPER_TOPOLOGIES: tuple[str, ...] = (
    "SmallCNNmean", "SmallCNNmax", "SmallUCNN",
    "LargeCNNmean", "LargeCNNmax", "LargeUCNN",
    "Resnet2-32mean", "Resnet2-32max", "UResnet2-32",
    "Resnet3-16mean", "Resnet3-16max", "UResnet3-16",
)  # fmt: skip
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


def _is_supervised(alpha: Any) -> bool:
    return isinstance(alpha, float) and alpha == 1.0


# ------------------------------------------------------------------------ Table 2 (MNIST)
def _mnist_jobs(jobs: pd.DataFrame, dataset: Optional[str]) -> tuple[pd.DataFrame, Optional[str]]:
    require(jobs, ("topology", "n_labeled", "alpha", "test_acc", "group", "id"), "mnist table")
    jobs = finished(jobs)
    if "dataset" not in jobs.columns:
        return jobs, dataset
    if dataset is None:
        present = list(dict.fromkeys(jobs["dataset"].dropna().astype(str)))
        if "mnist" not in present:
            # Table 2 is an MNIST table: another dataset is shown only when asked for by name.
            raise NoResultsError(
                f"no finished MNIST job; the results hold: {', '.join(present) or 'none'}: choose one of them",
                option="dataset",
            )
        dataset = "mnist"
    return _of_dataset(jobs, dataset), dataset


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
                yield topology, col, n_l, supervised, select(cand, "val_acc", "test_acc")


def mnist_cells(jobs: pd.DataFrame, dataset: Optional[str] = None) -> pd.DataFrame:
    """Table 2's selection as numbers: one row per (topology, column) with a finished job.

    Columns: topology, column (``N_L=50``, ``Sup1000``...), n_labeled, supervised, alpha, beta
    (the selected configuration), mean, std, n (test accuracy in % over its seeds), val_mean
    (the selection criterion, %), candidates (configurations compared), job_ids.
    """
    jobs, _ = _mnist_jobs(jobs, dataset)
    columns = [
        "topology",
        "column",
        "n_labeled",
        "supervised",
        "alpha",
        "beta",
        "lr",
        "mean",
        "std",
        "n",
        "collapsed",
        "val_mean",
        "candidates",
        "job_ids",
    ]
    records = []
    if not jobs.empty:
        for topology, col, n_l, supervised, sel in _mnist_selections(jobs):
            if not usable(sel):
                continue
            assert sel is not None
            records.append(
                {
                    "topology": topology,
                    "column": col,
                    "n_labeled": n_l,
                    "supervised": supervised,
                    "alpha": sel["alpha"],
                    "beta": sel["beta"],
                    "lr": sel["lr"],
                    "mean": sel["mean"],
                    "std": sel["std"],
                    "n": sel["n"],
                    "collapsed": sel["collapsed"],
                    "val_mean": sel["select"] * 100,
                    "candidates": sel["candidates"],
                    "job_ids": sel["job_ids"],
                }
            )
    return pd.DataFrame(records, columns=columns)


def mnist_table(jobs: pd.DataFrame, compare: Optional[str] = None, dataset: Optional[str] = None) -> pd.DataFrame:
    """The paper's Table 2: topologies (rows, paper order) by label count (columns).

    Semi-supervised columns ``N_L=50``, ``N_L=100`` (and any other label count trained with
    alpha < 1 or an alpha schedule), then supervised-only columns ``Sup1000`` (and ``Sup{N}`` for
    any other label count trained with alpha = 1). A cell reads ``mean ± std (alpha, beta) n=K``:
    test accuracy in % over the K finished seeds of the (alpha, beta) with the best mean
    validation accuracy, ``-`` where nothing finished. ``compare="paper"`` appends the published
    figures as rows marked ``[published]``. Without ``dataset`` the table is MNIST's; with no
    finished MNIST job that is a NoResultsError. The title is in ``.attrs["title"]``.
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
            table.loc[topology, col] = cell_text(sel, with_weights=not supervised)
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
        + (f"; rows marked {PUBLISHED_MARK} are published figures" if compare == "paper" else "")
    )
    return table


def _mnist_long(jobs: pd.DataFrame, compare: Optional[str], dataset: Optional[str]) -> pd.DataFrame:
    cells = mnist_cells(jobs, dataset)
    for col in ("mean", "std", "val_mean"):
        cells[col] = cells[col] / 100.0
    cells.insert(0, "source", "measured")
    cells.insert(cells.columns.get_loc("mean"), "metric", "test_acc")
    if compare == "paper":
        published = pd.DataFrame(
            [
                {
                    "source": "published",
                    "topology": name,
                    "column": f"N_L={n_l}",
                    "n_labeled": n_l,
                    "supervised": False,
                    "metric": "test_acc",
                    "mean": acc / 100.0,
                }
                for name, n_l, acc in PUBLISHED
            ]
        )
        cells = pd.concat([cells, published], ignore_index=True)
    return cells


# ------------------------------------------------------------------------ the 1-D experiment
def _bird10_selections(
    jobs: pd.DataFrame, epochs: pd.DataFrame, last: int, metric: str
) -> tuple[list[Any], list[str], list[tuple[Any, str, Optional[dict]]]]:
    require(jobs, ("alpha", "dataset", "group", "id"), "bird10 table")
    if metric not in ("test_acc", "val_acc"):
        raise UnknownNameError(f"unknown metric {metric!r} for the bird10 table; valid: test_acc, val_acc")
    jobs = finished(jobs).copy()
    chosen = at_best_validation(epochs, metric, last)
    jobs["_score"] = jobs["id"].map(chosen["score"])
    jobs["_val"] = jobs["id"].map(chosen["val"])
    alphas = sorted(dict.fromkeys(jobs["alpha"]), key=order_key)
    datasets = list(dict.fromkeys(jobs["dataset"]))
    cells = [
        (a, ds, select(jobs[(jobs["alpha"] == a) & (jobs["dataset"] == ds)], "_val", "_score"))
        for a in alphas
        for ds in datasets
    ]
    return alphas, datasets, cells


def bird10_table(jobs: pd.DataFrame, epochs: pd.DataFrame, last: int = 5, metric: str = "test_acc") -> pd.DataFrame:
    """The 1-D experiment's layout: alpha (rows) by dataset (columns).

    Each job scores ``metric`` at its epoch of best validation accuracy among its last ``last``
    epochs (``at_best_validation``); a cell is the mean ± std of that over seeds (in %) with n.
    Where a cell has several configurations besides alpha and the seed (a beta or learning-rate
    grid), the one with the best validation score is shown, marked
    ``[best of K configs by validation: beta B]``.
    """
    alphas, datasets, cells = _bird10_selections(jobs, epochs, last, metric)
    table = pd.DataFrame(
        MISSING, index=pd.Index([fmt_weight(a) for a in alphas], name="alpha"), columns=datasets, dtype=object
    )
    for alpha, ds, sel in cells:
        text = cell_text(sel, with_weights=False)
        if usable(sel) and sel is not None and sel["candidates"] > 1:
            text += f" [best of {sel['candidates']} configs by validation: beta {fmt_weight(sel['beta'])}]"
        table.loc[fmt_weight(alpha), ds] = text
    table = table.reset_index()
    what = "validation" if metric == "val_acc" else "test"
    table.attrs["title"] = (
        f"Accuracy against alpha: {what} accuracy (%) at each job's epoch of best "
        f"validation accuracy among its last {last} epochs, mean {PM} std over seeds, "
        "n = seeds finished"
    )
    return table


def _bird10_long(jobs: pd.DataFrame, epochs: pd.DataFrame, last: int) -> pd.DataFrame:
    _, _, cells = _bird10_selections(jobs, epochs, last, "test_acc")
    records = [
        {
            "alpha": a,
            "dataset": ds,
            "beta": sel["beta"],
            "lr": sel["lr"],
            "metric": "test_acc",
            "mean": sel["mean"] / 100,
            "std": sel["std"] / 100,
            "n": sel["n"],
            "collapsed": sel["collapsed"],
            "candidates": sel["candidates"],
            "job_ids": sel["job_ids"],
        }
        for a, ds, sel in cells
        if usable(sel) and sel is not None
    ]
    return pd.DataFrame(
        records,
        columns=["alpha", "dataset", "beta", "lr", "metric", "mean", "std", "n", "collapsed", "candidates", "job_ids"],
    )


# ------------------------------------------------------------------------ one entry point
@dataclass
class Report:
    """A table for people (``table``: text cells) and the same cells for programs (``cells``:
    long form, numeric mean/std/n in the metric's unit)."""

    table: pd.DataFrame
    cells: pd.DataFrame

    def render(self, fmt: str) -> str:
        return render_report(self.table, self.cells, fmt)


def table(
    name: str,
    jobs: pd.DataFrame,
    epochs: Optional[pd.DataFrame] = None,
    *,
    compare: Optional[str] = None,
    dataset: Optional[str] = None,
    last: int = 5,
) -> pd.DataFrame:
    """A named table: ``mnist`` or ``bird10`` (which needs the per-epoch frame)."""
    return build(name, jobs, epochs, compare=compare, dataset=dataset, last=last).table


def build(
    name: Optional[str],
    jobs: pd.DataFrame,
    epochs: Optional[pd.DataFrame] = None,
    *,
    compare: Optional[str] = None,
    dataset: Optional[str] = None,
    last: int = 5,
    rows: Sequence[str] = (),
    cols: Optional[Sequence[str]] = None,
    value: str = "test_acc",
    where: Optional[Mapping[str, Any]] = None,
) -> Report:
    """The named table (``mnist``, ``bird10``) or, with ``name`` None, the pivot over ``rows``."""
    if name == "mnist":
        return Report(mnist_table(jobs, compare=compare, dataset=dataset), _mnist_long(jobs, compare, dataset))
    if name == "bird10":
        if compare is not None:
            raise ConfigError("the comparison with the paper applies to the mnist table only")
        if dataset is not None:
            jobs = _of_dataset(jobs, dataset)
        ep = epochs if epochs is not None else pd.DataFrame()
        return Report(bird10_table(jobs, ep, last=last), _bird10_long(jobs, ep, last))
    if name is None:
        conditions = dict(where or {})
        if dataset is not None:
            conditions.setdefault("dataset", dataset)
        return Report(
            pivot(jobs, rows, cols, value=value, where=conditions), pivot_long(jobs, rows, cols, value, conditions)
        )
    raise UnknownNameError(f"unknown table {name!r}; valid: {', '.join(TABLES)}")


def from_database(db: Optional[str], name: Optional[str], *, sweep: Optional[str] = None, **options: Any) -> Report:
    """``build`` over the finished jobs (of ``sweep``, if given) in the results database ``db``."""
    from invssl.db import reads

    with reads.reading(db) as engine:
        jobs = load_jobs(engine, sweep)
        epochs = load_epochs(engine, jobs["id"]) if name == "bird10" else None
    return build(name, jobs, epochs, **options)
