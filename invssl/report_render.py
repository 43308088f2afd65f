"""Tables as text: terminal, markdown, LaTeX; and a report's cells as CSV or JSON for programs.

Display formats render the text cells (``98.90 ± 0.36 (0.3, 0.5) n=3``); CSV and JSON carry the
long form instead, one record per cell with numeric mean, std and n, which pandas, a
spreadsheet or ``jq`` read without parsing strings.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pandas as pd

from invssl.errors import UnknownNameError

FORMATS: tuple[str, ...] = ("terminal", "markdown", "latex", "csv", "json")
PM = "±"
PUBLISHED_MARK = "[published]"


def _cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = [str(c) for c in df.columns]
    body = [
        ["" if (not isinstance(v, str) and pd.isna(v)) else str(v) for v in row] for row in df.itertuples(index=False)
    ]
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
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    PM: r"$\pm$",
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
    CSV is the bare table as shown, one header line (``render_report`` writes the long form).
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
        # The title on a line of its own: wrapped to the table's width it would span many.
        if df.attrs.get("title"):
            buf.write(df.attrs["title"] + "\n")
        bare = df.copy()
        bare.attrs = {}
        Console(file=buf, width=1000, color_system=None, force_terminal=False, highlight=False).print(rich_table(bare))
        return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
    raise UnknownNameError(f"unknown format {fmt!r}; valid: terminal, markdown, latex, csv")


def _plain(value: Any) -> Any:
    """A cell value JSON can carry: NaN as null, numpy scalars as Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def cells_records(cells: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in rec.items()} for rec in cells.to_dict("records")]


def render_report(table: pd.DataFrame, cells: pd.DataFrame, fmt: str) -> str:
    """``csv``: the long form, one line per cell, ids joined by spaces; ``json``: an object with
    ``title`` and ``cells`` (the long form's records); anything else: ``render(table, fmt)``."""
    if fmt == "csv":
        flat = cells.copy()
        if "job_ids" in flat:
            flat["job_ids"] = flat["job_ids"].map(
                lambda ids: " ".join(str(i) for i in ids) if isinstance(ids, list) else ""
            )
        return flat.to_csv(index=False)
    if fmt == "json":
        return (
            json.dumps({"title": table.attrs.get("title"), "cells": cells_records(cells)}, indent=2, default=str) + "\n"
        )
    return render(table, fmt)
