"""Figures as PNG, PDF or SVG files (by suffix): learning curves, accuracy against a grid field,
reconstructions.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
pyplot, so nothing here touches a global backend or opens a window, and sizes are exact:
a figure is ``figsize * DPI`` pixels (no tight bounding box).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from invssl.errors import ConfigError, DataError
from invssl.frames import fmt_weight, order_key
from invssl.selection import is_fraction, select

DPI = 100
FIGURE_FORMATS = ("png", "pdf", "svg")
# Figure sizes in inches.
CURVES_SIZE = (15.0, 4.5)
METRIC_SIZE = (8.0, 5.0)
IMAGE_CELL = 1.6  # inches per image in the reconstruction grid
SIGNAL_SIZE = (6.0, 1.8)  # inches per 1-D panel
SIGNAL_COLUMNS = 2
LOSS_TERMS = ("loss", "ce", "recon", "entropy")


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def check_figure_path(path: str | Path) -> str:
    """The figure format named by ``path``'s suffix; ConfigError for any other suffix."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"{path}: name a figure file .png, .pdf or .svg (the suffix sets the format)")
    return fmt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fmt = check_figure_path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format=fmt, dpi=DPI)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def png_size(size: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a figure of ``size`` inches."""
    return round(size[0] * DPI), round(size[1] * DPI)


# ------------------------------------------------------------------------ learning curves
def learning_curves(
    epochs_by_job: Mapping[str, pd.DataFrame | Sequence[Mapping[str, Any]]],
    path: str | Path,
    title: Optional[str] = None,
) -> Path:
    """Per-epoch curves of several jobs overlaid: accuracy, total loss and CE, recon and entropy,
    and the loss weights alpha(t), beta(t) where they were learned.

    ``epochs_by_job`` maps a legend label to that job's epoch rows (a DataFrame or dicts with
    ``epoch`` and any of val_acc, test_acc, loss, ce, recon, entropy). Test accuracy is solid,
    validation dashed; each job keeps one colour across panels.
    """
    frames = {
        label: (rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows)))
        for label, rows in epochs_by_job.items()
    }
    frames = {k: v.sort_values("epoch") for k, v in frames.items() if not v.empty and "epoch" in v}
    if not frames:
        raise DataError("no epochs recorded for these jobs: nothing to plot")
    # Jobs with learned loss weights get a fourth panel: the weights the trainer chose.
    learned = any("alpha" in df and df["alpha"].notna().any() for df in frames.values())
    fig = _figure((CURVES_SIZE[0] * 4 / 3, CURVES_SIZE[1]) if learned else CURVES_SIZE)
    axes = fig.subplots(1, 4 if learned else 3)
    ax_acc, ax_loss, ax_rec = axes[:3]
    colors = [f"C{i % 10}" for i in range(len(frames))]
    for (label, df), color in zip(frames.items(), colors):
        named = False
        for metric, style in (("test_acc", "-"), ("val_acc", "--")):
            if metric in df and df[metric].notna().any():
                ax_acc.plot(
                    df["epoch"], df[metric] * 100, style, color=color, marker=".", label=None if named else label
                )
                named = True
        panels = [(ax_loss, ("loss", "ce")), (ax_rec, ("recon", "entropy"))]
        if learned:
            panels.append((axes[3], ("alpha", "beta")))
        for ax, terms in panels:
            for term, style in zip(terms, ("-", "--")):
                if term in df and df[term].notna().any():
                    ax.plot(df["epoch"], df[term], style, color=color, marker=".")
    ax_acc.set(title="accuracy (solid: test, dashed: validation)", xlabel="epoch", ylabel="%")
    ax_loss.set(title="loss (solid: total, dashed: cross-entropy)", xlabel="epoch")
    ax_rec.set(title="reconstruction (solid) and entropy (dashed)", xlabel="epoch")
    if learned:
        axes[3].set(title="learned weights (solid: alpha, dashed: beta)", xlabel="epoch", ylim=(0, 1))
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.yaxis.get_major_formatter().set_useOffset(False)  # flat curves: no "1e-7 + 10" axis
    if ax_acc.lines:
        ax_acc.legend(fontsize=7, loc="best")
    for ax in (ax_loss, ax_rec):
        values = [v for line in ax.lines for v in line.get_ydata() if v is not None]
        if values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------ accuracy vs a field
def metric_vs_field(
    jobs: pd.DataFrame,
    x: str,
    y: str,
    path: str | Path,
    by: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Path:
    """``y`` against the grid field ``x``, mean ± std over seeds, one line per group (Fig. 2).

    ``by`` names the fields that make a line (default: topology, dataset and n_labeled, those of
    them that vary). Where a point has several configurations besides its seeds (a beta grid),
    the one with the best mean validation accuracy is plotted, as in the tables. Accuracies are
    plotted in %. Numeric ``x`` values are placed on a numeric axis; schedules and other labels
    are evenly spaced in sorted order.
    """
    for field in (x, y):
        if field not in jobs.columns:
            raise ConfigError(f"no field {field!r} in the results; available: {', '.join(map(str, jobs.columns))}")
    if "status" in jobs.columns:
        jobs = jobs[jobs["status"] == "done"]
    jobs = jobs[pd.to_numeric(jobs[y], errors="coerce").notna()]
    if jobs.empty:
        raise DataError(f"no finished job has a value for {y!r}: nothing to plot")
    if by is None:
        by = [
            f for f in ("topology", "dataset", "n_labeled") if f in jobs.columns and f != x and jobs[f].nunique() > 1
        ] or [f for f in ("topology",) if f in jobs.columns]
    by = list(by)
    xs = sorted(dict.fromkeys(jobs[x]), key=order_key)
    numeric = all(order_key(v)[0] == 0 for v in xs)
    pos = {v: (float(v) if numeric else float(i)) for i, v in enumerate(xs)}
    scale = 100.0 if is_fraction(y) else 1.0
    fig = _figure(METRIC_SIZE)
    ax = fig.subplots()
    groups = jobs.groupby(by, sort=True, dropna=False) if by else [((), jobs)]
    for i, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        points = []
        for v in xs:
            sel = select(g[g[x] == v], "val_acc", y, scale=scale)
            if sel is not None and not sel.get("unselected") and sel["n"]:
                points.append((pos[v], sel["mean"], 0.0 if math.isnan(sel["std"]) else sel["std"]))
        if not points:
            continue
        px, py, pe = zip(*points)
        label = ", ".join(k if isinstance(k, str) else f"{f}={fmt_weight(float(k))}" for f, k in zip(by, key)) or y
        ax.errorbar(px, py, yerr=pe, marker="o", capsize=3, color=f"C{i % 10}", label=label)
    if not numeric:
        ax.set_xticks([pos[v] for v in xs], [str(v) for v in xs], rotation=30, ha="right")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (%)" if scale == 100.0 else y)
    ax.set_title(title or f"{y} against {x}: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------ reconstructions
def reconstruction_size(input_shape: Sequence[int], n: int) -> tuple[float, float]:
    """Figure size in inches of ``reconstructions`` for ``n`` inputs of ``input_shape``."""
    if len(input_shape) == 3:
        return (IMAGE_CELL * n, IMAGE_CELL * 2 + 0.5)
    cols = min(SIGNAL_COLUMNS, n)
    rows = math.ceil(n / cols)
    return (SIGNAL_SIZE[0] * cols, SIGNAL_SIZE[1] * rows + 0.5)


def _unit(img: Any) -> Any:
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else img * 0.0


def reconstructions(
    model: Any,
    x: Any,
    path: str | Path,
    n: int = 8,
    *,
    labels: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Path:
    """Inputs beside the network's reconstructions ``A[x]^T f(x)`` (``inversion.reconstruct``).

    Images (``x`` of shape (N, C, H, W)): a grid, inputs on top, reconstructions below, each
    scaled to its own range. 1-D signals ((N, C, L) or (N, L)): one panel per input with the
    input and the reconstruction overlaid, the reconstruction scaled by its least-squares
    factor onto the input (the factor is printed in the legend), since A[x]^T f(x) has its own
    scale. Titles give the label (when known) and the prediction.
    """
    import torch

    from invssl.inversion import reconstruct

    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    x = torch.as_tensor(x)[:n]
    if len(x) == 0:
        raise DataError("no inputs to reconstruct")
    n = len(x)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits, x_hat = reconstruct(model, x.to(device).float())
    finally:
        model.train(was_training)
    preds = logits.argmax(1).cpu().tolist()
    xs, rs = x.detach().cpu().float(), x_hat.detach().cpu().float()

    def name(k: int) -> str:
        return class_names[k] if class_names is not None and k < len(class_names) else str(k)

    def caption(i: int) -> str:
        pred = f"pred {name(preds[i])}"
        return f"{name(int(labels[i]))} / {pred}" if labels is not None else pred

    image = xs.dim() == 4
    fig = _figure(reconstruction_size(tuple(xs.shape[1:]), n))
    if image:
        axes = fig.subplots(2, n, squeeze=False)
        for i in range(n):
            for row, t in ((0, xs[i]), (1, rs[i])):
                ax = axes[row][i]
                img = _unit(t)
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", interpolation="nearest")
                else:
                    ax.imshow(img[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[0][i].set_title(caption(i), fontsize=8)
        axes[0][0].set_ylabel("input")
        axes[1][0].set_ylabel("A[x]ᵀf(x)")
    else:
        cols = min(SIGNAL_COLUMNS, n)
        rows = math.ceil(n / cols)
        axes = fig.subplots(rows, cols, squeeze=False)
        for i in range(rows * cols):
            ax = axes[i // cols][i % cols]
            if i >= n:
                ax.set_axis_off()
                continue
            sig, rec = xs[i].reshape(-1), rs[i].reshape(-1)
            denom = float((rec * rec).sum())
            k = float((sig * rec).sum()) / denom if denom > 0 else 1.0
            ax.plot(sig.numpy(), lw=0.6, color="C0", label="input")
            ax.plot((rec * k).numpy(), lw=0.6, color="C3", alpha=0.8, label=f"A[x]ᵀf(x) × {k:.3g}")
            ax.set_title(caption(i), fontsize=8)
            ax.legend(fontsize=6, loc="upper right")
            ax.tick_params(labelsize=6)
    fig.suptitle(title or "inputs and their reconstructions A[x]ᵀf(x)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def pick_examples(labels: Any, n: int) -> list[int]:
    """Indices of ``n`` examples, cycling through the classes in order (first of each class,
    then the second of each...), so a small figure shows as many classes as it can."""
    import torch

    y = torch.as_tensor(labels).reshape(-1)
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(y.tolist()):
        by_class.setdefault(int(c), []).append(i)
    picked: list[int] = []
    rank = 0
    while len(picked) < min(n, len(y)):
        for c in sorted(by_class):
            if rank < len(by_class[c]) and len(picked) < n:
                picked.append(by_class[c][rank])
        rank += 1
    return picked


# ------------------------------------------------------------------------ from the database
def _safe_name(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "all"


def job_curves(db: Optional[str], refs: Sequence[str], path: Optional[Path]) -> Path:
    """Learning curves of the jobs ``refs`` (key prefixes or ids); default file name from the first."""
    from invssl.db import reads
    from invssl.frames import epochs_frame
    from invssl.labels import job_label

    with reads.reading(db) as engine:
        infos = [reads.get_job(engine, ref) for ref in refs]
        curves = {
            f"{i['key'][:10]} {job_label(i['config'] or {})}": epochs_frame(reads.job_epochs(engine, i["id"]))
            for i in infos
        }
    more = f"-and-{len(infos) - 1}-more" if len(infos) > 1 else ""
    return learning_curves(curves, path or Path(f"curves-{infos[0]['key'][:10]}{more}.png"))


def sweep_metric(
    db: Optional[str], sweep: Optional[str], x: str, y: str, by: Optional[Sequence[str]], path: Optional[Path]
) -> Path:
    from invssl.db import reads
    from invssl.frames import load_jobs

    with reads.reading(db) as engine:
        frame = load_jobs(engine, sweep)
    default = Path(f"{_safe_name(sweep or 'all')}-{_safe_name(y)}-vs-{_safe_name(x)}.png")
    return metric_vs_field(
        frame,
        x,
        y,
        path or default,
        by=by,
        title=f"{sweep + ': ' if sweep else ''}{y} against {x}, mean ± std over seeds",
    )


def job_reconstructions(
    db: Optional[str], ref: str, n: int, path: Optional[Path], *, device: str, data_root: Optional[str]
) -> Path:
    """``reconstructions`` of ``n`` test inputs by the job's checkpointed network."""
    from invssl.config import JobConfig
    from invssl.db import queue, reads
    from invssl.devices import resolve_device
    from invssl.train import load_model, prepare

    with reads.reading(db) as engine:
        info = reads.get_job(engine, ref)
        stored = queue.load_checkpoint(engine, info["id"])
    if stored is None:
        raise DataError(f"job {info['key'][:10]} ({info['status']}) has no checkpoint yet: nothing to reconstruct with")
    config = JobConfig(**info["config"])
    if data_root:
        config = config.model_copy(update={"data_root": data_root})
    dev = resolve_device(device)
    model = load_model(config, stored[1], dev)
    prep = prepare(config, dev)
    idx = pick_examples(prep.y_test.cpu(), n)
    return reconstructions(
        model,
        prep.x_test[idx],
        path or Path(f"reconstruct-{info['key'][:10]}.png"),
        n=n,
        labels=prep.y_test[idx].cpu().tolist(),
        class_names=prep.info.class_names,
        title=f"{config.label()} (epoch {stored[0]}): inputs and reconstructions A[x]ᵀf(x)",
    )
