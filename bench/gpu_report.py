"""Helpers of bench/gpu.py: progress lines, budgets, one measurement's failure, the Markdown report."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import step_cost
import torch

STARTED = time.monotonic()


def say(msg: str) -> None:
    print(f"[gpu.py {time.monotonic() - STARTED:6.1f}s] {msg}", flush=True)


def within(items: Iterable[Any], deadline: float, skipped: list[Any]) -> Iterator[Any]:
    """The items while time is left; the rest go to ``skipped``."""
    for item in items:
        if time.monotonic() > deadline:
            skipped.append(item)
        else:
            yield item


def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One measurement: running out of memory, or a path that fails on this device (the native conv
    double backward is new on CUDA), loses this one and is reported, not the whole run."""
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        torch.cuda.empty_cache()  # a no-op where CUDA never started
        oom = isinstance(exc, torch.OutOfMemoryError)
        return {"error": "out of memory" if oom else " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}


def markdown(res: dict[str, Any]) -> str:
    """Each part's per-item results as tables, the rest as a list; bench/GPU.md names the fields."""
    meta = res["meta"]
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)  # noqa: E731
    md = [
        f"# GPU benchmark: {meta['device_name']}, torch {meta['torch']}",
        "",
        f"`python bench/gpu.py {' '.join(meta['argv'])}`; data: {meta['data']}",
        "",
    ]
    for part in (p for p in res if p != "meta"):  # the parts in the order they ran
        md += [f"## {part}", ""]
        for key, value in res[part].items():
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                value = [{"name": k, **v} for k, v in value.items()]
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                cols = sorted(
                    dict.fromkeys(k for r in value for k, v in r.items() if not isinstance(v, (dict, list))),
                    key=lambda c: c == "error",
                )  # stable: only moves the error column last
                table = step_cost.fmt_table(cols, [[cell(r.get(c)) for c in cols] for r in value], True)
                md += ["", f"{key}:", "", table, ""]
            elif isinstance(value, dict):
                md.append(f"- {key}: " + ", ".join(f"{k} {cell(v)}" for k, v in value.items()))
            else:
                md.append(f"- {key}: {cell(value)}")
        md.append("")
    return "\n".join(md)
